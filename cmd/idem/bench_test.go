package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/internal/crashtest"
	"github.com/idemkit/idem/internal/loadgen"
	"github.com/idemkit/idem/memstore"
)

// runBenchJSON runs idem bench with args and --json --quiet, and decodes
// its report.
func runBenchJSON(t *testing.T, args ...string) *benchReport {
	t.Helper()
	stdout, stderr, code := runCLI(t, append(append([]string{"bench"}, args...), "--json", "--quiet")...)
	if code != 0 {
		t.Fatalf("idem bench %q: exit %d, stderr %q", args, code, stderr)
	}
	if stderr != "" {
		t.Errorf("stderr with --quiet: %q", stderr)
	}
	var rep benchReport
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("stdout is no report: %v\n%s", err, stdout)
	}
	return &rep
}

// total sums a field over every level of the target at index i.
func total(rep *benchReport, i int, f func(benchResult) int) int {
	n := 0
	for _, l := range rep.Levels {
		n += f(l.Results[i])
	}
	return n
}

func errorCount(r benchResult) int {
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// countingAPI serves idem serve's API on a memstore, counting the begin
// and complete requests it answers.
type countingAPI struct {
	srv               *httptest.Server
	store             *memstore.Store
	begins, completes atomic.Int64
}

func newCountingAPI(t *testing.T, token, scope string) *countingAPI {
	t.Helper()
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	h, err := idemapi.NewServer(store, &idemapi.Config{Tokens: map[string][]string{token: {scope}}})
	if err != nil {
		t.Fatal(err)
	}
	a := &countingAPI{store: store}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/begin":
			a.begins.Add(1)
		case "/v1/complete":
			a.completes.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func TestBenchHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"bench", "--help"}, {"bench", "proxy", "-h"}} {
		stdout, stderr, code := runCLI(t, args...)
		if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "Usage: idem bench") {
			t.Fatalf("%q: exit %d, stderr %q, stdout %q", args, code, stderr, stdout)
		}
		flags := []string{"--mode", "--dup-rate", "--keys", "-c, --clients", "--duration", "--warmup", "--rounds", "--json", "--quiet"}
		if args[1] == "proxy" {
			flags = append(flags, "--target", "--baseline", "--reverse-proxy", "--method", "--header", "--body ", "--body-size", "--timeout")
		} else {
			flags = append(flags, "--store", "--server", "--token", "--client", "--payload", "--scope", "--window")
		}
		for _, f := range flags {
			if !strings.Contains(stdout, "\n  "+f) {
				t.Errorf("%q: the help does not describe %s", args, f)
			}
		}
	}
	if stdout, _, _ := runCLI(t, "--help"); !strings.Contains(stdout, "\n  bench ") {
		t.Errorf("idem --help does not list bench:\n%s", stdout)
	}
}

