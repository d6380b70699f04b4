package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/workflow"
)

// concretePath fills a document path's parameters.
func concretePath(path string) string {
	return strings.NewReplacer("{key}", "k", "{id}", "i", "{name}", "n").Replace(path)
}

// apiWFToken is bound to the workflow type order only.
const apiWFToken = "openapi-wf-order-0123456789"

// testWorkflowDef is "order": pending --pay/charge--> paid, pending
// --drop--> dropped. charge fails for good, and parks the instance, when
// the event's payload is "fail".
func testWorkflowDef(name string, version int) *workflow.Definition {
	charge := func(_ context.Context, s *workflow.Step) ([]byte, error) {
		if string(s.Input) == `"fail"` {
			return nil, workflow.Permanent(errors.New("card declined"))
		}
		return []byte(`{"charged":true}`), nil
	}
	return &workflow.Definition{
		Name: name, Version: version, Initial: "pending",
		States: []workflow.State{{Name: "pending"}, {Name: "paid", Terminal: workflow.Success}, {Name: "dropped", Terminal: workflow.Failure}},
		Transitions: []workflow.Transition{
			{From: "pending", Event: "pay", To: "paid", Action: &workflow.Action{Name: "charge", Run: charge, NoCompensation: true,
				OnExhausted: workflow.Park, Retry: &workflow.RetryPolicy{MaxAttempts: 1}}},
			{From: "pending", Event: "drop", To: "dropped"},
		},
	}
}

// jsonFormParser reads the JSON form of a Definition (a stand-in for the
// declare package whose actions do nothing); a document holding PANIC
// panics, for the server's 500.
func jsonFormParser(data []byte, name string) (*workflow.Definition, error) {
	if strings.Contains(string(data), "PANIC") {
		panic("parser bug")
	}
	var d workflow.Definition
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s:1:1: %v", name, err)
	}
	for i := range d.Transitions {
		if a := d.Transitions[i].Action; a != nil {
			a.Run = func(context.Context, *workflow.Step) ([]byte, error) { return nil, nil }
			a.NoCompensation = true
		}
	}
	d.Source = data
	return &d, d.Validate()
}

// brokenJournal fails every call: the server's 503.
type brokenJournal struct{}

var errDisk = errors.New("disk on fire")

func (brokenJournal) Create(context.Context, *workflow.CreateParams) (*workflow.CreateResult, error) {
	return nil, errDisk
}
func (brokenJournal) Get(context.Context, *workflow.GetParams) (*workflow.GetResult, error) {
	return nil, errDisk
}
func (brokenJournal) Append(context.Context, *workflow.AppendParams) (*workflow.AppendResult, error) {
	return nil, errDisk
}
func (brokenJournal) List(context.Context, *workflow.ListParams) (*workflow.ListResult, error) {
	return nil, errDisk
}
func (brokenJournal) Delete(context.Context, *workflow.DeleteParams) (*workflow.DeleteResult, error) {
	return nil, errDisk
}

// panicJournal panics at every call: the server's 500.
type panicJournal struct{ brokenJournal }

func (panicJournal) Get(context.Context, *workflow.GetParams) (*workflow.GetResult, error) {
	panic("bug")
}
func (panicJournal) List(context.Context, *workflow.ListParams) (*workflow.ListResult, error) {
	panic("bug")
}

