package idemhttp_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
)

var start = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// inFlightCounter counts Begin calls that found the key in flight.
type inFlightCounter struct{ n atomic.Int64 }

func (c *inFlightCounter) Observe(_ context.Context, ev *idem.Event) {
	if ev.Op == idem.OpBegin && ev.Decision == idem.InFlight {
		c.n.Add(1)
	}
}

type bundle struct {
	ledger   *idem.Ledger
	store    *memstore.Store
	clock    *idem.ManualClock // nil unless asked for
	inFlight *inFlightCounter
	logs     *syncBuffer
	runs     atomic.Int64
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// setup returns a ledger on memstore; manual selects an idem.ManualClock
// shared by store, ledger and middleware config (set on cfg).
func setup(t *testing.T, manual bool, cfg *idemhttp.Config) *bundle {
	t.Helper()
	b := &bundle{inFlight: &inFlightCounter{}, logs: &syncBuffer{}}
	var clock idem.Clock = idem.SystemClock{}
	if manual {
		b.clock = idem.NewManualClock(start)
		clock = b.clock
		if cfg != nil {
			cfg.Clock = b.clock
		}
	}
	b.store = memstore.New(&memstore.Config{Clock: clock})
	l, err := idem.New(b.store, &idem.Config{Clock: clock, Observer: b.inFlight})
	if err != nil {
		t.Fatal(err)
	}
	b.ledger = l
	if cfg != nil && cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(b.logs, nil))
	}
	return b
}

// serve wraps h (counting its runs) in the middleware.
func (b *bundle) serve(cfg *idemhttp.Config, h http.HandlerFunc) http.Handler {
	return idemhttp.Middleware(b.ledger, cfg)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.runs.Add(1)
		h(w, r)
	}))
}

func post(key, body string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/orders?x=1", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	if key != "" {
		r.Header.Set(idemhttp.HeaderKey, key)
	}
	return r
}

func do(h http.Handler, r *http.Request) *http.Response {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Result()
}

