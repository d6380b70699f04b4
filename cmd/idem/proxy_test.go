package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
)

// proxyProc is a running `idem proxy`.
type proxyProc struct {
	*proc
	admin string // host:port of the admin listener
}

// startProxy starts `idem proxy args...` in dir and waits until it says
// where it listens (and where its admin listener is).
func startProxy(t *testing.T, dir string, args ...string) *proxyProc {
	t.Helper()
	p, err := spawn(t, dir, append([]string{"proxy"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	pp := &proxyProc{proc: p}
	deadline := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				<-p.exited
				t.Fatalf("idem proxy %s exited (%v) before listening; stderr:\n%s", strings.Join(args, " "), p.err, p.stderr)
			}
			if a, found := strings.CutPrefix(line, "idem proxy: listening on http://"); found {
				p.addr, _, _ = strings.Cut(a, ",")
			}
			if a, found := strings.CutPrefix(line, "idem proxy: admin on http://"); found {
				pp.admin, _, _ = strings.Cut(a, " ")
			}
			if strings.HasPrefix(line, "idem proxy: store ") {
				if p.addr == "" {
					t.Fatalf("idem proxy did not say where it listens; stderr:\n%s", p.stderr)
				}
				return pp
			}
		case <-deadline:
			t.Fatalf("idem proxy did not start in 30s; stderr:\n%s", p.stderr)
		}
	}
}

// upstream is the service behind the proxy in the tests: it counts its
// executions and can hold them until released.
type upstream struct {
	srv  *httptest.Server
	runs atomic.Int64
	// entered receives once per execution, when hold is set.
	entered chan struct{}
	hold    chan struct{} // nil: answer at once; else wait until closed
}

func newUpstream(t *testing.T, hold bool) *upstream {
	t.Helper()
	u := &upstream{entered: make(chan struct{}, 100)}
	if hold {
		u.hold = make(chan struct{})
	}
	u.srv = httptest.NewServer(u)
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := u.runs.Add(1)
	body, _ := io.ReadAll(r.Body)
	if u.hold != nil {
		u.entered <- struct{}{}
		<-u.hold
	}
	w.Header().Set("Content-Type", "application/json")
	if r.Method == http.MethodGet {
		fmt.Fprintf(w, "{\"get\":%d}\n", n)
		return
	}
	w.Header().Set("Location", fmt.Sprintf("/orders/%d", n))
	w.Header().Set("ETag", fmt.Sprintf("\"v%d\"", n))
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "{\"run\":%d,\"method\":%q,\"path\":%q,\"tenant\":%q,\"body\":%q}\n", n, r.Method, r.URL.Path, r.Header.Get("X-Tenant"), body)
}

func (u *upstream) url() string { return u.srv.URL }

// answer is one response as a client saw it.
type answer struct {
	status int
	header http.Header
	body   string
}

func (a answer) replayed() string { return a.header.Get("Idempotent-Replayed") }

// send sends one request to the proxy; headers are name, value pairs.
func send(t *testing.T, c *http.Client, method, url, body string, headers ...string) (answer, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: string(data)}, nil
}

// mustSend is send that fails the test on a failed round trip.
func mustSend(t *testing.T, c *http.Client, method, url, body string, headers ...string) answer {
	t.Helper()
	a, err := send(t, c, method, url, body, headers...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return a
}

// sendUntilDone repeats a request while it answers 409 (the key is in
// flight, or its dead owner's lease has not expired yet).
func sendUntilDone(t *testing.T, c *http.Client, method, url, body string, headers ...string) answer {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		a := mustSend(t, c, method, url, body, headers...)
		if a.status != http.StatusConflict {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("still 409 after 30s: %s", a.body)
		}
		<-tick.C
	}
}

func testClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
}

// comparable drops what may differ between a first execution and its
// replays: the replay flag and the date.
func comparable(a answer) string {
	h := a.header.Clone()
	h.Del("Idempotent-Replayed")
	h.Del("Date")
	var b bytes.Buffer
	_ = h.Write(&b)
	return fmt.Sprintf("%d\n%s\n%s", a.status, b.String(), a.body)
}

