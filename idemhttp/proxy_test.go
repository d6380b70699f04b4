package idemhttp_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/internal/servicetest"
)

// proxyBundle is a Proxy served on a loopback port in front of an
// upstream test server.
type proxyBundle struct {
	*bundle
	upstream *httptest.Server
	front    *httptest.Server
	runs     atomic.Int64 // upstream executions
	entered  chan struct{}
	ended    chan struct{} // closed when the test ends
}

// hang holds an upstream request until the proxy gives up on it (or the
// test ends). It reads the body first: net/http notices a closed
// connection, and cancels the request's context, only after that.
func (pb *proxyBundle) hang(r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	select {
	case <-r.Context().Done():
	case <-pb.ended:
	}
}

// setupProxy serves p (its Ledger, Upstream and Config.Logger filled in)
// in front of an upstream running h, on a manual clock if asked.
func setupProxy(t *testing.T, manual bool, p *idemhttp.Proxy, h http.HandlerFunc) *proxyBundle {
	t.Helper()
	if p.Config == nil {
		p.Config = &idemhttp.Config{}
	}
	pb := &proxyBundle{bundle: setup(t, manual, p.Config), entered: make(chan struct{}, 16), ended: make(chan struct{})}
	pb.upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pb.runs.Add(1)
		pb.entered <- struct{}{}
		h(w, r)
	}))
	t.Cleanup(pb.upstream.Close)
	t.Cleanup(func() { close(pb.ended) }) // before Close: a hung upstream returns
	u, err := url.Parse(pb.upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	p.Ledger = pb.ledger
	if p.Upstream == nil && p.Rewrite == nil {
		p.Upstream = u
	}
	pb.front = httptest.NewServer(p)
	t.Cleanup(pb.front.Close)
	return pb
}

// send posts body with key (none if "") to the proxy's path; extra are
// header name, value pairs.
func (pb *proxyBundle) send(t *testing.T, key, body string, extra ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, pb.front.URL+"/orders", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set(idemhttp.HeaderKey, key)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		req.Header.Add(extra[i], extra[i+1])
	}
	res, err := pb.front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	res.Body = io.NopCloser(strings.NewReader(string(data)))
	return res, string(data)
}

// state is the ledger's state of key on the proxy's scope for POST /orders.
func (pb *proxyBundle) state(t *testing.T, key string) idem.State {
	t.Helper()
	rec, err := pb.ledger.Get(context.Background(), "9:anonymous POST /orders", key)
	if err != nil {
		t.Fatal(err)
	}
	return rec.State
}

// orders answers 201 with its execution number.
func (pb *proxyBundle) orders(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/orders/1")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"run":%d,"body":%q,"forwarded":%q}`, pb.runs.Load(), body, r.Header.Get("X-Forwarded-Host"))
}

func TestProxyRunsOnce(t *testing.T) {
	t.Parallel()
	var pb *proxyBundle
	pb = setupProxy(t, false, &idemhttp.Proxy{}, func(w http.ResponseWriter, r *http.Request) { pb.orders(w, r) })
	first, body1 := pb.send(t, "k", `{"sku":"x"}`)
	again, body2 := pb.send(t, "k", `{"sku":"x"}`)
	want := fmt.Sprintf(`{"run":1,"body":"{\"sku\":\"x\"}","forwarded":%q}`, strings.TrimPrefix(pb.front.URL, "http://"))
	if first.StatusCode != http.StatusCreated || body1 != want || first.Header.Get(idemhttp.HeaderReplayed) != "false" {
		t.Fatalf("first: %d %q %q", first.StatusCode, first.Header.Get(idemhttp.HeaderReplayed), body1)
	}
	if again.StatusCode != http.StatusCreated || body2 != body1 || again.Header.Get(idemhttp.HeaderReplayed) != "true" ||
		again.Header.Get("Location") != "/orders/1" || again.Header.Get(idemhttp.HeaderExpires) != first.Header.Get(idemhttp.HeaderExpires) {
		t.Fatalf("replay: %d %v %q", again.StatusCode, again.Header, body2)
	}
	// The route is the path: another path is another scope.
	if n := pb.runs.Load(); n != 1 {
		t.Fatalf("upstream ran %d times, want 1", n)
	}
	wantProblemBody(t, mustGet(t, pb.front.URL+"/orders"), http.StatusCreated, "")
	if n := pb.runs.Load(); n != 2 {
		t.Fatalf("upstream ran %d times after a GET, want 2", n)
	}
}