func readBody(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantProblem(t *testing.T, res *http.Response, status int, name string) {
	t.Helper()
	if res.StatusCode != status {
		t.Fatalf("status %d, want %d", res.StatusCode, status)
	}
	if ct := res.Header.Get("Content-Type"); ct != idemhttp.ProblemContentType {
		t.Fatalf("Content-Type %q, want %q", ct, idemhttp.ProblemContentType)
	}
	var p idemhttp.Problem
	if err := json.NewDecoder(res.Body).Decode(&p); err != nil {
		t.Fatal(err)
	}
	if want := idemhttp.ProblemTypeBase + name; p.Type != want || p.Status != status || p.Title == "" {
		t.Fatalf("problem %+v, want type %q status %d", p, want, status)
	}
}

// created answers 201 with headers that must and must not be stored.
func created(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Location", "/orders/1")
	h.Add("Link", "</a>; rel=a")
	h.Add("Link", "</b>; rel=b")
	h.Set("Set-Cookie", "session=secret")
	h.Set("X-Request-Id", "req-1")
	h.Set("X-RateLimit-Remaining", "9")
	h.Set("RateLimit-Policy", "10;w=1")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id":1,"echo":%q}`, body)
}

func TestFirstExecutionThenReplay(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{Window: time.Hour}
	b := setup(t, true, cfg)
	h := b.serve(cfg, created)

	first := do(h, post("k1", `{"a":1}`))
	firstBody := readBody(t, first)
	b.clock.Advance(time.Minute)
	second := do(h, post("k1", `{"a":1}`))
	secondBody := readBody(t, second)

	if got := b.runs.Load(); got != 1 {
		t.Fatalf("handler ran %d times, want 1", got)
	}
	wantExpires := start.Add(time.Hour).Format(http.TimeFormat)
	for i, res := range []*http.Response{first, second} {
		if res.StatusCode != http.StatusCreated || res.Header.Get("Location") != "/orders/1" ||
			res.Header.Get("Content-Type") != "application/json" || len(res.Header.Values("Link")) != 2 {
			t.Fatalf("response %d: %d %v", i, res.StatusCode, res.Header)
		}
		if got := res.Header.Get(idemhttp.HeaderExpires); got != wantExpires {
			t.Fatalf("response %d: %s %q, want %q", i, idemhttp.HeaderExpires, got, wantExpires)
		}
	}
	if firstBody != `{"id":1,"echo":"{\"a\":1}"}` || secondBody != firstBody {
		t.Fatalf("bodies %q, %q", firstBody, secondBody)
	}
	if first.Header.Get(idemhttp.HeaderReplayed) != "false" || second.Header.Get(idemhttp.HeaderReplayed) != "true" {
		t.Fatalf("replayed headers %q, %q", first.Header.Get(idemhttp.HeaderReplayed), second.Header.Get(idemhttp.HeaderReplayed))
	}
	for _, name := range []string{"Set-Cookie", "X-Request-Id", "X-RateLimit-Remaining", "RateLimit-Policy"} {
		if second.Header.Get(name) != "" {
			t.Fatalf("replay carries %s", name)
		}
	}

	// What the store holds: status, allow-listed headers, the body.
	rec, err := b.ledger.Get(context.Background(), "9:anonymous POST /orders", "k1")
	if err != nil {
		t.Fatal(err)
	}
	status, header, body, err := idemhttp.StoredResponse(rec.Outcome)
	if err != nil || string(body) != firstBody || status != 201 || len(header) != 3 || rec.Outcome.Meta != nil {
		t.Fatalf("stored %d %v %q (%v), Meta %v", status, header, body, err, rec.Outcome.Meta)
	}
}

func TestConcurrentDuplicatesRunOnce(t *testing.T) {
	t.Parallel()
	const n = 64
	for _, wait := range []bool{false, true} {
		t.Run(fmt.Sprintf("wait=%v", wait), func(t *testing.T) {
			t.Parallel()
			cfg := &idemhttp.Config{Wait: -1} // 409 at once
			if wait {
				cfg.Wait = 20 * time.Second
			}
			b := setup(t, false, cfg)
			gate := make(chan struct{})
			entered := make(chan struct{})
			h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
				close(entered)
				<-gate
				created(w, r)
			})
			responses := make([]*httptest.ResponseRecorder, 2*n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					responses[i] = httptest.NewRecorder()
					h.ServeHTTP(responses[i], post("dup", "same"))
				})
			}
			<-entered
			// Every duplicate has met the in-flight original at least once.
			deadline := time.Now().Add(30 * time.Second)
			for b.inFlight.n.Load() < n-1 {
				if time.Now().After(deadline) {
					t.Fatalf("only %d duplicates met the original", b.inFlight.n.Load())
				}
				time.Sleep(time.Millisecond) // polling a condition, not synchronising on time
			}
			close(gate)
			wg.Wait()
			for i := n; i < 2*n; i++ { // and duplicates after completion
				wg.Go(func() {
					responses[i] = httptest.NewRecorder()
					h.ServeHTTP(responses[i], post("dup", "same"))
				})
			}
			wg.Wait()

			if got := b.runs.Load(); got != 1 {
				t.Fatalf("handler ran %d times, want 1", got)
			}
			var ref *httptest.ResponseRecorder
			first, conflicts := 0, 0
			for _, res := range responses {
				if res.Code == http.StatusConflict && !wait {
					conflicts++
					if res.Header().Get("Retry-After") == "" {
						t.Fatal("409 without Retry-After")
					}
					continue
				}
				if res.Header().Get(idemhttp.HeaderReplayed) == "false" {
					first++
				}
				if ref == nil {
					ref = res
					continue
				}
				if res.Code != ref.Code || !bytes.Equal(res.Body.Bytes(), ref.Body.Bytes()) {
					t.Fatalf("responses differ: %d %q vs %d %q", res.Code, res.Body, ref.Code, ref.Body)
				}
				for _, name := range append([]string{idemhttp.HeaderExpires}, idemhttp.DefaultStoredHeaders...) {
					if a, b := res.Header().Values(name), ref.Header().Values(name); strings.Join(a, "\n") != strings.Join(b, "\n") {
						t.Fatalf("header %s differs: %q vs %q", name, a, b)
					}
				}
			}
			if first != 1 {
				t.Fatalf("%d first executions, want 1", first)
			}
			if wantConflicts := map[bool]int{false: n - 1, true: 0}[wait]; conflicts != wantConflicts {
				t.Fatalf("%d conflicts, want %d", conflicts, wantConflicts)
			}
		})
	}
}

func TestStatusClasses(t *testing.T) {
	t.Parallel()
	cases := []struct {
		status   int
		keepAll  bool
		wantRuns int64
	}{
		{http.StatusOK, false, 1}, {http.StatusCreated, false, 1}, {http.StatusNoContent, false, 1},
		{http.StatusBadRequest, false, 1}, {http.StatusNotFound, false, 1}, {http.StatusConflict, false, 1},
		{http.StatusRequestTimeout, false, 2}, {http.StatusTooManyRequests, false, 2},
		{http.StatusInternalServerError, false, 2}, {http.StatusServiceUnavailable, false, 2},
		{http.StatusInternalServerError, true, 1}, {http.StatusTooManyRequests, true, 1},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%d/keepAll=%v", tc.status, tc.keepAll), func(t *testing.T) {
			t.Parallel()
			cfg := &idemhttp.Config{}
			if tc.keepAll {
				cfg.Keep = idemhttp.KeepEverything
			}
			b := setup(t, false, cfg)
			h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				fmt.Fprintf(w, "run %d", b.runs.Load())
			})
			do(h, post("k", "x"))
			res := do(h, post("k", "x"))
			if got := b.runs.Load(); got != tc.wantRuns {
				t.Fatalf("handler ran %d times, want %d", got, tc.wantRuns)
			}
			wantBody := "run 1"
			if tc.wantRuns == 2 {
				wantBody = "run 2"
			}
			if got := readBody(t, res); res.StatusCode != tc.status || (tc.status != http.StatusNoContent && got != wantBody) {
				t.Fatalf("second response %d %q, want %d %q", res.StatusCode, got, tc.status, wantBody)
			}
		})
	}
}

