package pebblestore

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/journaltest"
)

func TestJournalConformance(t *testing.T) {
	t.Parallel()
	journaltest.Run(t, func(t *testing.T) workflow.Journal {
		s, err := Open(t.TempDir(), &Config{SweepInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s.Journal()
	})
}

func TestJournalSameForAStore(t *testing.T) {
	t.Parallel()
	s, err := Open(t.TempDir(), &Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Journal() != s.Journal() {
		t.Fatal("Store.Journal returned two journals: their locks would not exclude each other")
	}
}

// TestJournalReopen: what a journal acknowledged is there after the
// store is closed and opened again, the indexes too.
func TestJournalReopen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := Open(dir, &Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	j := s.Journal()
	for _, id := range []string{"a", "b", "c"} {
		in := &workflow.Instance{ID: id, Type: "order", Fingerprint: "f", State: "pending", Status: workflow.Running, Input: []byte(id), WakeAt: t0}
		if _, err := j.Create(ctx, &workflow.CreateParams{Instance: in, Entries: []workflow.Entry{{Kind: workflow.EntryStarted, At: t0}}}); err != nil {
			t.Fatal(err)
		}
	}
	g, err := j.Get(ctx, &workflow.GetParams{ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	a := g.Instance
	a.History = nil
	a.State, a.Status, a.WakeAt, a.Finished = "shipped", workflow.Succeeded, time.Time{}, t0.Add(time.Minute)
	if _, err := j.Append(ctx, &workflow.AppendParams{Instance: a, Entries: []workflow.Entry{{Kind: workflow.EntryTransition, To: "shipped"}, {Kind: workflow.EntryFinished}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Delete(ctx, &workflow.DeleteParams{ID: "c", Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Get(ctx, &workflow.GetParams{ID: "a"}); !errors.Is(err, idem.ErrClosed) {
		t.Fatalf("Get after Close: %v; want ErrClosed", err)
	}

	s, err = Open(dir, &Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	j = s.Journal()
	g, err = j.Get(ctx, &workflow.GetParams{ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if in := g.Instance; in.Seq != 2 || in.State != "shipped" || in.Status != workflow.Succeeded || string(in.Input) != "a" ||
		!in.Finished.Equal(t0.Add(time.Minute)) || len(in.History) != 3 || in.History[1].To != "shipped" || in.History[2].Seq != 3 || !in.History[0].At.Equal(t0) {
		t.Fatalf("a after reopen: %+v", in)
	}
	if _, err := j.Get(ctx, &workflow.GetParams{ID: "c"}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("c after reopen: %v; want ErrNotFound", err)
	}
	for _, c := range []struct {
		p    workflow.ListParams
		want []string
	}{
		{workflow.ListParams{}, []string{"a", "b"}},
		{workflow.ListParams{Due: t0}, []string{"b"}},
		{workflow.ListParams{Status: workflow.Succeeded}, []string{"a"}},
	} {
		r, err := j.List(ctx, &c.p)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, in := range r.Instances {
			ids = append(ids, in.ID)
		}
		if !slices.Equal(ids, c.want) {
			t.Errorf("List(%+v) after reopen = %v, want %v", c.p, ids, c.want)
		}
	}
	// The compare-and-set goes on from the persisted Seq.
	b, _ := j.Get(ctx, &workflow.GetParams{ID: "b"})
	b.Instance.History = nil
	if r, err := j.Append(ctx, &workflow.AppendParams{Instance: b.Instance, Entries: []workflow.Entry{{Kind: workflow.EntryEventReceived}}}); err != nil || r.Seq != 2 {
		t.Fatalf("Append after reopen: %+v, %v", r, err)
	}
	if r, _ := j.Get(ctx, &workflow.GetParams{ID: "b"}); r.Instance.History[1].Seq != 2 {
		t.Fatalf("entry numbering after reopen: %+v", r.Instance.History)
	}
}

// TestJournalAppendSynced: every Append is fsynced before it returns.
func TestJournalAppendSynced(t *testing.T) {
	t.Parallel()
	fs := &syncCountingFS{FS: vfs.Default}
	s, err := Open(t.TempDir(), &Config{SweepInterval: -1, fs: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	j := s.Journal()
	res, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "a", Fingerprint: "f"}})
	if err != nil {
		t.Fatal(err)
	}
	in := res.Instance
	for range 5 {
		before := fs.syncs.Load()
		r, err := j.Append(ctx, &workflow.AppendParams{Instance: in, Entries: []workflow.Entry{{Kind: workflow.EntryTransition}}})
		if err != nil {
			t.Fatal(err)
		}
		if fs.syncs.Load() == before {
			t.Fatal("Append returned without a sync")
		}
		in.Seq = r.Seq
	}
}

// orderWorld is the order saga of the workflow tests on a pebblestore
// journal, with actions that count their calls.
type orderWorld struct {
	mu    sync.Mutex
	calls []string
}

func (w *orderWorld) fn(kind, name string) workflow.StepFunc {
	return func(ctx context.Context, s *workflow.Step) ([]byte, error) {
		w.mu.Lock()
		w.calls = append(w.calls, kind+" "+name+" "+s.Key)
		w.mu.Unlock()
		return []byte(name + " done"), nil
	}
}

func (w *orderWorld) registry(t *testing.T) *workflow.Registry {
	act := func(n, comp string) *workflow.Action {
		return &workflow.Action{Name: n, Run: w.fn("run", n), Compensate: w.fn("comp", comp),
			Retry: &workflow.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Second}}
	}
	reg := workflow.NewRegistry()
	err := reg.Register(&workflow.Definition{
		Name: "order", Version: 1, Initial: "pending",
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
	})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// TestJournalEngineRestart runs the order saga across restarts of the
// process: each phase opens the store, builds a ledger and an engine over
// it, does some work and closes the store, leaving work queued for the
// next.
func TestJournalEngineRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	clk := idem.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	w := &orderWorld{}
	reg := w.registry(t)
	phase := func(f func(e *workflow.Engine)) {
		t.Helper()
		s, err := Open(dir, &Config{Clock: clk, SweepInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		e, err := workflow.NewEngine(s.Journal(), reg, &workflow.EngineConfig{Clock: clk, Lease: 30 * time.Second, Rand: func() float64 { return 0 }})
		if err != nil {
			t.Fatal(err)
		}
		f(e)
		if err := s.Close(); err != nil {
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
