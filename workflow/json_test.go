package workflow_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/idemkit/idem/workflow"
)

// The json tags give a declarative form that keeps the whole structure:
// decoding what was encoded gives the same fingerprint, and only the
// functions are missing.
func TestJSONForm(t *testing.T) {
	t.Parallel()
	saga := orderSaga()
	b, err := json.Marshal(saga)
	if err != nil {
		t.Fatal(err)
	}
	var back workflow.Definition
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Fingerprint() != saga.Fingerprint() {
		t.Errorf("fingerprint changed through JSON:\n%s", b)
	}
	if tr, _ := back.Transition("pending", "place"); tr.Action == nil || tr.Action.Run != nil || tr.Action.Compensate != nil {
		t.Fatalf("decoded action = %+v, want one without functions", tr.Action)
	}
	// Bound to its functions by action name, as a loader of the
	// declarative form will do, the decoded definition is valid again.
	funcs := map[string]*workflow.Action{}
	each(saga, func(a *workflow.Action) { funcs[a.Name] = a })
	each(&back, func(a *workflow.Action) { a.Run, a.Compensate = funcs[a.Name].Run, funcs[a.Name].Compensate })
	if err := back.Validate(); err != nil {
		t.Error(err)
	}

	d := small()
	d.States = d.States[:3]
	d.Transitions = d.Transitions[:2]
	d.States[1].Timeout, d.States[1].TimeoutEvent = 0, ""
	d.Transitions[0].Action.Retry = &workflow.RetryPolicy{MaxAttempts: 2, Jitter: 0.5}
	const want = `{"name":"t","version":1,"initial":"a","states":[{"name":"a"},{"name":"b"},{"name":"done","terminal":"success"}],` +
		`"transitions":[{"from":"a","event":"go","to":"b","action":{"name":"act","retry":{"max_attempts":2,"jitter":0.5}}},{"from":"b","event":"finish","to":"done"}]}`
	if b, _ := json.Marshal(d); string(b) != want {
		t.Errorf("JSON form:\n%s\nwant:\n%s", b, want)
	}
}

// each calls f with every action of d.
func each(d *workflow.Definition, f func(*workflow.Action)) {
	for i := range d.States {
		if a := d.States[i].OnEnter; a != nil {
			f(a)
		}
	}
	for i := range d.Transitions {
		if a := d.Transitions[i].Action; a != nil {
			f(a)
		}
	}
}

// In the JSON form an automatic transition has "event" omitted or empty:
// both decode to the same definition as the Go one, which validates once
// its functions are bound. Encoding writes "event":"".
func TestJSONAutomatic(t *testing.T) {
	t.Parallel()
	const form = `{"name":"order-auto","version":1,"initial":"start",` +
		`"states":[{"name":"start"},{"name":"reserved"},{"name":"charged"},{"name":"shipped","terminal":"success"}],` +
		`"transitions":[{"from":"start","to":"reserved","action":{"name":"reserve_stock"}},` +
		`{"from":"reserved","event":"","to":"charged","action":{"name":"charge_card"}},` +
		`{"from":"charged","to":"shipped","action":{"name":"ship_parcel"}}]}`
	var d workflow.Definition
	if err := json.Unmarshal([]byte(form), &d); err != nil {
		t.Fatal(err)
	}
	chain := autoChain()
	if d.Fingerprint() != chain.Fingerprint() {
		t.Errorf("decoded fingerprint %s, want the Go definition's %s", d.Fingerprint(), chain.Fingerprint())
	}
	for _, from := range []string{"start", "reserved", "charged"} {
		if tr, ok := d.Transition(from, ""); !ok || tr.Event != "" || tr.Action == nil {
			t.Errorf("Transition(%q, \"\") = %+v, %v, want the automatic transition", from, tr, ok)
		}
	}
	funcs := map[string]*workflow.Action{}
	each(chain, func(a *workflow.Action) { funcs[a.Name] = a })
	each(&d, func(a *workflow.Action) { a.Run, a.Compensate = funcs[a.Name].Run, funcs[a.Name].Compensate })
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(&d)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"name":"order-auto","version":1,"initial":"start",` +
		`"states":[{"name":"start"},{"name":"reserved"},{"name":"charged"},{"name":"shipped","terminal":"success"}],` +
		`"transitions":[{"from":"start","event":"","to":"reserved","action":{"name":"reserve_stock"}},` +
		`{"from":"reserved","event":"","to":"charged","action":{"name":"charge_card"}},` +
		`{"from":"charged","event":"","to":"shipped","action":{"name":"ship_parcel"}}]}`
	if string(b) != want {
		t.Errorf("JSON form:\n%s\nwant:\n%s", b, want)
	}
	// A second automatic transition from the same state, in JSON as in Go.
	var bad workflow.Definition
	if err := json.Unmarshal([]byte(strings.Replace(form, `{"from":"charged","to":"shipped"`, `{"from":"reserved","to":"shipped"}, {"from":"charged","to":"shipped"`, 1)), &bad); err != nil {
		t.Fatal(err)
	}
	each(&bad, func(a *workflow.Action) { a.Run, a.Compensate = funcs[a.Name].Run, funcs[a.Name].Compensate })
	const msg = `workflow: invalid definition: transitions[2] "reserved" --> "shipped": another automatic transition leaves "reserved": transitions[1]`
	if err := bad.Validate(); err == nil || err.Error() != msg {
		t.Errorf("Validate() = %v, want %s", err, msg)
	}
}
