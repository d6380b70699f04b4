package workflow_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
)

// countingJournal counts the journal's writes: each Create or Append is
// one commit.
type countingJournal struct {
	workflow.Journal
	creates, appends atomic.Int64
}

func (j *countingJournal) Create(ctx context.Context, p *workflow.CreateParams) (*workflow.CreateResult, error) {
	j.creates.Add(1)
	return j.Journal.Create(ctx, p)
}

func (j *countingJournal) Append(ctx context.Context, p *workflow.AppendParams) (*workflow.AppendResult, error) {
	j.appends.Add(1)
	return j.Journal.Append(ctx, p)
}

// chain is a workflow of n automatic steps, each action logging its key.
func chain(name string, n int, run workflow.StepFunc) *workflow.Definition {
	d := &workflow.Definition{Name: name, Version: 1, Initial: "s0"}
	for i := range n {
		d.States = append(d.States, workflow.State{Name: fmt.Sprint("s", i)})
		d.Transitions = append(d.Transitions, workflow.Transition{From: fmt.Sprint("s", i), To: fmt.Sprint("s", i+1),
			Action: &workflow.Action{Name: fmt.Sprint("a", i+1), Run: run, NoCompensation: true}})
	}
	d.States = append(d.States, workflow.State{Name: fmt.Sprint("s", n), Terminal: workflow.Success})
	return d
}

// TestRunCommitsPerInstance: a running engine takes what it starts, runs
// an automatic 3-step workflow to the end with one journal commit per
// step beside the start's, and Wait returns it finished.
func TestRunCommitsPerInstance(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var keys []string
	reg := workflow.NewRegistry()
	if err := reg.Register(chain("three", 3, func(ctx context.Context, s *workflow.Step) ([]byte, error) {
		mu.Lock()
		keys = append(keys, s.Key)
		mu.Unlock()
		if workflow.StepKey(ctx) != s.Key || s.Token != 1 || s.Attempt != 1 || string(s.Input) != "in" {
			return nil, fmt.Errorf("step %+v", s)
		}
		return []byte("ok"), nil
	})); err != nil {
		t.Fatal(err)
	}
	j := &countingJournal{Journal: workflow.NewMemJournal()}
	e, err := workflow.NewEngine(j, reg, &workflow.EngineConfig{ID: "e1", Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- e.Run(ctx) }()
	// A first instance, run before or after Run started, tells that it
	// has; the count starts after it.
	if _, err := e.Start(ctx, "three", 0, "warm-up", []byte("in"), nil); err != nil {
		t.Fatal(err)
	}
	if in, err := e.Wait(ctx, "warm-up"); err != nil || in.Status != workflow.Succeeded {
		t.Fatalf("warm-up: %+v, %v", in, err)
	}
	j.creates.Store(0)
	j.appends.Store(0)
	mu.Lock()
	keys = nil
	mu.Unlock()
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprint("w", i)
			if _, err := e.Start(ctx, "three", 0, id, []byte("in"), nil); err != nil {
				t.Error(err)
				return
			}
			in, err := e.Wait(ctx, id)
			if err != nil || in.Status != workflow.Succeeded || in.State != "s3" || in.Owner != "" {
				t.Errorf("%s: %+v, %v", id, in, err)
			}
		})
	}
	wg.Wait()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if c, a := j.creates.Load(), j.appends.Load(); c != n || a != 3*n {
		t.Fatalf("%d creates and %d appends for %d instances of 3 steps; want %d and %d", c, a, n, n, 3*n)
	}
	slices.Sort(keys)
	if len(keys) != 3*n || len(slices.Compact(keys)) != 3*n {
		t.Fatalf("%d action runs for %d instances of 3 steps", len(keys), n)
	}
	in, err := e.Get(context.Background(), "w7")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"started", "action_started", "action_completed", "transition", "action_started",
		"action_completed", "transition", "action_started", "action_completed", "transition", "finished"}
	if got := kinds(in); !slices.Equal(got, want) {
		t.Fatalf("history %q", got)
	}
	checkHistory(t, in)
}