// wfAPI starts an API server with an engine over journal, returning the
// server and the engine (driven by Step).
func wfAPI(t *testing.T, journal workflow.Journal, seen *coverage) (*apiServer, *workflow.Engine) {
	t.Helper()
	reg := workflow.NewRegistry()
	if err := reg.Register(testWorkflowDef("order", 1)); err != nil {
		t.Fatal(err)
	}
	if err := reg.Register(testWorkflowDef("refund", 1)); err != nil {
		t.Fatal(err)
	}
	eng, err := workflow.NewEngine(journal, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	a := startAPI(t, store, seen, func(c *idemapi.Config) {
		c.Tokens[apiWFToken] = []string{"wf:order"}
		c.Workflows, c.WorkflowTypes, c.ParseWorkflow = eng, reg, jsonFormParser
		c.MaxWorkflowDocument, c.MaxWorkflowInput = 4096, 1024
	})
	return a, eng
}

// driveWorkflowRoutes drives every workflow operation to every status the
// document gives it.
func driveWorkflowRoutes(t *testing.T, seen *coverage) {
	good, eng := wfAPI(t, workflow.NewMemJournal(), seen)
	broken, _ := wfAPI(t, brokenJournal{}, seen)
	buggy, _ := wfAPI(t, panicJournal{}, seen)
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	none := startAPI(t, store, seen)
	step := func() {
		t.Helper()
		if _, err := eng.Step(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	const (
		ops  = apiOpsToken
		mine = apiWFToken
		bill = apiBillingToken // bound to no workflow type
	)
	doc := func(name string, version int, extra string) string {
		return fmt.Sprintf(`{"name":%q,"version":%d,"initial":"a","states":[{"name":"a"},{"name":"b","terminal":"success"}%s],`+
			`"transitions":[{"from":"a","event":"go","to":"b","action":{"name":"call","no_compensation":true}}]}`, name, version, extra)
	}
	yaml := "application/yaml"

	// Types, registration, graphs.
	good.expect(t, 200, "", "GET", "/v1/workflow-types", mine, nil)
	good.expect(t, 400, idemapi.ProblemInvalidRequest, "GET", "/v1/workflow-types?x=1", ops, nil)
	good.expect(t, 401, idemapi.ProblemUnauthorized, "GET", "/v1/workflow-types", "", nil)
	good.expect(t, 403, idemapi.ProblemForbidden, "GET", "/v1/workflow-types", bill, nil)
	none.expect(t, 501, idemapi.ProblemNotImplemented, "GET", "/v1/workflow-types", ops, nil)

	good.expectCT(t, 201, "", "POST", "/v1/workflow-types", mine, doc("order", 2, ""), "application/json")
	good.expectCT(t, 200, "", "POST", "/v1/workflow-types", mine, doc("order", 2, ""), "application/json")
	good.expectCT(t, 201, "", "POST", "/v1/workflow-types", mine, doc("order", 3, ""), yaml)
	good.expectCT(t, 409, idemapi.ProblemWorkflowVersionConflict, "POST", "/v1/workflow-types", mine, strings.Replace(doc("order", 2, ""), `"event":"go"`, `"event":"run"`, 1), "application/json")
	good.expectCT(t, 400, idemapi.ProblemInvalidRequest, "POST", "/v1/workflow-types", mine, `{"name":"order","version":4}`, "application/json")
	good.expectCT(t, 401, idemapi.ProblemUnauthorized, "POST", "/v1/workflow-types", "", doc("order", 4, ""), "application/json")
	good.expectCT(t, 403, idemapi.ProblemForbidden, "POST", "/v1/workflow-types", mine, doc("refund", 2, ""), "application/json")
	good.expectCT(t, 413, idemapi.ProblemBodyTooLarge, "POST", "/v1/workflow-types", mine,
		doc("order", 4, strings.Repeat(`,{"name":"x"}`, 400)), "application/json")
	good.expectCT(t, 415, idemapi.ProblemUnsupportedMediaType, "POST", "/v1/workflow-types", mine, doc("order", 4, ""), "text/plain")
	good.expectCT(t, 500, idemapi.ProblemInternal, "POST", "/v1/workflow-types", mine, `{"name":"PANIC"}`, "application/json")
	none.expectCT(t, 501, idemapi.ProblemNotImplemented, "POST", "/v1/workflow-types", ops, doc("order", 4, ""), "application/json")

	good.expect(t, 200, "", "GET", "/v1/workflow-types/order/graph?version=1&format=dot", mine, nil)
	good.expect(t, 400, idemapi.ProblemInvalidRequest, "GET", "/v1/workflow-types/order/graph?format=svg", mine, nil)
	good.expect(t, 401, idemapi.ProblemUnauthorized, "GET", "/v1/workflow-types/order/graph", "", nil)
	good.expect(t, 403, idemapi.ProblemForbidden, "GET", "/v1/workflow-types/refund/graph", mine, nil)
	good.expect(t, 404, idemapi.ProblemWorkflowTypeNotFound, "GET", "/v1/workflow-types/order/graph?version=9", mine, nil)
	none.expect(t, 501, idemapi.ProblemNotImplemented, "GET", "/v1/workflow-types/order/graph", ops, nil)

	// Start and list.
	start := func(id string, input any) obj {
		o := obj{"type": "order", "version": 1, "id": id}
		if input != nil {
			o["input"] = input
		}
		return o
	}
	good.expect(t, 201, "", "POST", "/v1/workflows", mine, start("w1", obj{"qty": 2}))
	good.expect(t, 200, "", "POST", "/v1/workflows", mine, start("w1", obj{"qty": 2}))
	good.expect(t, 409, idemapi.ProblemWorkflowMismatch, "POST", "/v1/workflows", mine, start("w1", obj{"qty": 3}))
	good.expect(t, 404, idemapi.ProblemWorkflowTypeNotFound, "POST", "/v1/workflows", mine, obj{"type": "order", "version": 9, "id": "w2"})
	good.expect(t, 400, idemapi.ProblemInvalidRequest, "POST", "/v1/workflows", mine, obj{"type": "order", "id": ""})
	good.expect(t, 401, idemapi.ProblemUnauthorized, "POST", "/v1/workflows", "", start("w2", nil))
	good.expect(t, 403, idemapi.ProblemForbidden, "POST", "/v1/workflows", mine, obj{"type": "refund", "id": "w2"})
	good.expect(t, 413, idemapi.ProblemBodyTooLarge, "POST", "/v1/workflows", mine, start("w2", strings.Repeat("x", 2000)))
	good.expectCT(t, 415, idemapi.ProblemUnsupportedMediaType, "POST", "/v1/workflows", mine, start("w2", nil), "text/plain")
	buggy.expect(t, 500, idemapi.ProblemInternal, "POST", "/v1/workflows", ops, start("w2", nil))
	none.expect(t, 501, idemapi.ProblemNotImplemented, "POST", "/v1/workflows", ops, start("w2", nil))
	broken.expect(t, 503, idemapi.ProblemUnavailable, "POST", "/v1/workflows", ops, start("w2", nil))

	good.expect(t, 200, "", "GET", "/v1/workflows?type=order&status=running&limit=10", mine, nil)
	good.expect(t, 400, idemapi.ProblemInvalidRequest, "GET", "/v1/workflows?limit=0", mine, nil)
	good.expect(t, 401, idemapi.ProblemUnauthorized, "GET", "/v1/workflows", "", nil)
	good.expect(t, 403, idemapi.ProblemForbidden, "GET", "/v1/workflows?type=refund", mine, nil)
	buggy.expect(t, 500, idemapi.ProblemInternal, "GET", "/v1/workflows", ops, nil)
	none.expect(t, 501, idemapi.ProblemNotImplemented, "GET", "/v1/workflows", ops, nil)
	broken.expect(t, 503, idemapi.ProblemUnavailable, "GET", "/v1/workflows", ops, nil)

	// The routes of one instance: w1 running, w3 parked, w4 succeeded.
	good.expect(t, 201, "", "POST", "/v1/workflows", mine, start("w3", nil))
	good.expect(t, 200, "", "POST", "/v1/workflows/w3/events", mine, obj{"event_id": "e1", "event": "pay", "payload": "fail"})
	good.expect(t, 201, "", "POST", "/v1/workflows", mine, start("w4", nil))
	good.expect(t, 200, "", "POST", "/v1/workflows/w4/events", mine, obj{"event_id": "e1", "event": "pay", "payload": obj{"card": "ok"}})
	step()
	good.expect(t, 200, "", "GET", "/v1/workflows/w3", mine, nil)
	good.expect(t, 200, "", "GET", "/v1/workflows/w4", mine, nil)
	good.expect(t, 200, "", "POST", "/v1/workflows/w3/retry", mine, nil)
	step()
	good.expect(t, 200, "", "POST", "/v1/workflows/w3/retry", mine, obj{})
	step()
	good.expect(t, 200, "", "POST", "/v1/workflows/w3/resume", mine, obj{"state": "pending", "reason": "fixed"})
	good.expect(t, 200, "", "POST", "/v1/workflows/w1/cancel", mine, obj{"reason": "no longer wanted"})
	good.expect(t, 409, idemapi.ProblemWorkflowNotParked, "POST", "/v1/workflows/w4/retry", mine, obj{})
	good.expect(t, 409, idemapi.ProblemWorkflowNotResumable, "POST", "/v1/workflows/w4/resume", mine, obj{"state": "pending"})
	good.expect(t, 409, idemapi.ProblemWorkflowFinished, "POST", "/v1/workflows/w4/cancel", mine, obj{})

	bodies := map[string]obj{
		"events": {"event_id": "e9", "event": "drop"}, "cancel": {}, "retry": {}, "resume": {"state": "pending"},
	}
	bad := map[string]string{
		"events": `{"event_id":"e9"}`, "cancel": `{"reason":1}`, "retry": `{"x":1}`, "resume": `{"state":""}`,
	}
	for _, action := range []string{"", "events", "cancel", "retry", "resume"} {
		path := func(id string) string {
			if action == "" {
				return "/v1/workflows/" + id
			}
			return "/v1/workflows/" + id + "/" + action
		}
		method := "POST"
		var body any = bodies[action]
		if action == "" {
			method, body = "GET", nil
		}
		good.expect(t, 400, idemapi.ProblemInvalidRequest, method, path(strings.Repeat("i", 256)), mine, body)
		good.expect(t, 401, idemapi.ProblemUnauthorized, method, path("w4"), "", body)
		good.expect(t, 403, idemapi.ProblemForbidden, method, path("w4"), bill, body)
		good.expect(t, 404, idemapi.ProblemWorkflowNotFound, method, path("nope"), mine, body)
		buggy.expect(t, 500, idemapi.ProblemInternal, method, path("w4"), ops, body)
		none.expect(t, 501, idemapi.ProblemNotImplemented, method, path("w4"), ops, body)
		broken.expect(t, 503, idemapi.ProblemUnavailable, method, path("w4"), ops, body)
		if action == "" {
			continue
		}
		good.expect(t, 400, idemapi.ProblemInvalidRequest, method, path("w4"), mine, bad[action])
		good.expectCT(t, 415, idemapi.ProblemUnsupportedMediaType, method, path("w4"), mine, body, "text/plain")
		big := `{"reason":"` + strings.Repeat("r", 70<<10) + `"}`
		good.expect(t, 413, idemapi.ProblemBodyTooLarge, method, path("w4"), mine, big)
	}
}
