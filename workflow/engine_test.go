package workflow_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/internal/restarttest"
	"github.com/idemkit/idem/internal/wait"
	"github.com/idemkit/idem/workflow"
)

const lease = 30 * time.Second

// world is an engine over a MemJournal and a manual clock, with
// order actions that log what they are called with.
type world struct {
	t       *testing.T
	clk     *idem.ManualClock
	journal *workflow.MemJournal
	reg     *workflow.Registry
	eng     *workflow.Engine

	mu      sync.Mutex
	calls   []string           // "run reserve_stock o1/1/reserve_stock" ...
	fail    map[string][]error // action or compensation name -> errors to return, in order
	httpc   *http.Client       // used by charge_card when set
	ctxKeys map[string]string  // step.Key -> StepKey(ctx)
	hook    func(name string)  // when set, called by each action before it returns
}

func (w *world) fn(kind, name string) workflow.StepFunc {
	return func(ctx context.Context, s *workflow.Step) ([]byte, error) {
		w.mu.Lock()
		w.calls = append(w.calls, kind+" "+name+" "+s.Key)
		w.ctxKeys[s.Key] = workflow.StepKey(ctx)
		var err error
		if errs := w.fail[name]; len(errs) > 0 {
			err, w.fail[name] = errs[0], errs[1:]
		}
		c, hook := w.httpc, w.hook
		w.mu.Unlock()
		if hook != nil {
			hook(name)
		}
		if err != nil {
			return nil, err
		}
		if c != nil && name == "charge_card" {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://payments.test/charge", strings.NewReader("1"))
			resp, err := c.Do(req)
			if err != nil {
				return nil, err
			}
			resp.Body.Close()
		}
		return []byte(name + " done"), nil
	}
}

func (w *world) orderDef(name string, onExhausted workflow.Exhausted) *workflow.Definition {
	return restarttest.OrderSaga(name, func(n, comp string) *workflow.Action {
		a := &workflow.Action{Name: n, Run: w.fn("run", n), Compensate: w.fn("comp", comp),
			Retry: &workflow.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Second}}
		if n == "ship_parcel" {
			a.OnExhausted = onExhausted
		}
		return a
	})
}

func newWorld(t *testing.T) *world {
	t.Helper()
	clk := idem.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	w := &world{t: t, clk: clk, journal: workflow.NewMemJournal(), reg: workflow.NewRegistry(),
		fail: map[string][]error{}, ctxKeys: map[string]string{}}
	for _, d := range []*workflow.Definition{w.orderDef("order", workflow.Unwind), w.orderDef("order_park", workflow.Park)} {
		if err := w.reg.Register(d); err != nil {
			t.Fatal(err)
		}
	}
	w.eng = w.newEngine()
	return w
}

// newEngine is another worker (or a restarted process) over the same
// journal.
func (w *world) newEngine() *workflow.Engine {
	e, err := workflow.NewEngine(w.journal, w.reg, &workflow.EngineConfig{Clock: w.clk, Lease: lease, Rand: func() float64 { return 0 }})
	if err != nil {
		w.t.Fatal(err)
	}
	return e
}

func (w *world) drain(e *workflow.Engine) int {
	w.t.Helper()
	total := 0
	for range 100 {
		n, err := e.Step(context.Background())
		if err != nil {
			w.t.Fatalf("Step: %v", err)
		}
		if n == 0 {
			return total
		}
		total += n
	}
	w.t.Fatal("Step never ran out of work")
	return total
}

func (w *world) start(id string) *workflow.Instance {
	w.t.Helper()
	in, err := w.eng.Start(context.Background(), "order", 0, id, []byte("2 books"), nil)
	if err != nil {
		w.t.Fatal(err)
	}
	return in
}

func (w *world) signal(id, eventID, event string) {
	w.t.Helper()
	dup, err := w.eng.Signal(context.Background(), id, eventID, event, nil)
	if err != nil || dup {
		w.t.Fatalf("Signal(%s, %s) = %v, %v", eventID, event, dup, err)
	}
}

func (w *world) get(id string) *workflow.Instance {
	w.t.Helper()
	in, err := w.eng.Get(context.Background(), id)
	if err != nil {
		w.t.Fatal(err)
	}
	return in
}

func (w *world) callLog() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.calls)
}

func kinds(in *workflow.Instance) []string {
	var out []string
	for _, e := range in.History {
		out = append(out, string(e.Kind))
	}
	return out
}

func checkHistory(t *testing.T, in *workflow.Instance) {
	t.Helper()
	for i, e := range in.History {
		if e.Seq != int64(i+1) {
			t.Fatalf("history[%d].Seq = %d", i, e.Seq)
		}
		if i > 0 && e.At.Before(in.History[i-1].At) {
			t.Fatalf("history[%d] goes back in time", i)
		}
	}
}