func TestHandlerWithoutWriteStores200(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{}
	b := setup(t, false, cfg)
	h := b.serve(cfg, func(http.ResponseWriter, *http.Request) {})
	do(h, post("k", ""))
	res := do(h, post("k", ""))
	if res.StatusCode != http.StatusOK || readBody(t, res) != "" || b.runs.Load() != 1 {
		t.Fatalf("replay %d, runs %d", res.StatusCode, b.runs.Load())
	}
}

func TestPanicReleasesAndRepanics(t *testing.T) {
	t.Parallel()
	for _, value := range []any{"boom", http.ErrAbortHandler} {
		t.Run(fmt.Sprint(value), func(t *testing.T) {
			t.Parallel()
			cfg := &idemhttp.Config{}
			b := setup(t, false, cfg)
			h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
				if b.runs.Load() == 1 {
					w.WriteHeader(http.StatusAccepted) // written before the panic: not stored
					panic(value)
				}
				w.WriteHeader(http.StatusCreated)
			})
			func() {
				defer func() {
					if got := recover(); got != value {
						t.Errorf("recovered %v, want %v", got, value)
					}
				}()
				do(h, post("k", "x"))
			}()
			res := do(h, post("k", "x"))
			if res.StatusCode != http.StatusCreated || b.runs.Load() != 2 {
				t.Fatalf("after a panic: %d, runs %d; want 201 from a second run", res.StatusCode, b.runs.Load())
			}
		})
	}
}

func TestClientDisconnectStillRecords(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{}
	b := setup(t, false, cfg)
	entered, cancelled := make(chan struct{}), make(chan struct{})
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done() // the client is gone; the work goes on
		close(cancelled)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "done")
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		do(h, post("k", "x").WithContext(ctx))
	}()
	<-entered
	cancel()
	<-cancelled
	<-done
	res := do(h, post("k", "x"))
	if res.StatusCode != http.StatusCreated || readBody(t, res) != "done" || res.Header.Get(idemhttp.HeaderReplayed) != "true" {
		t.Fatalf("after a disconnect: %d replayed=%q", res.StatusCode, res.Header.Get(idemhttp.HeaderReplayed))
	}
	if b.runs.Load() != 1 {
		t.Fatalf("handler ran %d times", b.runs.Load())
	}
}

func TestStreamingAndFlush(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{}
	b := setup(t, false, cfg)
	clientRead := make(chan struct{})
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "first;")
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("flush: %v", err)
		}
		select { // the client sees the first chunk before the handler ends
		case <-clientRead:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second")
		w.(http.Flusher).Flush()
	})
	srv := httptest.NewServer(h)
	defer srv.Close()

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/stream", strings.NewReader("x"))
	req.Header.Set(idemhttp.HeaderKey, `"stream-1"`)
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, len("first;"))
	if _, err := io.ReadFull(res.Body, chunk); err != nil || string(chunk) != "first;" {
		t.Fatalf("first chunk %q, %v", chunk, err)
	}
	close(clientRead)
	rest, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(rest) != "second" {
		t.Fatalf("rest %q", rest)
	}

	req, _ = http.NewRequest(http.MethodPost, srv.URL+"/stream", strings.NewReader("x"))
	req.Header.Set(idemhttp.HeaderKey, "stream-1")
	res, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if got := readBody(t, res); got != "first;second" || res.Header.Get(idemhttp.HeaderReplayed) != "true" {
		t.Fatalf("replay %q replayed=%q", got, res.Header.Get(idemhttp.HeaderReplayed))
	}
	res.Body.Close()
}

func TestLargeResponseReleased(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{MaxResponse: 10}
	b := setup(t, false, cfg)
	big := strings.Repeat("x", 25)
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, big[:5])
		io.WriteString(w, big[5:])
	})
	for i := range 2 {
		res := do(h, post("secret-key-123", "secret-body"))
		if got := readBody(t, res); got != big {
			t.Fatalf("response %d: %d bytes, want the whole %d", i, len(got), len(big))
		}
	}
	if b.runs.Load() != 2 {
		t.Fatalf("handler ran %d times, want 2 (the key released)", b.runs.Load())
	}
	logs := b.logs.String()
	if !strings.Contains(logs, "over the limit of 10 bytes") || strings.Contains(logs, "secret") {
		t.Fatalf("log %q: want the reason, never the key or body", logs)
	}
}

