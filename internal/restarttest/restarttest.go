// Package restarttest runs the order saga of the workflow tests across
// restarts of the process over a durable workflow.Journal: each phase
// opens the journal's storage again, builds an engine over it, does some
// work and closes the storage, leaving work queued for the next. The
// journal stores of the workspace run it from their tests:
//
//	restarttest.Run(t, func(t *testing.T, clk idem.Clock) (workflow.Journal, func() error) {
//		s := open(t, clk) // the same storage each time
//		return s.Journal(), s.Close
//	})
//
// It is test support, with no use in production.
package restarttest

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
)

// Open opens the journal on the test's one durable storage, with clk for
// a store that judges time itself, and returns it with the func that
// closes the storage (the process stops).
type Open func(t *testing.T, clk idem.Clock) (workflow.Journal, func() error)

// world is the order saga with actions that count their calls.
type world struct {
	mu    sync.Mutex
	calls []string
}

func (w *world) fn(kind, name string) workflow.StepFunc {
	return func(ctx context.Context, s *workflow.Step) ([]byte, error) {
		w.mu.Lock()
		w.calls = append(w.calls, kind+" "+name+" "+s.Key)
		w.mu.Unlock()
		return []byte(name + " done"), nil
	}
}

func (w *world) registry(t *testing.T) *workflow.Registry {
	act := func(n, comp string) *workflow.Action {
		return &workflow.Action{Name: n, Run: w.fn("run", n), Compensate: w.fn("comp", comp),
			Retry: &workflow.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Second}}
	}
	reg := workflow.NewRegistry()
	err := reg.Register(OrderSaga("order", act))
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// OrderSaga is the order saga of the workflow tests, named name: place
// reserves stock, pay charges the card and dispatch ships the parcel, each
// action (with its compensation) made by act; a reservation unpaid for 15
// minutes times out, and cancel from reserved or charged unwinds.
func OrderSaga(name string, act func(name, compensate string) *workflow.Action) *workflow.Definition {
	return &workflow.Definition{
		Name: name, Version: 1, Initial: "pending",
		States: []workflow.State{
			{Name: "pending"},
			{Name: "reserved", Timeout: 15 * time.Minute, TimeoutEvent: "payment_timeout"},
			{Name: "charged"},
			{Name: "shipped", Terminal: workflow.Success},
			{Name: "cancelled", Terminal: workflow.Failure},
		},
		Transitions: []workflow.Transition{
			{From: "pending", Event: "place", To: "reserved", Action: act("reserve_stock", "release")},
			{From: "reserved", Event: "pay", To: "charged", Action: act("charge_card", "refund")},
			{From: "reserved", Event: "payment_timeout", To: "cancelled"},
			{From: "reserved", Event: "cancel", To: "cancelled"},
			{From: "charged", Event: "dispatch", To: "shipped", Action: act("ship_parcel", "recall")},
			{From: "charged", Event: "cancel", To: "cancelled"},
		},
	}
}

// Run runs the order saga over three processes, each a journal from open:
// o1 runs to the end across them (an event queued by one is handled by
// the next, a duplicate of one handled before is a duplicate after), o2
// times out while no process runs, o3 is cancelled by one and unwound by
// the next. Every instance must end as it should with its history
// numbered 1, 2, ..., and every action must have run exactly once.
func Run(t *testing.T, open Open) {
	t.Helper()
	ctx := context.Background()
	clk := idem.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	w := &world{}
	reg := w.registry(t)
	phase := func(f func(e *workflow.Engine)) {
		t.Helper()
		j, closeJournal := open(t, clk)
		e, err := workflow.NewEngine(j, reg, &workflow.EngineConfig{Clock: clk, Lease: 30 * time.Second, Rand: func() float64 { return 0 }})
		if err != nil {
			t.Fatal(err)
		}
		f(e)
		if err := closeJournal(); err != nil {
			t.Fatal(err)
		}
	}
	drain := func(e *workflow.Engine) {
		t.Helper()
		for range 100 {
			n, err := e.Step(ctx)
			if err != nil {
				t.Fatalf("Step: %v", err)
			}
			if n == 0 {
				return
			}
		}
		t.Fatal("Step never ran out of work")
	}
	signal := func(e *workflow.Engine, id, eventID, event string) {
		t.Helper()
		if dup, err := e.Signal(ctx, id, eventID, event, nil); err != nil || dup {
			t.Fatalf("Signal(%s, %s) = %v, %v", id, event, dup, err)
		}
	}

	// o1 runs to the end; o2 is left in reserved, to time out (a failure
	// end reached by a transition: nothing is compensated); o3 is
	// cancelled, and unwound by the next process.
	phase(func(e *workflow.Engine) {
		for _, id := range []string{"o1", "o2", "o3"} {
			if _, err := e.Start(ctx, "order", 0, id, []byte("2 books"), nil); err != nil {
				t.Fatal(err)
			}
			signal(e, id, id+"-place", "place")
		}
		drain(e)
		signal(e, "o1", "o1-pay", "pay") // queued, not run: the process stops
	})
	phase(func(e *workflow.Engine) {
		// A duplicate of an event delivered before the restart.
		if dup, err := e.Signal(ctx, "o1", "o1-place", "place", nil); err != nil || !dup {
			t.Fatalf("duplicate place after restart: %v, %v; want a duplicate", dup, err)
		}
		drain(e) // charge_card, from the inbox that survived
		signal(e, "o1", "o1-dispatch", "dispatch")
		if err := e.Cancel(ctx, "o3", "customer changed their mind"); err != nil {
			t.Fatal(err)
		}
	})
	clk.Advance(16 * time.Minute) // past o2's timeout, while no process runs
	phase(func(e *workflow.Engine) {
		drain(e)
		for id, want := range map[string]workflow.Status{"o1": workflow.Succeeded, "o2": workflow.Failed, "o3": workflow.Cancelled} {
			in, err := e.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if in.Status != want {
				t.Errorf("%s ended %s in %s; want %s", id, in.Status, in.State, want)
			}
			for k, h := range in.History {
				if h.Seq != int64(k+1) {
					t.Fatalf("%s history entry %d has Seq %d", id, k, h.Seq)
				}
			}
		}
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	got := slices.Clone(w.calls)
	slices.Sort(got)
	want := []string{
		"comp release o3/1/compensate/reserve_stock",
		"run charge_card o1/2/charge_card",
		"run reserve_stock o1/1/reserve_stock",
		"run reserve_stock o2/1/reserve_stock",
		"run reserve_stock o3/1/reserve_stock",
		"run ship_parcel o1/3/ship_parcel",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("calls:\n%v\nwant\n%v", got, want)
	}
}
