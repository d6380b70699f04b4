package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/workflow"
)

const (
	wfOpsToken   = "wf-cli-ops-0123456789"
	wfOrderToken = "wf-cli-order-0123456789"
)

// wfCLIServer is an in-process API server with an engine over a
// MemJournal, driven by Step, behind the OpenAPI checker.
type wfCLIServer struct {
	url string
	eng *workflow.Engine
}

func startWFCLIServer(t *testing.T) *wfCLIServer {
	t.Helper()
	reg := workflow.NewRegistry()
	for _, name := range []string{"order", "refund"} {
		if err := reg.Register(testWorkflowDef(name, 1)); err != nil {
			t.Fatal(err)
		}
	}
	eng, err := workflow.NewEngine(workflow.NewMemJournal(), reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	h, err := idemapi.NewServer(store, &idemapi.Config{
		Tokens:    map[string][]string{wfOpsToken: {"*"}, wfOrderToken: {"wf:order"}},
		Workflows: eng, WorkflowTypes: reg, ParseWorkflow: jsonFormParser,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(apiChecked(t, h))
	t.Cleanup(srv.Close)
	return &wfCLIServer{url: srv.URL, eng: eng}
}

func (s *wfCLIServer) step(t *testing.T) {
	t.Helper()
	if _, err := s.eng.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// wfCLI runs `idem wf args...` in process with the environment env.
func wfCLI(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = runWFWith(args, &o, &e, strings.NewReader(""), func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	return o.String(), e.String(), code
}

func jsonObject(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("%v: %q", err, s)
	}
	return m
}

func TestWFThroughServer(t *testing.T) {
	t.Parallel()
	s := startWFCLIServer(t)
	env := map[string]string{"IDEM_SERVER": s.url, "IDEM_TOKEN": wfOrderToken}
	run := func(args ...string) (string, string, int) {
		t.Helper()
		return wfCLI(t, env, args...)
	}
	must := func(args ...string) string {
		t.Helper()
		out, errOut, code := run(args...)
		if code != 0 {
			t.Fatalf("idem wf %s: exit %d, stderr %q", strings.Join(args, " "), code, errOut)
		}
		return out
	}
	def := testWorkflowDef("order", 1)

	// types: only the token's type; JSON Lines.
	rows := tableRows(must("types"))
	if len(rows) != 2 || strings.Join(rows[0], " ") != "NAME VERSION LATEST STATES TRANSITIONS SOURCE FINGERPRINT" ||
		strings.Join(rows[1], " ") != "order 1 * 3 2 go "+def.Fingerprint()[:12] {
		t.Errorf("types: %q", rows)
	}
	if lines := decodeLines(t, must("types", "--json")); len(lines) != 1 || lines[0]["fingerprint"] != def.Fingerprint() {
		t.Errorf("types --json: %v", lines)
	}
	if out := must("graph", "order"); out != def.Mermaid() {
		t.Errorf("graph: %q", out)
	}
	if out := must("graph", "order", "--format", "dot", "--version", "1"); out != def.DOT() {
		t.Errorf("graph --format dot: %q", out)
	}

	// register: a document file, twice.
	dir := t.TempDir()
	docPath := filepath.Join(dir, "order2.json")
	doc := `{"name":"order","version":2,"initial":"a","states":[{"name":"a"},{"name":"b","terminal":"success"}],"transitions":[{"from":"a","event":"go","to":"b"}]}`
	if err := os.WriteFile(docPath, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := must("register", docPath); !strings.HasPrefix(out, "order2.json: registered order v2, fingerprint ") {
		t.Errorf("register: %q", out)
	}
	reg := jsonObject(t, must("register", docPath, "--json"))
	if reg["created"] != false || reg["type"].(map[string]any)["declarative"] != true {
		t.Errorf("register again --json: %v", reg)
	}

	// start: created, then the same, then another input.
	out := must("start", "order", "o1", "--version", "1", "--input", `{ "sku": "A1" }`)
	if out != "o1 started: order v1 run 1, state pending, status running\n" {
		t.Errorf("start: %q", out)
	}
	started := jsonObject(t, must("start", "order", "o1", "--version", "1", "--input", `{"sku":"A1"}`, "--json"))
	if w := started["workflow"].(map[string]any); started["created"] != false || w["id"] != "o1" || w["input"].(map[string]any)["sku"] != "A1" {
		t.Errorf("start again --json: %v", started)
	}
	if _, errOut, code := run("start", "order", "o1", "--version", "1", "--input", `{"sku":"B2"}`); code != 1 || !strings.Contains(errOut, "workflow-mismatch") {
		t.Errorf("start with another input: exit %d, %q", code, errOut)
	}
	if _, errOut, code := run("start", "refund", "r1"); code != 1 || !strings.Contains(errOut, `not bound to this workflow type`) {
		t.Errorf("start of another type: exit %d, %q", code, errOut)
	}
	if _, errOut, code := run("start", "order", "o2", "--input", "{"); code != 1 || !strings.Contains(errOut, "--input is not valid JSON") {
		t.Errorf("start with broken JSON: exit %d, %q", code, errOut)
	}

	// signal: once per event id; the charge fails and parks.
	sig := jsonObject(t, must("signal", "o1", "pay", "--event-id", "e1", "--payload", `"fail"`, "--json"))
	if sig["duplicate"] != false || sig["event_id"] != "e1" || sig["id"] != "o1" || sig["event"] != "pay" {
		t.Errorf("signal --json: %v", sig)
	}
	if out := must("signal", "o1", "pay", "--event-id", "e1"); out != "event id e1 was already received by o1; nothing changed\n" {
		t.Errorf("signal again: %q", out)
	}
	if out := must("signal", "o1", "nothing"); !strings.HasPrefix(out, "event nothing (id cli-") {
		t.Errorf("signal with a random id: %q", out)
	}
	s.step(t)
	shown := jsonObject(t, must("show", "o1", "--json"))
	if shown["status"] != "parked" || !strings.Contains(shown["error"].(string), "card declined") || shown["history"] != nil {
		t.Errorf("show --json: %v", shown)
	}
	table := must("show", "o1")
	for _, want := range []string{`status +parked\n`, `type +order v1\n`, `input +\{"sku":"A1"\}\n`, `pending +step 1, action charge \(transition pending -> paid\), 1 failed attempts\n`,
		`queued +nothing \(id cli-[0-9a-f]{16}\)\n`, `error +card declined\n`, `history +6 entries \(idem wf history o1\)\n`} {
		if !regexp.MustCompile(want).MatchString(table) {
			t.Errorf("show: no %q in\n%s", want, table)
		}
	}
	hist := tableRows(must("history", "o1"))
	var kinds []string
	for _, r := range hist[1:] {
		kinds = append(kinds, r[4]) // AT is two fields
	}
	if strings.Join(hist[0], " ") != "SEQ AT RUN KIND STATE EVENT ACTION STATUS DETAIL" ||
		strings.Join(kinds, " ") != "started event_received event_received action_started action_failed parked" ||
		!strings.Contains(strings.Join(hist[5], " "), "key o1/1/charge; attempt 1; error: card declined") {
		t.Errorf("history: %q", hist)
	}
	if lines := decodeLines(t, must("history", "o1", "--json")); len(lines) != len(hist)-1 || lines[0]["kind"] != "started" {
		t.Errorf("history --json: %v", lines)
	}

	// Operators.
	if out := must("retry", "o1"); out != "o1: retrying action charge (status running)\n" {
		t.Errorf("retry: %q", out)
	}
	s.step(t)
	if _, errOut, code := run("retry", "o1", "--server", s.url); code != 0 {
		t.Errorf("retry parked again: exit %d %q", code, errOut)
	}
	s.step(t)
	if out := must("resume", "o1", "pending", "--reason", "card replaced"); out != "o1: resumed in state pending (status running)\n" {
		t.Errorf("resume: %q", out)
	}
	if _, errOut, code := run("resume", "o1", "pending"); code != 1 || !strings.Contains(errOut, "workflow-not-resumable") {
		t.Errorf("resume a running one: exit %d, %q", code, errOut)
	}
	c := jsonObject(t, must("cancel", "o1", "--reason", "customer", "--json"))
	if c["cancel_requested"] != true || c["cancel_reason"] != "customer" {
		t.Errorf("cancel --json: %v", c)
	}
	s.step(t)
	if w := jsonObject(t, must("cancel", "o1", "--json")); w["status"] != "cancelled" {
		t.Errorf("cancel a cancelled one (nothing to do): %v", w)
	}
	if _, errOut, code := run("show", "nope"); code != 1 || !strings.Contains(errOut, "no such workflow instance") {
		t.Errorf("show of no instance: exit %d, %q", code, errOut)
	}

	// ls: the token's types only; pages.
	opsEnv := map[string]string{"IDEM_SERVER": s.url, "IDEM_TOKEN": wfOpsToken}
	for _, id := range []string{"o2", "o3"} {
		must("start", "order", id, "--version", "1")
	}
	if _, _, code := wfCLI(t, opsEnv, "start", "refund", "r1"); code != 0 {
		t.Fatal("start refund")
	}
	rows = tableRows(must("ls"))
	var ids []string
	for _, r := range rows[1:] {
		ids = append(ids, r[0]+":"+r[5])
	}
	if strings.Join(rows[0], " ") != "ID TYPE VERSION RUN STATE STATUS UPDATED" || strings.Join(ids, " ") != "o1:cancelled o2:running o3:running" {
		t.Errorf("ls: %q", rows)
	}
	out, errOut, code := wfCLI(t, opsEnv, "ls", "--json", "--limit", "2", "--status", "running")
	if lines := decodeLines(t, out); code != 0 || len(lines) != 2 || lines[0]["id"] != "o2" || !strings.Contains(errOut, "--after o3") {
		t.Errorf("ls --json --limit 2: exit %d, %v, %q", code, lines, errOut)
	}
	if lines := decodeLines(t, must("ls", "--json", "--after", "o2", "--type", "order")); len(lines) != 1 || lines[0]["id"] != "o3" {
		t.Errorf("ls --after o2: %v", lines)
	}

	// Tokens: a file, a wrong one.
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(wfOpsToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := wfCLI(t, nil, "ls", "--server", s.url, "--token-file", tokFile, "--type", "refund"); code != 0 || !strings.Contains(out, "r1") {
		t.Errorf("ls --token-file: exit %d, %q %q", code, out, errOut)
	}
	if _, errOut, code := wfCLI(t, nil, "ls", "--server", s.url, "--token", "wrong-token-0123"); code != 1 || !strings.Contains(errOut, "the server refused the token") {
		t.Errorf("a wrong token: exit %d, %q", code, errOut)
	}
	if _, errOut, code := wfCLI(t, nil, "ls", "--server", s.url); code != 1 || !strings.Contains(errOut, "--server needs --token") {
		t.Errorf("no token: exit %d, %q", code, errOut)
	}
}

func TestWFUsage(t *testing.T) {
	t.Parallel()
	out, _, code := wfCLI(t, nil, "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, sub := range []string{"types", "graph TYPE", "register FILE...", "start TYPE ID", "signal ID EVENT", "cancel ID", "retry ID",
		"resume ID STATE", "show ID", "history ID", "ls", "Exit codes: 0 done, 1 failure"} {
		if !strings.Contains(out, "\n  "+sub) && !strings.Contains(out, sub) {
			t.Errorf("--help does not name %q", sub)
		}
	}
	// Every flag parseWFFlags knows is in the help.
	for _, f := range []string{"server", "token", "token-file", "store", "workflows", "json", "version", "format", "input", "input-file",
		"reuse", "event-id", "payload", "payload-file", "reason", "type", "state", "status", "limit", "after"} {
		if !strings.Contains(out, "  --"+f+" ") {
			t.Errorf("--help does not describe --%s", f)
		}
	}
	if main, _, _ := runCLI(t, "--help"); !strings.Contains(main, "\n  wf ") {
		t.Error("idem --help does not list wf")
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "Usage: idem wf"},
		{[]string{"nope"}, `unknown subcommand "nope"`},
		{[]string{"start", "order"}, "want TYPE ID, got 1 arguments"},
		{[]string{"ls", "x"}, `unexpected argument "x"`},
		{[]string{"register"}, "want one or more FILEs"},
		{[]string{"register", "f.yaml", "--store", "mem:"}, "register registers types on a server"},
		{[]string{"show", "x", "--server", "http://h", "--store", "mem:"}, "not both"},
		{[]string{"show", "x", "--token", "t"}, "--token and --token-file are for --server"},
		{[]string{"show", "x", "--server", "http://h", "--workflows", "d"}, "--workflows is for --store"},
		{[]string{"graph", "t", "--format", "svg"}, "want mermaid or dot"},
		{[]string{"start", "t", "i", "--reuse", "never"}, "want reject_duplicate"},
		{[]string{"start", "t", "i", "--input", "1", "--input-file", "f"}, "not both"},
		{[]string{"ls", "--status", "done"}, "want running, unwinding"},
		{[]string{"ls", "--limit", "-1"}, "must not be negative"},
		{[]string{"ls", "--bogus"}, "flag provided but not defined"},
	} {
		_, errOut, code := wfCLI(t, nil, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("idem wf %v: exit %d, %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
	// IDEM_LIMIT is no flag's variable: ignored, so the store is asked.
	if _, errOut, code := wfCLI(t, map[string]string{"IDEM_LIMIT": "x", "IDEM_STORE": "file:" + t.TempDir() + "/none"}, "ls"); code != 1 || !strings.Contains(errOut, "no store at") {
		t.Errorf("IDEM_LIMIT and IDEM_STORE: exit %d, %q", code, errOut)
	}
}

// TestWFStoreDirect works on a file: store with no server: what it records
// is there for the next serve of the store.
func TestWFStoreDirect(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	storeURL := "file:" + filepath.Join(dir, "data")
	s, err := openStore(context.Background(), storeURL, &idem.OpenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	wfDir := filepath.Join(dir, "wf")
	if err := os.MkdirAll(wfDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(wfDir, "order.yaml"), []byte(orderDocument("http://127.0.0.1:1")), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"IDEM_STORE": storeURL}
	must := func(args ...string) string {
		t.Helper()
		out, errOut, code := wfCLI(t, env, args...)
		if code != 0 {
			t.Fatalf("idem wf %s: exit %d, stderr %q", strings.Join(args, " "), code, errOut)
		}
		return out
	}
	if rows := tableRows(must("types", "--workflows", wfDir)); len(rows) != 2 || strings.Join(rows[1][:6], " ") != "order 1 * 4 3 document" {
		t.Errorf("types --store: %q", rows)
	}
	if out := must("start", "order", "s1", "--workflows", wfDir, "--input", "[1, 2]"); out != "s1 started: order v1 run 1, state pending, status running\n" {
		t.Errorf("start --store: %q", out)
	}
	if out := must("start", "order", "s1", "--workflows", wfDir, "--input", "[1,2]"); !strings.Contains(out, "exists") {
		t.Errorf("start --store again: %q", out)
	}
	if _, errOut, code := wfCLI(t, env, "start", "order", "s2"); code != 1 || !strings.Contains(errOut, "pass --workflows DIR") {
		t.Errorf("start --store without --workflows: exit %d, %q", code, errOut)
	}
	if out := must("signal", "s1", "place", "--event-id", "g1"); out != "event place (id g1) queued for s1\n" {
		t.Errorf("signal --store: %q", out)
	}
	w := jsonObject(t, must("show", "s1", "--json"))
	inbox, _ := w["inbox"].([]any)
	if len(inbox) != 1 || inbox[0].(map[string]any)["event_id"] != "g1" || w["input"].([]any)[1] != 2.0 {
		t.Errorf("show --store --json: %v", w)
	}
	if rows := tableRows(must("ls")); len(rows) != 2 || rows[1][0] != "s1" || rows[1][5] != "running" {
		t.Errorf("ls --store: %q", rows)
	}
	// ls --json --quiet: the instances alone on stdout, nothing on stderr.
	if out, errOut, code := wfCLI(t, env, "ls", "--json", "--quiet"); code != 0 || errOut != "" || jsonObject(t, out)["id"] != "s1" {
		t.Errorf("ls --json --quiet: exit %d, %q, stderr %q", code, out, errOut)
	}
	// Its progress as plain lines (here one per page: no rate limit),
	// on stderr only.
	o, _, code := parseWFFlags("ls", []string{"--store", storeURL, "--json"}, io.Discard, io.Discard, func(string) (string, bool) { return "", false })
	if code >= 0 {
		t.Fatalf("parse: %d", code)
	}
	be, err := wfOpen(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var lsOut, lsErr bytes.Buffer
	bar := newPageProgress(&lsErr, progressLines, "idem wf ls: ", "instance")
	bar.every = 0
	err = lsWF(context.Background(), be, o, &lsOut, &lsErr, json.NewEncoder(&lsOut), bar)
	if err = errors.Join(err, be.close()); err != nil || lsErr.String() != "idem wf ls: fetched 1 page, 1 instance\n" || jsonObject(t, lsOut.String())["id"] != "s1" {
		t.Errorf("ls with plain progress: %v, stdout %q, stderr %q", err, lsOut.String(), lsErr.String())
	}
	if out := must("cancel", "s1", "--reason", "test"); !strings.Contains(out, "cancel requested") {
		t.Errorf("cancel --store: %q", out)
	}
	// The journal is the store's: it is still there after reopening.
	s, err = openStore(context.Background(), storeURL, &idem.OpenConfig{Inspect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	in, err := workflowJournal(s).Get(context.Background(), &workflow.GetParams{ID: "s1"})
	if err != nil || !in.Instance.CancelRequested || len(in.Instance.History) != 3 {
		t.Errorf("the journal after the CLI: %+v, %v", in, err)
	}
	if _, errOut, code := wfCLI(t, nil, "ls", "--store", "file:"+filepath.Join(dir, "none")); code != 1 || !strings.Contains(errOut, "no store at") {
		t.Errorf("ls of no store: exit %d, %q", code, errOut)
	}
}

// TestWFWait: idem wf wait prints an instance once it has ended (through
// the long poll of GET /v1/workflows/{id}?wait=), and fails with exit 1
// when --timeout passes first.
func TestWFWait(t *testing.T) {
	t.Parallel()
	s := startWFCLIServer(t)
	env := map[string]string{"IDEM_SERVER": s.url, "IDEM_TOKEN": wfOrderToken}
	if _, errOut, code := wfCLI(t, env, "start", "order", "w9"); code != 0 {
		t.Fatalf("start: %d %q", code, errOut)
	}
	_, errOut, code := wfCLI(t, env, "wait", "w9", "--timeout", "1s")
	if code != 1 || !strings.Contains(errOut, "did not end within 1s") {
		t.Fatalf("wait on a running instance: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := wfCLI(t, env, "wait", "w9", "--timeout", "0s"); code != 2 || !strings.Contains(errOut, "--timeout must be positive") {
		t.Fatalf("--timeout 0s: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := wfCLI(t, env, "signal", "w9", "pay", "--event-id", "p"); code != 0 {
		t.Fatalf("signal: %d %q", code, errOut)
	}
	s.step(t)
	out, errOut, code := wfCLI(t, env, "wait", "w9", "--json")
	if code != 0 {
		t.Fatalf("wait: exit %d, stderr %q", code, errOut)
	}
	if w := jsonObject(t, out); w["status"] != "succeeded" || w["state"] != "paid" {
		t.Fatalf("wait --json: %v", w)
	}
}
