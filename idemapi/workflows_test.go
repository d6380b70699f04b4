package idemapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/workflow"
)

const (
	tokOrder = "token-wf-order" // scope wf:order
	tokNone  = "token-plain"    // scope a: no workflow type
)

// wfBundle is a server with a workflow engine over a MemJournal; the
// engine is driven by Step, never Run.
type wfBundle struct {
	*bundle
	clock    *idem.ManualClock
	eng      *workflow.Engine
	reg      *workflow.Registry
	failPay  atomic.Bool // charge fails for good
	charges  atomic.Int64
	parsed   []string // names ParseWorkflow was called with
	maxInput int64
}

func noop(context.Context, *workflow.Step) ([]byte, error) { return []byte(`{"ok":true}`), nil }

// orderDef: pending --place/reserve--> reserved --pay/charge--> paid,
// reserved --cancel--> cancelled. charge parks when it fails.
func (b *wfBundle) orderDef(name string, version int) *workflow.Definition {
	charge := func(ctx context.Context, s *workflow.Step) ([]byte, error) {
		b.charges.Add(1)
		if b.failPay.Load() {
			return nil, workflow.Permanent(errors.New("card declined"))
		}
		return []byte(`{"charged":` + string(s.Input) + `}`), nil
	}
	return &workflow.Definition{
		Name: name, Version: version, Initial: "pending",
		States: []workflow.State{{Name: "pending"}, {Name: "reserved"}, {Name: "paid", Terminal: workflow.Success}, {Name: "cancelled", Terminal: workflow.Failure}},
		Transitions: []workflow.Transition{
			{From: "pending", Event: "place", To: "reserved", Action: &workflow.Action{Name: "reserve", Run: noop, Compensate: noop}},
			{From: "reserved", Event: "pay", To: "paid", Action: &workflow.Action{Name: "charge", Run: charge, NoCompensation: true,
				OnExhausted: workflow.Park, Retry: &workflow.RetryPolicy{MaxAttempts: 1}}},
			{From: "reserved", Event: "cancel", To: "cancelled"},
		},
	}
}

// testParse reads the JSON form of a Definition, as a stand-in for the
// declare package: every action does nothing.
func (b *wfBundle) testParse(data []byte, name string) (*workflow.Definition, error) {
	b.parsed = append(b.parsed, name)
	var d workflow.Definition
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s:1:1: %v", name, err)
	}
	for i := range d.Transitions {
		if a := d.Transitions[i].Action; a != nil {
			a.Run = noop
			if !a.NoCompensation {
				a.Compensate = noop
			}
		}
	}
	d.Source = data
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

func wfSetup(t *testing.T, withEngine bool) *wfBundle {
	t.Helper()
	clock := idem.NewManualClock(start)
	store := memstore.New(&memstore.Config{Clock: clock})
	t.Cleanup(func() { _ = store.Close() })
	b := &wfBundle{clock: clock, reg: workflow.NewRegistry(), maxInput: 1024}
	for _, d := range []*workflow.Definition{b.orderDef("order", 1), b.orderDef("order", 2), b.orderDef("refund", 1)} {
		if err := b.reg.Register(d); err != nil {
			t.Fatal(err)
		}
	}
	cfg := &idemapi.Config{
		Tokens:              map[string][]string{tokA: {"a"}, tokAll: {"*"}, tokOrder: {"wf:order"}, tokNone: {"a"}},
		MaxBody:             1024,
		MaxWorkflowDocument: 4096,
		MaxWorkflowInput:    b.maxInput,
	}
	if withEngine {
		eng, err := workflow.NewEngine(workflow.NewMemJournal(), b.reg, &workflow.EngineConfig{Clock: clock, Rand: func() float64 { return 0 }})
		if err != nil {
			t.Fatal(err)
		}
		b.eng = eng
		cfg.Workflows, cfg.WorkflowTypes, cfg.ParseWorkflow = eng, b.reg, b.testParse
	}
	srv, err := idemapi.NewServer(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.bundle = &bundle{clock: clock, store: store, srv: srv}
	return b
}

// step runs the engine until it has nothing due.
func (b *wfBundle) step(t *testing.T) int {
	t.Helper()
	n, err := b.eng.Step(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// expect checks a response's status and, for an error, its problem type.
func expect(t *testing.T, r *response, status int, problem string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d (%s), want %d", r.status, r.body, status)
	}
	if problem == "" {
		return
	}
	var p idemapi.Problem
	if err := json.Unmarshal(r.body, &p); err != nil || p.Type != idemapi.ProblemBase+problem || p.Status != status {
		t.Fatalf("problem %s, want %s", r.body, problem)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("problem content type %q", ct)
	}
}

func decodeAs[T any](t *testing.T, r *response) *T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("%v: %s", err, r.body)
	}
	return &v
}