func TestTenantsIsolated(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{}
	b := setup(t, false, cfg)
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "for "+r.Header.Get("Authorization"))
	})
	for _, auth := range []string{"Bearer alice", "Bearer bob", "", "Bearer alice"} {
		r := post("shared-key", "x")
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		if got := readBody(t, do(h, r)); got != "for "+auth {
			t.Fatalf("%q got %q", auth, got)
		}
	}
	if b.runs.Load() != 3 {
		t.Fatalf("handler ran %d times, want 3 (one per tenant)", b.runs.Load())
	}

	custom := &idemhttp.Config{Scope: func(r *http.Request) (string, error) {
		if t := r.Header.Get("X-Tenant"); t != "" {
			return t, nil
		}
		return "", errors.New("no tenant")
	}}
	h = b.serve(custom, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Header.Get("X-Tenant")) })
	for _, tenant := range []string{"a", "b"} {
		r := post("k", "x")
		r.Header.Set("X-Tenant", tenant)
		if got := readBody(t, do(h, r)); got != tenant {
			t.Fatalf("tenant %s got %q", tenant, got)
		}
	}
	wantProblem(t, do(h, post("k", "x")), http.StatusBadRequest, "scope-failed")
}

func TestFingerprintMismatch(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{}
	b := setup(t, false, cfg)
	h := b.serve(cfg, created)
	do(h, post("k", "one"))
	wantProblem(t, do(h, post("k", "two")), http.StatusUnprocessableEntity, "fingerprint-mismatch")
	other := post("k", "one")
	other.URL.RawQuery = "x=2"
	wantProblem(t, do(h, other), http.StatusUnprocessableEntity, "fingerprint-mismatch")
	ct := post("k", "one")
	ct.Header.Set("Content-Type", "text/plain")
	wantProblem(t, do(h, ct), http.StatusUnprocessableEntity, "fingerprint-mismatch")

	cfg2 := &idemhttp.Config{MismatchStatus: http.StatusConflict}
	h2 := b.serve(cfg2, created)
	wantProblem(t, do(h2, post("k", "three")), http.StatusConflict, "fingerprint-mismatch")
	if b.runs.Load() != 1 {
		t.Fatalf("handler ran %d times", b.runs.Load())
	}
}

func TestKeys(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{}
	b := setup(t, false, cfg)
	h := b.serve(cfg, created)

	if res := do(h, post("", "x")); res.StatusCode != http.StatusCreated || res.Header.Get(idemhttp.HeaderReplayed) != "" {
		t.Fatalf("no key: %d %v", res.StatusCode, res.Header)
	}
	for name, values := range map[string][]string{
		"two lines": {"a", "b"}, "list": {`"a", "b"`}, "empty": {""}, "empty string": {`""`},
		"too long": {strings.Repeat("k", 256)}, "bad escape": {`"a\n"`}, "unclosed": {`"abc`},
		"space": {"a b"}, "non-ascii": {"clé"},
	} {
		r := post("", "x")
		r.Header[idemhttp.HeaderKey] = values
		t.Run(name, func(t *testing.T) { wantProblem(t, do(h, r), http.StatusBadRequest, "key-invalid") })
	}
	// Other methods pass through untouched, whatever their key.
	get := httptest.NewRequest(http.MethodGet, "/orders", nil)
	get.Header[idemhttp.HeaderKey] = []string{"a", "b"}
	if res := do(h, get); res.StatusCode != http.StatusCreated {
		t.Fatalf("GET: %d", res.StatusCode)
	}
	runs := b.runs.Load()

	req := &idemhttp.Config{RequireKey: true, Methods: []string{http.MethodPut}}
	hr := b.serve(req, created)
	put := httptest.NewRequest(http.MethodPut, "/orders", nil)
	wantProblem(t, do(hr, put), http.StatusBadRequest, "key-required")
	if res := do(hr, post("", "x")); res.StatusCode != http.StatusCreated {
		t.Fatalf("POST not in Methods: %d", res.StatusCode)
	}
	if b.runs.Load() != runs+1 {
		t.Fatalf("runs %d, want %d", b.runs.Load(), runs+1)
	}
}

func TestBodyLimitAndRestore(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{MaxBody: 8}
	b := setup(t, false, cfg)
	h := b.serve(cfg, created)
	wantProblem(t, do(h, post("k", "123456789")), http.StatusRequestEntityTooLarge, "body-too-large")
	chunked := post("k", "123456789")
	chunked.ContentLength = -1
	wantProblem(t, do(h, chunked), http.StatusRequestEntityTooLarge, "body-too-large")
	if b.runs.Load() != 0 {
		t.Fatal("handler ran on a body over the limit")
	}
	if got := readBody(t, do(h, post("k", "12345678"))); got != `{"id":1,"echo":"12345678"}` {
		t.Fatalf("handler read %q", got)
	}
}