func TestHappyPath(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.drain(w.eng)
	before := w.get("o1").History
	w.signal("o1", "e2", "pay")
	w.signal("o1", "e3", "dispatch")
	w.drain(w.eng)
	in := w.get("o1")
	if in.Status != workflow.Succeeded || in.State != "shipped" || in.Finished.IsZero() {
		t.Fatalf("status %s state %s", in.Status, in.State)
	}
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card", "run ship_parcel o1/3/ship_parcel"}
	if got := w.callLog(); !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	for k, ck := range w.ctxKeys {
		if k != ck {
			t.Fatalf("StepKey(ctx) = %q in step %q", ck, k)
		}
	}
	wantKinds := []string{"started", "event_received", "action_started", "action_completed", "transition",
		"event_received", "event_received", "action_started", "action_completed", "transition",
		"action_started", "action_completed", "transition", "finished"}
	if got := kinds(in); !slices.Equal(got, wantKinds) {
		t.Fatalf("history %q\nwant %q", got, wantKinds)
	}
	checkHistory(t, in)
	if !slices.Equal(in.History[:len(before)], before) {
		t.Fatal("history was rewritten, not appended to")
	}
	if tr := in.History[4]; tr.From != "pending" || tr.To != "reserved" || tr.EventID != "e1" {
		t.Fatalf("transition entry %+v", tr)
	}
	if c := in.History[3]; c.StepKey != "o1/1/reserve_stock" || c.Token == 0 || c.Attempt != 1 || c.Replayed {
		t.Fatalf("completion entry %+v", c)
	}
	if n := w.drain(w.eng); n != 0 {
		t.Fatalf("a finished instance did %d more units", n)
	}
}

func TestStartIdempotent(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	a := w.start("o1")
	b := w.start("o1")
	if a.Seq != b.Seq || a.Run != 1 || len(b.History) != 1 {
		t.Fatalf("second start changed the instance: seq %d->%d, history %d", a.Seq, b.Seq, len(b.History))
	}
	if _, err := w.eng.Start(ctx, "order", 0, "o1", []byte("3 books"), nil); !errors.Is(err, idem.ErrFingerprintMismatch) {
		t.Fatalf("different input: %v", err)
	}
	if _, err := w.eng.Start(ctx, "order_park", 0, "o1", []byte("2 books"), nil); !errors.Is(err, idem.ErrFingerprintMismatch) {
		t.Fatalf("different type: %v", err)
	}
	if _, err := w.eng.Start(ctx, "nope", 0, "o2", nil, nil); !errors.Is(err, workflow.ErrNotRegistered) {
		t.Fatalf("unknown type: %v", err)
	}
	// A running instance is never restarted, whatever the policy.
	if in, err := w.eng.Start(ctx, "order", 0, "o1", []byte("2 books"), &workflow.StartOptions{ReusePolicy: workflow.AllowAlways}); err != nil || in.Run != 1 {
		t.Fatalf("AllowAlways on a running id: run %v, %v", in, err)
	}

	// Finish o1 as cancelled after one action.
	w.signal("o1", "e1", "place")
	w.drain(w.eng)
	if err := w.eng.Cancel(ctx, "o1", "test"); err != nil {
		t.Fatal(err)
	}
	w.drain(w.eng)
	if in := w.get("o1"); in.Status != workflow.Cancelled {
		t.Fatalf("status %s", in.Status)
	}
	if in := w.start("o1"); in.Run != 1 || in.Status != workflow.Cancelled {
		t.Fatalf("RejectDuplicate restarted: run %d status %s", in.Run, in.Status)
	}
	in, err := w.eng.Start(ctx, "order", 0, "o1", []byte("5 books"), &workflow.StartOptions{ReusePolicy: workflow.AllowIfFailed})
	if err != nil || in.Run != 2 || in.Status != workflow.Running || in.State != "pending" || in.Steps != 1 {
		t.Fatalf("AllowIfFailed on a cancelled id: %+v, %v", in, err)
	}
	w.signal("o1", "e1-run2", "place")
	w.drain(w.eng)
	// Step numbers go on across runs: no step key repeats.
	want := []string{"run reserve_stock o1/1/reserve_stock", "comp release o1/1/compensate/reserve_stock", "run reserve_stock o1/2/reserve_stock"}
	if got := w.callLog(); !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	w.signal("o1", "e2-run2", "pay")
	w.signal("o1", "e3-run2", "dispatch")
	w.drain(w.eng)
	if in := w.get("o1"); in.Status != workflow.Succeeded {
		t.Fatalf("status %s", in.Status)
	}
	if in, err := w.eng.Start(ctx, "order", 0, "o1", []byte("5 books"), &workflow.StartOptions{ReusePolicy: workflow.AllowIfFailed}); err != nil || in.Run != 2 {
		t.Fatalf("AllowIfFailed on a succeeded id: %v, %v", in, err)
	}
	if in, err := w.eng.Start(ctx, "order", 0, "o1", []byte("x"), &workflow.StartOptions{ReusePolicy: workflow.AllowAlways}); err != nil || in.Run != 3 {
		t.Fatalf("AllowAlways on a succeeded id: %v, %v", in, err)
	}
}

