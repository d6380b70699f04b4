package idem_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

type bundle struct {
	ledger *idem.Ledger
	store  *memstore.Store
	clock  *idem.ManualClock // the ledger's clock: heartbeats and waits
	sclock *idem.ManualClock // the store's clock: leases and windows
	events *eventLog
}

type eventLog struct {
	mu     sync.Mutex
	events []idem.Event
}

func (l *eventLog) Observe(_ context.Context, ev *idem.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, *ev)
}

func (l *eventLog) count(op idem.Op, d idem.Decision) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ev := range l.events {
		if ev.Op == op && ev.Decision == d {
			n++
		}
	}
	return n
}

func setup(t *testing.T, cfg *idem.Config) *bundle {
	t.Helper()
	b := &bundle{clock: idem.NewManualClock(epoch), sclock: idem.NewManualClock(epoch), events: &eventLog{}}
	b.store = memstore.New(&memstore.Config{Clock: b.sclock})
	if cfg == nil {
		cfg = &idem.Config{}
	}
	cfg.Clock, cfg.Observer = b.clock, b.events
	l, err := idem.New(b.store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.ledger = l
	t.Cleanup(func() { l.Close() })
	return b
}

func outcome(s string) idem.Outcome {
	return idem.Outcome{Data: []byte(s), Meta: map[string]string{"status": "201"}}
}

func TestDoRunsOnceAndReplays(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	runs := 0
	fn := func(ctx context.Context, c *idem.Claim) (idem.Outcome, error) {
		runs++
		return outcome(fmt.Sprintf("charge-%d", c.Token())), nil
	}
	first, err := b.ledger.Do(ctx, "acct_1", "pay-1", "fp", fn)
	if err != nil {
		t.Fatal(err)
	}
	if first.Replayed || first.Attempt != 1 {
		t.Fatalf("first: replayed=%v attempt=%d, want false 1", first.Replayed, first.Attempt)
	}
	for range 3 {
		again, err := b.ledger.Do(ctx, "acct_1", "pay-1", "fp", fn)
		if err != nil {
			t.Fatal(err)
		}
		if !again.Replayed || string(again.Outcome.Data) != string(first.Outcome.Data) || again.Outcome.Meta["status"] != "201" {
			t.Fatalf("replay = %+v, want the first outcome %q", again, first.Outcome.Data)
		}
	}
	if runs != 1 {
		t.Fatalf("fn ran %d times, want 1", runs)
	}
	if got := b.events.count(idem.OpBegin, idem.Replay); got != 3 {
		t.Fatalf("observed %d replays, want 3", got)
	}
	// Another scope is another record.
	if _, err := b.ledger.Do(ctx, "acct_2", "pay-1", "fp", fn); err != nil || runs != 2 {
		t.Fatalf("other scope: err=%v runs=%d, want nil 2", err, runs)
	}
}

func TestDoMismatchAndInFlight(t *testing.T) {
	t.Parallel()
	b := setup(t, &idem.Config{Lease: 10 * time.Second})
	ctx := context.Background()
	claim, err := b.ledger.Begin(ctx, "s", "k", "fp-a")
	if err != nil || claim.Replayed() {
		t.Fatalf("begin: %v replayed=%v", err, claim.Replayed())
	}
	_, err = b.ledger.Do(ctx, "s", "k", "fp-b", nil)
	if !errors.Is(err, idem.ErrFingerprintMismatch) {
		t.Fatalf("other fingerprint: %v, want ErrFingerprintMismatch", err)
	}
	b.sclock.Advance(4 * time.Second)
	_, err = b.ledger.Do(ctx, "s", "k", "fp-a", nil)
	var inflight *idem.InFlightError
	if !errors.As(err, &inflight) || !errors.Is(err, idem.ErrInFlight) {
		t.Fatalf("in flight: %v, want *InFlightError", err)
	}
	if inflight.RetryAfter != 6*time.Second {
		t.Fatalf("RetryAfter = %s, want 6s", inflight.RetryAfter)
	}
}

func TestDoRetryableErrorReleases(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	boom := errors.New("connection refused")
	_, err := b.ledger.Do(ctx, "s", "k", "fp", func(context.Context, *idem.Claim) (idem.Outcome, error) {
		return idem.Outcome{}, idem.Retryable(boom)
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the fn's error", err)
	}
	rec, err := b.ledger.Get(ctx, "s", "k")
	if err != nil || rec.State != idem.StateReleased {
		t.Fatalf("record after retryable failure: %+v %v, want released", rec, err)
	}
	res, err := b.ledger.Do(ctx, "s", "k", "other-fp-is-fine-after-release", func(_ context.Context, c *idem.Claim) (idem.Outcome, error) {
		return outcome("second"), nil
	})
	if err != nil || res.Replayed || res.Attempt != 2 || string(res.Outcome.Data) != "second" {
		t.Fatalf("retry: %+v %v, want a fresh run as attempt 2", res, err)
	}
}

func TestDoPermanentErrorIsTheOutcome(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	declined := errors.New("card declined")
	runs := 0
	fn := func(context.Context, *idem.Claim) (idem.Outcome, error) {
		runs++
		return idem.Outcome{}, declined
	}
	if _, err := b.ledger.Do(ctx, "s", "k", "fp", fn); !errors.Is(err, declined) {
		t.Fatalf("first: %v, want the original error", err)
	}
	_, err := b.ledger.Do(ctx, "s", "k", "fp", fn)
	var oe *idem.OutcomeError
	if !errors.As(err, &oe) || oe.Message != "card declined" || !errors.Is(err, idem.ErrFailedOutcome) {
		t.Fatalf("replay: %v, want OutcomeError(card declined)", err)
	}
	if runs != 1 {
		t.Fatalf("fn ran %d times, want 1", runs)
	}
}

func TestDoPanicReleases(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Fatalf("recovered %v, want the panic to go on", r)
			}
		}()
		b.ledger.Do(ctx, "s", "k", "fp", func(context.Context, *idem.Claim) (idem.Outcome, error) { panic("kaboom") })
	}()
	rec, err := b.ledger.Get(ctx, "s", "k")
	if err != nil || rec.State != idem.StateReleased {
		t.Fatalf("after panic: %+v %v, want released", rec, err)
	}
}