func TestBenchBadFlags(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bench"}, "no target"},
		{[]string{"bench", "proxy"}, "no target"},
		{[]string{"bench", "proxy", "--baseline", "http://a/"}, "no target"},
		{[]string{"bench", "--store", "mem:", "--mode", "burst"}, `--mode "burst"`},
		{[]string{"bench", "--store", "mem:", "--mode", "mix", "--dup-rate", "1.5"}, "--dup-rate"},
		{[]string{"bench", "--store", "mem:", "-c", "1,x"}, `-c "1,x"`},
		{[]string{"bench", "--store", "mem:", "--clients", "0"}, `-c "0"`},
		{[]string{"bench", "--store", "mem:", "--duration", "0s"}, "--duration"},
		{[]string{"bench", "--store", "mem:", "--warmup", "-1s"}, "--warmup"},
		{[]string{"bench", "--store", "mem:", "--rounds", "0"}, "--rounds"},
		{[]string{"bench", "--store", "mem:", "--keys", "0"}, "--keys"},
		{[]string{"bench", "--store", "mem:", "--payload", "-1"}, "--payload"},
		{[]string{"bench", "--store", "mem:", "--window", "0s"}, "--window"},
		{[]string{"bench", "--server", "http://127.0.0.1:1", "--token", ""}, "--token"},
		{[]string{"bench", "--server", "http://127.0.0.1:1", "--token", "t", "--client", "curl"}, `--client must be net/http or raw, got "curl"`},
		{[]string{"bench", "--store", ""}, "empty URL"},
		{[]string{"bench", "--store", "mem:", "extra"}, `unexpected argument "extra"`},
		{[]string{"bench", "--store", "mem:", "--target", "http://a/"}, "flag provided but not defined: -target"},
		{[]string{"bench", "proxy", "--target", "https://a/"}, "only http://"},
		{[]string{"bench", "proxy", "--target", "a:1"}, "want a URL"},
		{[]string{"bench", "proxy", "--target", "http://a/", "--baseline", "http://b/", "--baseline", "http://c/"}, "at most one --baseline"},
		{[]string{"bench", "proxy", "--target", "http://a/", "--baseline", "http://b/", "--reverse-proxy", "http://c/"}, "at most one --baseline"},
		{[]string{"bench", "proxy", "--target", "http://a/", "--reverse-proxy", "https://c/"}, "--reverse-proxy \"https://c/\": only http://"},
		{[]string{"bench", "proxy", "--target", "http://a/", "--header", "no colon"}, "--header"},
		{[]string{"bench", "proxy", "--target", "http://a/", "--method", "GE T"}, "--method"},
		{[]string{"bench", "proxy", "--target", "http://a/", "--body-size", "-3"}, "--body-size"},
		{[]string{"bench", "proxy", "--target", "http://a/", "--store", "mem:"}, "flag provided but not defined: -store"},
	} {
		stdout, stderr, code := runCLI(t, c.args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, c.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and %q", c.args, code, stdout, stderr, c.want)
		}
	}
}

// TestBenchServeAndStore: a --server and a --store measured by turns at two
// levels: the server saw exactly the cycles the report counts, each begun
// and completed once, and the second target has its ratio to the first.
func TestBenchServeAndStore(t *testing.T) {
	t.Parallel()
	api := newCountingAPI(t, "tok-bench", "load")
	rep := runBenchJSON(t, "--server", api.srv.URL, "--token", "tok-bench", "--scope", "load", "--store", "mem:",
		"-c", "1,4", "--duration", "200ms", "--warmup", "50ms", "--rounds", "2", "--payload", "100")
	if rep.Mode != "cycle" || rep.Unit != "cycles/s" || rep.Rounds != 2 || rep.Payload != 100 || rep.Duration != "200ms" || rep.Client != "net/http" {
		t.Errorf("report head %+v", rep)
	}
	if len(rep.Targets) != 2 || rep.Targets[0].Kind != "server" || rep.Targets[1] != (benchTarget{Kind: "store", URL: "mem:"}) {
		t.Fatalf("targets %+v, want the server then mem:", rep.Targets)
	}
	if len(rep.Levels) != 2 || rep.Levels[0].Clients != 1 || rep.Levels[1].Clients != 4 {
		t.Fatalf("levels %+v, want 1 and 4 clients", rep.Levels)
	}
	for _, l := range rep.Levels {
		if len(l.Results) != 2 {
			t.Fatalf("%d clients: %d results, want 2", l.Clients, len(l.Results))
		}
		srv, st := l.Results[0], l.Results[1]
		for _, r := range l.Results {
			if r.Ops == 0 || r.OpsPerSec <= 0 || len(r.RoundRates) != 2 || len(r.Errors) != 0 || r.WarmupOps == 0 ||
				r.P50 <= 0 || r.P99 < r.P50 || r.P999 < r.P99 {
				t.Errorf("%d clients, %s: %+v", l.Clients, r.Target, r)
			}
		}
		if srv.Ratio != nil {
			t.Errorf("%d clients: the first target has a ratio %v", l.Clients, *srv.Ratio)
		}
		if st.Ratio == nil || *st.Ratio <= 0 || *st.RatioMin > *st.Ratio || *st.RatioMax < *st.Ratio || len(st.RoundRatios) != 2 {
			t.Errorf("%d clients: mem: ratio %v (%v–%v, rounds %v), want one", l.Clients, st.Ratio, st.RatioMin, st.RatioMax, st.RoundRatios)
		}
	}
	sent := total(rep, 0, func(r benchResult) int { return r.Ops + errorCount(r) + r.WarmupOps })
	if b, c := api.begins.Load(), api.completes.Load(); b != int64(sent) || c != int64(sent) {
		t.Errorf("the server answered %d begins and %d completes; the report counts %d cycles", b, c, sent)
	}
}