func TestDuplicateAndRejectedEvents(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.start("o1")
	w.signal("o1", "e1", "place")
	if dup, err := w.eng.Signal(ctx, "o1", "e1", "place", nil); err != nil || !dup {
		t.Fatalf("duplicate before processing: %v, %v", dup, err)
	}
	w.signal("o1", "e9", "dispatch") // not applicable in reserved
	w.drain(w.eng)
	if dup, err := w.eng.Signal(ctx, "o1", "e1", "place", nil); err != nil || !dup {
		t.Fatalf("duplicate after processing: %v, %v", dup, err)
	}
	w.drain(w.eng)
	if got := w.callLog(); len(got) != 1 {
		t.Fatalf("calls %q", got)
	}
	in := w.get("o1")
	var rejected []workflow.Entry
	received := 0
	for _, e := range in.History {
		switch e.Kind {
		case workflow.EntryEventRejected:
			rejected = append(rejected, e)
		case workflow.EntryEventReceived:
			received++
		}
	}
	if received != 2 || len(rejected) != 1 || rejected[0].EventID != "e9" || rejected[0].Reason != `no transition from state "reserved" on event "dispatch"` {
		t.Fatalf("received %d, rejected %+v", received, rejected)
	}
	if in.State != "reserved" || in.Status != workflow.Running {
		t.Fatalf("state %s status %s", in.State, in.Status)
	}
	if _, err := w.eng.Signal(ctx, "nope", "e1", "place", nil); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("signal to unknown instance: %v", err)
	}
	// An event for a finished instance is recorded as rejected too.
	w.signal("o1", "e2", "cancel")
	w.drain(w.eng)
	if k := kinds(w.get("o1")); !slices.Equal(k[len(k)-2:], []string{"transition", "finished"}) {
		t.Fatalf("history ends %q", k)
	}
	w.signal("o1", "e3", "pay")
	in = w.get("o1")
	last := in.History[len(in.History)-1]
	if in.Status != workflow.Failed || last.Kind != workflow.EntryEventRejected || last.Reason != "instance is failed" {
		t.Fatalf("status %s, last entry %+v", in.Status, last)
	}
}

func TestRetryThenSuccess(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.fail["charge_card"] = []error{errors.New("503"), errors.New("timeout")}
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.signal("o1", "e2", "pay")
	w.drain(w.eng)
	in := w.get("o1")
	if in.Attempt != 1 || !in.NotBefore.Equal(w.clk.Now().Add(time.Second)) || in.State != "reserved" {
		t.Fatalf("after a failure: attempt %d, not before %s, state %s", in.Attempt, in.NotBefore, in.State)
	}
	w.clk.Advance(999 * time.Millisecond)
	if n := w.drain(w.eng); n != 0 {
		t.Fatalf("retried %d before the backoff ended", n)
	}
	w.clk.Advance(time.Millisecond)
	w.drain(w.eng)
	w.clk.Advance(2 * time.Second) // the second backoff doubles
	w.drain(w.eng)
	in = w.get("o1")
	if in.State != "charged" || in.Status != workflow.Running {
		t.Fatalf("state %s status %s", in.State, in.Status)
	}
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card", "run charge_card o1/2/charge_card", "run charge_card o1/2/charge_card"}
	if got := w.callLog(); !slices.Equal(got, want) {
		t.Fatalf("calls %q", got)
	}
	var attempts []int
	for _, e := range in.History {
		if e.Action == "charge_card" && (e.Kind == workflow.EntryActionFailed || e.Kind == workflow.EntryActionCompleted) {
			attempts = append(attempts, e.Attempt)
		}
	}
	if !slices.Equal(attempts, []int{1, 2, 3}) {
		t.Fatalf("attempts in history %v", attempts)
	}
}

func TestExhaustedUnwinds(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.fail["ship_parcel"] = []error{workflow.Permanent(errors.New("address unknown"))}
	w.start("o1")
	for i, ev := range []string{"place", "pay", "dispatch"} {
		w.signal("o1", fmt.Sprint("e", i), ev)
	}
	w.drain(w.eng)
	in := w.get("o1")
	if in.Status != workflow.Failed || in.State != "charged" || in.Error != "address unknown" {
		t.Fatalf("status %s state %s error %q", in.Status, in.State, in.Error)
	}
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card", "run ship_parcel o1/3/ship_parcel",
		"comp refund o1/2/compensate/charge_card", "comp release o1/1/compensate/reserve_stock"}
	if got := w.callLog(); !slices.Equal(got, want) {
		t.Fatalf("calls %q\nwant %q", got, want)
	}
	w.drain(w.eng)
	if got := w.callLog(); len(got) != len(want) {
		t.Fatalf("more calls after the end: %q", got)
	}
	checkHistory(t, in)
}

