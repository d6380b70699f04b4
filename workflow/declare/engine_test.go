package declare_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/declare"
)

// call is one request a stub received.
type call struct {
	Method, Path, Body string
	Header             http.Header
}

// stub is a downstream service that records what it is asked and
// answers from a table of "METHOD /path" -> handler.
type stub struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	calls  []call
	routes map[string]http.HandlerFunc
}

func newStub(t *testing.T) *stub {
	s := &stub{t: t, routes: map[string]http.HandlerFunc{}}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.calls = append(s.calls, call{Method: r.Method, Path: r.URL.RequestURI(), Body: string(b), Header: r.Header.Clone()})
		h := s.routes[r.Method+" "+r.URL.Path]
		s.mu.Unlock()
		if h == nil {
			http.Error(w, "no route", http.StatusNotFound)
			return
		}
		h(w, r)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *stub) on(route string, h http.HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes[route] = h
}

// answer returns a handler writing status and body (JSON).
func answer(status int, body string, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		if body != "" {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

func (s *stub) log() []call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// lines returns "METHOD /path body" per call.
func (s *stub) lines() []string {
	var out []string
	for _, c := range s.log() {
		out = append(out, strings.TrimSpace(c.Method+" "+c.Path+" "+c.Body))
	}
	return out
}

// engine runs definitions on a MemJournal with a manual clock and no
// jitter.
type engine struct {
	t   *testing.T
	clk *idem.ManualClock
	eng *workflow.Engine
}

func newEngine(t *testing.T, defs ...*workflow.Definition) *engine {
	t.Helper()
	reg := workflow.NewRegistry()
	for _, d := range defs {
		if err := reg.Register(d); err != nil {
			t.Fatal(err)
		}
	}
	clk := idem.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	eng, err := workflow.NewEngine(workflow.NewMemJournal(), reg, &workflow.EngineConfig{Clock: clk, Rand: func() float64 { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	return &engine{t: t, clk: clk, eng: eng}
}

// drain runs the engine until it has nothing due.
func (e *engine) drain() {
	e.t.Helper()
	for range 100 {
		n, err := e.eng.Step(context.Background())
		if err != nil {
			e.t.Fatalf("Step: %v", err)
		}
		if n == 0 {
			return
		}
	}
	e.t.Fatal("Step never ran out of work")
}

func (e *engine) start(typ, id, input string) {
	e.t.Helper()
	if _, err := e.eng.Start(context.Background(), typ, 0, id, []byte(input), nil); err != nil {
		e.t.Fatal(err)
	}
}

func (e *engine) get(id string) *workflow.Instance {
	e.t.Helper()
	in, err := e.eng.Get(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return in
}

func parseFile(t *testing.T, file string, vars map[string]string) *workflow.Definition {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	def, err := declare.Parse(data, file, &declare.Options{Vars: vars})
	if err != nil {
		t.Fatal(err)
	}
	return def
}

func orderStub(t *testing.T) (*stub, *workflow.Definition) {
	s := newStub(t)
	s.on("POST /reservations", answer(201, `{"id": "r-42", "sku": "book"}`))
	s.on("DELETE /reservations/r-42", answer(204, ""))
	s.on("POST /charges", answer(200, `{"id":"c-7","status":"captured"}`))
	s.on("POST /refunds", answer(200, `{}`))
	s.on("POST /shipments", answer(202, `{"tracking":"t-1"}`))
	u := s.srv.URL
	def := parseFile(t, "testdata/order.yaml", map[string]string{"stock": u, "payments": u, "shipping": u, "token": "s3cret"})
	return s, def
}

const orderInput = `{"sku": "book", "qty": 2, "amount": {"value": 1250, "currency": "EUR"}}`

func TestOrderSagaSucceeds(t *testing.T) {
	s, def := orderStub(t)
	e := newEngine(t, def)
	e.start("order", "o1", orderInput)
	e.drain()
	in := e.get("o1")
	if in.Status != workflow.Succeeded || in.State != "shipped" {
		t.Fatalf("status %s state %s error %q", in.Status, in.State, in.Error)
	}
	want := []string{
		`POST /reservations {"sku":"book","qty":2,"order":"o1"}`,
		`POST /charges {"amount":{"value":1250,"currency":"EUR"},"reference":"order o1, reservation r-42"}`,
		`POST /shipments {"reservation":"r-42","items":["book"]}`,
	}
	if got := s.lines(); !slices.Equal(got, want) {
		t.Fatalf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	calls := s.log()
	keys := map[string]bool{}
	for i, c := range calls {
		action := []string{"reserve", "charge", "ship"}[i]
		key := c.Header.Get("Idempotency-Key")
		if !strings.HasPrefix(key, "o1/") || !strings.HasSuffix(key, "/"+action) || keys[key] {
			t.Errorf("%s: Idempotency-Key %q", action, key)
		}
		keys[key] = true
		if tok := c.Header.Get(declare.FencingTokenHeader); tok != fmt.Sprint(in.Token) {
			t.Errorf("%s: Fencing-Token %q, instance token %d", action, tok, in.Token)
		}
		if ct := c.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q", action, ct)
		}
		if a := c.Header.Get("Authorization"); a != "Bearer s3cret" {
			t.Errorf("%s: Authorization %q", action, a)
		}
	}
	if got := calls[2].Header.Get("X-Reservation"); got != "r-42" {
		t.Errorf("ship: X-Reservation %q", got)
	}
	if got := string(in.Results["ship"]); got != `{"tracking":"t-1"}` {
		t.Errorf("ship result %s", got)
	}
}

func TestOrderSagaUnwindsOnDeclinedCharge(t *testing.T) {
	s, def := orderStub(t)
	s.on("POST /charges", answer(402, `{"error":"card declined"}`))
	e := newEngine(t, def)
	e.start("order", "o2", orderInput)
	e.drain()
	in := e.get("o2")
	if in.Status != workflow.Failed {
		t.Fatalf("status %s state %s", in.Status, in.State)
	}
	if !strings.Contains(in.Error, "402 Payment Required") || !strings.Contains(in.Error, "card declined") {
		t.Errorf("instance error %q", in.Error)
	}
	want := []string{
		`POST /reservations {"sku":"book","qty":2,"order":"o2"}`,
		`POST /charges {"amount":{"value":1250,"currency":"EUR"},"reference":"order o2, reservation r-42"}`,
		`DELETE /reservations/r-42`,
	}
	if got := s.lines(); !slices.Equal(got, want) {
		t.Fatalf("requests (a 402 is not retried, the reservation is released):\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	calls := s.log()
	release := calls[2]
	reserveKey := calls[0].Header.Get("Idempotency-Key")
	step := strings.Split(reserveKey, "/")[1]
	if got, want := release.Header.Get("Idempotency-Key"), "o2/"+step+"/compensate/reserve"; got != want {
		t.Errorf("release Idempotency-Key %q, want %q", got, want)
	}
	if got := release.Header.Get("Content-Type"); got != "" {
		t.Errorf("a request without a body has Content-Type %q", got)
	}
	if got := release.Header.Get(declare.FencingTokenHeader); got != fmt.Sprint(in.Token) {
		t.Errorf("release Fencing-Token %q", got)
	}
}

// retryWait runs an action answered by h once and returns how long the
// engine waits before the next attempt, and the instance.
func retryWait(t *testing.T, h http.HandlerFunc) (time.Duration, *workflow.Instance) {
	t.Helper()
	s := newStub(t)
	s.on("POST /do", h)
	doc := fmt.Sprintf(`name: once
version: 1
initial: a
states: [{name: a}, {name: b, terminal: success}]
transitions:
  - from: a
    to: b
    action:
      name: do
      request: {url: "%s/do"}
      no_compensation: true
      retry: {max_attempts: 3, initial_backoff: 1s, jitter: 0}
`, s.srv.URL)
	def, err := declare.Parse([]byte(doc), "once.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, def)
	e.start("once", "x", "{}")
	now := e.clk.Now()
	e.drain()
	in := e.get("x")
	if len(s.log()) != 1 {
		t.Fatalf("%d requests, want 1", len(s.log()))
	}
	if in.NotBefore.IsZero() {
		return 0, in
	}
	return in.NotBefore.Sub(now), in
}

func TestRetryableStatusesWait(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		wait time.Duration
	}{
		{"500 backs off", answer(500, `{"error":"boom"}`), time.Second},
		{"503 Retry-After seconds", answer(503, "", "Retry-After", "120"), 120 * time.Second},
		{"429 Retry-After seconds", answer(429, "", "Retry-After", "7"), 7 * time.Second},
		{"408 backs off", answer(408, ""), time.Second},
		{"502 Retry-After shorter than the backoff", answer(502, "", "Retry-After", "0"), time.Second},
		{"503 bad Retry-After ignored", answer(503, "", "Retry-After", "soon"), time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wait, in := retryWait(t, tc.h)
			if in.Status != workflow.Running || in.Attempt != 1 || wait != tc.wait {
				t.Fatalf("status %s attempt %d wait %s, want running, 1, %s", in.Status, in.Attempt, wait, tc.wait)
			}
		})
	}
}

func TestRetryAfterHTTPDate(t *testing.T) {
	at := time.Now().Add(time.Hour).UTC()
	wait, in := retryWait(t, answer(429, "", "Retry-After", at.Format(http.TimeFormat)))
	// The date has whole seconds and is read against the wall clock.
	if in.Attempt != 1 || wait <= 58*time.Minute || wait > time.Hour {
		t.Fatalf("attempt %d wait %s, want about 1h", in.Attempt, wait)
	}
}

func TestPermanentStatusFailsAtOnce(t *testing.T) {
	for _, code := range []int{400, 401, 403, 404, 409, 422} {
		_, in := retryWait(t, answer(code, `{"error":"no"}`))
		if in.Status != workflow.Failed || !strings.Contains(in.Error, fmt.Sprint(code)) {
			t.Errorf("%d: status %s error %q, want failed after one request", code, in.Status, in.Error)
		}
	}
}

func TestNextRulesChooseEvents(t *testing.T) {
	for _, tc := range []struct {
		body, state string
		status      workflow.Status
	}{
		{`{"verdict": {"status": "approved"}, "score": 90}`, "approved", workflow.Succeeded},
		{`{"verdict": {"status": "fraud"}, "score": 90}`, "declined", workflow.Failed},
		{`{"verdict": {"status": "declined"}}`, "declined", workflow.Failed},
		{`{"verdict": {"status": "unsure"}, "score": 0.0}`, "declined", workflow.Failed},
		{`{"verdict": {"status": "unsure"}, "score": 40}`, "manual", workflow.Running},
		{`not json`, "manual", workflow.Running},
	} {
		s := newStub(t)
		s.on("GET /check/r1", answer(200, tc.body))
		def := parseFile(t, "testdata/route.json", map[string]string{"risk": s.srv.URL})
		e := newEngine(t, def)
		e.start("route", "r1", "{}")
		e.drain()
		in := e.get("r1")
		if in.State != tc.state || in.Status != tc.status {
			t.Errorf("%s: state %s status %s, want %s %s", tc.body, in.State, in.Status, tc.state, tc.status)
		}
		if got := s.lines(); len(got) != 1 || got[0] != "GET /check/r1" {
			t.Errorf("requests %q", got)
		}
	}
}

func TestNextEventCarriesTheResult(t *testing.T) {
	s := newStub(t)
	s.on("POST /check", answer(200, `{"status": "ok", "ref": "X9"}`))
	s.on("POST /use", answer(200, `{}`))
	doc := fmt.Sprintf(`name: carry
version: 1
initial: a
states: [{name: a}, {name: b}, {name: c, terminal: success}]
transitions:
  - from: a
    to: b
    action:
      name: check
      request: {url: "%[1]s/check"}
      no_compensation: true
      next: [{when: {path: status, equals: ok}, event: go}]
  - from: b
    event: go
    to: c
    action:
      name: use
      request: {url: "%[1]s/use", body: {ref: "{{event.ref}}", input: "{{input.n}}", all: "{{event}}"}}
      no_compensation: true
`, s.srv.URL)
	def, err := declare.Parse([]byte(doc), "carry.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, def)
	e.start("carry", "c1", `{"n": 1}`)
	e.drain()
	if in := e.get("c1"); in.Status != workflow.Succeeded {
		t.Fatalf("status %s error %q", in.Status, in.Error)
	}
	want := []string{`POST /check`, `POST /use {"ref":"X9","input":1,"all":{"status":"ok","ref":"X9"}}`}
	if got := s.lines(); !slices.Equal(got, want) {
		t.Fatalf("requests %q, want %q", got, want)
	}
}