func wantProblem(t *testing.T, a answer, status int, typeSuffix string) {
	t.Helper()
	if a.status != status {
		t.Fatalf("status %d, want %d: %s", a.status, status, a.body)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json; body %s", ct, a.body)
	}
	var p struct {
		Type   string `json:"type"`
		Status int    `json:"status"`
	}
	if err := json.Unmarshal([]byte(a.body), &p); err != nil {
		t.Fatalf("problem %q: %v", a.body, err)
	}
	if p.Status != status || !strings.HasSuffix(p.Type, typeSuffix) {
		t.Fatalf("problem %s, want status %d and a type ending in %q", a.body, status, typeSuffix)
	}
}

func TestProxyHelp(t *testing.T) {
	t.Parallel()
	stdout, _, code := runIdem(t, t.TempDir(), "proxy", "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, flag := range []string{"--upstream", "--listen", "--admin", "--store", "--require-key", "--methods",
		"--scope-header", "--lease", "--window", "--wait", "--max-body", "--drain", "--sweep-interval", "--log-level", "Example:", defaultProxyStore,
		"--upstream-timeout", "--max-response", "--key-secret-file", "504", "idemhttp.Proxy"} {
		if !strings.Contains(stdout, flag) {
			t.Errorf("idem proxy --help does not mention %s", flag)
		}
	}
	stdout, _, _ = runIdem(t, t.TempDir(), "--help")
	if !strings.Contains(stdout, "proxy") {
		t.Errorf("idem --help does not list proxy:\n%s", stdout)
	}
}

func TestProxyBadFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{},
		{"--upstream", "ftp://x"},
		{"--upstream", "http://"},
		{"--upstream", "http://x?q=1"},
		{"--upstream", "http://x", "--methods", ""},
		{"--upstream", "http://x", "--methods", "PO ST"},
		{"--upstream", "http://x", "--scope-header", "X Tenant"},
		{"--upstream", "http://x", "--lease", "0s"},
		{"--upstream", "http://x", "--max-body", "0"},
		{"--upstream", "http://x", "--wait", "-1s"},
		{"--upstream", "http://x", "--upstream-timeout", "-1s"},
		{"--upstream", "http://x", "--max-response", "0"},
		{"--upstream", "http://x", "extra"},
	} {
		_, stderr, code := runIdem(t, t.TempDir(), append([]string{"proxy"}, args...)...)
		if code != 2 || !strings.Contains(stderr, "idem proxy:") {
			t.Errorf("idem proxy %q: exit %d, stderr %q; want 2 and a message", args, code, stderr)
		}
	}
}

func TestParseUpstreamAndMethods(t *testing.T) {
	t.Parallel()
	u, err := parseUpstream("http://127.0.0.1:8080/base")
	if err != nil || u.Host != "127.0.0.1:8080" || u.Path != "/base" {
		t.Fatalf("parseUpstream: %v %v", u, err)
	}
	if _, err := parseUpstream("mailto:x@y"); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("parseUpstream(mailto:): %v, want ErrInvalid", err)
	}
	m, err := parseMethods(" post,PATCH,put,post ")
	if err != nil || !slices.Equal(m, []string{"POST", "PATCH", "PUT"}) {
		t.Fatalf("parseMethods: %q %v", m, err)
	}
	if _, err := parseMethods("POST,,PUT"); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("parseMethods(empty item): %v, want ErrInvalid", err)
	}
}

func FuzzProxyFlags(f *testing.F) {
	for _, s := range []string{"http://127.0.0.1:8080", "https://h/p", "http://[::1]:80", "::", "%zz", "POST,PATCH", "a,,b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if u, err := parseUpstream(s); err != nil {
			if s != "" && !errors.Is(err, idem.ErrInvalid) {
				t.Fatalf("parseUpstream(%q): %v does not wrap ErrInvalid", s, err)
			}
		} else if u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			t.Fatalf("parseUpstream(%q) accepted %v", s, u)
		}
		if m, err := parseMethods(s); err != nil {
			if !errors.Is(err, idem.ErrInvalid) {
				t.Fatalf("parseMethods(%q): %v does not wrap ErrInvalid", s, err)
			}
		} else {
			for _, x := range m {
				if !validHeaderName(x) || strings.ToUpper(x) != x {
					t.Fatalf("parseMethods(%q) accepted %q", s, x)
				}
			}
		}
	})
}