func TestWorkflowRoutesWithoutEngine(t *testing.T) {
	b := wfSetup(t, false)
	for _, rt := range []struct{ method, path, body string }{
		{"GET", "/v1/workflow-types", ""},
		{"POST", "/v1/workflow-types", `{}`},
		{"GET", "/v1/workflow-types/order/graph", ""},
		{"GET", "/v1/workflows", ""},
		{"POST", "/v1/workflows", `{"type":"order","id":"o1"}`},
		{"GET", "/v1/workflows/o1", ""},
		{"POST", "/v1/workflows/o1/events", `{"event_id":"e","event":"place"}`},
		{"POST", "/v1/workflows/o1/cancel", `{}`},
		{"POST", "/v1/workflows/o1/retry", `{}`},
		{"POST", "/v1/workflows/o1/resume", `{"state":"pending"}`},
	} {
		expect(t, b.call(t, rt.method, rt.path, tokAll, rt.body), 501, idemapi.ProblemNotImplemented)
		expect(t, b.call(t, rt.method, rt.path, "", rt.body), 401, idemapi.ProblemUnauthorized)
	}
	expect(t, b.call(t, "GET", "/v1/workflows/o1?x=1", tokAll, ""), 501, idemapi.ProblemNotImplemented)
	expect(t, b.call(t, "DELETE", "/v1/workflows/o1", tokAll, ""), 405, idemapi.ProblemMethodNotAllowed)
	expect(t, b.call(t, "POST", "/v1/workflows/o1/nope", tokAll, "{}"), 404, idemapi.ProblemNoSuchRoute)
	expect(t, b.call(t, "GET", "/v1/workflow-types/order", tokAll, ""), 404, idemapi.ProblemNoSuchRoute)
	expect(t, b.call(t, "GET", "/v1/workflows/a/b/events", tokAll, ""), 404, idemapi.ProblemNoSuchRoute)

	if _, err := idemapi.NewServer(b.store, &idemapi.Config{Tokens: map[string][]string{tokA: {"a"}}, Workflows: &workflow.Engine{}}); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("Workflows without WorkflowTypes: %v, want ErrInvalid", err)
	}
}

func TestWorkflowTypesAndGraph(t *testing.T) {
	b := wfSetup(t, true)
	all := decodeAs[idemapi.WorkflowTypesResponse](t, b.call(t, "GET", "/v1/workflow-types", tokAll, ""))
	var got []string
	for _, ty := range all.Types {
		got = append(got, fmt.Sprintf("%s/%d/%v", ty.Name, ty.Version, ty.Latest))
	}
	if strings.Join(got, " ") != "order/1/false order/2/true refund/1/true" {
		t.Errorf("types %v", got)
	}
	o := all.Types[0]
	if o.Fingerprint != b.orderDef("order", 1).Fingerprint() || o.Initial != "pending" || len(o.States) != 4 || o.States[2].Terminal != "success" ||
		len(o.Transitions) != 3 || o.Transitions[0] != (idemapi.WorkflowTransition{From: "pending", Event: "place", To: "reserved", Action: "reserve"}) || o.Declarative {
		t.Errorf("order v1: %+v", o)
	}
	mine := decodeAs[idemapi.WorkflowTypesResponse](t, b.call(t, "GET", "/v1/workflow-types", tokOrder, ""))
	if len(mine.Types) != 2 || mine.Types[0].Name != "order" || mine.Types[1].Name != "order" {
		t.Errorf("a wf:order token lists %+v", mine.Types)
	}
	expect(t, b.call(t, "GET", "/v1/workflow-types", tokNone, ""), 403, idemapi.ProblemForbidden)
	expect(t, b.call(t, "GET", "/v1/workflow-types?x=1", tokAll, ""), 400, idemapi.ProblemInvalidRequest)

	r := b.call(t, "GET", "/v1/workflow-types/order/graph", tokOrder, "")
	expect(t, r, 200, "")
	if want := b.orderDef("order", 2).Mermaid(); string(r.body) != want || r.header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Errorf("graph %q (%s), want %q", r.body, r.header.Get("Content-Type"), want)
	}
	r = b.call(t, "GET", "/v1/workflow-types/order/graph?version=1&format=dot", tokOrder, "")
	if string(r.body) != b.orderDef("order", 1).DOT() {
		t.Errorf("dot %q", r.body)
	}
	expect(t, b.call(t, "GET", "/v1/workflow-types/order/graph?version=3", tokOrder, ""), 404, idemapi.ProblemWorkflowTypeNotFound)
	expect(t, b.call(t, "GET", "/v1/workflow-types/nope/graph", tokAll, ""), 404, idemapi.ProblemWorkflowTypeNotFound)
	expect(t, b.call(t, "GET", "/v1/workflow-types/order/graph?format=svg", tokAll, ""), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "GET", "/v1/workflow-types/order/graph?version=0", tokAll, ""), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "GET", "/v1/workflow-types/order/graph?version=1&version=2", tokAll, ""), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "GET", "/v1/workflow-types/refund/graph", tokOrder, ""), 403, idemapi.ProblemForbidden)
	expect(t, b.call(t, "GET", "/v1/workflow-types/%FF/graph", tokAll, ""), 400, idemapi.ProblemInvalidRequest)
}