func TestRetriesExhaustedUnwind(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.fail["charge_card"] = []error{errors.New("1"), errors.New("2"), errors.New("3")}
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.signal("o1", "e2", "pay")
	w.drain(w.eng)
	w.clk.Advance(time.Second)
	w.drain(w.eng)
	w.clk.Advance(2 * time.Second)
	w.drain(w.eng)
	in := w.get("o1")
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card", "run charge_card o1/2/charge_card",
		"run charge_card o1/2/charge_card", "comp release o1/1/compensate/reserve_stock"}
	if got := w.callLog(); !slices.Equal(got, want) || in.Status != workflow.Failed {
		t.Fatalf("status %s calls %q", in.Status, got)
	}
}

func TestCancelMidway(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.signal("o1", "e2", "pay")
	w.drain(w.eng)
	w.signal("o1", "e3", "dispatch") // queued, never processed
	if err := w.eng.Cancel(ctx, "o1", "customer asked"); err != nil {
		t.Fatal(err)
	}
	if err := w.eng.Cancel(ctx, "o1", "twice"); err != nil {
		t.Fatal(err)
	}
	w.signal("o1", "e4", "dispatch")
	w.drain(w.eng)
	in := w.get("o1")
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card",
		"comp refund o1/2/compensate/charge_card", "comp release o1/1/compensate/reserve_stock"}
	if got := w.callLog(); !slices.Equal(got, want) {
		t.Fatalf("calls %q", got)
	}
	if in.Status != workflow.Cancelled || in.State != "charged" {
		t.Fatalf("status %s state %s", in.Status, in.State)
	}
	n := 0
	for _, e := range in.History {
		if e.Kind == workflow.EntryCancelRequested {
			n++
			if e.Reason != "customer asked" {
				t.Fatalf("reason %q", e.Reason)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d cancel entries", n)
	}
	var rej []string
	for _, e := range in.History {
		if e.Kind == workflow.EntryEventRejected {
			rej = append(rej, e.EventID+": "+e.Reason)
		}
	}
	if !slices.Equal(rej, []string{"e4: instance is being cancelled", "e3: instance is unwinding"}) {
		t.Fatalf("the queued event was not recorded as rejected: %q", rej)
	}
	if err := w.eng.Cancel(ctx, "o1", "again"); err != nil {
		t.Fatalf("cancel a cancelled instance: %v", err)
	}
	w.start("o2")
	w.eng.Signal(ctx, "o2", "x", "place", nil)
	w.drain(w.eng)
	w.eng.Signal(ctx, "o2", "y", "cancel", nil)
	w.drain(w.eng)
	if err := w.eng.Cancel(ctx, "o2", "late"); !errors.Is(err, workflow.ErrFinished) {
		t.Fatalf("cancel a finished instance: %v", err)
	}
}

func TestCancelPendingAction(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.fail["charge_card"] = []error{errors.New("503")}
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.signal("o1", "e2", "pay")
	w.drain(w.eng) // charge failed once, waits for its backoff
	if err := w.eng.Cancel(context.Background(), "o1", "stop"); err != nil {
		t.Fatal(err)
	}
	w.drain(w.eng) // no wait: a cancel does not wait for a backoff
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card", "comp release o1/1/compensate/reserve_stock"}
	if got := w.callLog(); !slices.Equal(got, want) {
		t.Fatalf("calls %q", got)
	}
	if in := w.get("o1"); in.Status != workflow.Cancelled || in.Pending != nil {
		t.Fatalf("status %s pending %+v", in.Status, in.Pending)
	}
}

func TestParkAndRetry(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.fail["ship_parcel"] = []error{workflow.Permanent(errors.New("carrier down"))}
	if _, err := w.eng.Start(ctx, "order_park", 0, "o1", nil, nil); err != nil {
		t.Fatal(err)
	}
	for i, ev := range []string{"place", "pay", "dispatch"} {
		w.signal("o1", fmt.Sprint("e", i), ev)
	}
	w.drain(w.eng)
	in := w.get("o1")
	if in.Status != workflow.Parked || in.Error != "carrier down" {
		t.Fatalf("status %s error %q", in.Status, in.Error)
	}
	if res, err := w.eng.List(ctx, &workflow.ListParams{Status: workflow.Parked}); err != nil || len(res.Instances) != 1 {
		t.Fatalf("list parked: %v, %v", res, err)
	}
	if n := w.drain(w.eng); n != 0 {
		t.Fatalf("a parked instance did %d units", n)
	}
	if err := w.eng.Retry(ctx, "o1"); err != nil {
		t.Fatal(err)
	}
	w.drain(w.eng)
	in = w.get("o1")
	if in.Status != workflow.Succeeded {
		t.Fatalf("status %s", in.Status)
	}
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card", "run ship_parcel o1/3/ship_parcel", "run ship_parcel o1/3/ship_parcel"}
	if got := w.callLog(); !slices.Equal(got, want) {
		t.Fatalf("calls %q", got)
	}
	if err := w.eng.Retry(ctx, "o1"); !errors.Is(err, workflow.ErrNotParked) {
		t.Fatalf("retry a finished instance: %v", err)
	}
}

// crashAt makes e crash once at point for step key key.
func crashAt(e *workflow.Engine, point, key string) {
	var once sync.Once
	workflow.SetCrash(e, func(p, k string) error {
		var err error
		if p == point && k == key {
			once.Do(func() { err = errors.New("crash") })
		}
		return err
	})
}

// TestCrashBeforeCommitReruns: an action that ran, and whose engine died
// before the journal recorded it, runs again after the lease with the
// same step key and a higher token, so a downstream that honours the key
// replays, and one that fences refuses the dead engine.
func TestCrashBeforeCommitReruns(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.signal("o1", "e2", "pay")
	var tokens []int64
	w.mu.Lock()
	w.hook = func(name string) {
		if name == "charge_card" {
			in, _ := w.journal.Get(ctx, &workflow.GetParams{ID: "o1"})
			tokens = append(tokens, in.Instance.Token)
		}
	}
	w.mu.Unlock()
	crashAt(w.eng, "before-commit", "o1/2/charge_card")
	for {
		if _, err := w.eng.Step(ctx); err != nil {
			break
		}
	}
	if in := w.get("o1"); in.State != "reserved" || in.Pending == nil || in.Owner != w.eng.ID() {
		t.Fatalf("after the crash: state %s pending %+v owner %q", in.State, in.Pending, in.Owner)
	}
	e2 := w.newEngine()
	if n := w.drain(e2); n != 0 {
		t.Fatalf("took over a live lease: %d units", n)
	}
	w.clk.Advance(lease)
	w.drain(e2)
	in := w.get("o1")
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card", "run charge_card o1/2/charge_card"}
	if got := w.callLog(); !slices.Equal(got, want) || in.State != "charged" {
		t.Fatalf("state %s calls %q", in.State, got)
	}
	if len(tokens) != 2 || tokens[1] <= tokens[0] {
		t.Fatalf("tokens of the two runs %v: the second must be higher", tokens)
	}
	var c workflow.Entry
	for _, e := range in.History {
		if e.Kind == workflow.EntryActionCompleted && e.Action == "charge_card" {
			c = e
		}
	}
	if c.StepKey != "o1/2/charge_card" || c.Token != tokens[1] || in.Owner != "" {
		t.Fatalf("completion %+v owner %q", c, in.Owner)
	}
}

func TestCrashMidUnwindResumes(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.signal("o1", "e2", "pay")
	w.drain(w.eng)
	if err := w.eng.Cancel(ctx, "o1", "stop"); err != nil {
		t.Fatal(err)
	}
	crashAt(w.eng, "before-commit", "o1/2/compensate/charge_card")
	for {
		if _, err := w.eng.Step(ctx); err != nil {
			break
		}
	}
	if in := w.get("o1"); in.Status != workflow.Unwinding || in.Undone != 0 {
		t.Fatalf("after the crash: status %s undone %d", in.Status, in.Undone)
	}
	w.clk.Advance(lease)
	w.drain(w.newEngine())
	in := w.get("o1")
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card",
		"comp refund o1/2/compensate/charge_card", "comp refund o1/2/compensate/charge_card", "comp release o1/1/compensate/reserve_stock"}
	if got := w.callLog(); !slices.Equal(got, want) || in.Status != workflow.Cancelled {
		t.Fatalf("status %s calls %q", in.Status, got)
	}
	var comps []string
	for _, e := range in.History {
		if e.Kind == workflow.EntryCompensated {
			comps = append(comps, e.StepKey)
		}
	}
	if !slices.Equal(comps, []string{"o1/2/compensate/charge_card", "o1/1/compensate/reserve_stock"}) {
		t.Fatalf("compensations in history %q", comps)
	}
}

