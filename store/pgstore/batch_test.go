package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/wait"
	"github.com/idemkit/idem/storetest"
)

// TestConformanceBatched runs the suite with one batch of Completes on its
// way at a time, so concurrent Completes queue and run together in
// completeBatchSQL.
func TestConformanceBatched(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T, _ idem.Clock) idem.Store {
		s := newStore(t)
		s.batchAbove, s.completer.MaxInFlight = 0, 1
		return s
	}, &storetest.Options{RealClock: true})
}

// acquire begins key in s and returns its token.
func acquire(t *testing.T, s *Store, key string) int64 {
	t.Helper()
	res, err := s.Begin(context.Background(), &idem.BeginParams{Scope: "s", Key: key, Fingerprint: "f", Lease: time.Hour, Window: time.Hour})
	if err != nil || res.Decision != idem.Acquired {
		t.Fatalf("Begin %s: %+v, %v; want acquired", key, res, err)
	}
	return res.Record.Token
}

// waitQueued waits until n Completes are queued in s's batcher.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	wait.For(t, fmt.Sprintf("%d Completes queued", n), func() bool { return s.completer.Queued() == n })
}

// TestCompleteBatch: Completes that find every slot busy queue and run as
// one statement; each gets its own answer (stored, lease lost, completed)
// and only the owners' outcomes are stored.
func TestCompleteBatch(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	s.batchAbove, s.completer.MaxInFlight = 0, 1
	var sizes []int
	run := s.completer.Run
	s.completer.Run = func(ctx context.Context, ops []*completeOp) {
		sizes = append(sizes, len(ops)) // one batch at a time: no race
		run(ctx, ops)
	}
	a, b, stale := acquire(t, s, "a"), acquire(t, s, "b"), acquire(t, s, "stale")
	done := acquire(t, s, "done")
	if _, err := s.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "done", Token: done, Outcome: idem.Outcome{Data: []byte("first")}}); err != nil {
		t.Fatal(err)
	}
	sizes = nil
	release := s.completer.Hold()
	type call struct {
		key   string
		token int64
		check func(*idem.Record, error) error
	}
	stored := func(rec *idem.Record, err error) error {
		if err != nil || rec.State != idem.StateCompleted || rec.Completed.IsZero() || !rec.Expires.After(rec.Completed) {
			return fmt.Errorf("%+v, %v; want completed", rec, err)
		}
		return nil
	}
	is := func(want error) func(*idem.Record, error) error {
		return func(_ *idem.Record, err error) error {
			if !errors.Is(err, want) {
				return fmt.Errorf("%v, want %v", err, want)
			}
			return nil
		}
	}
	calls := []call{
		{"b", b, stored}, {"a", a, stored}, {"stale", stale + 1000, is(idem.ErrLeaseLost)},
		{"done", done, is(idem.ErrCompleted)}, {"missing", 1, is(idem.ErrLeaseLost)},
	}
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Go(func() {
			rec, err := s.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: c.key, Token: c.token,
				Outcome: idem.Outcome{Data: []byte("out-" + c.key), Meta: map[string]string{"k": c.key}}})
			if err := c.check(rec, err); err != nil {
				t.Errorf("Complete %s: %v", c.key, err)
			}
		})
		waitQueued(t, s, i+1)
	}
	release()
	wg.Wait()
	if !slices.Equal(sizes, []int{5}) {
		t.Errorf("batches of %v, want one of 5", sizes)
	}
	for key, want := range map[string]string{"a": "out-a", "b": "out-b", "done": "first"} {
		rec, err := s.Get(ctx, &idem.KeyParams{Scope: "s", Key: key})
		if err != nil || rec.Outcome == nil || string(rec.Outcome.Data) != want {
			t.Errorf("Get %s: %+v, %v; want outcome %q", key, rec, err, want)
		} else if key != "done" && rec.Outcome.Meta["k"] != key {
			t.Errorf("Get %s: meta %v, want k=%s", key, rec.Outcome.Meta, key)
		}
	}
	if rec, err := s.Get(ctx, &idem.KeyParams{Scope: "s", Key: "stale"}); err != nil || rec.State != idem.StatePending {
		t.Errorf("Get stale: %+v, %v; want still pending", rec, err)
	}
}

// TestCompleteBatchOneFails: when the server refuses a batch's statement
// because of one Complete in it, every Complete runs again alone: the
// others are stored and only that one fails.
func TestCompleteBatchOneFails(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	ops := []*completeOp{
		{scope: "s", key: "a", token: acquire(t, s, "a"), data: []byte("A")},
		{scope: "s", key: "bad", token: acquire(t, s, "bad"), data: []byte("X"), meta: []byte("{")}, // not JSON
		{scope: "s", key: "c", token: acquire(t, s, "c"), data: []byte("C")},
	}
	s.runCompletes(ctx, ops)
	for _, o := range ops {
		rec, err := s.Get(ctx, &idem.KeyParams{Scope: "s", Key: o.key})
		if err != nil {
			t.Fatal(err)
		}
		if o.key == "bad" {
			if o.err == nil || !strings.Contains(o.err.Error(), "json") || rec.State != idem.StatePending {
				t.Errorf("the bad Complete: %v, record %s; want a JSON error and the record still pending", o.err, rec.State)
			}
			continue
		}
		if o.err != nil || !o.found || rec.State != idem.StateCompleted || string(rec.Outcome.Data) != string(o.data) {
			t.Errorf("Complete %s beside the bad one: found %v, %v, record %+v; want it stored", o.key, o.found, o.err, rec)
		}
	}
}

// TestCompleteAloneWhileConnectionsLast: a Complete runs its own statement
// at once, even with a batch on its way, while the pool has a connection
// for every Begin and Complete on it; with more on it than connections it
// queues for the next batch.
func TestCompleteAloneWhileConnectionsLast(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	if want := int64(s.pool.Config().MaxConns); s.batchAbove != want {
		t.Fatalf("batchAbove %d, want the pool's %d connections", s.batchAbove, want)
	}
	release := s.completer.Hold()
	defer func() { release() }()
	// Queued behind the held batch, it would fail when this ends.
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := s.Complete(wait, &idem.CompleteParams{Scope: "s", Key: "alone", Token: acquire(t, s, "alone"), Outcome: idem.Outcome{Data: []byte("alone")}}); err != nil {
		t.Fatalf("Complete with a batch on its way and connections free: %v", err)
	}
	if q := s.completer.Queued(); q != 0 {
		t.Fatalf("%d Completes queued, want 0", q)
	}

	// Others are on the pool: this one is one too many.
	s.onPool.Add(s.batchAbove)
	defer s.onPool.Add(-s.batchAbove)
	token := acquire(t, s, "queued")
	done := make(chan error, 1)
	go func() {
		_, err := s.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "queued", Token: token, Outcome: idem.Outcome{Data: []byte("queued")}})
		done <- err
	}()
	waitQueued(t, s, 1)
	release()
	release = func() {}
	if err := <-done; err != nil {
		t.Fatalf("the queued Complete: %v", err)
	}
	for _, key := range []string{"alone", "queued"} {
		rec, err := s.Get(ctx, &idem.KeyParams{Scope: "s", Key: key})
		if err != nil || rec.State != idem.StateCompleted || string(rec.Outcome.Data) != key {
			t.Errorf("Get %s: %+v, %v; want completed with %q", key, rec, err, key)
		}
	}
}