// doc is the JSON form of a small valid definition.
func doc(name string, version int, extraState string) string {
	states := `{"name":"a"},{"name":"b","terminal":"success"}`
	if extraState != "" {
		states += `,{"name":"` + extraState + `","terminal":"failure"}`
	}
	trans := `{"from":"a","event":"go","to":"b","action":{"name":"call","no_compensation":true}}`
	if extraState != "" {
		trans += `,{"from":"a","event":"stop","to":"` + extraState + `"}`
	}
	return fmt.Sprintf(`{"name":%q,"version":%d,"initial":"a","states":[%s],"transitions":[%s]}`, name, version, states, trans)
}

func TestWorkflowRegister(t *testing.T) {
	b := wfSetup(t, true)
	r := b.raw(t, "POST", "/v1/workflow-types", tokOrder, "application/json", doc("order", 3, ""))
	expect(t, r, 201, "")
	ty := decodeAs[idemapi.WorkflowType](t, r)
	if ty.Name != "order" || ty.Version != 3 || !ty.Latest || !ty.Declarative || len(ty.States) != 2 {
		t.Errorf("registered %+v", ty)
	}
	if def, err := b.reg.Lookup("order", 3); err != nil || def.Fingerprint() != ty.Fingerprint {
		t.Errorf("registry: %v %v", def, err)
	}
	// Again: the same document is a no-op, 200; YAML goes to the parser
	// with a .yaml name.
	expect(t, b.raw(t, "POST", "/v1/workflow-types", tokOrder, "application/yaml", doc("order", 3, "")), 200, "")
	if b.parsed[len(b.parsed)-1] != "document.yaml" || b.parsed[0] != "document.json" {
		t.Errorf("parsed as %v", b.parsed)
	}
	// Other content under a registered version.
	expect(t, b.raw(t, "POST", "/v1/workflow-types", tokOrder, "application/json", doc("order", 3, "c")), 409, idemapi.ProblemWorkflowVersionConflict)
	// The parser's errors, as they are.
	r = b.raw(t, "POST", "/v1/workflow-types", tokOrder, "application/json", `{"name":`)
	expect(t, r, 400, idemapi.ProblemInvalidRequest)
	if p := decodeAs[idemapi.Problem](t, r); !strings.HasPrefix(p.Detail, "document.json:1:1: ") {
		t.Errorf("parse error detail %q", p.Detail)
	}
	r = b.raw(t, "POST", "/v1/workflow-types", tokOrder, "application/json", `{"name":"order","version":4,"initial":"zz","states":[{"name":"a"}]}`)
	expect(t, r, 400, idemapi.ProblemInvalidRequest)
	if p := decodeAs[idemapi.Problem](t, r); !strings.Contains(p.Detail, "initial") {
		t.Errorf("invalid definition detail %q", p.Detail)
	}
	expect(t, b.raw(t, "POST", "/v1/workflow-types", tokOrder, "application/json", doc("refund", 2, "")), 403, idemapi.ProblemForbidden)
	if _, err := b.reg.Lookup("refund", 2); err == nil {
		t.Error("a refused document was registered")
	}
	expect(t, b.raw(t, "POST", "/v1/workflow-types", tokNone, "application/json", doc("order", 5, "")), 403, idemapi.ProblemForbidden)
	expect(t, b.raw(t, "POST", "/v1/workflow-types", tokOrder, "text/plain", doc("order", 5, "")), 415, idemapi.ProblemUnsupportedMediaType)
	big := `{"name":"order","version":5,"initial":"a","states":[` + strings.Repeat(`{"name":"x"},`, 400) + `]}`
	expect(t, b.raw(t, "POST", "/v1/workflow-types", tokOrder, "application/json", big), 413, idemapi.ProblemBodyTooLarge)
	n := len(b.parsed)
	expect(t, b.raw(t, "POST", "/v1/workflow-types", tokOrder, "application/json", big), 413, idemapi.ProblemBodyTooLarge)
	if len(b.parsed) != n {
		t.Error("a document over the limit reached the parser")
	}
}

