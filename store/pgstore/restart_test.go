package pgstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
)

// restartCommand returns the command that restarts the local PostgreSQL
// cluster, or why the test cannot run it.
func restartCommand() ([]string, string) {
	if os.Geteuid() != 0 {
		return nil, "restarting PostgreSQL needs root"
	}
	if _, err := exec.LookPath("pg_ctlcluster"); err != nil {
		return nil, "pg_ctlcluster is not installed"
	}
	versions, err := os.ReadDir("/etc/postgresql")
	if err != nil || len(versions) == 0 {
		return nil, "no cluster under /etc/postgresql"
	}
	return []string{"pg_ctlcluster", "--skip-systemctl-redirect", versions[0].Name(), "main", "restart"}, ""
}

// TestRestartUnderLoad restarts PostgreSQL while 8 callers run
// Begin+Complete cycles. Operations in flight fail with ErrUnavailable,
// later ones succeed, and every Complete that returned nil replays
// afterwards. It is not parallel: no other test of the package runs
// during the restart.
func TestRestartUnderLoad(t *testing.T) {
	url := servicetest.Postgres.Need(t)
	cmd, why := restartCommand()
	if cmd == nil {
		if servicetest.Required() {
			t.Fatalf("%s and IDEM_REQUIRE_SERVICES=1", why)
		}
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool := sharedPool(t)
	schema := freshSchema(t, pool)
	s, err := Open(ctx, url, &Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The shared pool's connections die with the server: drop them so the
	// tests after this one start on fresh ones.
	defer pool.Reset()

	var (
		mu        sync.Mutex
		completed = map[string]string{} // key -> outcome of every Complete that returned nil
		failures  []error
		restarted atomic.Bool
		before    atomic.Int64 // completed cycles before the restart
		after     atomic.Int64 // and after it
		stop      = make(chan struct{})
		wg        sync.WaitGroup
	)
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("w%d-%d", w, i)
				err := cycle(ctx, s, key)
				mu.Lock()
				if err != nil {
					failures = append(failures, err)
				} else {
					completed[key] = "out-" + key
				}
				mu.Unlock()
				if err == nil && restarted.Load() {
					after.Add(1)
				} else if err == nil {
					before.Add(1)
				}
				if err != nil {
					// Back off a little while the server is down, on the
					// context, not a sleep that could outlive the test.
					select {
					case <-time.After(20 * time.Millisecond):
					case <-ctx.Done():
						return
					}
				}
			}
		})
	}
	var stopOnce sync.Once
	halt := func() {
		stopOnce.Do(func() { close(stop) })
		wg.Wait()
	}
	defer halt() // also when a wait below fails the test
	waitFor(t, ctx, "100 cycles before the restart", func() bool { return before.Load() >= 100 })

	out, err := exec.CommandContext(ctx, cmd[0], cmd[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", cmd, err, out)
	}
	waitFor(t, ctx, "PostgreSQL to answer again", func() bool { return s.Pool().Ping(ctx) == nil })
	restarted.Store(true)
	waitFor(t, ctx, "100 cycles after the restart", func() bool { return after.Load() >= 100 })
	halt()

	mu.Lock()
	defer mu.Unlock()
	for _, err := range failures {
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("a failure during the restart is not ErrUnavailable: %v", err)
		}
	}
	t.Logf("%d cycles completed (%d before the restart, %d after); %d failed with ErrUnavailable",
		len(completed), before.Load(), after.Load(), len(failures))
	for key, want := range completed {
		res, err := s.Begin(ctx, &idem.BeginParams{Scope: "restart", Key: key, Fingerprint: "f", Lease: time.Minute, Window: time.Hour})
		if err != nil {
			t.Fatalf("Begin %s after the restart: %v", key, err)
		}
		if res.Decision != idem.Replay || string(res.Record.Outcome.Data) != want {
			t.Errorf("%s completed before or during the restart: %s, want a replay of %q", key, res.Decision, want)
		}
	}
}

func cycle(ctx context.Context, s *Store, key string) error {
	res, err := s.Begin(ctx, &idem.BeginParams{Scope: "restart", Key: key, Fingerprint: "f", Lease: time.Minute, Window: time.Hour})
	if err != nil {
		return err
	}
	if res.Decision != idem.Acquired {
		return fmt.Errorf("fresh key %s: %s", key, res.Decision)
	}
	_, err = s.Complete(ctx, &idem.CompleteParams{Scope: "restart", Key: key, Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte("out-" + key)}})
	return err
}

// waitFor polls cond until it holds, failing the test when ctx ends first.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waited too long for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