func mustGet(t *testing.T, url string) *http.Response {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// wantProblemBody is wantProblem, or only the status when name is "".
func wantProblemBody(t *testing.T, res *http.Response, status int, name string) {
	t.Helper()
	defer res.Body.Close()
	if name == "" {
		if res.StatusCode != status {
			t.Fatalf("status %d, want %d", res.StatusCode, status)
		}
		return
	}
	wantProblem(t, res, status, name)
}

// A hung upstream: past UpstreamTimeout (on the injected clock) the client
// gets 504 upstream-timeout without Idempotency-Key-Expires, the key is
// released, and a retry runs again. Also when the upstream hangs after
// sending part of an answer of known length: the answer is still held, so
// the client gets the 504 too.
func TestProxyUpstreamTimeout(t *testing.T) {
	t.Parallel()
	for name, hang := range map[string]func(w http.ResponseWriter){
		"before answering": func(http.ResponseWriter) {},
		"mid-body": func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, "0123456789")
			_ = http.NewResponseController(w).Flush()
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var hung atomic.Bool
			hung.Store(true)
			var pb *proxyBundle
			pb = setupProxy(t, true, &idemhttp.Proxy{UpstreamTimeout: 5 * time.Second}, func(w http.ResponseWriter, r *http.Request) {
				if hung.Load() {
					hang(w)
					pb.hang(r)
					return
				}
				pb.orders(w, r)
			})
			type answer struct {
				res  *http.Response
				body string
			}
			got := make(chan answer, 1)
			go func() {
				res, body := pb.send(t, "k", `{}`)
				got <- answer{res, body}
			}()
			<-pb.entered
			pb.clock.Advance(5 * time.Second)
			a := <-got
			if a.res.Header.Get(idemhttp.HeaderReplayed) != "false" || a.res.Header.Get(idemhttp.HeaderExpires) != "" ||
				a.res.Header.Get("Location") != "" {
				t.Fatalf("504's headers: %v", a.res.Header)
			}
			wantProblem(t, a.res, http.StatusGatewayTimeout, "upstream-timeout")
			if s := pb.state(t, "k"); s != idem.StateReleased {
				t.Fatalf("key %s after the timeout, want released", s)
			}
			hung.Store(false)
			res, body := pb.send(t, "k", `{}`)
			if res.StatusCode != http.StatusCreated || res.Header.Get(idemhttp.HeaderReplayed) != "false" || !strings.HasPrefix(body, `{"run":2,`) {
				t.Fatalf("retry: %d %q %s", res.StatusCode, res.Header.Get(idemhttp.HeaderReplayed), body)
			}
		})
	}
}

// An upstream that hangs in the middle of a streamed answer (no
// Content-Length: the proxy passes it on as it comes) cannot be answered
// with a problem: the connection is aborted and the key released.
func TestProxyUpstreamTimeoutStreamed(t *testing.T) {
	t.Parallel()
	var pb *proxyBundle
	pb = setupProxy(t, true, &idemhttp.Proxy{UpstreamTimeout: 5 * time.Second}, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "partial")
		_ = http.NewResponseController(w).Flush()
		pb.hang(r)
	})
	req, _ := http.NewRequest(http.MethodPost, pb.front.URL+"/orders", strings.NewReader(`{}`))
	req.Header.Set(idemhttp.HeaderKey, "k")
	req.Header.Set("Content-Type", "application/json")
	res, err := pb.front.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	buf := make([]byte, len("partial"))
	if _, err := io.ReadFull(res.Body, buf); err != nil || string(buf) != "partial" {
		t.Fatalf("streamed part: %q %v", buf, err)
	}
	pb.clock.Advance(5 * time.Second)
	if rest, err := io.ReadAll(res.Body); err == nil {
		t.Fatalf("the answer ended cleanly after the timeout (%q more), want an aborted connection", rest)
	}
	waitFor(t, func() bool { return pb.state(t, "k") == idem.StateReleased })
}

// A custom ErrorHandler learns that the timeout ended the exchange.
func TestProxyErrorHandler(t *testing.T) {
	t.Parallel()
	errs := make(chan error, 1)
	p := &idemhttp.Proxy{UpstreamTimeout: time.Second, ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
		errs <- err
		w.WriteHeader(http.StatusServiceUnavailable)
	}}
	var pb *proxyBundle
	pb = setupProxy(t, true, p, func(w http.ResponseWriter, r *http.Request) { pb.hang(r) })
	done := make(chan *http.Response, 1)
	go func() { res, _ := pb.send(t, "k", `{}`); done <- res }()
	<-pb.entered
	pb.clock.Advance(time.Second)
	if res := <-done; res.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want the ErrorHandler's 503", res.StatusCode)
	}
	if err := <-errs; !errors.Is(err, idemhttp.ErrUpstreamTimeout) {
		t.Fatalf("ErrorHandler got %v, want ErrUpstreamTimeout", err)
	}
}