func TestWorkflowRegisterWithoutParser(t *testing.T) {
	b := wfSetup(t, true)
	srv, err := idemapi.NewServer(b.store, &idemapi.Config{Tokens: map[string][]string{tokAll: {"*"}}, Workflows: b.eng, WorkflowTypes: b.reg})
	if err != nil {
		t.Fatal(err)
	}
	b.srv = srv
	expect(t, b.raw(t, "POST", "/v1/workflow-types", tokAll, "application/json", doc("x", 1, "")), 501, idemapi.ProblemNotImplemented)
	expect(t, b.call(t, "GET", "/v1/workflow-types", tokAll, ""), 200, "")
}

func TestWorkflowStartSignalShowList(t *testing.T) {
	b := wfSetup(t, true)
	r := b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o1","input": {"sku" : "x", "qty":2}}`)
	expect(t, r, 201, "")
	w := decodeAs[idemapi.Workflow](t, r)
	if w.ID != "o1" || w.Type != "order" || w.Version != 2 || w.Run != 1 || w.State != "pending" || w.Status != "running" ||
		string(w.Input) != `{"sku":"x","qty":2}` || w.History != nil || w.Created == "" {
		t.Errorf("started %s", r.body)
	}
	// The same start (other spacing): 200, the same instance.
	r = b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o1","input":{"sku":"x","qty":2},"reuse_policy":"reject_duplicate"}`)
	expect(t, r, 200, "")
	if decodeAs[idemapi.Workflow](t, r).Fingerprint != w.Fingerprint {
		t.Error("a duplicate start answered another instance")
	}
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o1","input":{"sku":"y"}}`), 409, idemapi.ProblemWorkflowMismatch)
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","version":7,"id":"o2"}`), 404, idemapi.ProblemWorkflowTypeNotFound)
	expect(t, b.call(t, "POST", "/v1/workflows", tokAll, `{"type":"nope","id":"o2"}`), 404, idemapi.ProblemWorkflowTypeNotFound)
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":""}`), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"`+strings.Repeat("i", 256)+`"}`), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o2","reuse_policy":"sometimes"}`), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o2","version":-1}`), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"","id":"o2"}`), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"refund","id":"o2"}`), 403, idemapi.ProblemForbidden)
	expect(t, b.raw(t, "POST", "/v1/workflows", tokOrder, "text/plain", `{"type":"order","id":"o2"}`), 415, idemapi.ProblemUnsupportedMediaType)
	if _, err := b.eng.Get(context.Background(), "o2"); !errors.Is(err, idem.ErrNotFound) {
		t.Errorf("a refused start made o2: %v", err)
	}

	// Signal: accepted once, a duplicate after.
	r = b.call(t, "POST", "/v1/workflows/o1/events", tokOrder, `{"event_id":"e1","event":"place","payload":{"note":"n"}}`)
	expect(t, r, 200, "")
	if string(r.body) != "{\"duplicate\":false}\n" {
		t.Errorf("signal: %s", r.body)
	}
	r = b.call(t, "POST", "/v1/workflows/o1/events", tokOrder, `{"event_id":"e1","event":"place"}`)
	if string(r.body) != "{\"duplicate\":true}\n" {
		t.Errorf("signal again: %s", r.body)
	}
	expect(t, b.call(t, "POST", "/v1/workflows/o1/events", tokOrder, `{"event_id":"","event":"place"}`), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "POST", "/v1/workflows/o1/events", tokOrder, `{"event_id":"e2"}`), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "POST", "/v1/workflows/nope/events", tokOrder, `{"event_id":"e2","event":"place"}`), 404, idemapi.ProblemWorkflowNotFound)
	if n := b.step(t); n == 0 {
		t.Fatal("the engine did nothing")
	}
	r = b.call(t, "GET", "/v1/workflows/o1", tokOrder, "")
	expect(t, r, 200, "")
	w = decodeAs[idemapi.Workflow](t, r)
	if w.State != "reserved" || w.Status != "running" || string(w.Results["reserve"]) != `{"ok":true}` {
		t.Errorf("after place: %s", r.body)
	}
	var kinds []string
	for _, e := range w.History {
		kinds = append(kinds, e.Kind)
	}
	if got := strings.Join(kinds, " "); got != "started event_received action_started action_completed transition" {
		t.Errorf("history %s", got)
	}
	if w.History[0].Seq != 1 || w.History[2].StepKey != "o1/1/reserve" || w.History[4].To != "reserved" {
		t.Errorf("history %+v", w.History)
	}
	expect(t, b.call(t, "GET", "/v1/workflows/nope", tokOrder, ""), 404, idemapi.ProblemWorkflowNotFound)
	expect(t, b.call(t, "GET", "/v1/workflows/o1?history=0", tokOrder, ""), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "GET", "/v1/workflows/"+strings.Repeat("i", 256), tokOrder, ""), 400, idemapi.ProblemInvalidRequest)

	// A slash in an id, escaped, is one segment.
	expect(t, b.call(t, "POST", "/v1/workflows", tokAll, `{"type":"refund","id":"r/1"}`), 201, "")
	expect(t, b.call(t, "GET", "/v1/workflows/r%2F1", tokAll, ""), 200, "")
	expect(t, b.call(t, "POST", "/v1/workflows", tokAll, `{"type":"order","id":"o3"}`), 201, "")

	// List: by type, state, status, in pages; a token sees its types.
	ids := func(path, token string) string {
		t.Helper()
		r := b.call(t, "GET", path, token, "")
		expect(t, r, 200, "")
		l := decodeAs[idemapi.WorkflowListResponse](t, r)
		var s []string
		for _, w := range l.Workflows {
			s = append(s, w.ID)
		}
		return strings.Join(s, ",") + "|" + l.Next
	}
	for _, c := range []struct{ path, token, want string }{
		{"/v1/workflows", tokAll, "o1,o3,r/1|"},
		{"/v1/workflows", tokOrder, "o1,o3|"},
		{"/v1/workflows?type=order&state=reserved", tokOrder, "o1|"},
		{"/v1/workflows?status=running&limit=2", tokAll, "o1,o3|o3"},
		{"/v1/workflows?status=running&limit=2&after=o3", tokAll, "r/1|"},
		{"/v1/workflows?status=succeeded", tokAll, "|"},
	} {
		if got := ids(c.path, c.token); got != c.want {
			t.Errorf("GET %s: %s, want %s", c.path, got, c.want)
		}
	}
	expect(t, b.call(t, "GET", "/v1/workflows?type=refund", tokOrder, ""), 403, idemapi.ProblemForbidden)
	expect(t, b.call(t, "GET", "/v1/workflows?status=done", tokAll, ""), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "GET", "/v1/workflows?limit=1001", tokAll, ""), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "GET", "/v1/workflows?limit=0", tokAll, ""), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "GET", "/v1/workflows?cursor=x", tokAll, ""), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "GET", "/v1/workflows", tokNone, ""), 403, idemapi.ProblemForbidden)
}