func TestTimeoutFires(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.drain(w.eng)
	in := w.get("o1")
	if !in.TimeoutAt.Equal(w.clk.Now().Add(15*time.Minute)) || !in.WakeAt.Equal(in.TimeoutAt) {
		t.Fatalf("timeout at %s wake at %s", in.TimeoutAt, in.WakeAt)
	}
	w.clk.Advance(15*time.Minute - time.Second)
	if n := w.drain(w.eng); n != 0 {
		t.Fatalf("%d units before the timeout", n)
	}
	w.clk.Advance(time.Second)
	w.drain(w.eng)
	in = w.get("o1")
	if in.State != "cancelled" || in.Status != workflow.Failed {
		t.Fatalf("state %s status %s", in.State, in.Status)
	}
	var fired []workflow.Entry
	for _, e := range in.History {
		if e.Kind == workflow.EntryTimeoutFired {
			fired = append(fired, e)
		}
	}
	if len(fired) != 1 || fired[0].EventID != "o1/timeout/2" || fired[0].Event != "payment_timeout" {
		t.Fatalf("timeouts fired %+v", fired)
	}
	if dup, err := w.eng.Signal(ctx, "o1", "o1/timeout/2", "payment_timeout", nil); err != nil || !dup {
		t.Fatalf("the timeout's event id is not deduplicated: %v, %v", dup, err)
	}
}

