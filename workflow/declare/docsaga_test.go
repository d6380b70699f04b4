package declare_test

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/declare"
)

// TestDocumentedSaga runs the order saga of docs/declarative-workflows.md
// against a stub: captured, held for review then declined, and declined
// by the card (402).
func TestDocumentedSaga(t *testing.T) {
	md, err := os.ReadFile("../../docs/declarative-workflows.md")
	if err != nil {
		t.Fatal(err)
	}
	var doc string
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(md), -1) {
		if strings.HasPrefix(m[1], "name: order\n") {
			doc = m[1]
		}
	}
	if doc == "" {
		t.Fatal("no order saga in the docs")
	}
	for _, tc := range []struct {
		name    string
		charge  string
		code    int
		decline bool
		state   string
		status  workflow.Status
		want    []string
	}{
		{"captured", `{"id":"c-7","status":"captured"}`, 201, false, "shipped", workflow.Succeeded, []string{
			`POST /reservations {"sku":"book","qty":2,"order":"o1"}`,
			`POST /charges {"amount":{"value":1250,"currency":"EUR"},"reference":"order o1, reservation r-42"}`,
			`POST /shipments {"reservation":"r-42","items":["book"]}`}},
		{"held then declined", `{"id":"c-8","status":"review"}`, 200, true, "declined", workflow.Failed, []string{
			`POST /reservations {"sku":"book","qty":2,"order":"o1"}`,
			`POST /charges {"amount":{"value":1250,"currency":"EUR"},"reference":"order o1, reservation r-42"}`,
			`POST /refunds {"charge":"c-8"}`,
			`DELETE /reservations/r-42`}},
		{"card declined", `{"error":"card declined"}`, 402, false, "reserved", workflow.Failed, []string{
			`POST /reservations {"sku":"book","qty":2,"order":"o1"}`,
			`POST /charges {"amount":{"value":1250,"currency":"EUR"},"reference":"order o1, reservation r-42"}`,
			`DELETE /reservations/r-42`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStub(t)
			s.on("POST /reservations", answer(201, `{"id":"r-42"}`))
			s.on("DELETE /reservations/r-42", answer(204, ""))
			s.on("POST /charges", answer(tc.code, tc.charge))
			s.on("POST /refunds", answer(200, `{}`))
			s.on("POST /shipments", answer(200, `{"tracking":"t-1"}`))
			u := s.srv.URL
			def, err := declare.Parse([]byte(doc), "order.yaml", &declare.Options{Vars: map[string]string{"stock": u, "payments": u, "shipping": u, "token": "k"}})
			if err != nil {
				t.Fatal(err)
			}
			e := newEngine(t, def)
			e.start("order", "o1", orderInput)
			e.drain()
			if tc.decline {
				if in := e.get("o1"); in.State != "review" || in.Status != workflow.Running {
					t.Fatalf("before the decline: state %s status %s", in.State, in.Status)
				}
				if _, err := e.eng.Signal(context.Background(), "o1", "op-1", "decline", nil); err != nil {
					t.Fatal(err)
				}
				e.drain()
			}
			in := e.get("o1")
			if in.State != tc.state || in.Status != tc.status {
				t.Errorf("state %s status %s, want %s %s (error %q)", in.State, in.Status, tc.state, tc.status, in.Error)
			}
			if got := s.lines(); !slices.Equal(got, tc.want) {
				t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestDocumentedErrors checks the error messages docs/declarative-workflows.md
// shows for broken versions of its saga.
func TestDocumentedErrors(t *testing.T) {
	md, err := os.ReadFile("../../docs/declarative-workflows.md")
	if err != nil {
		t.Fatal(err)
	}
	var doc string
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(md), -1) {
		if strings.HasPrefix(m[1], "name: order\n") {
			doc = m[1]
		}
	}
	opts := &declare.Options{Vars: map[string]string{"token": "k"}}
	bad := strings.Replace(doc, "timeout: 24h", "timeout: 24 hours", 1)
	bad = strings.Replace(bad, `url: "{{vars.payments}}/charges"`, `url: "{{vars.payments}}/charges/{{steps.reserv.id}}"`, 1)
	lost := strings.Replace(doc, "  - name: charged\n", "  - name: charged\n  - name: lost\n", 1)
	for _, d := range []string{bad, lost} {
		_, err := declare.Parse([]byte(d), "order.yaml", opts)
		if err == nil || !strings.Contains(string(md), "```\n"+err.Error()+"\n```") {
			t.Errorf("the docs do not show\n%v", err)
		}
	}
}