// Many concurrent duplicates of one key: the upstream runs once, and every
// answer is the same bytes but for Idempotent-Replayed.
func TestProxyConcurrentDuplicates(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, false)
	dir := t.TempDir()
	p := startProxy(t, dir, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--upstream", up.url(),
		"--store", "file:"+filepath.Join(dir, "data"), "--wait", "20s")
	c := testClient()
	const n = 48
	answers := make([]answer, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			answers[i], errs[i] = send(t, c, http.MethodPost, "http://"+p.addr+"/orders", `{"sku":"x"}`, "Idempotency-Key", `"order-1"`)
		})
	}
	close(start)
	wg.Wait()
	if got := up.runs.Load(); got != 1 {
		t.Fatalf("upstream ran %d times, want 1", got)
	}
	firsts := 0
	for i, a := range answers {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if a.status != http.StatusCreated {
			t.Fatalf("request %d: status %d: %s", i, a.status, a.body)
		}
		switch a.replayed() {
		case "false":
			firsts++
		case "true":
		default:
			t.Fatalf("request %d: Idempotent-Replayed %q", i, a.replayed())
		}
		if comparable(a) != comparable(answers[0]) {
			t.Fatalf("answer %d differs from answer 0:\n%s\n---\n%s", i, comparable(a), comparable(answers[0]))
		}
	}
	if firsts != 1 {
		t.Fatalf("%d first executions, want 1", firsts)
	}

	// The same key on another path is another route: another scope.
	if a := mustSend(t, c, http.MethodPost, "http://"+p.addr+"/refunds", `{"sku":"x"}`, "Idempotency-Key", `"order-1"`); a.status != http.StatusCreated || a.replayed() != "false" {
		t.Fatalf("other route: %d %q %s", a.status, a.replayed(), a.body)
	}
	// The same key with another body is misuse.
	if a := mustSend(t, c, http.MethodPost, "http://"+p.addr+"/orders", `{"sku":"y"}`, "Idempotency-Key", `"order-1"`); a.status != http.StatusUnprocessableEntity {
		t.Fatalf("other body: %d %s, want 422", a.status, a.body)
	}
	if got := up.runs.Load(); got != 2 {
		t.Fatalf("upstream ran %d times, want 2", got)
	}

	if a := mustSend(t, c, http.MethodGet, "http://"+p.admin+"/healthz", ""); a.status != 200 || a.body != "ok\n" {
		t.Fatalf("/healthz: %d %q", a.status, a.body)
	}
	m := mustSend(t, c, http.MethodGet, "http://"+p.admin+"/metrics", "")
	for _, line := range []string{
		`idem_operations_total{op="begin",outcome="acquired"} 2`,
		`idem_operations_total{op="complete",outcome="completed"} 2`,
		fmt.Sprintf(`idem_http_requests_total{route="proxy",code="201"} %d`, n+1),
		`idem_http_requests_total{route="proxy",code="422"} 1`,
	} {
		if !strings.Contains(m.body, line+"\n") {
			t.Errorf("/metrics lacks %q:\n%s", line, m.body)
		}
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d after SIGTERM; stderr:\n%s", code, p.stderr)
	}
}