func TestRunFiresTimeoutOnClock(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.start("o1")
	w.signal("o1", "e1", "place")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.eng.Run(ctx) }()
	wait.For(t, "the place event processed", func() bool { return w.get("o1").State == "reserved" })
	for w.get("o1").State != "cancelled" {
		w.clk.Advance(time.Minute)
		wait.For(t, "a timer on the clock", func() bool { return w.clk.Waiters() > 0 })
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
}

func TestTransportCarriesStepKey(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	var mu sync.Mutex
	var keys []string
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		mu.Lock()
		keys = append(keys, r.Header.Get(idemhttp.HeaderKey))
		mu.Unlock()
	}))
	defer srv.Close()
	w.httpc = &http.Client{Transport: idemhttp.Transport(&idemhttp.TransportConfig{Base: rewrite{srv.URL, srv.Client().Transport}})}
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.signal("o1", "e2", "pay")
	w.drain(w.eng)
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(keys, []string{"o1/2/charge_card"}) {
		t.Fatalf("Idempotency-Keys received %q", keys)
	}
}

// rewrite sends every request to one test server.
type rewrite struct {
	url  string
	base http.RoundTripper
}

func (r rewrite) RoundTrip(req *http.Request) (*http.Response, error) {
	out := req.Clone(req.Context())
	out.URL.Scheme, out.URL.Host = "http", strings.TrimPrefix(r.url, "http://")
	return r.base.RoundTrip(out)
}

func TestListAndPurge(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	for i := range 5 {
		w.start(fmt.Sprint("o", i))
	}
	w.signal("o1", "a", "place")
	w.signal("o2", "a", "place")
	w.signal("o2", "b", "cancel")
	w.drain(w.eng)
	res, err := w.eng.List(ctx, &workflow.ListParams{Type: "order", State: "pending"})
	if err != nil || len(res.Instances) != 3 {
		t.Fatalf("pending: %v, %v", res, err)
	}
	res, _ = w.eng.List(ctx, &workflow.ListParams{Status: workflow.Failed})
	if len(res.Instances) != 1 || res.Instances[0].ID != "o2" || res.Instances[0].History != nil {
		t.Fatalf("failed: %+v", res.Instances)
	}
	res, _ = w.eng.List(ctx, &workflow.ListParams{Limit: 2})
	if len(res.Instances) != 2 || res.Next != "o1" {
		t.Fatalf("page: %d next %q", len(res.Instances), res.Next)
	}
	w.clk.Advance(time.Hour)
	if n, err := w.eng.Purge(ctx, 2*time.Hour); err != nil || n != 0 {
		t.Fatalf("purge within retention: %d, %v", n, err)
	}
	w.clk.Advance(2 * time.Hour)
	if n, err := w.eng.Purge(ctx, 2*time.Hour); err != nil || n != 1 {
		t.Fatalf("purge: %d, %v", n, err)
	}
	if _, err := w.eng.Get(ctx, "o2"); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("purged instance: %v", err)
	}
	if _, err := w.eng.Get(ctx, "o1"); err != nil {
		t.Fatalf("running instance purged: %v", err)
	}
}