// TestStepTakesWhatNobodyOwns: an engine that is not running takes nothing
// it starts; Step takes it (one write, token 1), and an engine does not
// take an instance another one owns until its lease has run out.
func TestStepTakesWhatNobodyOwns(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	in := w.start("o1")
	if in.Owner != "" || in.Token != 0 {
		t.Fatalf("started by an engine that does not run: owner %q token %d", in.Owner, in.Token)
	}
	w.signal("o1", "e1", "place")
	entered, release := make(chan string), make(chan struct{})
	w.mu.Lock()
	w.hook = func(name string) {
		entered <- name
		<-release
	}
	w.mu.Unlock()
	done := make(chan int)
	go func() {
		n, _ := w.eng.Step(context.Background())
		done <- n
	}()
	<-entered
	got := w.get("o1")
	if got.Owner != w.eng.ID() || got.Token != 1 || !got.LeaseUntil.Equal(w.clk.Now().Add(lease)) || !got.WakeAt.Equal(got.LeaseUntil) {
		t.Fatalf("while reserving: owner %q token %d lease %v wake %v", got.Owner, got.Token, got.LeaseUntil, got.WakeAt)
	}
	if n, err := w.newEngine().Step(context.Background()); n != 0 || err != nil {
		t.Fatalf("another engine did %d units (%v) of an owned instance", n, err)
	}
	w.mu.Lock()
	w.hook = nil
	w.mu.Unlock()
	close(release)
	if n := <-done; n != 2 {
		t.Fatalf("Step did %d units, want 2 (the event, the action)", n)
	}
	if got := w.get("o1"); got.Owner != "" || got.State != "reserved" || got.Token != 1 {
		t.Fatalf("after: owner %q state %s token %d", got.Owner, got.State, got.Token)
	}
}

// TestResume: an action that failed for good parked its instance; after
// the fix, Resume from an earlier state runs it again with fresh step
// keys, and the completed actions stay completed.
func TestResume(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.fail["ship_parcel"] = []error{workflow.Permanent(errors.New("no carrier"))}
	if _, err := w.eng.Start(ctx, "order_park", 0, "o1", nil, nil); err != nil {
		t.Fatal(err)
	}
	for i, ev := range []string{"place", "pay", "dispatch"} {
		w.signal("o1", fmt.Sprint("e", i), ev)
	}
	w.drain(w.eng)
	if err := w.eng.Resume(ctx, "o1", "nowhere", "fixed"); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("resume in an unknown state: %v", err)
	}
	if err := w.eng.Resume(ctx, "o1", "shipped", "fixed"); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("resume in a terminal state: %v", err)
	}
	if err := w.eng.Resume(ctx, "o1", "charged", "carrier fixed"); err != nil {
		t.Fatal(err)
	}
	w.signal("o1", "e3", "dispatch")
	w.drain(w.eng)
	in := w.get("o1")
	if in.Status != workflow.Succeeded || len(in.Done) != 3 {
		t.Fatalf("status %s done %d", in.Status, len(in.Done))
	}
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card",
		"run ship_parcel o1/3/ship_parcel", "run ship_parcel o1/4/ship_parcel"}
	if got := w.callLog(); !slices.Equal(got, want) {
		t.Fatalf("calls %q", got)
	}
	var resumed workflow.Entry
	for _, e := range in.History {
		if e.Kind == workflow.EntryResumed {
			resumed = e
		}
	}
	if resumed.From != "charged" || resumed.To != "charged" || resumed.Reason != "carrier fixed" || resumed.Status != workflow.Running {
		t.Fatalf("resumed entry %+v", resumed)
	}
	if err := w.eng.Resume(ctx, "o1", "charged", "again"); !errors.Is(err, workflow.ErrNotResumable) {
		t.Fatalf("resume a succeeded instance: %v", err)
	}

	// An instance that unwound (compensations ran) cannot be resumed.
	w.fail["charge_card"] = []error{workflow.Permanent(errors.New("declined"))}
	w.start("o2")
	w.signal("o2", "a", "place")
	w.signal("o2", "b", "pay")
	w.drain(w.eng)
	if in := w.get("o2"); in.Status != workflow.Failed || in.Undone != 1 {
		t.Fatalf("o2: status %s undone %d", in.Status, in.Undone)
	}
	if err := w.eng.Resume(ctx, "o2", "reserved", "x"); !errors.Is(err, workflow.ErrNotResumable) {
		t.Fatalf("resume an unwound instance: %v", err)
	}
}

// TestInTxNeedsTxJournal: a definition with an action in the journal's
// transaction does not start on a journal that runs none.
func TestInTxNeedsTxJournal(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	d := chain("tx", 1, func(context.Context, *workflow.Step) ([]byte, error) { return nil, nil })
	d.Transitions[0].Action.InTx = true
	if err := w.reg.Register(d); err != nil {
		t.Fatal(err)
	}
	if _, err := w.eng.Start(context.Background(), "tx", 0, "t1", nil, nil); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("Start: %v", err)
	}
	if _, err := w.eng.Get(context.Background(), "t1"); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("an instance was stored: %v", err)
	}
}

