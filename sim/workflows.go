package sim

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/idemkit/idem/workflow"
)

// workflows: clients start order workflows (reserve, charge, ship) on the
// real workflow engine and send their events, duplicated and reordered,
// start the same order twice (with the same input, and by mistake with
// another) and cancel some; worker processes, each an Engine over the
// same ledger and journal, crash at step boundaries (after an action,
// before its commit, during compensation) and at random, restart as new
// engines, and pause past their lease. Actions fail now and then, for a
// while or for good. Actions call a downstream service that honours
// idempotency keys and fencing tokens, as Stripe does: the first final
// answer for a step key (done, or declined) is the answer to every later
// request with that key, and a request with a lower token than the
// highest the key has seen is refused. An action's effect is applied
// there, when its request is first done.
var workflows = &Scenario{
	Name: "workflows",
	Doc:  "workflow engines that crash at step boundaries and pause past their lease; duplicate starts and events, cancels",
	Faults: Faults{
		Crash: 0.002, RestartAfter: time.Second,
		Pause: 0.002, PauseFor: 3 * time.Second,
	},
	Failpoints: Failpoints{BeforeCommit: 0.01, AfterCommit: 0.01, Latency: 2 * time.Millisecond},
	Setup:      setupWorkflows,
}

const (
	wfInstances   = 4
	wfTimeout     = 3 * time.Second
	wfCrashAtStep = 0.04 // per step boundary a worker passes
)

func setupWorkflows(w *World, _ *Store) func() {
	def := orderDefinition(w)
	return SetupWorkflows(w, &WorkflowConfig{
		Definition:  def,
		Instances:   wfInstances,
		Input:       func(i int) []byte { return fmt.Appendf(nil, `{"order":%d}`, i) },
		Events:      []string{"place", "pay", "ship"},
		Cancel:      0.25,
		Lease:       time.Second,
		CrashAtStep: wfCrashAtStep,
		Journal:     Failpoints{BeforeCommit: 0.02, AfterCommit: 0.02},
		Check:       func(in *workflow.Instance) { checkOrderEffects(w, def, in) },
	})
}

// orderDefinition is the workflow the scenario runs: reserve, charge and
// ship, each with a compensation; charge may be declined (unwinding), and
// a state waited in too long expires.
func orderDefinition(w *World) *workflow.Definition {
	retry := &workflow.RetryPolicy{MaxAttempts: 3, InitialBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Jitter: 0.5}
	ds := &downstream{keys: map[string]*downstreamKey{}}
	act := func(name string, transient, permanent float64) *workflow.Action {
		return &workflow.Action{Name: name, Retry: retry,
			Run:        effectStep(w, ds, name, transient, permanent),
			Compensate: effectStep(w, ds, "undo "+name, 0.1, 0)}
	}
	return &workflow.Definition{
		Name: "order", Version: 1, Initial: "pending",
		States: []workflow.State{
			{Name: "pending", Timeout: wfTimeout, TimeoutEvent: "expire"},
			{Name: "reserved", Timeout: wfTimeout, TimeoutEvent: "expire"},
			{Name: "charged", Timeout: wfTimeout, TimeoutEvent: "expire"},
			{Name: "shipped", Terminal: workflow.Success},
			{Name: "expired", Terminal: workflow.Failure},
		},
		Transitions: []workflow.Transition{
			{From: "pending", Event: "place", To: "reserved", Action: act("reserve", 0.15, 0)},
			{From: "reserved", Event: "pay", To: "charged", Action: act("charge", 0.15, 0.1)},
			{From: "charged", Event: "ship", To: "shipped", Action: act("ship", 0.15, 0)},
			{From: "pending", Event: "expire", To: "expired"},
			{From: "reserved", Event: "expire", To: "expired"},
			{From: "charged", Event: "expire", To: "expired"},
		},
	}
}

// downstream is a service the actions call, which honours idempotency
// keys and fencing tokens.
type downstream struct {
	keys map[string]*downstreamKey
}

type downstreamKey struct {
	token  int64  // the highest token a request with the key carried
	answer string // "done" or "declined" once final, "" before
}

// effectStep is an action (or compensation) that works a while and calls
// the world's downstream service with its step key and token: the
// service may be unavailable (transient) or decline (permanent), and
// applies the effect the first time a key's request is done.
func effectStep(w *World, ds *downstream, what string, transient, permanent float64) workflow.StepFunc {
	return func(ctx context.Context, s *workflow.Step) ([]byte, error) {
		if err := w.Sleep(w.Between(0, 300*time.Millisecond)); err != nil {
			return nil, err
		}
		k := ds.keys[s.Key]
		if k == nil {
			k = &downstreamKey{}
			ds.keys[s.Key] = k
		}
		switch {
		case s.Token < k.token:
			w.Log("downstream-fenced", s.Key, fmt.Sprintf("token %d < %d", s.Token, k.token))
			return nil, workflow.Permanent(fmt.Errorf("%s refused: token %d is stale", what, s.Token))
		case k.answer == "done":
			return []byte(what + " done"), nil
		case k.answer == "declined":
			return nil, workflow.Permanent(errors.New(what + " declined"))
		}
		k.token = s.Token
		switch {
		case w.Chance(permanent):
			k.answer = "declined"
			return nil, workflow.Permanent(errors.New(what + " declined"))
		case w.Chance(transient):
			return nil, errors.New(what + " unavailable")
		}
		k.answer = "done"
		w.apply(s.Key, what)
		return []byte(what + " done"), nil
	}
}

// checkOrderEffects checks an order's effects at the downstream against
// its history: each completed action's exactly once, under the step key
// the history names; none of a step the history does not complete; at
// most one per step, whatever key it ran under; and the compensations'
// effects, once each, in the order the history owes them.
func checkOrderEffects(w *World, def *workflow.Definition, in *workflow.Instance) {
	h := historyOf(def, in)
	done := map[string]bool{}
	for _, e := range h.completed {
		done[e.StepKey] = true
		if n := len(w.Effects(e.StepKey)); n != 1 {
			inv := "exactly-once"
			if n > 1 {
				inv = "at-most-once"
			}
			w.Violate(inv, e.StepKey, fmt.Sprintf("a completed action has %d effects", n))
		}
	}
	perStep := map[string]int{}
	var compOrder []string // compensation effects, in the order they applied
	for _, key := range w.effectOrder {
		if !strings.HasPrefix(key, in.ID+"/") {
			continue
		}
		base, _, _ := strings.Cut(key, "#")
		perStep[base]++
		if perStep[base] == 2 {
			w.Violate("at-most-once", base, "a step's effect applied twice (under "+key+")")
		}
		if strings.Contains(key, "/compensate/") {
			compOrder = append(compOrder, base)
		} else if !done[key] {
			w.Violate("at-most-once", key, "an effect applied for a step the history does not complete")
		}
	}
	if in.Status == workflow.Succeeded && len(h.completed) != 3 {
		w.Violate("exactly-once", in.ID, fmt.Sprintf("succeeded with %d actions completed, want 3", len(h.completed)))
	}
	want := h.compensations(def, in.ID)
	if in.Status == workflow.Parked && len(compOrder) <= len(want) {
		want = want[:len(compOrder)]
	}
	if fmt.Sprint(compOrder) != fmt.Sprint(want) {
		w.Violate("compensations", in.ID, fmt.Sprintf("compensations applied %v, want %v", compOrder, want))
	}
	if len(h.compensated) != len(compOrder) {
		w.Violate("compensations", in.ID, fmt.Sprintf("history records %d compensations, %d applied", len(h.compensated), len(compOrder)))
	}
}