func TestWorkersShareInstances(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	const n = 20
	for i := range n {
		id := fmt.Sprint("o", i)
		w.start(id)
		for j, ev := range []string{"place", "pay", "dispatch"} {
			w.signal(id, fmt.Sprint(j), ev)
		}
	}
	engines := []*workflow.Engine{w.eng, w.newEngine(), w.newEngine()}
	var wg sync.WaitGroup
	for _, e := range engines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if _, err := e.Step(ctx); err != nil {
					t.Error(err)
					return
				}
				res, _ := e.List(ctx, &workflow.ListParams{Status: workflow.Succeeded})
				if len(res.Instances) == n {
					return
				}
			}
		}()
	}
	wg.Wait()
	res, _ := w.eng.List(ctx, &workflow.ListParams{Status: workflow.Succeeded})
	if len(res.Instances) != n {
		t.Fatalf("%d of %d succeeded", len(res.Instances), n)
	}
	calls := w.callLog()
	if len(calls) != 3*n {
		t.Fatalf("%d action runs for %d instances of 3 steps", len(calls), n)
	}
	slices.Sort(calls)
	if len(slices.Compact(calls)) != 3*n {
		t.Fatal("an action ran twice")
	}
}

func TestNewEngineAndStepKey(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	if _, err := workflow.NewEngine(nil, w.reg, nil); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("nil journal: %v", err)
	}
	if _, err := workflow.NewEngine(w.journal, w.reg, &workflow.EngineConfig{Lease: -1}); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("negative lease: %v", err)
	}
	if k := workflow.StepKey(idem.WithKey(context.Background(), "k")); k != "" {
		t.Fatalf("StepKey of a context that is not an action's = %q", k)
	}
	if _, err := w.eng.Start(context.Background(), "order", 0, "", nil, nil); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("empty id: %v", err)
	}
	if _, err := w.eng.Signal(context.Background(), "o1", "", "place", nil); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("empty event id: %v", err)
	}
}