func TestWorkflowOperators(t *testing.T) {
	b := wfSetup(t, true)
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o1","input":1}`), 201, "")
	expect(t, b.call(t, "POST", "/v1/workflows/o1/events", tokOrder, `{"event_id":"e1","event":"place"}`), 200, "")
	b.step(t)

	// Not parked, not resumable.
	expect(t, b.call(t, "POST", "/v1/workflows/o1/retry", tokOrder, ""), 409, idemapi.ProblemWorkflowNotParked)
	expect(t, b.call(t, "POST", "/v1/workflows/o1/resume", tokOrder, `{"state":"reserved"}`), 409, idemapi.ProblemWorkflowNotResumable)

	// The charge fails for good: the instance parks.
	b.failPay.Store(true)
	expect(t, b.call(t, "POST", "/v1/workflows/o1/events", tokOrder, `{"event_id":"e2","event":"pay","payload":5}`), 200, "")
	b.step(t)
	w := decodeAs[idemapi.Workflow](t, b.call(t, "GET", "/v1/workflows/o1", tokOrder, ""))
	if w.Status != "parked" || !strings.Contains(w.Error, "card declined") || w.Pending == nil || w.Pending.Action != "charge" {
		t.Fatalf("after a failed charge: %+v", w)
	}
	// Resume to a state that is none, or terminal: 400.
	expect(t, b.call(t, "POST", "/v1/workflows/o1/resume", tokOrder, `{"state":"nowhere"}`), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "POST", "/v1/workflows/o1/resume", tokOrder, `{"state":"paid"}`), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "POST", "/v1/workflows/o1/resume", tokOrder, `{"state":""}`), 400, idemapi.ProblemInvalidRequest)
	expect(t, b.call(t, "POST", "/v1/workflows/o1/resume", tokOrder, `{"state":"reserved","reason":"`+strings.Repeat("r", 1025)+`"}`), 400, idemapi.ProblemInvalidRequest)
	// Retry with an empty object: parked again, the charge ran twice.
	b.step(t)
	r := b.call(t, "POST", "/v1/workflows/o1/retry", tokOrder, "{}")
	expect(t, r, 200, "")
	if decodeAs[idemapi.Workflow](t, r).Status != "running" {
		t.Errorf("after retry: %s", r.body)
	}
	expect(t, b.call(t, "POST", "/v1/workflows/o1/retry", tokOrder, `{"x":1}`), 400, idemapi.ProblemInvalidRequest)
	b.step(t)
	if n := b.charges.Load(); n != 2 {
		t.Errorf("charge ran %d times, want 2", n)
	}
	// Resume to reserved: running there, waiting for pay again.
	r = b.call(t, "POST", "/v1/workflows/o1/resume", tokOrder, `{"state":"reserved","reason":"card replaced"}`)
	expect(t, r, 200, "")
	if w := decodeAs[idemapi.Workflow](t, r); w.Status != "running" || w.State != "reserved" || w.Pending != nil {
		t.Errorf("after resume: %s", r.body)
	}
	b.failPay.Store(false)
	expect(t, b.call(t, "POST", "/v1/workflows/o1/events", tokOrder, `{"event_id":"e3","event":"pay","payload":7}`), 200, "")
	b.step(t)
	w = decodeAs[idemapi.Workflow](t, b.call(t, "GET", "/v1/workflows/o1", tokOrder, ""))
	if w.Status != "succeeded" || w.State != "paid" || string(w.Results["charge"]) != `{"charged":7}` || w.Finished == "" {
		t.Errorf("after pay: %+v", w)
	}
	// Finished: cancel is 409.
	expect(t, b.call(t, "POST", "/v1/workflows/o1/cancel", tokOrder, `{"reason":"late"}`), 409, idemapi.ProblemWorkflowFinished)

	// Cancel a running one: unwound, cancelled.
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o2"}`), 201, "")
	expect(t, b.call(t, "POST", "/v1/workflows/o2/events", tokOrder, `{"event_id":"e1","event":"place"}`), 200, "")
	b.step(t)
	r = b.call(t, "POST", "/v1/workflows/o2/cancel", tokOrder, `{"reason":"customer"}`)
	expect(t, r, 200, "")
	if w := decodeAs[idemapi.Workflow](t, r); !w.CancelRequested || w.CancelReason != "customer" {
		t.Errorf("after cancel: %s", r.body)
	}
	b.step(t)
	if w := decodeAs[idemapi.Workflow](t, b.call(t, "GET", "/v1/workflows/o2", tokOrder, "")); w.Status != "cancelled" {
		t.Errorf("after the unwinding: %+v", w)
	}
	// A cancelled id starts again only with a reuse policy.
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o2"}`), 200, "")
	r = b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o2","reuse_policy":"allow_if_failed"}`)
	expect(t, r, 201, "")
	if w := decodeAs[idemapi.Workflow](t, r); w.Run != 2 || w.Status != "running" {
		t.Errorf("a reused id: %s", r.body)
	}
	expect(t, b.call(t, "POST", "/v1/workflows/nope/cancel", tokOrder, `{}`), 404, idemapi.ProblemWorkflowNotFound)
	expect(t, b.call(t, "POST", "/v1/workflows/o2/cancel", tokOrder, `{"reason":7}`), 400, idemapi.ProblemInvalidRequest)
}

