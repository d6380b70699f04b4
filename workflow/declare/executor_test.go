package declare_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/declare"
)

// oneAction parses a definition whose only action sends request (YAML
// flow mapping) and compensates with compensate ("" : none), from an
// event transition.
func oneAction(t *testing.T, request, compensate string, vars map[string]string) *workflow.Action {
	t.Helper()
	comp := "no_compensation: true"
	if compensate != "" {
		comp = "compensate: " + compensate
	}
	doc := fmt.Sprintf(`name: one
version: 1
initial: a
vars: {base: "http://unused"}
defaults:
  headers: {Authorization: "Bearer {{vars.base}}", X-Env: test}
states: [{name: a}, {name: b, terminal: success}]
transitions:
  - from: a
    event: go
    to: b
    action:
      name: act
      request: %s
      %s
`, request, comp)
	def, err := declare.Parse([]byte(doc), "one.yaml", &declare.Options{Vars: vars})
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	return def.Transitions[0].Action
}

func step() *workflow.Step {
	return &workflow.Step{InstanceID: "i1", Key: "i1/3/act", Token: 7, Attempt: 2,
		Input: []byte(`{"coupon": "X1"}`), InstanceInput: []byte(`{"sku": "book", "qty": 2, "tags": ["a", "b"], "n": null}`),
		Results: map[string][]byte{"act": []byte(`{"id": "r-1", "lines": [{"sku": "book"}]}`)}}
}

func TestResponses(t *testing.T) {
	big := `"` + strings.Repeat("x", 1<<20-2) + `"`
	for _, tc := range []struct {
		name      string
		h         http.HandlerFunc
		result    string
		permanent bool
		errText   string
	}{
		{name: "200 JSON", h: answer(200, `{"ok": true}`), result: `{"ok": true}`},
		{name: "201 text", h: answer(201, "", "Content-Type", "text/plain"), result: `null`},
		{name: "200 not JSON", h: func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("done \"ok\"")) }, result: `"done \"ok\""`},
		{name: "204 empty", h: answer(204, ""), result: `null`},
		{name: "body of exactly 1 MiB", h: answer(200, big), result: big},
		{name: "body over 1 MiB", h: answer(200, big+" "), permanent: true, errText: "exceeds 1048576 bytes"},
		{name: "400", h: answer(400, `{"error":"bad sku"}`), permanent: true, errText: `400 Bad Request: {"error":"bad sku"}`},
		{name: "404", h: answer(404, ""), permanent: true, errText: "404 Not Found"},
		{name: "409", h: answer(409, strings.Repeat("y", 5000)), permanent: true, errText: "409 Conflict: " + strings.Repeat("y", 1024)},
		{name: "408", h: answer(408, ""), errText: "408 Request Timeout"},
		{name: "429", h: answer(429, "slow down"), errText: "429 Too Many Requests: slow down"},
		{name: "500", h: answer(500, ""), errText: "500 Internal Server Error"},
		{name: "503", h: answer(503, "", "Retry-After", "3"), errText: "503 Service Unavailable"},
		{name: "304 not followed", h: answer(304, ""), permanent: true, errText: "304 Not Modified"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStub(t)
			s.on("POST /x", tc.h)
			a := oneAction(t, fmt.Sprintf(`{url: "%s/x?secret=1"}`, s.srv.URL), "", nil)
			res, err := a.Run(context.Background(), step())
			if tc.errText == "" {
				if err != nil || string(res) != tc.result {
					t.Fatalf("result %.80q, %v; want %.80q", res, err, tc.result)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, result %.80q", res)
			}
			if workflow.IsPermanent(err) != tc.permanent {
				t.Errorf("permanent %v, want %v: %v", workflow.IsPermanent(err), tc.permanent, err)
			}
			if !strings.Contains(err.Error(), tc.errText) || !strings.HasPrefix(err.Error(), `declare: action "act" request: POST http://`) {
				t.Errorf("error %.200q, want it to hold %.100q", err, tc.errText)
			}
			if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "i1/3/act") {
				t.Errorf("error shows the query or the key: %v", err)
			}
			if strings.Contains(err.Error(), strings.Repeat("y", 1025)) {
				t.Errorf("error quotes more than 1 KiB of the body")
			}
		})
	}
}

func TestTransportErrorIsRetryable(t *testing.T) {
	s := newStub(t)
	url := s.srv.URL
	s.srv.Close()
	a := oneAction(t, fmt.Sprintf(`{url: "%s/x"}`, url), "", nil)
	_, err := a.Run(context.Background(), step())
	if err == nil || workflow.IsPermanent(err) {
		t.Fatalf("err %v, want a retryable error", err)
	}
	if !strings.Contains(err.Error(), "POST "+url+"/x") {
		t.Errorf("error %v", err)
	}
}