// TestBenchTargetsShareALedger: two targets on one ledger (here the same
// server twice, as a --server and the --store behind it would be) never
// meet each other's keys: every cycle of both is a fresh key.
func TestBenchTargetsShareALedger(t *testing.T) {
	t.Parallel()
	api := newCountingAPI(t, "tok-bench", "load")
	rep := runBenchJSON(t, "--server", api.srv.URL, "--server", api.srv.URL, "--token", "tok-bench", "--scope", "load",
		"-c", "4", "--duration", "200ms", "--warmup", "50ms", "--rounds", "2")
	for _, l := range rep.Levels {
		for _, r := range l.Results {
			if r.Ops == 0 || len(r.Errors) != 0 {
				t.Errorf("%d clients, %s: %d cycles, errors %v; want cycles and no error", l.Clients, r.Target, r.Ops, r.Errors)
			}
		}
	}
}

// TestBenchServeReplay: replay mode completes --keys keys once, then only
// begins them, every one answered replay.
func TestBenchServeReplay(t *testing.T) {
	t.Parallel()
	api := newCountingAPI(t, "tok-bench", "bench")
	rep := runBenchJSON(t, "--server", api.srv.URL, "--token", "tok-bench", "--mode", "replay", "--keys", "20",
		"-c", "3", "--duration", "200ms", "--warmup", "0", "--rounds", "1")
	r := rep.Levels[0].Results[0]
	if rep.Unit != "replays/s" || rep.Keys != 20 || r.Ops == 0 || len(r.Errors) != 0 || r.WarmupOps != 0 {
		t.Fatalf("report %+v, result %+v", rep, r)
	}
	if b, c := api.begins.Load(), api.completes.Load(); c != 20 || b != int64(20+r.Ops) {
		t.Errorf("the server answered %d begins and %d completes, want %d and 20", b, c, 20+r.Ops)
	}
}

// TestBenchServerRefuses: a token the server refuses and a server that is
// not there are errors before any load, exit 1.
func TestBenchServerRefuses(t *testing.T) {
	t.Parallel()
	api := newCountingAPI(t, "tok-bench", "bench")
	_, stderr, code := runCLI(t, "bench", "--server", api.srv.URL, "--token", "wrong", "-c", "1", "--duration", "50ms")
	if code != 1 || !strings.Contains(stderr, "401") || api.begins.Load() != 0 {
		t.Errorf("wrong token: exit %d, stderr %q, %d begins", code, stderr, api.begins.Load())
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	_, stderr, code = runCLI(t, "bench", "proxy", "--target", closed.URL+"/x", "-c", "1", "--duration", "50ms")
	if code != 1 || !strings.Contains(stderr, "--target "+closed.URL+"/x") || !strings.Contains(stderr, "refused") {
		t.Errorf("no server: exit %d, stderr %q", code, stderr)
	}
}

// TestBenchProxyErrorsByKind: an endpoint that answers 409, 401 and 201 in
// turn: every request it answered is in the report, as an operation or
// as an error of its status, and each request had a key of its own.
func TestBenchProxyErrorsByKind(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	statuses := map[int]int{}
	keys := map[string]bool{}
	var dups, n int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		k := r.Header.Get("Idempotency-Key")
		if keys[k] || k == "" || r.Method != http.MethodPut || r.URL.RequestURI() != "/orders?x=1" ||
			r.Header.Get("X-Tenant") != "t1" || len(body) != 64 || !json.Valid(body) {
			dups++
		}
		keys[k] = true
		status := [...]int{409, 401, 201}[n%3]
		n++
		statuses[status]++
		w.WriteHeader(status)
	}))
	defer srv.Close()
	rep := runBenchJSON(t, "proxy", "--target", srv.URL+"/orders?x=1", "--method", "PUT", "--header", "X-Tenant: t1",
		"--body-size", "64", "-c", "3", "--duration", "200ms", "--warmup", "0", "--rounds", "1")
	r := rep.Levels[0].Results[0]
	mu.Lock()
	defer mu.Unlock()
	if dups != 0 {
		t.Errorf("%d requests repeated a key or were not the request asked for", dups)
	}
	if rep.Unit != "req/s" || rep.Payload != 64 || r.Ops != statuses[201] || r.Errors["http_409"] != statuses[409] ||
		r.Errors["http_401"] != statuses[401] || len(r.Errors) != 2 || r.Ops == 0 {
		t.Errorf("the endpoint answered %v; the report has %d ops and errors %v", statuses, r.Ops, r.Errors)
	}
}