func TestWorkflowScopes(t *testing.T) {
	b := wfSetup(t, true)
	expect(t, b.call(t, "POST", "/v1/workflows", tokAll, `{"type":"refund","id":"r1"}`), 201, "")
	for _, rt := range []struct{ method, path, body string }{
		{"GET", "/v1/workflows/r1", ""},
		{"POST", "/v1/workflows/r1/events", `{"event_id":"e","event":"place"}`},
		{"POST", "/v1/workflows/r1/cancel", `{}`},
		{"POST", "/v1/workflows/r1/retry", `{}`},
		{"POST", "/v1/workflows/r1/resume", `{"state":"pending"}`},
	} {
		expect(t, b.call(t, rt.method, rt.path, tokOrder, rt.body), 403, idemapi.ProblemForbidden)
		expect(t, b.call(t, rt.method, rt.path, tokNone, rt.body), 403, idemapi.ProblemForbidden)
		expect(t, b.call(t, rt.method, rt.path, "wrong", rt.body), 401, idemapi.ProblemUnauthorized)
	}
	w := decodeAs[idemapi.Workflow](t, b.call(t, "GET", "/v1/workflows/r1", tokAll, ""))
	if w.Status != "running" || w.CancelRequested || len(w.History) != 1 {
		t.Errorf("refused requests changed r1: %+v", w)
	}
	// A wf: scope is no ledger scope, and a ledger scope no type.
	expect(t, b.call(t, "POST", "/v1/begin", tokOrder, `{"scope":"order","key":"k","fingerprint":"f"}`), 403, idemapi.ProblemForbidden)
}

