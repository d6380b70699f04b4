package pebblestore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

const (
	crashChildDirEnv   = "IDEM_PEBBLESTORE_CRASH_DIR"
	crashChildRoundEnv = "IDEM_PEBBLESTORE_CRASH_ROUND"
	crashWriters       = 16
	crashScope         = "crash"
)

// crashOutcome is the outcome the child stores for key, so the parent can
// check it without being told.
func crashOutcome(key string) idem.Outcome {
	return idem.Outcome{Data: []byte("outcome of " + key), Meta: map[string]string{"key": key, "n": strconv.Itoa(len(key))}}
}

// crashChild runs in a child process: crashWriters goroutines Begin and
// Complete fresh keys and print "ack KEY" only after Complete returned
// nil, until the parent kills the process (or a minute passes).
func crashChild(dir, round string) int {
	s, err := Open(dir, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		return 2
	}
	ctx := context.Background()
	var out sync.Mutex
	failed := make(chan error, crashWriters)
	for w := range crashWriters {
		go func() {
			for i := 0; ; i++ {
				key := fmt.Sprintf("r%s-w%02d-%06d", round, w, i)
				res, err := s.Begin(ctx, &idem.BeginParams{Scope: crashScope, Key: key, Fingerprint: "f",
					Lease: time.Minute, Window: 24 * time.Hour})
				if err == nil && res.Decision != idem.Acquired {
					err = fmt.Errorf("begin %s: %s", key, res.Decision)
				}
				if err != nil {
					failed <- err
					return
				}
				if _, err := s.Complete(ctx, &idem.CompleteParams{Scope: crashScope, Key: key,
					Token: res.Record.Token, Outcome: crashOutcome(key)}); err != nil {
					failed <- err
					return
				}
				out.Lock()
				_, err = fmt.Fprintf(os.Stdout, "ack %s %d\n", key, res.Record.Token)
				out.Unlock()
				if err != nil {
					failed <- err
					return
				}
			}
		}()
	}
	select {
	case err := <-failed:
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	case <-time.After(time.Minute):
		fmt.Fprintln(os.Stderr, "child: not killed within a minute")
		return 3
	}
}

// TestCrashDurability re-executes the test binary as a child that writes
// concurrently, SIGKILLs it at a random point after some acknowledgements,
// and checks after each round, on the reopened directory, that every
// acknowledged Complete is there with its exact outcome, that nothing was
// completed twice, and that tokens never went back after the crash.
func TestCrashDurability(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash test starts child processes")
	}
	t.Parallel()
	dir := t.TempDir()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	acked := map[string]int64{} // key -> token the child reported
	var lastMax int64           // the highest token of any record after the previous round
	const rounds = 5
	for round := range rounds {
		killAfter := 20 + rng.IntN(300)
		n := runCrashChild(t, dir, round, killAfter, acked)
		t.Logf("round %d: killed after %d acks (asked for %d)", round, n, killAfter)

		s, err := Open(dir, &Config{SweepInterval: -1})
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		lastMax = checkCrashRecords(t, s, round, acked, lastMax)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// runCrashChild runs one child until it has acknowledged killAfter keys,
// kills it, and adds every acknowledgement it printed to acked.
func runCrashChild(t *testing.T, dir string, round, killAfter int, acked map[string]int64) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildDirEnv+"="+dir, crashChildRoundEnv+"="+strconv.Itoa(round))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	n := 0
	killed := false
	timeout := time.After(2 * time.Minute)
	for {
		var line string
		var open bool
		select {
		case line, open = <-lines:
		case <-timeout:
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: child did not finish in time; stderr: %s", round, stderr.String())
		}
		if !open {
			break
		}
		key, tok, ok := strings.Cut(strings.TrimPrefix(line, "ack "), " ")
		token, err := strconv.ParseInt(tok, 10, 64)
		if !ok || err != nil || !strings.HasPrefix(line, "ack ") {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: child printed %q", round, line)
		}
		if _, dup := acked[key]; dup {
			t.Errorf("round %d: key %s acknowledged twice", round, key)
		}
		acked[key] = token
		n++
		if n == 1 {
			// While the child runs, the directory is locked.
			if s, err := Open(dir, nil); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), dir) {
				if s != nil {
					s.Close()
				}
				t.Errorf("open of a directory in use: err %v, want ErrLocked naming %s", err, dir)
			}
		}
		if n >= killAfter && !killed {
			killed = true
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("round %d: child exited before %d acks (%d): %v; stderr: %s", round, killAfter, n, err, stderr.String())
	}
	return n
}

// checkCrashRecords checks the reopened store against the acknowledged
// keys and returns the highest token it holds.
func checkCrashRecords(t *testing.T, s *Store, round int, acked map[string]int64, lastMax int64) int64 {
	t.Helper()
	ctx := context.Background()
	for _, key := range slices.Sorted(maps.Keys(acked)) {
		rec, err := s.Get(ctx, &idem.KeyParams{Scope: crashScope, Key: key})
		if err != nil {
			t.Fatalf("round %d: acknowledged key %s: %v", round, key, err)
		}
		want := crashOutcome(key)
		if rec.State != idem.StateCompleted || rec.Outcome == nil || !bytes.Equal(rec.Outcome.Data, want.Data) ||
			!maps.Equal(rec.Outcome.Meta, want.Meta) || rec.Token != acked[key] || rec.Attempts != 1 {
			t.Fatalf("round %d: acknowledged key %s reads back as %+v (outcome %+v), want completed with token %d",
				round, key, rec, rec.Outcome, acked[key])
		}
	}
	// Every record: unique tokens, and those written in this round above
	// every token that existed before it.
	tokens := map[int64]string{}
	var maxToken int64
	completed := 0
	p := &idem.ListParams{Scope: crashScope, Limit: idem.MaxListSize}
	for {
		page, err := s.List(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range page.Records {
			if other, dup := tokens[rec.Token]; dup {
				t.Fatalf("round %d: token %d held by %s and %s", round, rec.Token, other, rec.Key)
			}
			tokens[rec.Token] = rec.Key
			maxToken = max(maxToken, rec.Token)
			if strings.HasPrefix(rec.Key, fmt.Sprintf("r%d-", round)) && rec.Token <= lastMax {
				t.Fatalf("round %d: %s got token %d, not above %d from before the crash", round, rec.Key, rec.Token, lastMax)
			}
			if rec.State == idem.StateCompleted {
				completed++
			}
		}
		if page.NextCursor == "" {
			break
		}
		p.Cursor = page.NextCursor
	}
	if completed < len(acked) {
		t.Fatalf("round %d: %d completed records, fewer than %d acknowledged", round, completed, len(acked))
	}
	if size, _ := s.Size(ctx); size != int64(len(tokens)) {
		t.Fatalf("round %d: Size %d, but List found %d records", round, size, len(tokens))
	}
	return maxToken
}