// TestBodyForConfigFunctions: a Scope or Fingerprint function that reads
// r.Body gets the body the middleware read; the handler gets it whole
// when no function read it, and a handler that keeps the body reads
// nothing from it after returning.
func TestBodyForConfigFunctions(t *testing.T) {
	t.Parallel()
	var seen atomic.Value
	readsBody := func(r *http.Request) string {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Error(err)
		}
		seen.Store(string(b))
		return string(b)
	}
	for name, cfg := range map[string]*idemhttp.Config{
		"scope":       {Scope: func(r *http.Request) (string, error) { readsBody(r); return "s", nil }},
		"fingerprint": {Fingerprint: func(r *http.Request, _ []byte) string { return readsBody(r) }},
	} {
		t.Run(name, func(t *testing.T) {
			b := setup(t, false, cfg)
			h := b.serve(cfg, created)
			res := do(h, post("k", "123"))
			if got := seen.Load(); got != "123" {
				t.Fatalf("the %s function read %q", name, got)
			}
			// The function drained the body: the handler reads the rest.
			if got := readBody(t, res); got != `{"id":1,"echo":""}` {
				t.Fatalf("handler answered %q", got)
			}
		})
	}
	cfg := &idemhttp.Config{}
	b := setup(t, false, cfg)
	var kept io.Reader
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		kept = r.Body
		created(w, r)
	})
	if got := readBody(t, do(h, post("k", "456"))); got != `{"id":1,"echo":"456"}` {
		t.Fatalf("handler answered %q", got)
	}
	do(h, post("other", "789")) // reuses the pooled buffer
	if n, _ := kept.Read(make([]byte, 8)); n != 0 {
		t.Fatalf("a kept body read %d bytes after its handler returned", n)
	}
}

// TestInFlightRetryAfter: a duplicate that finds its original in flight
// (Wait disabled) gets a Retry-After that estimates when the original will
// finish: the route's recent first executions' duration less how long the
// original has run (without recent executions, as long again as it has
// run), at least 1 s.
func TestInFlightRetryAfter(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{Lease: 30 * time.Second, Wait: -1}
	b := setup(t, true, cfg)
	entered, gate := make(chan struct{}), make(chan struct{})
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(idemhttp.HeaderKey) == "quick" {
			b.clock.Advance(8 * time.Second) // an execution that takes 8 s
			w.WriteHeader(http.StatusCreated)
			return
		}
		entered <- struct{}{}
		<-gate
	})
	on := func(path, key string) *http.Request {
		r := post(key, "x")
		r.URL.Path = path
		return r
	}
	retryAfter := func(path string) string {
		t.Helper()
		res := do(h, on(path, "k"))
		wantProblem(t, res, http.StatusConflict, "in-flight")
		return res.Header.Get("Retry-After")
	}

	// No executions on /refunds yet: as long again as the original ran.
	go do(h, on("/refunds", "k"))
	<-entered
	if got := retryAfter("/refunds"); got != "1" {
		t.Fatalf("Retry-After %q at once, want 1 (at least a second)", got)
	}
	b.clock.Advance(4 * time.Second)
	if got := retryAfter("/refunds"); got != "4" {
		t.Fatalf("Retry-After %q after 4 s, want 4", got)
	}
	gate <- struct{}{}

	// /orders took 8 s: the estimate counts down from there.
	do(h, on("/orders", "quick"))
	go do(h, on("/orders", "k"))
	<-entered
	b.clock.Advance(3 * time.Second)
	if got := retryAfter("/orders"); got != "5" {
		t.Fatalf("Retry-After %q 3 s into an 8 s route, want 5", got)
	}
	b.clock.Advance(6 * time.Second)
	if got := retryAfter("/orders"); got != "1" {
		t.Fatalf("Retry-After %q past the route's duration, want 1", got)
	}
	close(gate)
}

// TestInFlightRetryAfterLease: the estimate never passes the end of the
// original's lease, when a retry may take the key over.
func TestInFlightRetryAfterLease(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{Lease: 3 * time.Second, Wait: -1}
	b := setup(t, true, cfg)
	entered, gate := make(chan struct{}), make(chan struct{})
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(idemhttp.HeaderKey) == "slow" {
			b.clock.Advance(20 * time.Second)
			return
		}
		close(entered)
		<-gate
	})
	do(h, post("slow", "x"))
	done := make(chan struct{})
	go func() { defer close(done); do(h, post("k", "x")) }()
	<-entered
	res := do(h, post("k", "x"))
	wantProblem(t, res, http.StatusConflict, "in-flight")
	if got := res.Header.Get("Retry-After"); got != "3" {
		t.Fatalf("Retry-After %q, want 3 (the lease's end, before the 20 s estimate)", got)
	}
	close(gate)
	<-done
}

