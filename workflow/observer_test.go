package workflow_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/idemkit/idem/workflow"
)

// recorder is a workflow.Observer that logs what it is called with.
type recorder struct {
	mu  sync.Mutex
	log []string
}

type obsMark struct{}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, s)
}

func (r *recorder) Started(_ context.Context, in *workflow.Instance) {
	r.add("started " + in.ID)
}

func (r *recorder) Advance(ctx context.Context, in *workflow.Instance) (context.Context, func(*workflow.Instance, error)) {
	r.add("advance " + in.ID)
	return context.WithValue(ctx, obsMark{}, in.ID), func(in *workflow.Instance, err error) {
		r.add(fmt.Sprintf("done %s %s %v", in.ID, in.Status, err))
	}
}

func (r *recorder) Step(ctx context.Context, in *workflow.Instance, s workflow.StepInfo) (context.Context, func(bool, error)) {
	if ctx.Value(obsMark{}) != in.ID {
		r.add("step without the advance's context")
	}
	r.add(fmt.Sprintf("step %s %s comp=%v attempt=%d", s.Key, s.Action, s.Compensation, s.Attempt))
	return ctx, func(kept bool, err error) { r.add(fmt.Sprintf("step done kept=%v err=%v", kept, err)) }
}

// The Observer sees the start, each advance with its end, and each action
// and compensation with its result, in order.
func TestObserver(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	rec := &recorder{}
	eng, err := workflow.NewEngine(w.journal, w.reg, &workflow.EngineConfig{Clock: w.clk, Lease: lease,
		Rand: func() float64 { return 0 }, Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	w.eng = eng
	w.fail["charge_card"] = []error{workflow.Permanent(errors.New("declined"))}
	w.start("o1")
	w.signal("o1", "e1", "place")
	w.signal("o1", "e2", "pay")
	w.drain(eng)
	if in := w.get("o1"); in.Status != workflow.Failed {
		t.Fatalf("status %s", in.Status)
	}
	want := []string{
		"started o1",
		"advance o1",
		"step o1/1/reserve_stock reserve_stock comp=false attempt=1",
		"step done kept=false err=<nil>",
		"step o1/2/charge_card charge_card comp=false attempt=1",
		"step done kept=false err=declined",
		"step o1/1/compensate/reserve_stock reserve_stock comp=true attempt=1",
		"step done kept=false err=<nil>",
		"done o1 failed <nil>",
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if !slices.Equal(rec.log, want) {
		t.Fatalf("observed\n%q\nwant\n%q", rec.log, want)
	}
}
