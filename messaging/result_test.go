package messaging_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
)

// The handler's result is recorded with the outcome: Ack carries it, every
// duplicate gets the same bytes, and the record holds them as Data next to
// the "handled" meta.
func TestResultAckAndDuplicate(t *testing.T) {
	l, _ := newLedger(t)
	runs := 0
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		runs++
		buf := []byte("reply:" + string(m.Payload))
		messaging.SetResult(ctx, []byte("replaced"))
		messaging.SetResult(ctx, buf) // a later call replaces an earlier one
		copy(buf, "XXXXX")            // the consumer copied it
		if k, ok := idem.KeyFrom(ctx); !ok || k != m.ID {
			t.Errorf("KeyFrom in the handler = %q, %v; want %q", k, ok, m.ID)
		}
		return nil
	}, nil)
	ctx := context.Background()
	d := c.Handle(ctx, msg("m1", "order-1"))
	if d.Action != messaging.Ack || string(d.Result) != "reply:order-1" {
		t.Fatalf("first delivery: %+v (result %q), want Ack with reply:order-1", d, d.Result)
	}
	for range 2 {
		dup := c.Handle(ctx, msg("m1", "order-1"))
		if dup.Action != messaging.AckDuplicate || dup.Err != nil || string(dup.Result) != "reply:order-1" {
			t.Fatalf("duplicate: %+v (result %q), want AckDuplicate with the original result", dup, dup.Result)
		}
	}
	if runs != 1 {
		t.Fatalf("handler ran %d times, want 1", runs)
	}
	rec, err := l.Get(ctx, "messages", "m1")
	if err != nil || rec.Outcome == nil || string(rec.Outcome.Data) != "reply:order-1" || rec.Outcome.Meta["messaging"] != "handled" {
		t.Fatalf("stored record %+v (%v), want Data reply:order-1 and meta handled", rec, err)
	}
}

// A handler that sets no result behaves as before: no Data in the record,
// no Result in either decision.
func TestNoResult(t *testing.T) {
	l, _ := newLedger(t)
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		if m.ID == "empty" {
			messaging.SetResult(ctx, []byte{}) // empty is no result
		}
		return nil
	}, nil)
	ctx := context.Background()
	for _, id := range []string{"m1", "empty"} {
		d := c.Handle(ctx, msg(id, "x"))
		dup := c.Handle(ctx, msg(id, "x"))
		if d.Action != messaging.Ack || d.Result != nil || dup.Action != messaging.AckDuplicate || dup.Result != nil {
			t.Fatalf("%s: %+v then %+v, want Ack and AckDuplicate without a result", id, d, dup)
		}
		rec, err := l.Get(ctx, "messages", id)
		if err != nil || rec.Outcome == nil || len(rec.Outcome.Data) != 0 {
			t.Fatalf("%s: stored record %+v (%v), want no Data", id, rec, err)
		}
	}
	messaging.SetResult(ctx, []byte("outside a handler")) // does nothing, does not panic
}

// The process acks after the outcome is recorded; if it dies in between,
// the broker redelivers to another process, whose duplicate gets the
// original result from the store without running the handler.
func TestResultSurvivesCrashBetweenCompleteAndAck(t *testing.T) {
	clk := idem.NewManualClock(t0)
	store := memstore.New(&memstore.Config{Clock: clk})
	t.Cleanup(func() { store.Close() })
	process := func(name string, runs *int) *messaging.Consumer {
		l, err := idem.New(store, &idem.Config{Clock: clk, Lease: lease})
		if err != nil {
			t.Fatal(err)
		}
		return newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
			*runs++
			messaging.SetResult(ctx, []byte("produced by "+name))
			return nil
		}, nil)
	}
	var runsA, runsB int
	a, b := process("a", &runsA), process("b", &runsB)
	ctx := context.Background()
	if d := a.Handle(ctx, msg("m1", "order-1")); d.Action != messaging.Ack || string(d.Result) != "produced by a" {
		t.Fatalf("process a: %+v, want Ack with its result", d)
	}
	// a dies before acking: the delivery comes back, to b.
	d := b.Handle(ctx, msg("m1", "order-1"))
	if d.Action != messaging.AckDuplicate || string(d.Result) != "produced by a" {
		t.Fatalf("redelivery at b: %+v (result %q), want AckDuplicate with a's result", d, d.Result)
	}
	if runsA != 1 || runsB != 0 {
		t.Fatalf("handler ran %d times at a, %d at b; want 1 and 0", runsA, runsB)
	}
}

