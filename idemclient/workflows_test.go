package idemclient_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemclient"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/workflow"
)

// wfServer is a real idemapi server with a workflow engine over a
// MemJournal, driven by Step, and clients for a "*" token and a token
// bound to wf:order only.
type wfServer struct {
	eng       *workflow.Engine
	reg       *workflow.Registry
	all, mine *idemclient.Client
	url       string
	failPay   atomic.Bool
}

func wfNoop(context.Context, *workflow.Step) ([]byte, error) { return []byte(`"done"`), nil }

func (s *wfServer) def(name string) *workflow.Definition {
	pay := func(context.Context, *workflow.Step) ([]byte, error) {
		if s.failPay.Load() {
			return nil, workflow.Permanent(errors.New("declined"))
		}
		return []byte(`{"paid":true}`), nil
	}
	return &workflow.Definition{
		Name: name, Version: 1, Initial: "new",
		States: []workflow.State{{Name: "new"}, {Name: "done", Terminal: workflow.Success}, {Name: "dropped", Terminal: workflow.Failure}},
		Transitions: []workflow.Transition{
			{From: "new", Event: "pay", To: "done", Action: &workflow.Action{Name: "pay", Run: pay, Compensate: wfNoop,
				OnExhausted: workflow.Park, Retry: &workflow.RetryPolicy{MaxAttempts: 1}}},
			{From: "new", Event: "drop", To: "dropped"},
		},
	}
}

// parseJSONDefinition stands in for the declare package: the JSON form of
// a Definition whose actions do nothing.
func parseJSONDefinition(data []byte, name string) (*workflow.Definition, error) {
	var d workflow.Definition
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s:1:1: %v", name, err)
	}
	for i := range d.Transitions {
		if a := d.Transitions[i].Action; a != nil {
			a.Run = wfNoop
			if !a.NoCompensation {
				a.Compensate = wfNoop
			}
		}
	}
	d.Source = data
	return &d, d.Validate()
}

