package idem_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// extendSignal is a store that says when an Extend has returned.
type extendSignal struct {
	idem.Store
	done chan error
}

func (s *extendSignal) Extend(ctx context.Context, p *idem.ExtendParams) (*idem.Record, error) {
	rec, err := s.Store.Extend(ctx, p)
	s.done <- err
	return rec, err
}

// keepAliveSetup returns a claim of ("s", "k") with the given lease, on a
// memstore behind extendSignal, on a manual clock.
func keepAliveSetup(t *testing.T, lease time.Duration) (*idem.ManualClock, *memstore.Store, *extendSignal, *idem.Claim) {
	t.Helper()
	clock := idem.NewManualClock(epoch)
	mem := memstore.New(&memstore.Config{Clock: clock})
	store := &extendSignal{Store: mem, done: make(chan error, 1)}
	ledger, err := idem.New(store, &idem.Config{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	claim, err := ledger.Begin(context.Background(), "s", "k", "f", idem.WithLease(lease))
	if err != nil {
		t.Fatal(err)
	}
	return clock, mem, store, claim
}

// KeepAlive extends the lease every third of it, also after the caller's
// context was cancelled, and reports a lease the store refuses.
func TestKeepAlive(t *testing.T) {
	t.Parallel()
	clock, mem, store, claim := keepAliveSetup(t, 3*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the caller went away; the work goes on
	lost := make(chan error, 1)
	stop := claim.KeepAlive(ctx, 3*time.Second, func(err error) { lost <- err })
	defer stop()

	for i := range 2 {
		// The store's answer reaches the test before the tick re-arms
		// the next one: advancing before that would leave it unfired.
		waitWaiters(t, clock, 1)
		clock.Advance(time.Second)
		if err := <-store.done; err != nil {
			t.Fatalf("extension %d: %v", i+1, err)
		}
		rec, err := mem.Get(context.Background(), &idem.KeyParams{Scope: "s", Key: "k"})
		if err != nil {
			t.Fatal(err)
		}
		if want := clock.Now().Add(3 * time.Second); !rec.LeaseUntil.Equal(want) {
			t.Fatalf("extension %d: lease until %s, want %s", i+1, rec.LeaseUntil, want)
		}
	}

	if err := mem.Delete(context.Background(), &idem.KeyParams{Scope: "s", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	waitWaiters(t, clock, 1)
	clock.Advance(time.Second)
	<-store.done
	if err := <-lost; !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("onLost got %v, want ErrLeaseLost", err)
	}
}

// A lease under 3 ms is extended every millisecond, not at once and over
// and over: the timer waits on the clock, and nothing is extended before
// the clock moves.
func TestKeepAliveShortLease(t *testing.T) {
	t.Parallel()
	clock, _, store, claim := keepAliveSetup(t, time.Nanosecond)
	stop := claim.KeepAlive(context.Background(), time.Nanosecond, func(error) {})
	defer stop()
	if w := clock.Waiters(); w != 1 {
		t.Fatalf("%d clock waiters, want the tick waiting", w)
	}
	select {
	case err := <-store.done:
		t.Fatalf("extended (%v) before the clock moved", err)
	default:
	}
	clock.Advance(time.Millisecond)
	if err := <-store.done; err != nil {
		t.Fatal(err)
	}
	if got := idem.KeepAliveEvery(30 * time.Second); got != 10*time.Second {
		t.Fatalf("KeepAliveEvery(30s) = %s, want 10s", got)
	}
}

// TestKeepAliveInvalidLease: a lease that is not positive stops at the
// first tick with ErrInvalid, instead of asking the store again every
// millisecond.
func TestKeepAliveInvalidLease(t *testing.T) {
	t.Parallel()
	clock, _, _, claim := keepAliveSetup(t, time.Second)
	lost := make(chan error, 1)
	stop := claim.KeepAlive(context.Background(), 0, func(err error) { lost <- err })
	defer stop()
	waitWaiters(t, clock, 1)
	clock.Advance(time.Millisecond)
	select {
	case err := <-lost:
		if !errors.Is(err, idem.ErrInvalid) {
			t.Fatalf("onLost(%v), want ErrInvalid", err)
		}
	case <-time.After(5 * time.Second): // a bound on failure, not a wait for success
		t.Fatal("onLost not called within 5 s of the first tick")
	}
	if n := clock.Waiters(); n != 0 {
		t.Errorf("%d clock waiters after onLost, want 0 (no next tick)", n)
	}
}