// A proxy killed while the upstream works stored nothing; after a restart
// on the same store a retry runs once more once the dead owner's lease
// expired, and never again once an outcome is stored. An outcome stored
// before the kill is replayed after the restart.
func TestProxyKilledInFlight(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, true)
	dir := t.TempDir()
	args := []string{"--listen", "127.0.0.1:0", "--admin", "", "--upstream", up.url(),
		"--store", "file:" + filepath.Join(dir, "data"), "--lease", "1s"}
	p := startProxy(t, dir, args...)
	c := testClient()
	url := "http://" + p.addr + "/orders"

	// Key "done" completes before the kill.
	doneCh := make(chan answer, 1)
	go func() {
		a, _ := send(t, c, http.MethodPost, url, `{"n":1}`, "Idempotency-Key", "done")
		doneCh <- a
	}()
	<-up.entered
	up.hold <- struct{}{} // hold is unbuffered: this lets exactly that execution go
	stored := <-doneCh
	if stored.status != http.StatusCreated || stored.replayed() != "false" {
		t.Fatalf("first key: %d %q %s", stored.status, stored.replayed(), stored.body)
	}

	// Key "crash" is in flight at the upstream when the proxy dies.
	lost := make(chan error, 1)
	go func() {
		_, err := send(t, c, http.MethodPost, url, `{"n":2}`, "Idempotency-Key", "crash")
		lost <- err
	}()
	<-up.entered
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	if err := <-lost; err == nil {
		t.Fatal("the request in flight got an answer from a killed proxy")
	}
	p = startProxy(t, dir, args...)
	url = "http://" + p.addr + "/orders"
	close(up.hold) // the upstream finishes the orphaned execution; its answer goes nowhere
	if got := up.runs.Load(); got != 2 {
		t.Fatalf("upstream ran %d times before the retries, want 2", got)
	}

	if a := mustSend(t, c, http.MethodPost, url, `{"n":1}`, "Idempotency-Key", "done"); comparable(a) != comparable(stored) || a.replayed() != "true" {
		t.Fatalf("stored key after restart:\n%s\nwant a replay of\n%s", comparable(a), comparable(stored))
	}
	retry := sendUntilDone(t, c, http.MethodPost, url, `{"n":2}`, "Idempotency-Key", "crash")
	if retry.status != http.StatusCreated || retry.replayed() != "false" {
		t.Fatalf("retry after the lease expired: %d %q %s", retry.status, retry.replayed(), retry.body)
	}
	for range 3 {
		a := mustSend(t, c, http.MethodPost, url, `{"n":2}`, "Idempotency-Key", "crash")
		if a.replayed() != "true" || comparable(a) != comparable(retry) {
			t.Fatalf("retry once stored:\n%s\nwant a replay of\n%s", comparable(a), comparable(retry))
		}
	}
	if got := up.runs.Load(); got != 3 {
		t.Fatalf("upstream ran %d times, want 3 (done once, crash once per owner)", got)
	}
}

// An unreachable upstream answers 502 problem+json and releases the key: a
// retry once the upstream is back runs.
func TestProxyUpstreamDown(t *testing.T) {
	t.Parallel()
	// Nothing listens here until the upstream comes back. Below the
	// ephemeral range, no other test's listener on port 0 can take it.
	addr := "127.0.0.1:" + strconv.Itoa(servicetest.FreePorts(t, 1, 0)[0])

	dir := t.TempDir()
	p := startProxy(t, dir, "--listen", "127.0.0.1:0", "--admin", "", "--upstream", "http://"+addr, "--store", "mem:")
	c := testClient()
	url := "http://" + p.addr + "/orders"
	wantProblem(t, mustSend(t, c, http.MethodPost, url, `{}`, "Idempotency-Key", "k"), http.StatusBadGateway, "#bad-gateway")

	up := &upstream{entered: make(chan struct{}, 1)}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the upstream's port %s was taken meanwhile: %v", addr, err)
	}
	up.srv = httptest.NewUnstartedServer(up)
	_ = up.srv.Listener.Close()
	up.srv.Listener = ln
	up.srv.Start()
	t.Cleanup(up.srv.Close)

	a := mustSend(t, c, http.MethodPost, url, `{}`, "Idempotency-Key", "k")
	if a.status != http.StatusCreated || a.replayed() != "false" {
		t.Fatalf("retry with the upstream back: %d %q %s", a.status, a.replayed(), a.body)
	}
	if a := mustSend(t, c, http.MethodPost, url, `{}`, "Idempotency-Key", "k"); a.replayed() != "true" {
		t.Fatalf("second retry: %d %q, want a replay", a.status, a.replayed())
	}
	if got := up.runs.Load(); got != 1 {
		t.Fatalf("upstream ran %d times, want 1", got)
	}
}

func TestProxyRequireKeyAndMethods(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, false)
	dir := t.TempDir()
	p := startProxy(t, dir, "--listen", "127.0.0.1:0", "--admin", "", "--upstream", up.url(), "--store", "mem:",
		"--require-key", "--methods", "put,POST")
	c := testClient()
	base := "http://" + p.addr

	wantProblem(t, mustSend(t, c, http.MethodPost, base+"/a", `{}`), http.StatusBadRequest, "")
	wantProblem(t, mustSend(t, c, http.MethodPut, base+"/a", `{}`), http.StatusBadRequest, "")
	if got := up.runs.Load(); got != 0 {
		t.Fatalf("upstream ran %d times for requests without a key, want 0", got)
	}
	// Methods outside --methods pass through, key or not.
	for range 2 {
		if a := mustSend(t, c, http.MethodPatch, base+"/a", `{}`, "Idempotency-Key", "p"); a.status != http.StatusCreated || a.replayed() != "" {
			t.Fatalf("PATCH outside --methods: %d %q %s", a.status, a.replayed(), a.body)
		}
	}
	if a := mustSend(t, c, http.MethodGet, base+"/a", ""); a.status != http.StatusOK {
		t.Fatalf("GET: %d %s", a.status, a.body)
	}
	for i, want := range []string{"false", "true"} {
		if a := mustSend(t, c, http.MethodPut, base+"/a", `{}`, "Idempotency-Key", "u"); a.status != http.StatusCreated || a.replayed() != want {
			t.Fatalf("PUT %d: %d %q, want Idempotent-Replayed %s", i, a.status, a.replayed(), want)
		}
	}
	if got := up.runs.Load(); got != 4 {
		t.Fatalf("upstream ran %d times, want 4 (PATCH twice, GET, PUT once)", got)
	}
}