// TestWaitTimesOutWithContext: Wait on an instance that waits for an event
// returns when its context ends, and at once for an unknown id.
func TestWaitTimesOutWithContext(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.start("o1")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := w.eng.Wait(ctx, "o1")
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait: %v", err)
	}
	if _, err := w.eng.Wait(context.Background(), "nope"); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("Wait unknown: %v", err)
	}
}

// TestNextChoosesEvent: an action's Next queues the event its result
// chooses, processed in the state the action led to; RetryAfter makes the
// next attempt wait longer than the policy's backoff.
func TestNextChoosesEvent(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	calls := 0
	check := &workflow.Action{Name: "check", NoCompensation: true,
		Retry: &workflow.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Second},
		Run: func(ctx context.Context, s *workflow.Step) ([]byte, error) {
			calls++
			if calls == 1 {
				return nil, workflow.RetryAfter(errors.New("busy"), time.Minute)
			}
			return []byte(`declined`), nil
		},
		Next: func(result []byte) string { return string(result) },
	}
	err := w.reg.Register(&workflow.Definition{Name: "credit", Version: 1, Initial: "new",
		States: []workflow.State{{Name: "new"}, {Name: "checked"}, {Name: "ok", Terminal: workflow.Success}, {Name: "no", Terminal: workflow.Failure}},
		Transitions: []workflow.Transition{
			{From: "new", To: "checked", Action: check},
			{From: "checked", Event: "approved", To: "ok"},
			{From: "checked", Event: "declined", To: "no"},
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.eng.Start(ctx, "credit", 0, "c1", nil, nil); err != nil {
		t.Fatal(err)
	}
	w.drain(w.eng)
	if in := w.get("c1"); !in.NotBefore.Equal(w.clk.Now().Add(time.Minute)) {
		t.Fatalf("after a Retry-After of 1 min: next attempt at %v, now %v", in.NotBefore, w.clk.Now())
	}
	w.clk.Advance(time.Minute)
	w.drain(w.eng)
	in := w.get("c1")
	if in.Status != workflow.Failed || in.State != "no" || calls != 2 {
		t.Fatalf("status %s state %s calls %d", in.Status, in.State, calls)
	}
	var got []string
	for _, e := range in.History {
		if e.Kind == workflow.EntryEventReceived {
			got = append(got, e.Event+" "+e.EventID)
		}
	}
	if !slices.Equal(got, []string{"declined c1/1/check/next"}) {
		t.Fatalf("events %q", got)
	}
}

// TestStepResults: an action reads the results of the actions completed
// before it, by name.
func TestStepResults(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	var seen []string
	d := chain("results", 3, func(ctx context.Context, s *workflow.Step) ([]byte, error) {
		seen = append(seen, fmt.Sprintf("%s:%q", s.Key, s.Results["a1"]))
		return []byte("r" + s.Key[len(s.Key)-1:]), nil
	})
	if err := w.reg.Register(d); err != nil {
		t.Fatal(err)
	}
	if _, err := w.eng.Start(context.Background(), "results", 0, "r", nil, nil); err != nil {
		t.Fatal(err)
	}
	w.drain(w.eng)
	want := []string{`r/1/a1:""`, `r/2/a2:"r1"`, `r/3/a3:"r1"`}
	if !slices.Equal(seen, want) {
		t.Fatalf("seen %q", seen)
	}
	if in := w.get("r"); string(in.Results["a3"]) != "r3" || len(in.Results) != 3 {
		t.Fatalf("results %q", in.Results)
	}
}

// TestUnknownTypeLeftToOthers: an engine whose registry lacks an
// instance's type does not take it; one that has it runs it.
func TestUnknownTypeLeftToOthers(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.start("o1")
	w.signal("o1", "e1", "place")
	other, err := workflow.NewEngine(w.journal, workflow.NewRegistry(), &workflow.EngineConfig{Clock: w.clk, Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := other.Step(ctx); n != 0 || err != nil {
		t.Fatalf("an engine without the type did %d units: %v", n, err)
	}
	if in := w.get("o1"); in.Owner != "" || in.Token != 0 {
		t.Fatalf("taken by an engine without the type: owner %q token %d", in.Owner, in.Token)
	}
	if n := w.drain(w.eng); n != 2 {
		t.Fatalf("the engine with the type did %d units, want 2", n)
	}
}