func TestWorkflowBodyBounds(t *testing.T) {
	b := wfSetup(t, true) // MaxWorkflowInput 1024
	in := `"` + strings.Repeat("x", 1030) + `"`
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o1","input":`+in+`}`), 413, idemapi.ProblemBodyTooLarge)
	// Spaces the compaction removes do not count.
	spaced := `{"a":` + strings.Repeat(" ", 2000) + `1}`
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o1","input":`+spaced+`}`), 201, "")
	// A body over input + 64 KiB.
	huge := `{"type":"order","id":"o2","input":"` + strings.Repeat("x", 1024+64<<10) + `"}`
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, huge), 413, idemapi.ProblemBodyTooLarge)
	expect(t, b.call(t, "POST", "/v1/workflows/o1/events", tokOrder, `{"event_id":"e","event":"place","payload":`+in+`}`), 413, idemapi.ProblemBodyTooLarge)
	for _, bad := range []string{
		`{"type":"order","id":"o3","input":{"a":1,"a":2}}`,
		`{"type":"order","id":"o3","input":"\ud800"}`,
		`{"type":"order","id":"o3","input":[1,}`,
		`{"type":"order","id":"o3","input":` + strings.Repeat("[", 70) + strings.Repeat("]", 70) + `}`,
		`{"type":"order","id":"o3","Type":"order"}`,
		`{"type":"order","id":"o3","version":1.5}`,
		`{"type":"order","id":"o3"} {}`,
		"{\"type\":\"order\",\"id\":\"o\xff\"}",
	} {
		expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, bad), 400, idemapi.ProblemInvalidRequest)
	}
	if _, err := b.eng.Get(context.Background(), "o3"); !errors.Is(err, idem.ErrNotFound) {
		t.Errorf("a refused body started o3: %v", err)
	}
	// Nesting up to the bound is fine.
	ok := strings.Repeat("[", 60) + strings.Repeat("]", 60)
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o4","input":`+ok+`}`), 201, "")
	if in, err := b.eng.Get(context.Background(), "o4"); err != nil || string(in.Input) != ok {
		t.Errorf("o4: %v", err)
	}
	// An input of null is none.
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o5","input":null}`), 201, "")
	expect(t, b.call(t, "POST", "/v1/workflows", tokOrder, `{"type":"order","id":"o5"}`), 200, "")
}