// TestDuplicateWaitsForOriginal: by default a duplicate of a request in
// flight waits for the original and replays its response, as soon as the
// ledger, polled on the clock, shows it completed.
func TestDuplicateWaitsForOriginal(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{}
	b := setup(t, true, cfg)
	entered, gate := make(chan struct{}), make(chan struct{})
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-gate
		created(w, r)
	})
	first := make(chan *http.Response, 1)
	go func() { first <- do(h, post("k", "x")) }()
	<-entered
	dup := make(chan *http.Response, 1)
	go func() { dup <- do(h, post("k", "x")) }()
	// The duplicate met the original (once without waiting, once waiting).
	waitFor(t, func() bool { return b.inFlight.n.Load() >= 2 })
	b.clock.Advance(500 * time.Millisecond) // the original's work
	close(gate)
	original := <-first
	want := readBody(t, original)
	var res *http.Response
	// Advance only while the duplicate sleeps between polls (the other
	// waiter is the lease heartbeat's timer).
	waitFor(t, func() bool {
		select {
		case res = <-dup:
			return true
		default:
			if b.clock.Waiters() >= 2 {
				b.clock.Advance(250 * time.Millisecond)
			}
			return false
		}
	})
	if got := readBody(t, res); res.StatusCode != http.StatusCreated || got != want || res.Header.Get(idemhttp.HeaderReplayed) != "true" {
		t.Fatalf("duplicate: %d %q %q, want the original's 201 replayed", res.StatusCode, res.Header.Get(idemhttp.HeaderReplayed), got)
	}
	if n := b.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	if waited := b.clock.Now().Sub(start); waited > time.Second {
		t.Fatalf("the duplicate answered %s after the original began, want about its 0.5 s", waited)
	}
}

func TestHeartbeatExtendsLease(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{Lease: 9 * time.Second, Wait: -1}
	b := setup(t, true, cfg)
	entered, gate := make(chan struct{}), make(chan struct{})
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-gate
		w.WriteHeader(http.StatusCreated)
	})
	done := make(chan struct{})
	go func() { defer close(done); do(h, post("k", "x")) }()
	<-entered
	// Ten times the lease passes while the handler works; the heartbeat
	// keeps the key, so a duplicate is in flight, never a second run.
	for range 30 {
		waitFor(t, func() bool { return b.clock.Waiters() > 0 })
		b.clock.Advance(3 * time.Second)
		waitFor(t, func() bool { return b.leaseUntil(t, "k").Equal(b.clock.Now().Add(9 * time.Second)) })
	}
	res := do(h, post("k", "x"))
	wantProblem(t, res, http.StatusConflict, "in-flight")
	close(gate)
	<-done
	if res := do(h, post("k", "x")); res.StatusCode != http.StatusCreated || b.runs.Load() != 1 {
		t.Fatalf("replay %d, runs %d", res.StatusCode, b.runs.Load())
	}
}

// leaseUntil is the end of key's lease by the store (post's scope).
func (b *bundle) leaseUntil(t *testing.T, key string) time.Time {
	t.Helper()
	rec, err := b.ledger.Get(context.Background(), "9:anonymous POST /orders", key)
	if err != nil {
		t.Fatal(err)
	}
	return rec.LeaseUntil
}

// TestHeartbeatManyExecutions: executions that start at different times
// share the heartbeat; each is extended within a third of the lease of
// its start and every third after, none is taken over, one that ends
// stops being extended, and the heartbeat's timer stops at the first tick
// after the last ended.
func TestHeartbeatManyExecutions(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{Lease: 9 * time.Second, Wait: -1}
	b := setup(t, true, cfg)
	gates := map[string]chan struct{}{}
	entered := make(chan string)
	for _, k := range []string{"a", "b", "c"} {
		gates[k] = make(chan struct{})
	}
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		k := r.Header.Get(idemhttp.HeaderKey)
		entered <- k
		<-gates[k]
		w.WriteHeader(http.StatusCreated)
	})
	done := map[string]chan struct{}{}
	begin := func(k string) {
		done[k] = make(chan struct{})
		go func() {
			defer close(done[k])
			if res := do(h, post(k, "x")); res.StatusCode != http.StatusCreated {
				t.Errorf("%s: status %d", k, res.StatusCode)
			}
		}()
		<-entered
	}
	begin("a")
	b.clock.Advance(2 * time.Second)
	begin("b") // a tick is due 1 s after b started
	running := []string{"a", "b"}
	for i := range 24 {
		switch i {
		case 5:
			begin("c")
			running = append(running, "c")
		case 12:
			close(gates["a"])
			<-done["a"]
			running = running[1:]
		}
		b.clock.Advance(time.Second)
		for _, k := range running {
			if res := do(h, post(k, "x")); res.StatusCode != http.StatusConflict {
				t.Fatalf("step %d: a duplicate of %s got %d, want 409 in flight", i, k, res.StatusCode)
			}
			// Never less than two thirds of the lease left, once the
			// tick's extensions are in.
			waitFor(t, func() bool { return !b.leaseUntil(t, k).Before(b.clock.Now().Add(6 * time.Second)) })
		}
	}
	close(gates["b"])
	close(gates["c"])
	<-done["b"]
	<-done["c"]
	b.clock.Advance(3 * time.Second)
	waitFor(t, func() bool { return b.clock.Waiters() == 0 })
	if got := b.runs.Load(); got != 3 {
		t.Fatalf("handler ran %d times, want 3", got)
	}
}