func TestEntryActions(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	err := w.reg.Register(&workflow.Definition{
		Name: "provision", Version: 1, Initial: "new",
		States: []workflow.State{
			{Name: "new", OnEnter: &workflow.Action{Name: "allocate", Run: w.fn("run", "allocate"), Compensate: w.fn("comp", "free")}},
			{Name: "ready", OnEnter: &workflow.Action{Name: "configure", Run: w.fn("run", "configure"), NoCompensation: true}},
			{Name: "done", Terminal: workflow.Success, OnEnter: &workflow.Action{Name: "notify", Run: w.fn("run", "notify"), NoCompensation: true}},
		},
		Transitions: []workflow.Transition{
			{From: "new", Event: "go", To: "ready"},
			{From: "ready", Event: "finish", To: "done"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.eng.Start(ctx, "provision", 0, "p1", []byte("vm"), nil); err != nil {
		t.Fatal(err)
	}
	w.drain(w.eng)
	w.signal("p1", "a", "go")
	w.drain(w.eng)
	if in := w.get("p1"); in.State != "ready" || in.Status != workflow.Running || in.Pending != nil {
		t.Fatalf("state %s status %s pending %+v", in.State, in.Status, in.Pending)
	}
	w.signal("p1", "b", "finish")
	w.drain(w.eng)
	in := w.get("p1")
	want := []string{"run allocate p1/1/allocate", "run configure p1/2/configure", "run notify p1/3/notify"}
	if got := w.callLog(); !slices.Equal(got, want) || in.Status != workflow.Succeeded || in.State != "done" {
		t.Fatalf("status %s state %s calls %q", in.Status, in.State, got)
	}
	if last := in.History[len(in.History)-1]; last.Kind != workflow.EntryFinished {
		t.Fatalf("last entry %+v", last)
	}

	// Cancelled after the entry actions: only allocate has an undo.
	if _, err := w.eng.Start(ctx, "provision", 0, "p2", nil, nil); err != nil {
		t.Fatal(err)
	}
	w.signal("p2", "a", "go")
	w.drain(w.eng)
	if err := w.eng.Cancel(ctx, "p2", "no longer needed"); err != nil {
		t.Fatal(err)
	}
	w.drain(w.eng)
	got := w.callLog()[len(want):]
	if !slices.Equal(got, []string{"run allocate p2/1/allocate", "run configure p2/2/configure", "comp free p2/1/compensate/allocate"}) {
		t.Fatalf("calls %q", got)
	}
}

func TestCompensationParksAndResumes(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.fail["refund"] = []error{workflow.Permanent(errors.New("bank down"))}
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.signal("o1", "e2", "pay")
	w.drain(w.eng)
	if err := w.eng.Cancel(ctx, "o1", "stop"); err != nil {
		t.Fatal(err)
	}
	w.drain(w.eng)
	in := w.get("o1")
	if in.Status != workflow.Parked || in.ParkedFrom != workflow.Unwinding || in.Error != "bank down" {
		t.Fatalf("status %s from %s error %q", in.Status, in.ParkedFrom, in.Error)
	}
	if err := w.eng.Retry(ctx, "o1"); err != nil {
		t.Fatal(err)
	}
	w.drain(w.eng)
	in = w.get("o1")
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card",
		"comp refund o1/2/compensate/charge_card", "comp refund o1/2/compensate/charge_card", "comp release o1/1/compensate/reserve_stock"}
	if got := w.callLog(); !slices.Equal(got, want) || in.Status != workflow.Cancelled {
		t.Fatalf("status %s calls %q", in.Status, got)
	}
}

func TestSignalsRaceWorkers(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	const n = 10
	for i := range n {
		w.start(fmt.Sprint("o", i))
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprint("o", i)
			for j, ev := range []string{"place", "pay", "dispatch"} {
				for range 2 { // every event twice: the second is a duplicate
					if _, err := w.eng.Signal(ctx, id, fmt.Sprint(j), ev, nil); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	stop := make(chan struct{})
	for _, e := range []*workflow.Engine{w.eng, w.newEngine()} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := e.Step(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wait.For(t, "every order shipped", func() bool {
		res, _ := w.eng.List(ctx, &workflow.ListParams{Status: workflow.Succeeded})
		return len(res.Instances) == n
	})
	close(stop)
	wg.Wait()
	calls := w.callLog()
	slices.Sort(calls)
	if len(calls) != 3*n || len(slices.Compact(calls)) != 3*n {
		t.Fatalf("%d action runs for %d instances of 3 steps", len(calls), n)
	}
	for i := range n {
		in := w.get(fmt.Sprint("o", i))
		received := 0
		for _, e := range in.History {
			if e.Kind == workflow.EntryEventReceived {
				received++
			}
		}
		if received != 3 {
			t.Fatalf("%s received %d events", in.ID, received)
		}
		checkHistory(t, in)
	}
}

func TestCancelAfterCrashCountsCompletedAction(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.signal("o1", "e2", "pay")
	crashAt(w.eng, "before-commit", "o1/2/charge_card")
	for {
		if _, err := w.eng.Step(ctx); err != nil {
			break
		}
	}
	// The charge may have happened, but the journal does not say so: the
	// new owner settles it with one more run under its key (a downstream
	// replays), and refunds it.
	if err := w.eng.Cancel(ctx, "o1", "stop"); err != nil {
		t.Fatal(err)
	}
	w.clk.Advance(lease)
	w.drain(w.newEngine())
	in := w.get("o1")
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card", "run charge_card o1/2/charge_card",
		"comp refund o1/2/compensate/charge_card", "comp release o1/1/compensate/reserve_stock"}
	if got := w.callLog(); !slices.Equal(got, want) || in.Status != workflow.Cancelled {
		t.Fatalf("status %s calls %q", in.Status, got)
	}
}

// TestCancelSettleThatFails: the settling run of an action a dead owner
// may have run fails: the action counts as not done, and is not
// compensated.
func TestCancelSettleThatFails(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.signal("o1", "e2", "pay")
	crashAt(w.eng, "before-commit", "o1/2/charge_card")
	for {
		if _, err := w.eng.Step(ctx); err != nil {
			break
		}
	}
	w.fail["charge_card"] = []error{workflow.Permanent(errors.New("declined"))}
	if err := w.eng.Cancel(ctx, "o1", "stop"); err != nil {
		t.Fatal(err)
	}
	w.clk.Advance(lease)
	w.drain(w.newEngine())
	in := w.get("o1")
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card", "run charge_card o1/2/charge_card",
		"comp release o1/1/compensate/reserve_stock"}
	if got := w.callLog(); !slices.Equal(got, want) || in.Status != workflow.Cancelled || len(in.Done) != 1 {
		t.Fatalf("status %s done %+v calls %q", in.Status, in.Done, got)
	}
}

func TestCancelWhileActionRuns(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.drain(w.eng)
	w.signal("o1", "e2", "pay")
	entered, release := make(chan string), make(chan struct{})
	w.mu.Lock()
	w.hook = func(name string) {
		entered <- name
		<-release
	}
	w.mu.Unlock()
	done := make(chan error)
	go func() {
		_, err := w.eng.Step(ctx)
		done <- err
	}()
	if got := <-entered; got != "charge_card" {
		t.Fatalf("running %s", got)
	}
	// The charge is under way: the cancel lands in the journal first, so
	// the worker's commit conflicts; it must still undo the charge.
	if err := w.eng.Cancel(ctx, "o1", "changed my mind"); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	w.hook = nil
	w.mu.Unlock()
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	w.drain(w.eng)
	in := w.get("o1")
	want := []string{"run reserve_stock o1/1/reserve_stock", "run charge_card o1/2/charge_card",
		"comp refund o1/2/compensate/charge_card", "comp release o1/1/compensate/reserve_stock"}
	if got := w.callLog(); !slices.Equal(got, want) || in.Status != workflow.Cancelled {
		t.Fatalf("status %s calls %q", in.Status, got)
	}
	if in.State != "reserved" {
		t.Fatalf("state %s: the conflicting commit of the charge's transition went through", in.State)
	}
}