// --scope-header: each tenant has keys of its own; a request without the
// header is refused before it reaches the ledger or the upstream.
func TestProxyScopeHeader(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, false)
	dir := t.TempDir()
	p := startProxy(t, dir, "--listen", "127.0.0.1:0", "--admin", "", "--upstream", up.url(), "--store", "mem:",
		"--scope-header", "X-Tenant")
	c := testClient()
	url := "http://" + p.addr + "/orders"

	wantProblem(t, mustSend(t, c, http.MethodPost, url, `{}`, "Idempotency-Key", "k"), http.StatusBadRequest, "#missing-scope")
	wantProblem(t, mustSend(t, c, http.MethodPost, url, `{}`, "Idempotency-Key", "k", "X-Tenant", "a", "X-Tenant", "b"), http.StatusBadRequest, "#missing-scope")
	a1 := mustSend(t, c, http.MethodPost, url, `{}`, "Idempotency-Key", "k", "X-Tenant", "a")
	b1 := mustSend(t, c, http.MethodPost, url, `{}`, "Idempotency-Key", "k", "X-Tenant", "b")
	a2 := mustSend(t, c, http.MethodPost, url, `{}`, "Idempotency-Key", "k", "X-Tenant", "a", "Authorization", "Bearer other")
	if a1.replayed() != "false" || b1.replayed() != "false" || a2.replayed() != "true" {
		t.Fatalf("replayed: tenant a %q, tenant b %q, tenant a again %q; want false, false, true", a1.replayed(), b1.replayed(), a2.replayed())
	}
	if !strings.Contains(b1.body, `"tenant":"b"`) || a2.body != a1.body {
		t.Fatalf("tenant b got %s; tenant a got %s then %s", b1.body, a1.body, a2.body)
	}
	if a := mustSend(t, c, http.MethodGet, url, ""); a.status != http.StatusOK {
		t.Fatalf("GET without the header: %d %s", a.status, a.body)
	}
	if got := up.runs.Load(); got != 3 {
		t.Fatalf("upstream ran %d times, want 3", got)
	}
}

// SIGTERM lets the request in flight finish and store its outcome, then
// exits 0; a proxy restarted on the store replays it.
func TestProxyDrain(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, true)
	dir := t.TempDir()
	args := []string{"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--upstream", up.url(), "--store", "file:" + filepath.Join(dir, "data")}
	p := startProxy(t, dir, args...)
	c := testClient()
	got := make(chan answer, 1)
	go func() {
		a, _ := send(t, c, http.MethodPost, "http://"+p.addr+"/orders", `{}`, "Idempotency-Key", "k")
		got <- a
	}()
	<-up.entered
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if line := p.next(t); !strings.Contains(line, "draining") {
		t.Fatalf("after SIGTERM: %q", line)
	}
	close(up.hold)
	first := <-got
	if first.status != http.StatusCreated || first.replayed() != "false" {
		t.Fatalf("request in flight during the drain: %d %q %s", first.status, first.replayed(), first.body)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30s after SIGTERM; stderr:\n%s", p.stderr)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, p.stderr)
	}

	p = startProxy(t, dir, args...)
	a := mustSend(t, c, http.MethodPost, "http://"+p.addr+"/orders", `{}`, "Idempotency-Key", "k")
	if a.replayed() != "true" || comparable(a) != comparable(first) {
		t.Fatalf("after the restart:\n%s\nwant a replay of\n%s", comparable(a), comparable(first))
	}
	if n := up.runs.Load(); n != 1 {
		t.Fatalf("upstream ran %d times, want 1", n)
	}
}