// An answer over Config.MaxResponse reaches the client whole, unstored,
// without Idempotency-Key-Expires; the key is released and a retry runs
// on the upstream again.
func TestProxyMaxResponse(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("0123456789abcdef", 256) // 4 KiB
	pb := setupProxy(t, false, &idemhttp.Proxy{Config: &idemhttp.Config{MaxResponse: 1024}}, func(w http.ResponseWriter, r *http.Request) {
		// Of known length: the middleware holds it until it is over the
		// limit (an answer of unknown length is streamed as it comes).
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, big)
	})
	for i := range 2 {
		res, body := pb.send(t, "k", `{}`)
		if res.StatusCode != http.StatusCreated || body != big || res.Header.Get(idemhttp.HeaderReplayed) != "false" ||
			res.Header.Get(idemhttp.HeaderExpires) != "" {
			t.Fatalf("answer %d: %d, %d bytes, headers %v", i, res.StatusCode, len(body), res.Header)
		}
		if s := pb.state(t, "k"); s != idem.StateReleased {
			t.Fatalf("answer %d: key %s, want released", i, s)
		}
	}
	if n := pb.runs.Load(); n != 2 {
		t.Fatalf("upstream ran %d times, want 2", n)
	}
}

// An unreachable upstream answers 502 bad-gateway without
// Idempotency-Key-Expires and releases the key.
func TestProxyBadGateway(t *testing.T) {
	t.Parallel()
	// Nothing listens there: below the ephemeral range, no other test's
	// listener on port 0 can take it.
	down := &url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(servicetest.FreePorts(t, 1, 0)[0])}
	pb := setupProxy(t, false, &idemhttp.Proxy{Upstream: down}, func(http.ResponseWriter, *http.Request) {})
	res, _ := pb.send(t, "k", `{}`)
	if res.Header.Get(idemhttp.HeaderExpires) != "" || res.Header.Get(idemhttp.HeaderReplayed) != "false" {
		t.Fatalf("502's headers: %v", res.Header)
	}
	wantProblem(t, res, http.StatusBadGateway, "bad-gateway")
	if s := pb.state(t, "k"); s != idem.StateReleased {
		t.Fatalf("key %s, want released", s)
	}
}

// ScopeHeader: each tenant has keys of its own; a keyed method without the
// header is refused before the ledger and the upstream.
func TestProxyScopeHeader(t *testing.T) {
	t.Parallel()
	var pb *proxyBundle
	pb = setupProxy(t, false, &idemhttp.Proxy{ScopeHeader: "x-tenant"}, func(w http.ResponseWriter, r *http.Request) { pb.orders(w, r) })
	res, _ := pb.send(t, "k", `{}`)
	wantProblem(t, res, http.StatusBadRequest, "missing-scope")
	res, _ = pb.send(t, "k", `{}`, "X-Tenant", "a", "X-Tenant", "b")
	wantProblem(t, res, http.StatusBadRequest, "missing-scope")
	a1, body1 := pb.send(t, "k", `{}`, "X-Tenant", "a")
	b1, _ := pb.send(t, "k", `{}`, "X-Tenant", "b")
	a2, body2 := pb.send(t, "k", `{}`, "X-Tenant", "a", "Authorization", "Bearer other")
	if a1.Header.Get(idemhttp.HeaderReplayed) != "false" || b1.Header.Get(idemhttp.HeaderReplayed) != "false" ||
		a2.Header.Get(idemhttp.HeaderReplayed) != "true" || body2 != body1 {
		t.Fatalf("tenant a %q, b %q, a again %q", a1.Header.Get(idemhttp.HeaderReplayed), b1.Header.Get(idemhttp.HeaderReplayed), a2.Header.Get(idemhttp.HeaderReplayed))
	}
	if n := pb.runs.Load(); n != 2 {
		t.Fatalf("upstream ran %d times, want 2", n)
	}
}

// A client that gives up while the upstream works does not stop the
// exchange: the answer is stored and the client's retry replays it.
func TestProxyClientGone(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var pb *proxyBundle
	pb = setupProxy(t, false, &idemhttp.Proxy{}, func(w http.ResponseWriter, r *http.Request) {
		<-gate
		pb.orders(w, r)
	})
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, pb.front.URL+"/orders", strings.NewReader(`{}`))
		req.Header.Set(idemhttp.HeaderKey, "k")
		req.Header.Set("Content-Type", "application/json")
		res, err := pb.front.Client().Do(req)
		if err == nil {
			res.Body.Close()
		}
		gone <- err
	}()
	<-pb.entered
	cancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("the client's request ended with %v, want context.Canceled", err)
	}
	close(gate)
	waitFor(t, func() bool { return pb.state(t, "k") == idem.StateCompleted })
	res, body := pb.send(t, "k", `{}`)
	if res.StatusCode != http.StatusCreated || res.Header.Get(idemhttp.HeaderReplayed) != "true" || !strings.HasPrefix(body, `{"run":1,`) {
		t.Fatalf("retry: %d %q %s", res.StatusCode, res.Header.Get(idemhttp.HeaderReplayed), body)
	}
}

// A Proxy without a Ledger or an Upstream says so, instead of panicking.
func TestProxyMisconfigured(t *testing.T) {
	t.Parallel()
	wantProblem(t, do(&idemhttp.Proxy{}, post("k", "x")), http.StatusInternalServerError, "proxy-misconfigured")
}