// countedProxy starts an upstream that counts the requests it answers
// (loadgen.Handler's) and an idem proxy on memstore in front of it.
func countedProxy(t *testing.T) (up, proxy *httptest.Server, requests *atomic.Int64) {
	t.Helper()
	requests = new(atomic.Int64)
	up = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		loadgen.Handler(w, r)
	}))
	t.Cleanup(up.Close)
	upURL, _ := url.Parse(up.URL)
	st := memstore.New(nil)
	t.Cleanup(func() { _ = st.Close() })
	o := &proxyOptions{upstream: upURL, methods: []string{http.MethodPost}, maxBody: 1 << 20,
		lease: idem.DefaultLease, window: idem.DefaultWindow}
	ledger, err := idem.New(st, &idem.Config{Lease: o.lease, Window: o.window})
	if err != nil {
		t.Fatal(err)
	}
	proxy = httptest.NewServer(newProxyHandler(ledger, o, slog.New(slog.DiscardHandler), idemapi.NewMetrics([]string{proxyRoute}), nil))
	t.Cleanup(proxy.Close)
	return up, proxy, requests
}

// TestBenchProxyReplayAgainstBaseline: idem proxy on memstore in replay
// mode against the bare upstream as the baseline: the upstream runs each
// key once (the replays never reach it) plus the baseline's requests,
// which carry no key; the proxy's row has its ratio.
func TestBenchProxyReplayAgainstBaseline(t *testing.T) {
	t.Parallel()
	up, proxy, requests := countedProxy(t)
	rep := runBenchJSON(t, "proxy", "--baseline", up.URL+"/orders", "--target", proxy.URL+"/orders",
		"--mode", "replay", "--keys", "10", "-c", "2", "--duration", "200ms", "--warmup", "0", "--rounds", "2")
	base, r := rep.Levels[0].Results[0], rep.Levels[0].Results[1]
	if base.Kind != "baseline" || r.Kind != "http" || base.Ratio != nil || r.Ratio == nil || len(r.RoundRatios) != 2 {
		t.Fatalf("results %+v %+v", base, r)
	}
	if len(base.Errors) != 0 || len(r.Errors) != 0 || r.Ops == 0 || base.Ops == 0 {
		t.Errorf("errors %v %v, ops %d %d", base.Errors, r.Errors, base.Ops, r.Ops)
	}
	// 10 first executions through the proxy, the baseline's 10 requests
	// while the keys were sent, and its measured ones.
	if got, want := requests.Load(), int64(10+10+base.Ops); got != want {
		t.Errorf("the upstream answered %d requests, want %d: 10 keys once, the baseline's 10 while the keys were sent, and its %d ops", got, want, base.Ops)
	}
}

// TestBenchTable: the table for people has a row per target and level with
// the ratio column, and the progress lines go to stderr.
func TestBenchTable(t *testing.T) {
	t.Parallel()
	stdout, stderr, code := runCLI(t, "bench", "--store", "mem:,mem:", "-c", "2", "--duration", "50ms", "--warmup", "0", "--rounds", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"mode cycle, payload 256 B; 2 round(s)", "\n2 client(s)\n", "cycles/s", "p99.9 µs", "ratio to mem:", "1 (baseline)"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the table lacks %q:\n%s", want, stdout)
		}
	}
	if n := strings.Count(stderr, "idem bench: 2 clients, round "); n != 4 {
		t.Errorf("%d progress lines, want 4 (2 rounds of 2 targets):\n%s", n, stderr)
	}
}