// A client that gives up while the upstream works does not stop the
// upstream request: its answer is stored, and the client's retry replays it.
func TestProxyClientGone(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, true)
	dir := t.TempDir()
	p := startProxy(t, dir, "--listen", "127.0.0.1:0", "--admin", "", "--upstream", up.url(), "--store", "mem:")
	url := "http://" + p.addr + "/orders"
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(`{}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "k")
		resp, err := testClient().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		gone <- err
	}()
	<-up.entered
	cancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("the client's request ended with %v, want context.Canceled", err)
	}
	close(up.hold)
	a := sendUntilDone(t, testClient(), http.MethodPost, url, `{}`, "Idempotency-Key", "k")
	if a.status != http.StatusCreated || a.replayed() != "true" {
		t.Fatalf("retry after the client left: %d %q %s; want a replay of the upstream's 201", a.status, a.replayed(), a.body)
	}
	if n := up.runs.Load(); n != 1 {
		t.Fatalf("upstream ran %d times, want 1", n)
	}
}

// --upstream-timeout: a hung upstream answers 504 problem+json without
// Idempotency-Key-Expires and frees the key; a retry runs again.
func TestProxyUpstreamTimeout(t *testing.T) {
	t.Parallel()
	var hung atomic.Bool
	hung.Store(true)
	release := make(chan struct{})
	up := newUpstream(t, false)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hung.Load() {
			_, _ = io.Copy(io.Discard, r.Body) // then net/http sees the proxy hang up
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		up.ServeHTTP(w, r)
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })
	p := startProxy(t, t.TempDir(), "--listen", "127.0.0.1:0", "--admin", "", "--upstream", slow.URL, "--store", "mem:",
		"--upstream-timeout", "1s")
	c := testClient()
	url := "http://" + p.addr + "/orders"
	a := mustSend(t, c, http.MethodPost, url, `{}`, "Idempotency-Key", "k")
	wantProblem(t, a, http.StatusGatewayTimeout, "#upstream-timeout")
	if a.header.Get("Idempotency-Key-Expires") != "" {
		t.Fatalf("a 504 of a released key carries Idempotency-Key-Expires %q", a.header.Get("Idempotency-Key-Expires"))
	}
	hung.Store(false)
	if a := mustSend(t, c, http.MethodPost, url, `{}`, "Idempotency-Key", "k"); a.status != http.StatusCreated || a.replayed() != "false" {
		t.Fatalf("retry after the timeout: %d %q %s", a.status, a.replayed(), a.body)
	}
}

// --key-secret-file: the store holds keyed digests of keys, never the keys;
// a proxy restarted with the same secret finds them again. An empty file
// is refused.
func TestProxyKeySecretFile(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, false)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	store := "file:" + filepath.Join(dir, "data")
	args := []string{"--listen", "127.0.0.1:0", "--admin", "", "--upstream", up.url(), "--store", store, "--key-secret-file", secret}
	p := startProxy(t, dir, args...)
	c := testClient()
	first := mustSend(t, c, http.MethodPost, "http://"+p.addr+"/orders", `{}`, "Idempotency-Key", "order-secret-1")
	if first.status != http.StatusCreated {
		t.Fatalf("first: %d %s", first.status, first.body)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, p.stderr)
	}
	out, errOut, code := runIdem(t, dir, "keys", "ls", "--store", store, "--scope", "9:anonymous POST /orders")
	if code != 0 || !strings.Contains(out, "hmac-sha256:") || strings.Contains(out, "order-secret-1") {
		t.Fatalf("keys ls: exit %d, stdout %q, stderr %q; want a digest, never the key", code, out, errOut)
	}
	p = startProxy(t, dir, args...)
	if a := mustSend(t, c, http.MethodPost, "http://"+p.addr+"/orders", `{}`, "Idempotency-Key", "order-secret-1"); a.replayed() != "true" || comparable(a) != comparable(first) {
		t.Fatalf("after a restart with the same secret: %q %s", a.replayed(), a.body)
	}

	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runIdem(t, dir, "proxy", "--upstream", up.url(), "--store", "mem:", "--key-secret-file", empty)
	if code == 0 || !strings.Contains(stderr, "is empty") {
		t.Fatalf("an empty secret file: exit %d, stderr %q", code, stderr)
	}
}
