package idemtest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/idemtest"
	"github.com/idemkit/idem/workflow"
)

// A handler that creates one order per idempotency key, checked under
// duplicates, crashes and a lossy network.
func ExampleHandler() {
	var mu sync.Mutex
	made := map[string]string{} // idempotency key -> order
	create := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		key := r.Header.Get(idemhttp.HeaderKey)
		if _, ok := made[key]; !ok {
			made[key] = string(body) // an upsert keyed by the idempotency key
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, made[key])
	})

	t := &testing.T{} // in a test: the test's t
	idemtest.Handler(t, create, func() *http.Request {
		return httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(`{"sku":"a"}`))
	}, &idemtest.Options{
		Reset:   func() { mu.Lock(); clear(made); mu.Unlock() },
		Effects: func() int { mu.Lock(); defer mu.Unlock(); return len(made) },
	})
}

// A three-step workflow that runs from Start alone (automatic
// transitions), whose actions write one effect per step key, checked
// under crashes at step boundaries, paused workers and a failing journal.
func ExampleWorkflow() {
	var mu sync.Mutex
	effects := map[string]string{} // step key -> what was done

	// step records its effect under the step key, so that an action run
	// again after a crash (same Step.Key, higher Step.Token) overwrites
	// instead of adding. A real action passes s.Key downstream as the
	// idempotency key, and s.Token as a fencing token.
	step := func(what string) workflow.StepFunc {
		return func(ctx context.Context, s *workflow.Step) ([]byte, error) {
			mu.Lock()
			defer mu.Unlock()
			effects[s.Key] = what
			return []byte(what), nil
		}
	}
	def := &workflow.Definition{
		Name: "order", Version: 1, Initial: "new",
		States: []workflow.State{
			{Name: "new"}, {Name: "reserved"}, {Name: "charged"},
			{Name: "shipped", Terminal: workflow.Success},
		},
		Transitions: []workflow.Transition{ // no Event: automatic
			{From: "new", To: "reserved", Action: &workflow.Action{Name: "reserve", Run: step("reserve"), Compensate: step("release")}},
			{From: "reserved", To: "charged", Action: &workflow.Action{Name: "charge", Run: step("charge"), Compensate: step("refund")}},
			{From: "charged", To: "shipped", Action: &workflow.Action{Name: "ship", Run: step("ship"), NoCompensation: true}},
		},
	}

	t := &testing.T{} // in a test: the test's t
	idemtest.Workflow(t, def, &idemtest.WorkflowOptions{
		Options: idemtest.Options{Seeds: 200, Reset: func() { mu.Lock(); clear(effects); mu.Unlock() }},
		// One effect per step the history completes, and no other.
		Check: func(in *workflow.Instance) error {
			mu.Lock()
			defer mu.Unlock()
			completed := 0
			for _, e := range in.History {
				if e.Kind == workflow.EntryActionCompleted {
					completed++
					if _, ok := effects[e.StepKey]; !ok {
						return fmt.Errorf("step %s completed without its effect", e.StepKey)
					}
				}
			}
			mine := 0
			for key := range effects {
				if strings.HasPrefix(key, in.ID+"/") {
					mine++
				}
			}
			if mine != completed {
				return fmt.Errorf("%s: %d effects for %d completed steps", in.ID, mine, completed)
			}
			return nil
		},
	})
}