func TestRequestHeaders(t *testing.T) {
	s := newStub(t)
	s.on("PUT /h", answer(200, `1`))
	a := oneAction(t, fmt.Sprintf(`{method: PUT, url: "%s/h", headers: {X-Env: "{{step.attempt}}", X-Token: "{{step.token}}/{{step.key}}"}, body: {}}`, s.srv.URL), "", nil)
	if _, err := a.Run(context.Background(), step()); err != nil {
		t.Fatal(err)
	}
	h := s.log()[0].Header
	for k, want := range map[string]string{
		"Idempotency-Key":          "i1/3/act",
		declare.FencingTokenHeader: "7",
		"Content-Type":             "application/json",
		"Authorization":            "Bearer http://unused", // defaults, with vars
		"X-Env":                    "2",                    // the request's overrides the default
		"X-Token":                  "7/i1/3/act",
	} {
		if got := h.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if got := s.log()[0].Body; got != `{}` {
		t.Errorf("body %q", got)
	}
}

func TestTemplates(t *testing.T) {
	s := newStub(t)
	s.on("POST /t/book/r-1", answer(200, `{}`))
	body := `{a: "{{input.qty}}", b: "{{input.tags}}", c: "qty={{input.qty}} tags={{input.tags}} sku={{input.sku}}",
	  d: "{{event.coupon}}", e: "{{steps.act.lines.0.sku}}", f: "{{ instance.id }}", g: ["{{input.n}}", "{{input}}"],
	  h: "{{vars.base}}", i: 3.5, j: [true, null, "plain"], k: "{{step.token}}"}`
	a := oneAction(t, fmt.Sprintf(`{url: "%s/t/{{input.sku}}/{{steps.act.id}}", body: %s}`, s.srv.URL, body), "", map[string]string{"base": "B"})
	if _, err := a.Run(context.Background(), step()); err != nil {
		t.Fatal(err)
	}
	want := `{"a":2,"b":["a","b"],"c":"qty=2 tags=[\"a\",\"b\"] sku=book","d":"X1","e":"book","f":"i1","g":[null,{"sku":"book","qty":2,"tags":["a","b"],"n":null}],"h":"B","i":3.5,"j":[true,null,"plain"],"k":7}`
	if got := s.log()[0].Body; got != want {
		t.Errorf("body\n%s\nwant\n%s", got, want)
	}
}

func TestMissingTemplatePathIsPermanent(t *testing.T) {
	s := newStub(t)
	s.on("POST /m", answer(200, `{}`))
	for _, tc := range []struct{ body, missing string }{
		{`{a: "{{input.nope}}"}`, "{{input.nope}}"},
		{`{a: "x{{input.sku.deeper}}"}`, "{{input.sku.deeper}}"},
		{`{a: "{{input.tags.2}}"}`, "{{input.tags.2}}"},
		{`{a: "{{steps.act.id.x}}"}`, "{{steps.act.id.x}}"},
	} {
		a := oneAction(t, fmt.Sprintf(`{url: "%s/m", body: %s}`, s.srv.URL, tc.body), "", nil)
		_, err := a.Run(context.Background(), step())
		if err == nil || !workflow.IsPermanent(err) || !strings.Contains(err.Error(), tc.missing) {
			t.Errorf("%s: %v, want a permanent error naming %s", tc.body, err, tc.missing)
		}
	}
	// steps.NAME of an action that has not completed.
	a := oneAction(t, fmt.Sprintf(`{url: "%s/m/{{steps.act.id}}"}`, s.srv.URL), "", nil)
	st := step()
	st.Results = nil
	if _, err := a.Run(context.Background(), st); err == nil || !workflow.IsPermanent(err) || !strings.Contains(err.Error(), `action "act" has not completed`) {
		t.Errorf("steps of a missing result: %v", err)
	}
	if n := len(s.log()); n != 0 {
		t.Errorf("%d requests sent, want none", n)
	}
}

func TestEventTemplate(t *testing.T) {
	s := newStub(t)
	s.on("POST /e", answer(200, `{}`))
	a := oneAction(t, fmt.Sprintf(`{url: "%s/e", body: {ev: "{{event}}"}}`, s.srv.URL), "", nil)
	st := step()
	st.Input = st.InstanceInput // an event without a payload
	if _, err := a.Run(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if got := s.log()[0].Body; got != `{"ev":null}` {
		t.Errorf("event without payload: %s", got)
	}
}

func TestBadRenderedURLIsPermanent(t *testing.T) {
	a := oneAction(t, `{url: "{{input.sku}}/x"}`, "", nil)
	_, err := a.Run(context.Background(), step())
	if err == nil || !workflow.IsPermanent(err) || !strings.Contains(err.Error(), `url "book/x" is not an absolute http(s) URL`) {
		t.Fatalf("%v", err)
	}
}

func TestCompensateRequest(t *testing.T) {
	s := newStub(t)
	s.on("DELETE /r/r-1", answer(500, ``))
	a := oneAction(t, fmt.Sprintf(`{url: "%s/r"}`, s.srv.URL), fmt.Sprintf(`{method: DELETE, url: "%s/r/{{steps.act.id}}"}`, s.srv.URL), nil)
	st := step()
	st.Key = "i1/3/compensate/act"
	_, err := a.Compensate(context.Background(), st)
	if err == nil || workflow.IsPermanent(err) || !strings.HasPrefix(err.Error(), `declare: action "act" compensate: DELETE`) {
		t.Fatalf("%v", err)
	}
	if got := s.log()[0].Header.Get("Idempotency-Key"); got != "i1/3/compensate/act" {
		t.Errorf("key %q", got)
	}
}

func TestContextCancelled(t *testing.T) {
	s := newStub(t)
	arrived := make(chan struct{})
	s.on("POST /slow", func(w http.ResponseWriter, r *http.Request) { close(arrived); <-r.Context().Done() })
	a := oneAction(t, fmt.Sprintf(`{url: "%s/slow"}`, s.srv.URL), "", nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-arrived; cancel() }()
	_, err := a.Run(ctx, step())
	if !errors.Is(err, context.Canceled) || workflow.IsPermanent(err) {
		t.Fatalf("%v", err)
	}
}

func TestRequestTimeout(t *testing.T) {
	s := newStub(t)
	s.on("POST /slow", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	a := oneAction(t, fmt.Sprintf(`{url: "%s/slow", timeout: 20ms}`, s.srv.URL), "", nil)
	_, err := a.Run(context.Background(), step())
	if !errors.Is(err, context.DeadlineExceeded) || workflow.IsPermanent(err) {
		t.Fatalf("%v, want a retryable deadline error", err)
	}
}