// waitFor polls cond until it holds, failing after a generous deadline.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// failingStore answers every Begin with ErrUnavailable.
type failingStore struct{ *memstore.Store }

func (failingStore) Begin(context.Context, *idem.BeginParams) (*idem.BeginResult, error) {
	return nil, fmt.Errorf("dial: %w", idem.ErrUnavailable)
}

func TestLedgerUnavailable(t *testing.T) {
	t.Parallel()
	l, err := idem.New(failingStore{memstore.New(nil)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int64
	h := idemhttp.Middleware(l, &idemhttp.Config{Logger: slog.New(slog.DiscardHandler)})(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { runs.Add(1) }))
	wantProblem(t, do(h, post("k", "x")), http.StatusServiceUnavailable, "ledger-unavailable")
	if runs.Load() != 0 {
		t.Fatal("handler ran without the ledger")
	}
}

// TestAuthorizationScopeStable pins the default scope digest: records
// stored by earlier versions must stay reachable.
func TestAuthorizationScopeStable(t *testing.T) {
	t.Parallel()
	r := post("k", "")
	r.Header["Authorization"] = []string{"Bearer abc", "Basic x"}
	got, err := idemhttp.AuthorizationScope(r)
	if want := "auth:d74baf4c96f0db94a1d9246833b0bd7e2eb52b3fa1b91fb133a7d1fcb78c5ad1"; err != nil || got != want {
		t.Fatalf("AuthorizationScope = %q, %v; want %q", got, err, want)
	}
}

// TestReusedBuffersStayApart runs requests of many body sizes, some over
// the pooled size, through one middleware: every response is stored and
// replayed byte for byte, whatever the buffers served before.
func TestReusedBuffersStayApart(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{}
	b := setup(t, false, cfg)
	var kept io.Reader // a body kept past the handler's return
	var mu sync.Mutex
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		kept = r.Body
		mu.Unlock()
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("ETag", "")
		w.WriteHeader(http.StatusCreated)
		w.Header().Set("Content-Type", "changed/after-write") // not what is stored
		_, _ = w.Write(body)
		_, _ = w.Write(bytes.ToUpper(body))
	})
	sizes := []int{0, 1, 31, 1023, 1024, 1025, 5000, 70 << 10, 3, 200 << 10, 17}
	for i, n := range sizes {
		body := strings.Repeat(string(rune('a'+i)), n)
		want := body + strings.ToUpper(body)
		key := fmt.Sprintf("k%d", i)
		first := do(h, post(key, body))
		if got := readBody(t, first); first.StatusCode != http.StatusCreated || got != want {
			t.Fatalf("size %d: first %d, %d bytes", n, first.StatusCode, len(got))
		}
		mu.Lock()
		if s, ok := kept.(io.ReadSeeker); ok { // rewinding must not reach a reused buffer
			_, _ = s.Seek(0, io.SeekStart)
			if rest, _ := io.ReadAll(s); len(rest) != 0 {
				t.Fatalf("size %d: a body read after the handler returned gave %d bytes", n, len(rest))
			}
		}
		mu.Unlock()
		rec, err := b.ledger.Get(context.Background(), "9:anonymous POST /orders", key)
		if err != nil {
			t.Fatal(err)
		}
		_, header, stored, err := idemhttp.StoredResponse(rec.Outcome)
		if err != nil || string(stored) != want {
			t.Fatalf("size %d: stored %d bytes, %v", n, len(stored), err)
		}
		if ct := header["Content-Type"]; len(ct) != 1 || ct[0] != "text/plain" {
			t.Fatalf("size %d: stored Content-Type %q", n, ct)
		}
		if etag, ok := header["Etag"]; !ok || len(etag) != 1 || etag[0] != "" {
			t.Fatalf("size %d: stored an empty ETag as %q, %v", n, etag, ok)
		}
	}
	for i, n := range sizes {
		body := strings.Repeat(string(rune('a'+i)), n)
		res := do(h, post(fmt.Sprintf("k%d", i), body))
		if got := readBody(t, res); got != body+strings.ToUpper(body) || res.Header.Get(idemhttp.HeaderReplayed) != "true" {
			t.Fatalf("size %d: replay %q, %d bytes", n, res.Header.Get(idemhttp.HeaderReplayed), len(got))
		}
		if v, ok := res.Header["Etag"]; !ok || len(v) != 1 || v[0] != "" || res.Header.Get("Content-Type") != "text/plain" {
			t.Fatalf("size %d: replayed headers %v", n, res.Header)
		}
	}
	if got := b.runs.Load(); got != int64(len(sizes)) {
		t.Fatalf("handler ran %d times, want %d", got, len(sizes))
	}
}