// A failed attempt's result is dropped with it: the outcome has the result
// of the run that took effect, or none.
func TestResultOfAFailedAttemptIsDropped(t *testing.T) {
	l, _ := newLedger(t)
	runs := 0
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		runs++
		switch {
		case runs == 1:
			messaging.SetResult(ctx, []byte("half done"))
			return errors.New("transient")
		case m.ID == "m1":
			messaging.SetResult(ctx, []byte("done"))
		}
		return nil
	}, nil)
	ctx := context.Background()
	if d := c.Handle(ctx, msg("m1", "x")); d.Action != messaging.Retry || d.Result != nil {
		t.Fatalf("failed attempt: %+v, want Retry without a result", d)
	}
	for range 2 {
		if d := c.Handle(ctx, msg("m1", "x")); !d.Action.Acked() || string(d.Result) != "done" {
			t.Fatalf("after the failure: %+v (result %q), want the second run's result", d, d.Result)
		}
	}
	runs = 0
	c.Handle(ctx, msg("m2", "x"))
	if d := c.Handle(ctx, msg("m2", "x")); d.Action != messaging.Ack || d.Result != nil {
		t.Fatalf("a retry that sets none: %+v, want Ack without the failed attempt's result", d)
	}
}

// A result over Config.MaxResult fails the attempt at once: an error
// wrapping idem.ErrInvalid, permanent, so the message is dead-lettered and
// nothing of the result is stored.
func TestResultOverMaxResultDeadLetters(t *testing.T) {
	l, _ := newLedger(t)
	var dl deadLetters
	runs := 0
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		runs++
		messaging.SetResult(ctx, bytes.Repeat([]byte("x"), len(m.Payload)))
		return nil
	}, &messaging.Config{MaxResult: 4, DeadLetter: dl.hook})
	ctx := context.Background()
	if d := c.Handle(ctx, msg("fits", "1234")); d.Action != messaging.Ack || string(d.Result) != "xxxx" {
		t.Fatalf("a result of MaxResult bytes: %+v, want Ack", d)
	}
	d := c.Handle(ctx, msg("big", "12345"))
	if d.Action != messaging.DeadLetter || !errors.Is(d.Err, idem.ErrInvalid) || !messaging.IsPermanent(d.Err) || d.Result != nil {
		t.Fatalf("a result over MaxResult: %+v, want DeadLetter with a permanent ErrInvalid", d)
	}
	if len(dl.calls) != 1 || len(dl.calls[0].attempts) != 1 {
		t.Fatalf("dead-letter hook calls %+v, want one with the one attempt", dl.calls)
	}
	dup := c.Handle(ctx, msg("big", "12345"))
	var oe *idem.OutcomeError
	if dup.Action != messaging.AckDuplicate || !errors.As(dup.Err, &oe) || dup.Result != nil || runs != 2 {
		t.Fatalf("duplicate of the dead letter: %+v after %d runs, want AckDuplicate with the failure, 2 runs", dup, runs)
	}
}

// SetResult after the handler returned (from a goroutine it left behind)
// changes nothing: the outcome was taken when the handler returned.
func TestSetResultAfterReturnIsIgnored(t *testing.T) {
	l, _ := newLedger(t)
	var mu sync.Mutex
	var kept context.Context
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		messaging.SetResult(ctx, []byte("original"))
		mu.Lock()
		kept = ctx
		mu.Unlock()
		return nil
	}, nil)
	ctx := context.Background()
	if d := c.Handle(ctx, msg("m1", "x")); string(d.Result) != "original" {
		t.Fatalf("first: %+v", d)
	}
	mu.Lock()
	messaging.SetResult(kept, []byte("late"))
	mu.Unlock()
	if d := c.Handle(ctx, msg("m1", "x")); d.Action != messaging.AckDuplicate || string(d.Result) != "original" {
		t.Fatalf("duplicate: %+v (result %q), want the original result", d, d.Result)
	}
}
