package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/servicetest"
)

// orderDocument is a declarative workflow whose actions call api.
func orderDocument(api string) string {
	return `name: order
version: 1
initial: pending
vars: {api: "` + api + `"}
states:
  - name: pending
  - name: reserved
  - {name: shipped, terminal: success}
  - {name: cancelled, terminal: failure}
transitions:
  - from: pending
    event: place
    to: reserved
    action:
      name: reserve
      request: {method: POST, url: "{{vars.api}}/reserve", body: {sku: "{{input.sku}}"}}
      compensate: {method: POST, url: "{{vars.api}}/release"}
  - from: reserved
    event: ship
    to: shipped
    action:
      name: ship
      request: {method: POST, url: "{{vars.api}}/ship/{{steps.reserve.id}}"}
      no_compensation: true
  - {from: reserved, event: cancel, to: cancelled}
`
}

// downstream records the requests of the workflow's actions.
type downstream struct {
	mu   sync.Mutex
	seen []string // "METHOD PATH key=IDEMPOTENCY-KEY body=BODY"
}

func (d *downstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	d.mu.Lock()
	d.seen = append(d.seen, r.Method+" "+r.URL.Path+" key="+r.Header.Get("Idempotency-Key")+" body="+string(body))
	d.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Path == "/reserve" {
		_, _ = io.WriteString(w, `{"id":"R1"}`)
		return
	}
	_, _ = io.WriteString(w, `{}`)
}

func (d *downstream) requests() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.seen...)
}