func newWFServer(t *testing.T) *wfServer {
	t.Helper()
	s := &wfServer{reg: workflow.NewRegistry()}
	for _, n := range []string{"order", "refund"} {
		if err := s.reg.Register(s.def(n)); err != nil {
			t.Fatal(err)
		}
	}
	eng, err := workflow.NewEngine(workflow.NewMemJournal(), s.reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.eng = eng
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	h, err := idemapi.NewServer(store, &idemapi.Config{
		Tokens:    map[string][]string{"tok-all": {"*"}, "tok-order": {"wf:order"}},
		Workflows: eng, WorkflowTypes: s.reg, ParseWorkflow: parseJSONDefinition,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	s.url = srv.URL
	for tok, dst := range map[string]**idemclient.Client{"tok-all": &s.all, "tok-order": &s.mine} {
		c, err := idemclient.New(srv.URL, tok, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		*dst = c
	}
	return s
}

func (s *wfServer) step(t *testing.T) {
	t.Helper()
	if _, err := s.eng.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestWorkflowRoundTrip(t *testing.T) {
	s := newWFServer(t)
	ctx := context.Background()

	// Types and graphs.
	types, err := s.mine.WorkflowTypes(ctx)
	if err != nil || len(types) != 1 || types[0].Name != "order" || types[0].Fingerprint != s.def("order").Fingerprint() || !types[0].Latest {
		t.Fatalf("types %+v, %v", types, err)
	}
	if g, err := s.mine.WorkflowGraph(ctx, "order", 0, ""); err != nil || g != s.def("order").Mermaid() {
		t.Errorf("graph %q, %v", g, err)
	}
	if g, err := s.mine.WorkflowGraph(ctx, "order", 1, "dot"); err != nil || g != s.def("order").DOT() {
		t.Errorf("dot %q, %v", g, err)
	}
	if _, err := s.mine.WorkflowGraph(ctx, "refund", 0, ""); !errors.Is(err, idemclient.ErrForbidden) {
		t.Errorf("graph of another type: %v", err)
	}
	if _, err := s.all.WorkflowGraph(ctx, "nope", 0, ""); !errors.Is(err, workflow.ErrNotRegistered) {
		t.Errorf("graph of no type: %v", err)
	}
	if _, err := s.all.WorkflowGraph(ctx, "order", 0, "svg"); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("graph as svg: %v", err)
	}

	// Register a document: created, then the same again, then a conflict.
	doc := `{"name":"order","version":2,"initial":"a","states":[{"name":"a"},{"name":"b","terminal":"success"}],"transitions":[{"from":"a","event":"go","to":"b"}]}`
	wt, created, err := s.mine.RegisterWorkflow(ctx, []byte(doc))
	if err != nil || !created || wt.Version != 2 || !wt.Declarative || !wt.Latest {
		t.Fatalf("register: %+v %v %v", wt, created, err)
	}
	// Leading space is other bytes: another Source, another fingerprint.
	if _, _, err := s.mine.RegisterWorkflow(ctx, []byte(" \n"+doc)); !errors.Is(err, workflow.ErrVersionConflict) {
		t.Errorf("register other bytes: %v", err)
	}
	if _, created, err := s.mine.RegisterWorkflow(ctx, []byte(doc)); err != nil || created {
		t.Errorf("register again: %v %v", created, err)
	}
	if _, _, err := s.mine.RegisterWorkflow(ctx, []byte(`{"name":`)); !errors.Is(err, idem.ErrInvalid) || !strings.Contains(err.Error(), "document.json:1:1") {
		t.Errorf("register a broken document: %v", err)
	}
	if _, _, err := s.mine.RegisterWorkflow(ctx, []byte("name: order\n")); !errors.Is(err, idem.ErrInvalid) || !strings.Contains(err.Error(), "document.yaml") {
		t.Errorf("register YAML: %v", err)
	}

	// Start, duplicate, mismatch.
	start := &idemapi.StartWorkflowRequest{Type: "order", Version: 1, ID: "o/1", Input: json.RawMessage(`{"qty": 2}`)}
	w, created, err := s.mine.StartWorkflow(ctx, start)
	if err != nil || !created || w.ID != "o/1" || w.Status != "running" || string(w.Input) != `{"qty":2}` {
		t.Fatalf("start: %+v %v %v", w, created, err)
	}
	if _, created, err := s.mine.StartWorkflow(ctx, start); err != nil || created {
		t.Errorf("start again: %v %v", created, err)
	}
	other := *start
	other.Input = json.RawMessage(`{"qty":3}`)
	if _, _, err := s.mine.StartWorkflow(ctx, &other); !errors.Is(err, idem.ErrFingerprintMismatch) {
		t.Errorf("start with another input: %v", err)
	}
	if _, _, err := s.mine.StartWorkflow(ctx, &idemapi.StartWorkflowRequest{Type: "refund", ID: "r1"}); !errors.Is(err, idemclient.ErrForbidden) {
		t.Errorf("start of another type: %v", err)
	}
	if _, _, err := s.all.StartWorkflow(ctx, &idemapi.StartWorkflowRequest{Type: "order", Version: 9, ID: "o2"}); !errors.Is(err, workflow.ErrNotRegistered) {
		t.Errorf("start of no version: %v", err)
	}
	if _, _, err := s.all.StartWorkflow(ctx, &idemapi.StartWorkflowRequest{Type: "order", ID: ""}); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("start with no id: %v", err)
	}
	if _, _, err := s.all.StartWorkflow(ctx, &idemapi.StartWorkflowRequest{Type: "order", ID: "o3", Input: json.RawMessage(`{`)}); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("start with broken JSON: %v", err)
	}

	// Signal, the engine runs, get with history.
	if dup, err := s.mine.SignalWorkflow(ctx, "o/1", "e1", "pay", json.RawMessage(`{"card":"x"}`)); err != nil || dup {
		t.Fatalf("signal: %v %v", dup, err)
	}
	if dup, err := s.mine.SignalWorkflow(ctx, "o/1", "e1", "pay", nil); err != nil || !dup {
		t.Errorf("signal again: %v %v", dup, err)
	}
	if _, err := s.mine.SignalWorkflow(ctx, "nope", "e1", "pay", nil); !errors.Is(err, idem.ErrNotFound) {
		t.Errorf("signal no instance: %v", err)
	}
	s.step(t)
	w, err = s.mine.GetWorkflow(ctx, "o/1")
	if err != nil || w.Status != "succeeded" || w.State != "done" || len(w.History) < 4 || string(w.Results["pay"]) != `{"paid":true}` {
		t.Fatalf("get: %+v %v", w, err)
	}
	if _, err := s.mine.CancelWorkflow(ctx, "o/1", "late"); !errors.Is(err, workflow.ErrFinished) {
		t.Errorf("cancel a finished one: %v", err)
	}
	if _, err := s.mine.GetWorkflow(ctx, "nope"); !errors.Is(err, idem.ErrNotFound) {
		t.Errorf("get no instance: %v", err)
	}

	// Park, retry, resume, cancel.
	s.failPay.Store(true)
	if _, _, err := s.mine.StartWorkflow(ctx, &idemapi.StartWorkflowRequest{Type: "order", Version: 1, ID: "o4"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.mine.RetryWorkflow(ctx, "o4"); !errors.Is(err, workflow.ErrNotParked) {
		t.Errorf("retry a running one: %v", err)
	}
	if _, err := s.mine.ResumeWorkflow(ctx, "o4", "new", ""); !errors.Is(err, workflow.ErrNotResumable) {
		t.Errorf("resume a running one: %v", err)
	}
	if _, err := s.mine.SignalWorkflow(ctx, "o4", "e1", "pay", nil); err != nil {
		t.Fatal(err)
	}
	s.step(t)
	if w, err := s.mine.RetryWorkflow(ctx, "o4"); err != nil || w.Status != "running" {
		t.Fatalf("retry: %+v %v", w, err)
	}
	s.step(t)
	if _, err := s.mine.ResumeWorkflow(ctx, "o4", "done", ""); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("resume to a terminal state: %v", err)
	}
	if w, err := s.mine.ResumeWorkflow(ctx, "o4", "new", "fixed"); err != nil || w.State != "new" || w.Status != "running" {
		t.Fatalf("resume: %+v %v", w, err)
	}
	if w, err := s.mine.CancelWorkflow(ctx, "o4", "gave up"); err != nil || !w.CancelRequested {
		t.Fatalf("cancel: %+v %v", w, err)
	}
	s.step(t)

	// List: the token's types, filters, pages.
	if _, _, err := s.all.StartWorkflow(ctx, &idemapi.StartWorkflowRequest{Type: "refund", ID: "r1"}); err != nil {
		t.Fatal(err)
	}
	ids := func(c *idemclient.Client, p *idemclient.WorkflowListParams) string {
		t.Helper()
		l, err := c.ListWorkflows(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, w := range l.Workflows {
			s = append(s, w.ID+":"+w.Status)
		}
		return strings.Join(s, ",") + "|" + l.Next
	}
	for _, c := range []struct {
		c    *idemclient.Client
		p    *idemclient.WorkflowListParams
		want string
	}{
		{s.all, nil, "o/1:succeeded,o4:cancelled,r1:running|"},
		{s.mine, nil, "o/1:succeeded,o4:cancelled|"},
		{s.all, &idemclient.WorkflowListParams{Status: "running"}, "r1:running|"},
		{s.all, &idemclient.WorkflowListParams{Limit: 1}, "o/1:succeeded|o/1"},
		{s.all, &idemclient.WorkflowListParams{Limit: 1, After: "o/1"}, "o4:cancelled|o4"},
		{s.mine, &idemclient.WorkflowListParams{Type: "order", State: "new"}, "o4:cancelled|"},
	} {
		if got := ids(c.c, c.p); got != c.want {
			t.Errorf("list %+v: %s, want %s", c.p, got, c.want)
		}
	}
	if _, err := s.mine.ListWorkflows(ctx, &idemclient.WorkflowListParams{Type: "refund"}); !errors.Is(err, idemclient.ErrForbidden) {
		t.Errorf("list another type: %v", err)
	}
	if _, err := s.mine.ListWorkflows(ctx, &idemclient.WorkflowListParams{Limit: 1001}); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("list over the limit: %v", err)
	}
}

func TestWorkflowWithoutEngine(t *testing.T) {
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	h, err := idemapi.NewServer(store, &idemapi.Config{Tokens: map[string][]string{"tok": {"*"}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := idemclient.New(srv.URL, "tok", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WorkflowTypes(context.Background()); !errors.Is(err, idem.ErrNotImplemented) {
		t.Errorf("types without an engine: %v", err)
	}
	var pe *idemclient.ProblemError
	if _, err := c.GetWorkflow(context.Background(), "x"); !errors.As(err, &pe) || pe.Status != http.StatusNotImplemented {
		t.Errorf("get without an engine: %v", err)
	}
}

// TestWaitWorkflow: WaitWorkflow long-polls until the instance ends, and
// returns ctx's error when ctx ends first; the server refuses a wait out
// of bounds.
func TestWaitWorkflow(t *testing.T) {
	s := newWFServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.eng.Run(ctx) }()
	if _, _, err := s.all.StartWorkflow(ctx, &idemapi.StartWorkflowRequest{Type: "order", ID: "w1"}); err != nil {
		t.Fatal(err)
	}
	short, stop := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer stop()
	if _, err := s.all.WaitWorkflow(short, "w1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait on a waiting instance with a short context: %v", err)
	}
	done := make(chan *idemapi.Workflow)
	go func() {
		w, err := s.all.WaitWorkflow(ctx, "w1")
		if err != nil {
			t.Error(err)
		}
		done <- w
	}()
	if _, err := s.all.SignalWorkflow(ctx, "w1", "e1", "pay", nil); err != nil {
		t.Fatal(err)
	}
	w := <-done
	if w == nil || w.Status != "succeeded" || w.State != "done" || len(w.History) == 0 {
		t.Fatalf("waited: %+v", w)
	}
	if _, err := s.all.WaitWorkflow(ctx, "nope"); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("wait unknown: %v", err)
	}
	c := &http.Client{}
	for _, q := range []string{"wait=2m", "wait=-1s", "wait=soon"} {
		req, _ := http.NewRequest(http.MethodGet, s.url+"/v1/workflows/w1?"+q, nil)
		req.Header.Set("Authorization", "Bearer tok-all")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("%s: status %d", q, resp.StatusCode)
		}
	}
}