func TestDoRecordsAfterCallerGivesUp(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := b.ledger.Do(ctx, "s", "k", "fp", func(context.Context, *idem.Claim) (idem.Outcome, error) {
		cancel() // the client disconnects after the effect happened
		return outcome("done"), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := b.ledger.Get(context.Background(), "s", "k")
	if err != nil || rec.State != idem.StateCompleted || string(rec.Outcome.Data) != "done" {
		t.Fatalf("record: %+v %v, want the outcome stored", rec, err)
	}
}

// waitWaiters blocks until n goroutines wait on the clock, so advancing it
// is not racing with them.
func waitWaiters(t *testing.T, c *idem.ManualClock, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.Waiters() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d clock waiters, want %d", c.Waiters(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDoHeartbeatExtendsLease(t *testing.T) {
	t.Parallel()
	b := setup(t, &idem.Config{Lease: 30 * time.Second})
	ctx := context.Background()
	ask := make(chan struct{})
	leases := make(chan time.Time)
	done := make(chan error, 1)
	go func() {
		_, err := b.ledger.Do(ctx, "s", "k", "fp", func(_ context.Context, c *idem.Claim) (idem.Outcome, error) {
			// The claim's view of the lease follows the heartbeats.
			for range ask {
				leases <- c.LeaseUntil()
			}
			return outcome("ok"), nil
		})
		done <- err
	}()
	// A heartbeat every 10s carries the lease far past its first 30s.
	for range 9 {
		waitWaiters(t, b.clock, 1)
		b.sclock.Advance(10 * time.Second)
		b.clock.Advance(10 * time.Second)
		want := b.sclock.Now().Add(30 * time.Second)
		waitExtended(t, b, want)
		// The store has the new lease; the claim learns it when Extend
		// returns, a moment later.
		deadline := time.Now().Add(5 * time.Second)
		for {
			ask <- struct{}{}
			got := <-leases
			if got.Equal(want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Claim.LeaseUntil = %s, want %s", got, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	_, err := b.ledger.Begin(ctx, "s", "k", "fp")
	if !errors.Is(err, idem.ErrInFlight) {
		t.Fatalf("90s after start: %v, want still in flight", err)
	}
	close(ask)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func waitExtended(t *testing.T, b *bundle, until time.Time) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rec, err := b.ledger.Get(context.Background(), "s", "k")
		if err == nil && !rec.LeaseUntil.Before(until) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease not extended to %s: %+v %v", until, rec, err)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDoLeaseLostCancelsWork(t *testing.T) {
	t.Parallel()
	b := setup(t, &idem.Config{Lease: 30 * time.Second})
	ctx := context.Background()
	started := make(chan struct{})
	done := make(chan error, 1)
	var cause atomic.Value
	go func() {
		_, err := b.ledger.Do(ctx, "s", "k", "fp", func(ctx context.Context, c *idem.Claim) (idem.Outcome, error) {
			close(started)
			<-ctx.Done()
			cause.Store(context.Cause(ctx))
			return idem.Outcome{}, ctx.Err()
		})
		done <- err
	}()
	<-started
	// The owner stalls: the store's clock passes its lease before a
	// heartbeat, and a successor takes over.
	b.sclock.Advance(31 * time.Second)
	successor, err := b.ledger.Begin(ctx, "s", "k", "fp")
	if err != nil || successor.Attempt() != 2 {
		t.Fatalf("takeover: %v", err)
	}
	waitWaiters(t, b.clock, 1)
	b.clock.Advance(10 * time.Second) // the heartbeat fires and is refused
	err = <-done
	if !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("Do = %v, want ErrLeaseLost", err)
	}
	if c, _ := cause.Load().(error); !errors.Is(c, idem.ErrLeaseLost) {
		t.Fatalf("work context cause = %v, want ErrLeaseLost", c)
	}
	rec, _ := b.ledger.Get(ctx, "s", "k")
	if rec.State != idem.StatePending || rec.Token != successor.Token() {
		t.Fatalf("record = %+v, want the successor's pending claim untouched", rec)
	}
}

func TestDoWaitForOriginal(t *testing.T) {
	t.Parallel()
	store := memstore.New(nil)
	l, err := idem.New(store, nil) // real clock: waiters poll every 10ms
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var runs atomic.Int32
	gate := make(chan struct{})
	results := make(chan string, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			res, err := l.Do(ctx, "s", "k", "fp", func(context.Context, *idem.Claim) (idem.Outcome, error) {
				runs.Add(1)
				<-gate
				return outcome("the original"), nil
			}, idem.WithWait(10*time.Second))
			if err != nil {
				results <- "error: " + err.Error()
				return
			}
			results <- string(res.Outcome.Data)
		})
	}
	// Let the duplicates pile up behind the original, then finish it.
	deadline := time.Now().Add(5 * time.Second)
	for runs.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(gate)
	wg.Wait()
	close(results)
	for r := range results {
		if r != "the original" {
			t.Fatalf("a duplicate got %q, want the original's outcome", r)
		}
	}
	if runs.Load() != 1 {
		t.Fatalf("fn ran %d times, want 1", runs.Load())
	}
}

func TestKeySecretStoresDigests(t *testing.T) {
	t.Parallel()
	b := setup(t, &idem.Config{KeySecret: []byte("s3cret")})
	ctx := context.Background()
	raw := "customer-42-order-7"
	if _, err := b.ledger.Do(ctx, "s", raw, "fp", func(context.Context, *idem.Claim) (idem.Outcome, error) {
		return outcome("ok"), nil
	}); err != nil {
		t.Fatal(err)
	}
	page, err := b.ledger.List(ctx, &idem.ListParams{Scope: "s"})
	if err != nil || len(page.Records) != 1 {
		t.Fatalf("list: %v %v", page, err)
	}
	stored := page.Records[0].Key
	if strings.Contains(stored, raw) || !strings.HasPrefix(stored, "hmac-sha256:") || stored != b.ledger.StoredKey(raw) {
		t.Fatalf("stored key %q, want an HMAC digest of the raw key", stored)
	}
	if rec, err := b.ledger.Get(ctx, "s", raw); err != nil || rec.Key != stored {
		t.Fatalf("get by raw key: %+v %v", rec, err)
	}
	other, _ := idem.New(b.store, &idem.Config{KeySecret: []byte("other")})
	if other.StoredKey(raw) == stored {
		t.Fatal("digests under two secrets are equal")
	}
}

func TestObserverTimeToIdempotence(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	claim, err := b.ledger.Begin(ctx, "s", "k", "fp")
	if err != nil {
		t.Fatal(err)
	}
	b.sclock.Advance(1500 * time.Millisecond)
	if err := claim.Complete(ctx, outcome("x")); err != nil {
		t.Fatal(err)
	}
	b.events.mu.Lock()
	defer b.events.mu.Unlock()
	last := b.events.events[len(b.events.events)-1]
	if last.Op != idem.OpComplete || last.TimeToIdempotence != 1500*time.Millisecond || last.Err != nil {
		t.Fatalf("complete event = %+v, want time-to-idempotence 1.5s", last)
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	for name, key := range map[string]string{"empty": "", "long": strings.Repeat("k", 256), "not utf-8": "\xff"} {
		if _, err := b.ledger.Begin(ctx, "s", key, "fp"); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("%s key: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := b.ledger.Begin(ctx, "s", "k", "fp", idem.WithLease(-time.Second)); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("negative lease: %v, want ErrInvalid", err)
	}
	if _, err := b.ledger.Begin(ctx, "s", "k", "\xfe\xff"); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("non-UTF-8 fingerprint: %v, want ErrInvalid", err)
	}
	claim, err := b.ledger.Begin(ctx, "s", "meta", "fp")
	if err != nil {
		t.Fatal(err)
	}
	if err := claim.Complete(ctx, idem.Outcome{Meta: map[string]string{"h": "\xff"}}); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("non-UTF-8 meta: %v, want ErrInvalid", err)
	}
	if err := b.ledger.Delete(ctx, "s", "meta"); err != nil {
		t.Fatal(err)
	}
	if n, _ := b.store.Size(ctx); n != 0 {
		t.Errorf("bad input stored %d records", n)
	}
	if _, err := idem.New(b.store, &idem.Config{Lease: -1}); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("negative Config.Lease: %v, want ErrInvalid", err)
	}
	if _, err := idem.New(nil, nil); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("nil store: %v, want ErrInvalid", err)
	}
}

