package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/wait"
	"github.com/idemkit/idem/storetest"
)

// TestConformanceBatched runs the suite with one batch in flight per
// shard, so concurrent Begins and Completes of a shard queue and run
// together in batchScript.
func TestConformanceBatched(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T, _ idem.Clock) idem.Store {
		s := setup(t, nil).store
		setInFlight(s, 1)
		return s
	}, &storetest.Options{RealClock: true})
}

// waitQueued polls until n operations wait in the queue of shard.
func waitQueued(t *testing.T, s *Store, shard, n int) {
	t.Helper()
	wait.For(t, fmt.Sprintf("%d operations queued in shard %d", n, shard), func() bool {
		return s.batch[shard].Queued() == n
	})
}

// TestBatch: operations that find every slot busy queue; the next batch
// runs them in one script, each with its own result (acquired, replay,
// mismatch, completed, lease lost), and frees the slot.
func TestBatch(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	s := b.store
	setInFlight(s, 1)
	done := b.acquire("s", "done", time.Hour, time.Hour)
	if _, err := s.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "done", Token: done.Token, Outcome: idem.Outcome{Data: []byte("out")}}); err != nil {
		t.Fatal(err)
	}
	owned := b.acquire("s", "owned", time.Hour, time.Hour)
	shard := shardOf("s")
	bt := &s.batch[shard]
	release := bt.Hold() // the one slot is busy

	type result struct {
		name string
		err  error
		what string
	}
	results := make(chan result, 8)
	var wg sync.WaitGroup
	begin := func(key, fp string) {
		defer wg.Done()
		res, err := s.Begin(b.ctx, &idem.BeginParams{Scope: "s", Key: key, Fingerprint: fp, Lease: time.Hour, Window: time.Hour})
		what := ""
		if res != nil {
			what = string(res.Decision)
			if res.Decision == idem.Replay {
				what += ":" + string(res.Record.Outcome.Data)
			}
		}
		results <- result{"begin " + key + " " + fp, err, what}
	}
	complete := func(key string, token int64) {
		defer wg.Done()
		_, err := s.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: key, Token: token, Outcome: idem.Outcome{Data: []byte("x")}})
		results <- result{fmt.Sprintf("complete %s %d", key, token), err, ""}
	}
	wg.Add(6)
	go begin("new-1", "f")
	go begin("new-2", "f")
	go begin("done", "f")
	go begin("done", "other")
	go complete("owned", owned.Token)
	go complete("done", done.Token)
	waitQueued(t, s, shard, 6)
	release() // the busy batch is done: the queued six run as one
	wg.Wait()
	close(results)
	got := map[string]result{}
	for r := range results {
		got[r.name] = r
	}
	want := map[string]struct {
		err  error
		what string
	}{
		"begin new-1 f":    {nil, string(idem.Acquired)},
		"begin new-2 f":    {nil, string(idem.Acquired)},
		"begin done f":     {nil, string(idem.Replay) + ":out"},
		"begin done other": {nil, string(idem.Mismatch)},
		fmt.Sprintf("complete owned %d", owned.Token): {nil, ""},
		fmt.Sprintf("complete done %d", done.Token):   {idem.ErrCompleted, ""},
	}
	for name, w := range want {
		r, ok := got[name]
		switch {
		case !ok:
			t.Errorf("%s: no result", name)
		case w.err == nil && r.err != nil, w.err != nil && !errors.Is(r.err, w.err):
			t.Errorf("%s: error %v, want %v", name, r.err, w.err)
		case r.what != w.what:
			t.Errorf("%s: %q, want %q", name, r.what, w.what)
		}
	}
	active, queued := bt.InFlight(), bt.Queued()
	if active != 0 || queued != 0 {
		t.Errorf("after the batch: %d in flight, %d queued; want 0 and 0", active, queued)
	}
	if got, err := s.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "owned"}); err != nil || got.State != idem.StateCompleted {
		t.Errorf("Get owned: %+v, %v; want completed", got, err)
	}
	// The batch read the counter once and wrote it once: the two tokens it
	// gave differ, are above every earlier one, and the counter holds the
	// greater.
	r1, err1 := s.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "new-1"})
	r2, err2 := s.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "new-2"})
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if r1.Token == r2.Token || min(r1.Token, r2.Token) <= owned.Token {
		t.Errorf("tokens of the batch %d and %d, want distinct and above %d", r1.Token, r2.Token, owned.Token)
	}
	if got := b.client.Get(b.ctx, keysOf(b.prefix, "s", "x").token).Val(); got != string(tokenBytes(max(r1.Token, r2.Token))) {
		t.Errorf("counter %x, want %d", got, max(r1.Token, r2.Token))
	}
	// Both are in the index.
	res, err := s.List(b.ctx, &idem.ListParams{Scope: "s"})
	if err != nil || len(res.Records) != 4 {
		t.Errorf("List: %v, %v; want done, new-1, new-2 and owned", res, err)
	}
}

// TestBatchCancelWhileQueued: a caller whose context ends while its
// operation waits in the queue gets the context's error, and the operation
// never runs.
func TestBatchCancelWhileQueued(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	s := b.store
	setInFlight(s, 1)
	bt := &s.batch[shardOf("s")]
	release := bt.Hold()
	ctx, cancel := context.WithCancel(b.ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Hour, Window: time.Hour})
		errc <- err
	}()
	waitQueued(t, s, shardOf("s"), 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Begin cancelled in the queue: %v, want context.Canceled", err)
	}
	waitQueued(t, s, shardOf("s"), 0)
	release()
	if _, err := s.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "k"}); !errors.Is(err, idem.ErrNotFound) {
		t.Errorf("Get after the cancelled Begin: %v, want idem.ErrNotFound", err)
	}
	// The slot is free again: a Begin runs at once.
	b.acquire("s", "k", time.Hour, time.Hour)
}

// TestBatchWait: with Config.WaitReplicas, the one wait after a batch
// confirms (here: fails to confirm) every write in it, so each acquired
// Begin of the batch reports ErrNotDurable with its result.
func TestBatchWait(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{WaitReplicas: 1, WaitTimeout: 50 * time.Millisecond})
	if n := b.client.Info(b.ctx, "replication").Val(); !strings.Contains(n, "connected_slaves:0\r\n") {
		t.Skipf("the server has replicas: %s", n)
	}
	s := b.store
	setInFlight(s, 1)
	shard := shardOf("s")
	bt := &s.batch[shard]
	release := bt.Hold() // the one slot is busy
	type result struct {
		res *idem.BeginResult
		err error
	}
	results := make(chan result, 2)
	for _, key := range []string{"a", "b"} {
		go func() {
			res, err := s.Begin(b.ctx, &idem.BeginParams{Scope: "s", Key: key, Fingerprint: "f", Lease: time.Hour, Window: time.Hour})
			results <- result{res, err}
		}()
	}
	waitQueued(t, s, shard, 2)
	release() // the queued two run as one batch, then one WAIT
	for range 2 {
		r := <-results
		if !errors.Is(r.err, ErrNotDurable) || r.res == nil || r.res.Decision != idem.Acquired {
			t.Errorf("Begin in a batch: %+v, %v; want acquired with an error wrapping ErrNotDurable", r.res, r.err)
		}
	}
}

// setInFlight sets how many batches each shard may have on their way.
func setInFlight(s *Store, n int) {
	for i := range s.batch {
		s.batch[i].MaxInFlight = n
	}
}
