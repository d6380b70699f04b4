package workflow_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/workflow"
)

// small is a valid definition each case of TestValidate breaks in one way.
func small() *workflow.Definition {
	return &workflow.Definition{
		Name:    "t",
		Version: 1,
		Initial: "a",
		States: []workflow.State{
			{Name: "a"},
			{Name: "b", Timeout: time.Second, TimeoutEvent: "late"},
			{Name: "done", Terminal: workflow.Success},
			{Name: "failed", Terminal: workflow.Failure},
		},
		Transitions: []workflow.Transition{
			{From: "a", Event: "go", To: "b", Action: &workflow.Action{Name: "act", Run: noop, Compensate: noop}},
			{From: "b", Event: "finish", To: "done"},
			{From: "b", Event: "late", To: "failed"},
		},
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	const p = "workflow: invalid definition: "
	act := `transitions[0] "a" --go--> "b" action "act"`
	tests := []struct {
		name   string
		mutate func(d *workflow.Definition)
		want   []string
	}{
		{"valid", func(d *workflow.Definition) {}, nil},
		{"empty name", func(d *workflow.Definition) { d.Name = "" }, []string{
			p + `name: is empty`}},
		{"version not positive", func(d *workflow.Definition) { d.Version = 0 }, []string{
			p + `version: must be positive, got 0`}},
		{"no states", func(d *workflow.Definition) { d.States, d.Transitions = nil, nil }, []string{
			p + `states: there are none`,
			p + `initial "a": is not a state`}},
		{"empty state name", func(d *workflow.Definition) { d.States = append(d.States, workflow.State{}) }, []string{
			p + `states[4] "": name is empty`}},
		{"duplicate state", func(d *workflow.Definition) { d.States = append(d.States, workflow.State{Name: "b"}) }, []string{
			p + `states[4] "b": duplicate of states[1]`}},
		{"unknown terminal", func(d *workflow.Definition) { d.States[2].Terminal = "ok" }, []string{
			p + `states[2] "done": terminal "ok" is not "", "success" or "failure"`,
			p + `states: no state is a success terminal`}},
		{"no success terminal", func(d *workflow.Definition) { d.States[2].Terminal = workflow.Failure }, []string{
			p + `states: no state is a success terminal`}},
		{"empty initial", func(d *workflow.Definition) { d.Initial = "" }, []string{
			p + `initial: is empty`}},
		{"unknown initial", func(d *workflow.Definition) { d.Initial = "z" }, []string{
			p + `initial "z": is not a state`}},
		{"unknown ends", func(d *workflow.Definition) {
			d.Transitions = append(d.Transitions, workflow.Transition{From: "x", Event: "e", To: "y"})
		}, []string{
			p + `transitions[3] "x" --e--> "y": from "x" is not a state`,
			p + `transitions[3] "x" --e--> "y": to "y" is not a state`}},
		{"automatic transition with an action", func(d *workflow.Definition) { d.Transitions[0].Event = "" }, nil},
		{"automatic transition without an action", func(d *workflow.Definition) {
			d.Transitions[0].Event, d.Transitions[0].Action = "", nil
		}, nil},
		{"automatic transitions are edges for reachability", func(d *workflow.Definition) {
			// c is entered by an event and left only automatically, d
			// entered only automatically.
			d.States = append(d.States, workflow.State{Name: "c"}, workflow.State{Name: "d"})
			d.Transitions = append(d.Transitions,
				workflow.Transition{From: "b", Event: "detour", To: "c"},
				workflow.Transition{From: "c", To: "d", Action: &workflow.Action{Name: "step", Run: noop, NoCompensation: true}},
				workflow.Transition{From: "d", To: "done"})
		}, nil},
		{"two automatic transitions", func(d *workflow.Definition) {
			d.Transitions[0].Event = ""
			d.Transitions = append(d.Transitions, workflow.Transition{From: "a", To: "done"})
		}, []string{
			p + `transitions[3] "a" --> "done": another automatic transition leaves "a": transitions[0]`}},
		{"automatic transition beside others and a timeout", func(d *workflow.Definition) {
			d.Transitions = append(d.Transitions, workflow.Transition{From: "b", To: "done"})
		}, []string{
			p + `transitions[1] "b" --finish--> "done": "b" is left at once by automatic transition transitions[3]: no event applies there`,
			p + `transitions[2] "b" --late--> "failed": "b" is left at once by automatic transition transitions[3]: no event applies there`,
			p + `states[1] "b": timeout 1s never fires: automatic transition transitions[3] leaves the state at once`}},
		{"automatic transition before an event transition", func(d *workflow.Definition) {
			d.Transitions = append([]workflow.Transition{{From: "a", To: "done"}}, d.Transitions...)
		}, []string{
			p + `transitions[1] "a" --go--> "b": "a" is left at once by automatic transition transitions[0]: no event applies there`}},
		{"automatic transition with a timeout only", func(d *workflow.Definition) {
			d.States[0].Timeout, d.States[0].TimeoutEvent = time.Minute, "go"
			d.Transitions[0].Event = ""
		}, []string{
			p + `states[0] "a": timeout 1m0s never fires: automatic transition transitions[0] leaves the state at once`}},
		{"automatic transition from a terminal state", func(d *workflow.Definition) {
			d.Transitions = append(d.Transitions, workflow.Transition{From: "done", To: "a"})
		}, []string{
			p + `transitions[3] "done" --> "a": leaves terminal state "done"`}},
		{"automatic cycle without actions", func(d *workflow.Definition) {
			// Entered at d, named from c, the state that comes first.
			d.States = append(d.States, workflow.State{Name: "c"}, workflow.State{Name: "d"}, workflow.State{Name: "e"})
			d.Transitions = append(d.Transitions,
				workflow.Transition{From: "b", Event: "detour", To: "d"},
				workflow.Transition{From: "d", To: "e"},
				workflow.Transition{From: "c", To: "d"},
				workflow.Transition{From: "e", To: "c"})
		}, []string{
			p + `states[4] "c": automatic transitions without actions cycle forever: "c" --> "d" --> "e" --> "c"`,
			p + `states[4] "c": no terminal state is reachable from it`,
			p + `states[5] "d": no terminal state is reachable from it`,
			p + `states[6] "e": no terminal state is reachable from it`}},
		{"automatic self-loop without an action", func(d *workflow.Definition) {
			d.States = append(d.States, workflow.State{Name: "c", OnEnter: &workflow.Action{Name: "hello", Run: noop, NoCompensation: true}})
			d.Transitions = append(d.Transitions,
				workflow.Transition{From: "b", Event: "detour", To: "c"},
				workflow.Transition{From: "c", To: "c"})
		}, []string{
			p + `states[4] "c": automatic transitions without actions cycle forever: "c" --> "c"`,
			p + `states[4] "c": no terminal state is reachable from it`}},
		{"automatic cycle with an action is only a dead end", func(d *workflow.Definition) {
			d.States = append(d.States, workflow.State{Name: "c"}, workflow.State{Name: "d"})
			d.Transitions = append(d.Transitions,
				workflow.Transition{From: "b", Event: "detour", To: "c"},
				workflow.Transition{From: "c", To: "d", Action: &workflow.Action{Name: "poll", Run: noop, NoCompensation: true}},
				workflow.Transition{From: "d", To: "c"})
		}, []string{
			p + `states[4] "c": no terminal state is reachable from it`,
			p + `states[5] "d": no terminal state is reachable from it`}},
		{"automatic transition with unknown ends", func(d *workflow.Definition) {
			d.Transitions = append(d.Transitions, workflow.Transition{From: "x", To: "y"})
		}, []string{
			p + `transitions[3] "x" --> "y": from "x" is not a state`,
			p + `transitions[3] "x" --> "y": to "y" is not a state`}},
		{"event quoted when ambiguous", func(d *workflow.Definition) {
			d.Transitions = append(d.Transitions, workflow.Transition{From: "a", Event: "x-->y", To: "nowhere"})
		}, []string{
			p + `transitions[3] "a" --"x-->y"--> "nowhere": to "nowhere" is not a state`}},
		{"leaves terminal", func(d *workflow.Definition) {
			d.Transitions = append(d.Transitions, workflow.Transition{From: "done", Event: "again", To: "a"})
		}, []string{
			p + `transitions[3] "done" --again--> "a": leaves terminal state "done"`}},
		{"two transitions on one event", func(d *workflow.Definition) {
			d.Transitions = append(d.Transitions, workflow.Transition{From: "b", Event: "finish", To: "failed"})
		}, []string{
			p + `transitions[3] "b" --finish--> "failed": another transition leaves "b" on the same event: transitions[1]`}},
		{"unreachable", func(d *workflow.Definition) {
			d.States = append(d.States, workflow.State{Name: "orphan"})
			d.Transitions = append(d.Transitions, workflow.Transition{From: "orphan", Event: "e", To: "done"})
		}, []string{
			p + `states[4] "orphan": unreachable from initial state "a"`}},
		{"no way out", func(d *workflow.Definition) {
			d.States = append(d.States, workflow.State{Name: "loop"})
			d.Transitions = append(d.Transitions,
				workflow.Transition{From: "b", Event: "spin", To: "loop"},
				workflow.Transition{From: "loop", Event: "spin", To: "loop"})
		}, []string{
			p + `states[4] "loop": no terminal state is reachable from it`}},
		{"unreachable and no way out", func(d *workflow.Definition) {
			d.States = append(d.States, workflow.State{Name: "island"})
		}, []string{
			p + `states[4] "island": unreachable from initial state "a"`,
			p + `states[4] "island": no terminal state is reachable from it`}},
		{"no compensation declared", func(d *workflow.Definition) { d.Transitions[0].Action.Compensate = nil }, []string{
			p + act + `: declares neither compensate nor no_compensation`}},
		{"both compensations declared", func(d *workflow.Definition) { d.Transitions[0].Action.NoCompensation = true }, []string{
			p + act + `: declares both compensate and no_compensation`}},
		{"no run", func(d *workflow.Definition) { d.Transitions[0].Action.Run = nil }, []string{
			p + act + `: run is nil`}},
		{"empty action name", func(d *workflow.Definition) { d.Transitions[0].Action.Name = "" }, []string{
			p + `transitions[0] "a" --go--> "b" action "": name is empty`}},
		{"duplicate action name", func(d *workflow.Definition) {
			d.States[2].OnEnter = &workflow.Action{Name: "act", Run: noop, NoCompensation: true}
		}, []string{
			p + act + `: name already used by states[2] "done" on_enter`}},
		{"on-enter action checked", func(d *workflow.Definition) {
			d.States[0].OnEnter = &workflow.Action{Name: "hello"}
		}, []string{
			p + `states[0] "a" on_enter action "hello": run is nil`,
			p + `states[0] "a" on_enter action "hello": declares neither compensate nor no_compensation`}},
		{"unknown on_exhausted", func(d *workflow.Definition) { d.Transitions[0].Action.OnExhausted = "retry" }, []string{
			p + act + `: on_exhausted "retry" is not "unwind" or "park"`}},
		{"park and unwind accepted", func(d *workflow.Definition) {
			d.Transitions[0].Action.OnExhausted = workflow.Park
			d.States[2].OnEnter = &workflow.Action{Name: "notify", Run: noop, NoCompensation: true, OnExhausted: workflow.Unwind}
		}, nil},
		{"negative timeout", func(d *workflow.Definition) { d.States[1].Timeout = -time.Second }, []string{
			p + `states[1] "b": timeout -1s is negative`}},
		{"terminal timeout", func(d *workflow.Definition) {
			d.States[2].Timeout, d.States[2].TimeoutEvent = time.Minute, "late"
		}, []string{
			p + `states[2] "done": terminal state has a timeout`}},
		{"timeout without event", func(d *workflow.Definition) { d.States[1].TimeoutEvent = "" }, []string{
			p + `states[1] "b": timeout 1s has no timeout_event`}},
		{"timeout leads nowhere", func(d *workflow.Definition) { d.States[1].TimeoutEvent = "later" }, []string{
			p + `states[1] "b": timeout_event "later" leads nowhere: no transition leaves the state on it`}},
		{"timeout event without timeout", func(d *workflow.Definition) { d.States[1].Timeout = 0 }, []string{
			p + `states[1] "b": timeout_event "late" without a positive timeout`}},
		{"retry values", func(d *workflow.Definition) {
			d.Transitions[0].Action.Retry = &workflow.RetryPolicy{MaxAttempts: -1, InitialBackoff: -1, MaxBackoff: -1, Multiplier: 0.5, Jitter: 1.5}
		}, []string{
			p + act + ` retry: max_attempts is negative`,
			p + act + ` retry: initial_backoff is negative`,
			p + act + ` retry: max_backoff is negative`,
			p + act + ` retry: multiplier must be at least 1 and finite`,
			p + act + ` retry: jitter must be between 0 and 1`}},
		{"retry NaN and infinity", func(d *workflow.Definition) {
			d.Transitions[0].Action.Retry = &workflow.RetryPolicy{Multiplier: math.Inf(1), Jitter: math.NaN()}
		}, []string{
			p + act + ` retry: multiplier must be at least 1 and finite`,
			p + act + ` retry: jitter must be between 0 and 1`}},
		{"max backoff below initial", func(d *workflow.Definition) {
			d.Transitions[0].Action.Retry = &workflow.RetryPolicy{MaxBackoff: 500 * time.Millisecond}
		}, []string{
			p + act + ` retry: max_backoff 500ms is shorter than initial_backoff 1s`}},
		{"names with quotes and newlines", func(d *workflow.Definition) {
			d.States = append(d.States, workflow.State{Name: "a\"\nb", Terminal: workflow.Failure})
			d.Transitions = append(d.Transitions, workflow.Transition{From: "a\"\nb", Event: "e\n", To: "done"})
		}, []string{
			p + `transitions[3] "a\"\nb" --"e\n"--> "done": leaves terminal state "a\"\nb"`,
			p + `states[4] "a\"\nb": unreachable from initial state "a"`}},
		{"every problem at once", func(d *workflow.Definition) {
			d.Name, d.Version, d.Initial = "", -2, ""
			d.States[1].Timeout = 0
			d.Transitions[0].Action.Run = nil
		}, []string{
			p + `name: is empty`,
			p + `version: must be positive, got -2`,
			p + `initial: is empty`,
			p + `states[1] "b": timeout_event "late" without a positive timeout`,
			p + act + `: run is nil`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := small()
			tt.mutate(d)
			err := d.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tt.want)
			}
			if got := strings.Split(err.Error(), "\n"); !equal(got, tt.want) {
				t.Fatalf("Validate() errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if !errors.Is(err, workflow.ErrInvalidDefinition) {
				t.Errorf("errors.Is(err, ErrInvalidDefinition) = false")
			}
			var de *workflow.DefinitionError
			if !errors.As(err, &de) || de.Path == "" || de.Problem == "" {
				t.Errorf("errors.As(err, *DefinitionError) = %v, %+v", errors.As(err, &de), de)
			}
			if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != len(tt.want) {
				t.Errorf("joined %d errors, want %d", n, len(tt.want))
			}
		})
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The order saga of the example is valid, and a self-loop counts as a way
// out only through another transition.
func TestValidateOrderSaga(t *testing.T) {
	t.Parallel()
	if err := orderSaga().Validate(); err != nil {
		t.Fatal(err)
	}
	d := orderSaga()
	d.Transitions = append(d.Transitions, workflow.Transition{From: "charged", Event: "remind", To: "charged",
		Action: &workflow.Action{Name: "send_reminder", Run: noop, NoCompensation: true}})
	if err := d.Validate(); err != nil {
		t.Fatalf("self-loop refused: %v", err)
	}
}

func TestDefinitionLookups(t *testing.T) {
	t.Parallel()
	d := orderSaga()
	if s, ok := d.State("reserved"); !ok || s.TimeoutEvent != "payment_timeout" {
		t.Errorf("State(reserved) = %+v, %v", s, ok)
	}
	if _, ok := d.State("nope"); ok {
		t.Errorf("State(nope) found")
	}
	if tr, ok := d.Transition("reserved", "pay"); !ok || tr.To != "charged" || tr.Action.Name != "charge_card" {
		t.Errorf("Transition(reserved, pay) = %+v, %v", tr, ok)
	}
	if _, ok := d.Transition("shipped", "pay"); ok {
		t.Errorf("Transition(shipped, pay) found")
	}
}