// A caller that gives up does not end the lease of work still running: the
// work would otherwise lose its key to a duplicate while it goes on.
func TestDoKeepsLeaseAfterCallerGivesUp(t *testing.T) {
	t.Parallel()
	b := setup(t, &idem.Config{Lease: 30 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := b.ledger.Do(ctx, "s", "k", "fp", func(context.Context, *idem.Claim) (idem.Outcome, error) {
			<-release // work that does not watch its context
			return outcome("late but once"), nil
		})
		done <- err
	}()
	waitWaiters(t, b.clock, 1)
	cancel()
	for range 6 { // 60s: twice the lease
		waitWaiters(t, b.clock, 1)
		b.sclock.Advance(10 * time.Second)
		b.clock.Advance(10 * time.Second)
		waitExtended(t, b, b.sclock.Now().Add(30*time.Second))
	}
	if _, err := b.ledger.Begin(context.Background(), "s", "k", "fp"); !errors.Is(err, idem.ErrInFlight) {
		t.Fatalf("a duplicate 60s after the caller gave up: %v, want in flight", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	rec, _ := b.ledger.Get(context.Background(), "s", "k")
	if rec.State != idem.StateCompleted || rec.Attempts != 1 {
		t.Fatalf("record %+v, want completed by the first attempt", rec)
	}
}

// TestObserverDurations: every operation's Event carries how long the
// store call took, measured from its start (never from the zero time).
func TestObserverDurations(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := context.Background()
	claim, err := b.ledger.Begin(ctx, "s", "k", "fp")
	if err != nil {
		t.Fatal(err)
	}
	if err := claim.Extend(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := claim.SetCheckpoint(ctx, "p", nil); err != nil {
		t.Fatal(err)
	}
	if err := claim.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if claim, err = b.ledger.Begin(ctx, "s", "k", "fp"); err != nil {
		t.Fatal(err)
	}
	if err := claim.Complete(ctx, outcome("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ledger.Sweep(ctx, 0); err != nil {
		t.Fatal(err)
	}
	b.events.mu.Lock()
	defer b.events.mu.Unlock()
	var ops []idem.Op
	for _, ev := range b.events.events {
		ops = append(ops, ev.Op)
		if ev.Duration < 0 || ev.Duration > time.Minute {
			t.Errorf("%s event took %s", ev.Op, ev.Duration)
		}
	}
	want := []idem.Op{idem.OpBegin, idem.OpExtend, idem.OpCheckpoint, idem.OpRelease, idem.OpBegin, idem.OpComplete, idem.OpSweep}
	if fmt.Sprint(ops) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", ops, want)
	}
}