// TestBenchReverseProxyBaseline: --reverse-proxy serves a plain reverse
// proxy to the upstream as the baseline: the upstream answers exactly the
// baseline's requests and the idem proxy's first executions.
func TestBenchReverseProxyBaseline(t *testing.T) {
	t.Parallel()
	up, proxy, requests := countedProxy(t)
	rep := runBenchJSON(t, "proxy", "--reverse-proxy", up.URL+"/orders", "--target", proxy.URL+"/orders",
		"-c", "2", "--duration", "200ms", "--warmup", "0", "--rounds", "1")
	base, r := rep.Levels[0].Results[0], rep.Levels[0].Results[1]
	if base.Kind != "reverse-proxy" || base.Target != "reverse-proxy:"+up.URL+"/orders" || r.Ratio == nil ||
		len(base.Errors)+len(r.Errors) != 0 || base.Ops == 0 || r.Ops == 0 {
		t.Fatalf("results %+v %+v", base, r)
	}
	if got := requests.Load(); got != int64(base.Ops+r.Ops) {
		t.Errorf("the upstream answered %d requests, want %d + %d", got, base.Ops, r.Ops)
	}
}

// TestBenchProgressTerminal: on a terminal the progress is one line,
// rewritten in place with the rate, elapsed and remaining time, and
// cleared at the end.
func TestBenchProgressTerminal(t *testing.T) {
	t.Parallel()
	o := &benchOptions{mode: "cycle", clients: []int{4}, rounds: 2, duration: time.Hour,
		targets: []benchTarget{{Kind: "store", URL: "mem:"}}}
	var w crashtest.Buffer
	p := newBenchProgress(&w, o)
	p.mode = progressTerminal
	p.turn(4, 1, 0, false)
	p.done.Store(1000)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(w.String(), "remaining") && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	p.finish()
	out := w.String()
	if !strings.HasPrefix(out, "\r\033[K4 clients, round 2/2, target mem:, ") || !strings.Contains(out, " cycles/s, elapsed ") ||
		!strings.Contains(out, "remaining 1h59m") && !strings.Contains(out, "remaining 2h0m0s") || !strings.HasSuffix(out, "\r\033[K") || strings.Contains(out, "\n") {
		t.Errorf("progress %q", out)
	}
}