// TestReplayedHeadersAreSeparate checks that appending to one replayed
// header never changes another: they share one backing array.
func TestReplayedHeadersAreSeparate(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{}
	b := setup(t, false, cfg)
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Link", "</a>; rel=a")
		w.Header().Add("Link", "</b>; rel=b")
		w.Header().Set("Location", "/orders/1")
		w.WriteHeader(http.StatusCreated)
	})
	do(h, post("k", "x"))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, post("k", "x"))
	live := w.Header() // as the replay left it, before any later writer
	for name := range live {
		live[name] = append(live[name], "extra")
	}
	for name, want := range map[string][]string{
		"Link":                  {"</a>; rel=a", "</b>; rel=b", "extra"},
		"Location":              {"/orders/1", "extra"},
		idemhttp.HeaderReplayed: {"true", "extra"},
	} {
		if got := live.Values(name); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("%s = %q, want %q", name, got, want)
		}
	}
	if got := live.Values(idemhttp.HeaderExpires); len(got) != 2 || got[1] != "extra" {
		t.Fatalf("%s = %q", idemhttp.HeaderExpires, got)
	}
}

// TestManyStoredHeaders stores more headers than the middleware keeps room
// for in a request's own state.
func TestManyStoredHeaders(t *testing.T) {
	t.Parallel()
	var names []string
	for c := 'A'; c <= 'P'; c++ {
		names = append(names, "X-"+string(c))
	}
	cfg := &idemhttp.Config{StoredHeaders: names}
	b := setup(t, false, cfg)
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		for i, name := range names {
			for j := 0; j <= i%3; j++ {
				w.Header().Add(name, fmt.Sprintf("%s-%d", name, j))
			}
		}
		w.WriteHeader(http.StatusCreated)
	})
	first := do(h, post("k", "x"))
	second := do(h, post("k", "x"))
	if second.Header.Get(idemhttp.HeaderReplayed) != "true" || b.runs.Load() != 1 {
		t.Fatalf("replayed %q after %d runs", second.Header.Get(idemhttp.HeaderReplayed), b.runs.Load())
	}
	for _, name := range names {
		if a, b := first.Header.Values(name), second.Header.Values(name); len(a) == 0 || strings.Join(a, "|") != strings.Join(b, "|") {
			t.Fatalf("%s: first %q, replay %q", name, a, b)
		}
	}
}

// slowExtendStore blocks every Extend until release is closed, counting
// the calls in progress.
type slowExtendStore struct {
	*memstore.Store
	release chan struct{}
	running atomic.Int64
	calls   atomic.Int64
}

func (s *slowExtendStore) Extend(ctx context.Context, p *idem.ExtendParams) (*idem.Record, error) {
	s.calls.Add(1)
	s.running.Add(1)
	defer s.running.Add(-1)
	<-s.release
	return s.Store.Extend(ctx, p)
}

// TestHeartbeatSlowStore: while a store call extending a lease hangs,
// later ticks do not start another for the same key.
func TestHeartbeatSlowStore(t *testing.T) {
	t.Parallel()
	clock := idem.NewManualClock(start)
	store := &slowExtendStore{Store: memstore.New(&memstore.Config{Clock: clock}), release: make(chan struct{})}
	ledger, err := idem.New(store, &idem.Config{Clock: clock, Lease: 9 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	entered, gate := make(chan struct{}), make(chan struct{})
	h := idemhttp.Middleware(ledger, &idemhttp.Config{Clock: clock})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-gate
		w.WriteHeader(http.StatusCreated)
	}))
	done := make(chan *http.Response)
	go func() { done <- do(h, post("k", "x")) }()
	<-entered
	for range 4 {
		waitFor(t, func() bool { return clock.Waiters() > 0 })
		clock.Advance(3 * time.Second)
		waitFor(t, func() bool { return store.running.Load() == 1 })
	}
	if got := store.calls.Load(); got != 1 {
		t.Fatalf("%d extensions started while the first hangs, want 1", got)
	}
	close(store.release)
	close(gate)
	if res := <-done; res.StatusCode != http.StatusCreated {
		t.Fatalf("status %d", res.StatusCode)
	}
}