// TestWFServeWorkflows runs the real binary: idem serve --workflows DIR
// with a document whose actions call a test server, and idem wf start,
// signal, show and ls --json through a proxy that checks every exchange
// against docs/openapi.yaml.
func TestWFServeWorkflows(t *testing.T) {
	t.Parallel()
	api := &downstream{}
	down := httptest.NewServer(api)
	t.Cleanup(down.Close)
	dir := t.TempDir()
	wfDir := filepath.Join(dir, "workflows")
	if err := os.MkdirAll(wfDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(wfDir, "order.yaml"), []byte(orderDocument(down.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens := writeTokens(t, dir) // ops-0123456789 is bound to *
	p, err := tryServe(t, dir, "--listen", "127.0.0.1:0", "--store", "mem:", "--tokens", tokens, "--workflows", wfDir,
		"--engine-id", "test-engine", "--workflow-workers", "2", "--log-level", "error")
	if err != nil {
		t.Fatal(err)
	}
	line := p.next(t)
	for !strings.HasPrefix(line, "idem serve: workflow engine") {
		line = p.next(t)
	}
	if !strings.Contains(line, "1 types from "+wfDir+" (order v1)") || !strings.Contains(line, "test-engine, 2 workers") {
		t.Errorf("startup line %q", line)
	}
	base := checkedProxy(t, "http://"+p.addr)
	wf := func(args ...string) map[string]any {
		t.Helper()
		out, errOut, code := runIdem(t, dir, append(append([]string{"wf"}, args...), "--server", base, "--token", "ops-0123456789", "--json")...)
		if code != 0 {
			t.Fatalf("idem wf %s: exit %d, stderr %q", strings.Join(args, " "), code, errOut)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(strings.SplitN(out, "\n", 2)[0]), &m); err != nil {
			t.Fatalf("idem wf %s: %v: %q", strings.Join(args, " "), err, out)
		}
		return m
	}
	// until shows o1 until its state is want.
	until := func(want string) map[string]any {
		t.Helper()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(20 * time.Second)
		for {
			w := wf("show", "o1")
			if w["state"] == want {
				return w
			}
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatalf("o1 did not reach %s in 20s: %v; downstream saw %q", want, w, api.requests())
			}
		}
	}

	started := wf("start", "order", "o1", "--input", `{"sku":"A1"}`)
	if started["created"] != true || started["workflow"].(map[string]any)["state"] != "pending" {
		t.Fatalf("start: %v", started)
	}
	if again := wf("start", "order", "o1", "--input", `{"sku": "A1"}`); again["created"] != false {
		t.Errorf("start again: %v", again)
	}
	if sig := wf("signal", "o1", "place", "--event-id", "e1"); sig["duplicate"] != false {
		t.Errorf("signal: %v", sig)
	}
	if sig := wf("signal", "o1", "place", "--event-id", "e1"); sig["duplicate"] != true {
		t.Errorf("signal again: %v", sig)
	}
	w := until("reserved")
	if res, _ := w["results"].(map[string]any); res == nil || res["reserve"].(map[string]any)["id"] != "R1" {
		t.Errorf("reserved: %v", w)
	}
	wf("signal", "o1", "ship", "--event-id", "e2")
	w = until("shipped")
	if w["status"] != "succeeded" {
		t.Errorf("shipped: %v", w)
	}
	want := []string{`POST /reserve key=o1/1/reserve body={"sku":"A1"}`, "POST /ship/R1 key=o1/2/ship body="}
	if got := api.requests(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("downstream saw\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if l := wf("ls", "--status", "succeeded"); l["id"] != "o1" || l["type"] != "order" {
		t.Errorf("ls: %v", l)
	}
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Errorf("serve exited %d; stderr:\n%s", code, p.stderr)
	}
}

// TestWFServeRefusesBadDocuments: a bad document stops serve at start with
// its file, line and column.
func TestWFServeRefusesBadDocuments(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	wfDir := filepath.Join(dir, "workflows")
	if err := os.MkdirAll(wfDir, 0o700); err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(orderDocument("http://127.0.0.1:1"), "initial: pending", "initial: pending\nbogus: 1", 1)
	if err := os.WriteFile(filepath.Join(wfDir, "bad.yaml"), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runIdem(t, dir, "serve", "--listen", "127.0.0.1:0", "--store", "mem:", "--workflows", wfDir)
	if code != 1 || !strings.Contains(errOut, "--workflows "+wfDir) || !strings.Contains(errOut, "bad.yaml:4:") {
		t.Errorf("serve with a bad document: exit %d, stderr %q", code, errOut)
	}
}

// TestWFServeOnServices: on PostgreSQL the engine of serve runs what idem
// wf --store records in the shared journal; Redis keeps no workflows.
func TestWFServeOnServices(t *testing.T) {
	t.Parallel()
	suffix := fmt.Sprintf("%d", time.Now().UnixNano())
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		url := pgSchemaURL(t, "idem_wf_"+suffix)
		api := &downstream{}
		down := httptest.NewServer(api)
		t.Cleanup(down.Close)
		dir := t.TempDir()
		wfDir := filepath.Join(dir, "workflows")
		if err := os.MkdirAll(wfDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(wfDir, "order.yaml"), []byte(orderDocument(down.URL)), 0o600); err != nil {
			t.Fatal(err)
		}
		p := startServe(t, dir, "--listen", "127.0.0.1:0", "--tokens", writeTokens(t, dir), "--store", url, "--migrate",
			"--workflows", wfDir, "--log-level", "error")
		direct := []string{"--store", url, "--workflows", wfDir}
		if out, errOut, code := runIdem(t, dir, append([]string{"wf", "start", "order", "o1", "--input", `{"sku":"P1"}`}, direct...)...); code != 0 || !strings.Contains(out, "o1 started") {
			t.Fatalf("wf start --store: exit %d, %q %q", code, out, errOut)
		}
		if _, errOut, code := runIdem(t, dir, append([]string{"wf", "signal", "o1", "place", "--event-id", "e1"}, direct...)...); code != 0 {
			t.Fatalf("wf signal --store: exit %d, %q", code, errOut)
		}
		// The serve's engine takes the event from the shared journal.
		c := newClient(p.addr, "ops-0123456789")
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(20 * time.Second)
		for {
			status, data, err := c.do("GET", "/v1/workflows/o1", nil)
			if err != nil || status != 200 {
				t.Fatalf("GET o1: %d %s %v", status, data, err)
			}
			var w struct{ State string }
			if err := json.Unmarshal(data, &w); err != nil {
				t.Fatal(err)
			}
			if w.State == "reserved" {
				break
			}
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatalf("o1 did not reach reserved in 20s: %s; downstream saw %q", data, api.requests())
			}
		}
		if got := api.requests(); len(got) != 1 || got[0] != `POST /reserve key=o1/1/reserve body={"sku":"P1"}` {
			t.Errorf("downstream saw %q", got)
		}
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		base := servicetest.Redis.Need(t)
		prefix := "idem-wf-" + suffix
		t.Cleanup(func() { dropRedisPrefix(t, base, prefix) })
		url := withParam(t, base, "prefix", prefix)
		dir := t.TempDir()
		tokens := writeTokens(t, dir)
		_, errOut, code := runIdem(t, dir, "serve", "--listen", "127.0.0.1:0", "--tokens", tokens, "--store", url, "--workflows", dir)
		if code != 1 || !strings.Contains(errOut, "keeps no workflow journal") {
			t.Errorf("serve --workflows on redis: exit %d, %q", code, errOut)
		}
		p := startServe(t, dir, "--listen", "127.0.0.1:0", "--tokens", tokens, "--store", url)
		for line := p.next(t); !strings.HasPrefix(line, "idem serve: workflows off"); line = p.next(t) {
		}
		c := newClient(p.addr, "ops-0123456789")
		if status, data, err := c.do("GET", "/v1/workflows", nil); err != nil || status != 501 || !strings.Contains(string(data), "not-implemented") {
			t.Errorf("GET /v1/workflows on redis: %d %s %v", status, data, err)
		}
	})
}