// TestSplitURLs: a flag's URLs split at commas before a scheme, not at a
// comma inside a URL.
func TestSplitURLs(t *testing.T) {
	t.Parallel()
	for in, want := range map[string][]string{
		"mem:":                                   {"mem:"},
		"mem:,file:/tmp/x":                       {"mem:", "file:/tmp/x"},
		"mem:, HTTP://a:1,https://b/":            {"mem:", "HTTP://a:1", "https://b/"},
		"postgres://u@h1,h2:5432/db,redis://r/0": {"postgres://u@h1,h2:5432/db", "redis://r/0"},
		"mem:,":                                  {"mem:", ""},
		"http://a/x,y":                           {"http://a/x,y"},
	} {
		if got := splitURLs(in); !slices.Equal(got, want) {
			t.Errorf("splitURLs(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestBenchNothingSucceeds: an endpoint that answers only 503: the report
// is printed with the errors, and the exit status says the level failed.
func TestBenchNothingSucceeds(t *testing.T) {
	t.Parallel()
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	stdout, stderr, code := runCLI(t, "bench", "proxy", "--target", srv.URL, "-c", "2", "--duration", "100ms", "--warmup", "0", "--rounds", "1", "--json", "--quiet")
	var rep benchReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("no report: %v: %q", err, stdout)
	}
	r := rep.Levels[0].Results[0]
	if code != 1 || !strings.Contains(stderr, "at 2 clients: no operation succeeded") || r.Ops != 0 ||
		int64(r.Errors["http_503"]) != requests.Load() || requests.Load() == 0 {
		t.Errorf("exit %d, stderr %q, ops %d, errors %v, %d requests", code, stderr, r.Ops, r.Errors, requests.Load())
	}
}

// TestBenchServeRawClient: --client raw drives the same API as idemclient:
// every cycle the report counts is one begin and one complete the server
// answered, each completing an outcome of --payload bytes; replay mode
// begins completed keys only; a refused token fails before any load.
func TestBenchServeRawClient(t *testing.T) {
	t.Parallel()
	api := newCountingAPI(t, "tok-bench", "load")
	rep := runBenchJSON(t, "--server", api.srv.URL, "--token", "tok-bench", "--scope", "load", "--client", "raw",
		"-c", "1,4", "--duration", "200ms", "--warmup", "50ms", "--rounds", "2", "--payload", "100")
	if rep.Client != "raw" {
		t.Errorf("report's client %q, want raw", rep.Client)
	}
	for _, l := range rep.Levels {
		if r := l.Results[0]; r.Ops == 0 || len(r.Errors) != 0 || r.P50 <= 0 {
			t.Errorf("%d clients: %+v", l.Clients, r)
		}
	}
	sent := total(rep, 0, func(r benchResult) int { return r.Ops + errorCount(r) + r.WarmupOps })
	if b, c := api.begins.Load(), api.completes.Load(); b != int64(sent) || c != int64(sent) {
		t.Errorf("the server answered %d begins and %d completes; the report counts %d cycles", b, c, sent)
	}
	page, err := api.store.List(context.Background(), &idem.ListParams{Scope: "load", Limit: 1000})
	if err != nil || len(page.Records) == 0 {
		t.Fatalf("List: %v, %d records", err, len(page.Records))
	}
	for _, r := range page.Records {
		if r.State != idem.StateCompleted || r.Outcome == nil || len(r.Outcome.Data) != 100 || r.Fingerprint != "bench" {
			t.Fatalf("stored %+v, want completed with 100 bytes", r)
		}
	}

	replays := newCountingAPI(t, "tok-bench", "bench")
	rep = runBenchJSON(t, "--server", replays.srv.URL, "--token", "tok-bench", "--client", "raw", "--mode", "replay", "--keys", "20",
		"-c", "3", "--duration", "200ms", "--warmup", "0", "--rounds", "1")
	r := rep.Levels[0].Results[0]
	if r.Ops == 0 || len(r.Errors) != 0 {
		t.Fatalf("replay: %+v", r)
	}
	if b, c := replays.begins.Load(), replays.completes.Load(); c != 20 || b != int64(20+r.Ops) {
		t.Errorf("replay: the server answered %d begins and %d completes, want %d and 20", b, c, 20+r.Ops)
	}

	_, stderr, code := runCLI(t, "bench", "--server", api.srv.URL, "--token", "wrong", "--client", "raw", "-c", "1", "--duration", "50ms")
	if code != 1 || !strings.Contains(stderr, "401") {
		t.Errorf("wrong token: exit %d, stderr %q", code, stderr)
	}
}

func TestParseBeginAnswer(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in       string
		decision idem.Decision
		token    int64
		err      bool
	}{
		{`{"decision":"acquired","token":7,"attempt":1}`, idem.Acquired, 7, false},
		{`{"token":123456789012,"decision":"acquired"}`, idem.Acquired, 123456789012, false},
		{`{"decision":"replay","outcome":{"data":"eA=="}}`, idem.Replay, 0, false},
		{`{"decision":"in_flight","retry_after_ms":5}`, idem.InFlight, 0, false},
		{`{"decision":"acquired"}`, "", 0, true},
		{`{"decision":"acquired","token":-1}`, "", 0, true},
		{`{"decision":"acquired","token":"x"}`, "", 0, true},
		{`{"decision":"acq`, "", 0, true},
		{`{}`, "", 0, true},
	} {
		d, token, err := parseBeginAnswer([]byte(c.in))
		if d != c.decision || token != c.token || (err != nil) != c.err {
			t.Errorf("parseBeginAnswer(%s) = %q %d %v", c.in, d, token, err)
		}
	}
}

func FuzzParseBeginAnswer(f *testing.F) {
	f.Add([]byte(`{"decision":"acquired","token":7}`))
	f.Add([]byte(`{"decision":"replay"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, token, err := parseBeginAnswer(b)
		if err == nil && d == idem.Acquired && token <= 0 {
			t.Fatalf("acquired with token %d", token)
		}
	})
}
