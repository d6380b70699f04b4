package idemhttp_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
)

// trAttempt is what the upstream saw of one attempt.
type trAttempt struct {
	method, key string
	body        []byte
	hasKey      bool
}

// trUpstream is an httptest server that answers attempt n (from 1) with
// respond and records every attempt.
type trUpstream struct {
	srv      *httptest.Server
	mu       sync.Mutex
	attempts []trAttempt
}

func (u *trUpstream) seen() []trAttempt {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]trAttempt(nil), u.attempts...)
}

func trNewUpstream(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request)) *trUpstream {
	t.Helper()
	u := &trUpstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		_, hasKey := r.Header[idemhttp.HeaderKey]
		u.mu.Lock()
		u.attempts = append(u.attempts, trAttempt{method: r.Method, key: r.Header.Get(idemhttp.HeaderKey), body: body, hasKey: hasKey})
		n := len(u.attempts)
		u.mu.Unlock()
		respond(n, w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// trStatuses answers the listed statuses in turn, then 200 "ok".
func trStatuses(statuses ...int) func(int, http.ResponseWriter, *http.Request) {
	return func(n int, w http.ResponseWriter, _ *http.Request) {
		if n <= len(statuses) {
			w.WriteHeader(statuses[n-1])
			io.WriteString(w, "attempt "+strconv.Itoa(n))
			return
		}
		io.WriteString(w, "ok")
	}
}

// trJumpClock is a virtual clock whose timers fire at once, moving the
// clock to their deadline: a retry loop runs without waiting while every
// wait still counts against Timeout.
type trJumpClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *trJumpClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *trJumpClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(max(d, 0))
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func (c *trJumpClock) AfterFunc(d time.Duration, f func()) func() bool {
	<-c.After(d)
	go f()
	return func() bool { return false }
}

func (c *trJumpClock) Sleep(ctx context.Context, d time.Duration) error {
	<-c.After(d)
	return ctx.Err()
}

// trFrozenClock never moves; its timers fire at once.
type trFrozenClock struct{ now time.Time }

func (c trFrozenClock) Now() time.Time { return c.now }

func (c trFrozenClock) After(time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func (c trFrozenClock) AfterFunc(_ time.Duration, f func()) func() bool {
	go f()
	return func() bool { return false }
}

func (c trFrozenClock) Sleep(ctx context.Context, _ time.Duration) error { return ctx.Err() }

var trEpoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// trClient returns a client over Transport(cfg) with a jump clock and a
// base transport without keep-alives (so net/http never retries on its own
// and the upstream counts exactly our attempts), unless cfg sets them.
func trClient(t *testing.T, cfg idemhttp.TransportConfig) *http.Client {
	t.Helper()
	if cfg.Clock == nil {
		cfg.Clock = &trJumpClock{now: trEpoch}
	}
	if cfg.Base == nil {
		base := &http.Transport{DisableKeepAlives: true}
		t.Cleanup(base.CloseIdleConnections)
		cfg.Base = base
	}
	return &http.Client{Transport: idemhttp.Transport(&cfg)}
}

// trReadAll reads and closes resp.Body.
func trReadAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// trOpaque hides a reader's type so http.NewRequest sets no GetBody and
// the transport has to buffer the body.
type trOpaque struct{ io.Reader }

func TestTransportKeyAddedAndReused(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, trStatuses(503, 500))
	c := trClient(t, idemhttp.TransportConfig{})
	body := bytes.Repeat([]byte("payload-"), 1000)
	resp, err := c.Post(up.srv.URL, "application/octet-stream", trOpaque{bytes.NewReader(body)})
	if err != nil {
		t.Fatal(err)
	}
	if got := trReadAll(t, resp); resp.StatusCode != 200 || got != "ok" {
		t.Fatalf("got %d %q, want 200 ok", resp.StatusCode, got)
	}
	seen := up.seen()
	if len(seen) != 3 {
		t.Fatalf("%d attempts, want 3", len(seen))
	}
	if _, err := trParseUUIDv7(seen[0].key); err != nil {
		t.Fatalf("key: %v", err)
	}
	for i, a := range seen {
		if a.key != seen[0].key {
			t.Errorf("attempt %d key %q, want %q", i+1, a.key, seen[0].key)
		}
		if !bytes.Equal(a.body, body) {
			t.Errorf("attempt %d body differs (%d bytes, want %d)", i+1, len(a.body), len(body))
		}
	}

	// The next logical request gets a fresh key.
	resp, err = c.Post(up.srv.URL, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	trReadAll(t, resp)
	if seen = up.seen(); seen[3].key == seen[0].key || seen[3].key == "" {
		t.Fatalf("second request key %q, first %q", seen[3].key, seen[0].key)
	}
}

func TestTransportRetriedStatuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status  int
		retried bool
	}{
		{409, true}, {429, true}, {500, true}, {502, true}, {503, true}, {504, true},
		{400, false}, {404, false}, {422, false}, {201, false},
	} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			t.Parallel()
			up := trNewUpstream(t, trStatuses(tc.status))
			c := trClient(t, idemhttp.TransportConfig{})
			resp, err := c.Post(up.srv.URL, "text/plain", strings.NewReader("b"))
			if err != nil {
				t.Fatal(err)
			}
			got := trReadAll(t, resp)
			wantStatus, wantBody, wantAttempts := tc.status, "attempt 1", 1
			if tc.retried {
				wantStatus, wantBody, wantAttempts = 200, "ok", 2
			}
			if resp.StatusCode != wantStatus || got != wantBody {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, got, wantStatus, wantBody)
			}
			if n := len(up.seen()); n != wantAttempts {
				t.Fatalf("%d attempts, want %d", n, wantAttempts)
			}
		})
	}
}

func TestTransportMaxAttempts(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, trStatuses(503, 503, 503, 503, 503, 503))
	c := trClient(t, idemhttp.TransportConfig{MaxAttempts: 3})
	resp, err := c.Post(up.srv.URL, "text/plain", strings.NewReader("b"))
	if err != nil {
		t.Fatal(err)
	}
	// The last response comes back whole.
	if got := trReadAll(t, resp); resp.StatusCode != 503 || got != "attempt 3" {
		t.Fatalf("got %d %q, want 503 \"attempt 3\"", resp.StatusCode, got)
	}
	if n := len(up.seen()); n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
}

func TestTransportRetriesDroppedConnection(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				panic(err)
			}
			conn.Close() // the request ran; the response is lost
			return
		}
		io.WriteString(w, "ok")
	})
	c := trClient(t, idemhttp.TransportConfig{})
	resp, err := c.Post(up.srv.URL, "text/plain", strings.NewReader("body"))
	if err != nil {
		t.Fatal(err)
	}
	if got := trReadAll(t, resp); got != "ok" {
		t.Fatalf("got %q", got)
	}
	seen := up.seen()
	if len(seen) != 2 || seen[0].key != seen[1].key || string(seen[1].body) != "body" {
		t.Fatalf("attempts %+v, want 2 with one key and the body", seen)
	}
}

// trFailingBase fails the first n round trips with err, then delegates.
type trFailingBase struct {
	n    atomic.Int32
	fail int32
	err  error
	next http.RoundTripper
}

func (b *trFailingBase) RoundTrip(r *http.Request) (*http.Response, error) {
	if b.n.Add(1) <= b.fail {
		if r.Body != nil {
			r.Body.Close()
		}
		return nil, b.err
	}
	return b.next.RoundTrip(r)
}

func TestTransportTransportErrors(t *testing.T) {
	t.Parallel()
	refused := errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
	for _, tc := range []struct {
		name     string
		err      error
		attempts int32 // round trips tried
		ok       bool
	}{
		{"refused", refused, 3, true},
		{"canceled", context.Canceled, 1, false},
		{"deadline", context.DeadlineExceeded, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := trNewUpstream(t, trStatuses())
			base := &trFailingBase{fail: 2, err: tc.err, next: &http.Transport{DisableKeepAlives: true}}
			c := trClient(t, idemhttp.TransportConfig{Base: base})
			resp, err := c.Post(up.srv.URL, "text/plain", strings.NewReader("b"))
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				trReadAll(t, resp)
			} else if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if n := base.n.Load(); n != tc.attempts {
				t.Fatalf("%d round trips, want %d", n, tc.attempts)
			}
		})
	}
}

// trClosingBody records whether it was closed and how much was read.
type trClosingBody struct {
	io.Reader
	closed atomic.Bool
}

func (b *trClosingBody) Close() error { b.closed.Store(true); return nil }

func TestTransportDrainsRetriedResponse(t *testing.T) {
	t.Parallel()
	first := &trClosingBody{Reader: strings.NewReader("busy")}
	var n atomic.Int32
	base := trRoundTripperFunc(func(r *http.Request) (*http.Response, error) {
		if n.Add(1) == 1 {
			return &http.Response{StatusCode: 503, Body: first, Header: http.Header{}, Request: r}, nil
		}
		return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("ok")), Header: http.Header{}, Request: r}, nil
	})
	c := trClient(t, idemhttp.TransportConfig{Base: base})
	resp, err := c.Post("http://upstream.invalid/", "text/plain", strings.NewReader("b"))
	if err != nil {
		t.Fatal(err)
	}
	trReadAll(t, resp)
	if !first.closed.Load() || first.Reader.(*strings.Reader).Len() != 0 {
		t.Fatalf("retried response: closed %v, %d bytes unread", first.closed.Load(), first.Reader.(*strings.Reader).Len())
	}
}

func TestTransportRetryAfterSeconds(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(429)
			return
		}
		io.WriteString(w, "ok")
	})
	clock := idem.NewManualClock(trEpoch)
	c := trClient(t, idemhttp.TransportConfig{Clock: clock})
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := c.Post(up.srv.URL, "text/plain", strings.NewReader("b"))
		done <- result{resp, err}
	}()
	trWaitFor(t, func() bool { return clock.Waiters() == 1 })
	clock.Advance(7*time.Second - time.Millisecond)
	if w, n := clock.Waiters(), len(up.seen()); w != 1 || n != 1 {
		t.Fatalf("before Retry-After: %d waiters, %d attempts; want 1, 1", w, n)
	}
	clock.Advance(time.Millisecond)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := trReadAll(t, r.resp); got != "ok" || len(up.seen()) != 2 {
		t.Fatalf("got %q after %d attempts", got, len(up.seen()))
	}
}

// trWaitFor polls cond until it holds, failing after a generous deadline.
func trWaitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestTransportRetryAfterDate(t *testing.T) {
	t.Parallel()
	clock := &trJumpClock{now: trEpoch}
	up := trNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			w.Header().Set("Retry-After", clock.Now().Add(30*time.Second).Format(http.TimeFormat))
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "ok")
	})
	var waits []time.Duration
	c := trClient(t, idemhttp.TransportConfig{Clock: clock, OnRetry: func(ev idemhttp.RetryEvent) {
		waits = append(waits, ev.Wait)
	}})
	resp, err := c.Post(up.srv.URL, "text/plain", strings.NewReader("b"))
	if err != nil {
		t.Fatal(err)
	}
	trReadAll(t, resp)
	if len(waits) != 1 || waits[0] != 30*time.Second {
		t.Fatalf("waits %v, want [30s]", waits)
	}
	if got := clock.Now().Sub(trEpoch); got != 30*time.Second {
		t.Fatalf("clock moved %s, want 30s", got)
	}
}

func TestTransportBackoffFullJitter(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, trStatuses(503, 503, 503, 503, 503, 503, 503, 503, 503))
	var waits []time.Duration
	c := trClient(t, idemhttp.TransportConfig{MaxAttempts: 10, BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second,
		OnRetry: func(ev idemhttp.RetryEvent) { waits = append(waits, ev.Wait) }})
	resp, err := c.Post(up.srv.URL, "text/plain", strings.NewReader("b"))
	if err != nil {
		t.Fatal(err)
	}
	trReadAll(t, resp)
	if len(waits) != 9 {
		t.Fatalf("%d retries, want 9", len(waits))
	}
	for i, w := range waits {
		bound := min(100*time.Millisecond<<i, time.Second)
		if w < 0 || w >= bound {
			t.Errorf("retry %d waited %s, want in [0, %s)", i+1, w, bound)
		}
	}
}

func TestTransportTimeout(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(503)
		io.WriteString(w, "attempt "+strconv.Itoa(n))
	})
	clock := &trJumpClock{now: trEpoch}
	c := trClient(t, idemhttp.TransportConfig{Clock: clock, Timeout: 10 * time.Second, MaxAttempts: 100})
	resp, err := c.Post(up.srv.URL, "text/plain", strings.NewReader("b"))
	if err != nil {
		t.Fatal(err)
	}
	// Waits of 3 s at 0, 3 and 6 s fit in 10 s; the one at 9 s would not,
	// so the fourth response comes back instead of a vain wait.
	if got := trReadAll(t, resp); resp.StatusCode != 503 || got != "attempt 4" {
		t.Fatalf("got %d %q, want 503 \"attempt 4\"", resp.StatusCode, got)
	}
	if got := clock.Now().Sub(trEpoch); got != 9*time.Second {
		t.Fatalf("waited %s, want 9s", got)
	}
}

func TestTransportContextDeadline(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(503)
	})
	// The system clock: a wait would really block, so returning at once
	// proves the transport did not wait in vain.
	c := trClient(t, idemhttp.TransportConfig{Clock: idem.SystemClock{}})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", up.srv.URL, strings.NewReader("b"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	trReadAll(t, resp)
	if resp.StatusCode != 503 || len(up.seen()) != 1 {
		t.Fatalf("got %d after %d attempts, want 503 after 1", resp.StatusCode, len(up.seen()))
	}
}

func TestTransportLongRetryAfterWithoutDeadline(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(503)
	})
	c := trClient(t, idemhttp.TransportConfig{Clock: idem.SystemClock{}})
	resp, err := c.Post(up.srv.URL, "text/plain", strings.NewReader("b"))
	if err != nil {
		t.Fatal(err)
	}
	trReadAll(t, resp)
	if resp.StatusCode != 503 || len(up.seen()) != 1 {
		t.Fatalf("got %d after %d attempts, want 503 after 1", resp.StatusCode, len(up.seen()))
	}
}

func TestTransportCancelledWhileWaiting(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, trStatuses(503))
	clock := idem.NewManualClock(trEpoch)
	c := trClient(t, idemhttp.TransportConfig{Clock: clock})
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "POST", up.srv.URL, strings.NewReader("b"))
	done := make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	trWaitFor(t, func() bool { return clock.Waiters() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if n := len(up.seen()); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
}

func TestTransportRetryBudget(t *testing.T) {
	t.Parallel()
	var attempts atomic.Int64
	base := trRoundTripperFunc(func(r *http.Request) (*http.Response, error) {
		attempts.Add(1)
		return &http.Response{StatusCode: 503, Body: http.NoBody, Header: http.Header{}, Request: r}, nil
	})
	const requests = 200
	c := trClient(t, idemhttp.TransportConfig{Base: base, Clock: trFrozenClock{now: trEpoch},
		MaxAttempts: 50, BudgetRatio: 0.1, BudgetMin: 10})
	var wg sync.WaitGroup
	for range requests {
		wg.Go(func() {
			resp, err := c.Post("http://upstream.invalid/", "text/plain", strings.NewReader("b"))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 503 {
				t.Errorf("status %d, want 503", resp.StatusCode)
			}
		})
	}
	wg.Wait()
	// Without a budget: 200 * 50 attempts. With it: at most requests *
	// (1 + ratio) + min, and at least the minimum of retries.
	if n := attempts.Load(); n > requests*11/10+10 || n < requests+10 {
		t.Fatalf("%d attempts, want in [%d, %d]", n, requests+10, requests*11/10+10)
	}
}

func TestTransportGetBodyUsed(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, trStatuses(503, 503))
	c := trClient(t, idemhttp.TransportConfig{MaxBody: 4}) // GetBody bodies are never buffered
	body := "a body longer than MaxBody"
	req, _ := http.NewRequest("POST", up.srv.URL, strings.NewReader(body))
	var calls atomic.Int32
	getBody := req.GetBody
	req.GetBody = func() (io.ReadCloser, error) { calls.Add(1); return getBody() }
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	trReadAll(t, resp)
	seen := up.seen()
	if len(seen) != 3 || calls.Load() != 2 {
		t.Fatalf("%d attempts, %d GetBody calls; want 3, 2", len(seen), calls.Load())
	}
	for i, a := range seen {
		if string(a.body) != body {
			t.Errorf("attempt %d body %q", i+1, a.body)
		}
	}
}

func TestTransportOversizedBodySentOnce(t *testing.T) {
	t.Parallel()
	body := strings.Repeat("x", 100)
	for _, tc := range []struct {
		name string
		req  func(url string) *http.Request
	}{
		{"streamed", func(url string) *http.Request {
			r, _ := http.NewRequest("POST", url, trOpaque{strings.NewReader(body)})
			return r
		}},
		{"content-length", func(url string) *http.Request {
			r, _ := http.NewRequest("POST", url, trOpaque{strings.NewReader(body)})
			r.ContentLength = int64(len(body))
			return r
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := trNewUpstream(t, trStatuses(503))
			c := trClient(t, idemhttp.TransportConfig{MaxBody: 10})
			resp, err := c.Do(tc.req(up.srv.URL))
			if err != nil {
				t.Fatal(err)
			}
			trReadAll(t, resp)
			seen := up.seen()
			if resp.StatusCode != 503 || len(seen) != 1 {
				t.Fatalf("got %d after %d attempts, want 503 after 1", resp.StatusCode, len(seen))
			}
			if string(seen[0].body) != body || seen[0].key == "" {
				t.Fatalf("upstream got %d bytes, key %q; want the whole body and a key", len(seen[0].body), seen[0].key)
			}
		})
	}
}

func TestTransportKeepsCallersKey(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, trStatuses(409))
	c := trClient(t, idemhttp.TransportConfig{})
	req, _ := http.NewRequest("PATCH", up.srv.URL, strings.NewReader("b"))
	req.Header.Set(idemhttp.HeaderKey, "order-7-payment")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	trReadAll(t, resp)
	seen := up.seen()
	if len(seen) != 2 || seen[0].key != "order-7-payment" || seen[1].key != "order-7-payment" {
		t.Fatalf("attempts %+v, want 2 with the caller's key", seen)
	}
	if got := req.Header.Get(idemhttp.HeaderKey); got != "order-7-payment" {
		t.Fatalf("caller's request header changed to %q", got)
	}
}

func TestTransportOtherMethodsPassThrough(t *testing.T) {
	t.Parallel()
	for _, method := range []string{"GET", "PUT", "DELETE"} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			up := trNewUpstream(t, trStatuses(503))
			c := trClient(t, idemhttp.TransportConfig{})
			req, _ := http.NewRequest(method, up.srv.URL, nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			trReadAll(t, resp)
			seen := up.seen()
			if resp.StatusCode != 503 || len(seen) != 1 || seen[0].hasKey {
				t.Fatalf("got %d, attempts %+v; want 503 after 1 attempt without a key", resp.StatusCode, seen)
			}
		})
	}
}

func TestTransportRequestNotModified(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, trStatuses(503))
	c := trClient(t, idemhttp.TransportConfig{})
	req, _ := http.NewRequest("POST", up.srv.URL, strings.NewReader("b"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	trReadAll(t, resp)
	if _, ok := req.Header[idemhttp.HeaderKey]; ok {
		t.Fatal("the caller's request got a key header")
	}
}

func TestTransportInvalidConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []idemhttp.TransportConfig{
		{MaxAttempts: -1}, {BaseDelay: -1}, {MaxDelay: -1}, {Timeout: -1}, {BudgetRatio: -0.5},
		{MaxBody: -1}, {BudgetMin: -1}, {BudgetWindow: -1}, {MaxRetryAfter: -1},
	} {
		rt := idemhttp.Transport(&cfg)
		req, _ := http.NewRequest("POST", "http://upstream.invalid/", strings.NewReader("b"))
		if _, err := rt.RoundTrip(req); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("%+v: err %v, want ErrInvalid", cfg, err)
		}
	}
}

func TestTransportTimeoutBodyReadable(t *testing.T) {
	t.Parallel()
	up := trNewUpstream(t, func(n int, w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("z", 1<<16))
	})
	c := trClient(t, idemhttp.TransportConfig{Timeout: time.Minute})
	resp, err := c.Post(up.srv.URL, "text/plain", strings.NewReader("b"))
	if err != nil {
		t.Fatal(err)
	}
	// The Timeout's context lives until the body is closed.
	if got := trReadAll(t, resp); len(got) != 1<<16 {
		t.Fatalf("read %d bytes, want %d", len(got), 1<<16)
	}
}

type trRoundTripperFunc func(*http.Request) (*http.Response, error)

func (f trRoundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// BenchmarkTransport compares a POST through Transport (key, body buffer,
// budget) with the same POST through the bare http.Transport, on loopback.
func BenchmarkTransport(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	body := strings.Repeat("x", 512)
	for _, bc := range []struct {
		name string
		rt   func(base http.RoundTripper) http.RoundTripper
	}{
		{"bare", func(base http.RoundTripper) http.RoundTripper { return base }},
		{"idemhttp", func(base http.RoundTripper) http.RoundTripper {
			return idemhttp.Transport(&idemhttp.TransportConfig{Base: base})
		}},
	} {
		for _, sized := range []bool{true, false} {
			name := bc.name + "/streamed-body"
			if sized {
				name = bc.name + "/sized-body" // a strings.Reader: length and GetBody known
			}
			b.Run(name, func(b *testing.B) {
				base := &http.Transport{MaxIdleConnsPerHost: 4}
				defer base.CloseIdleConnections()
				c := &http.Client{Transport: bc.rt(base)}
				for b.Loop() {
					var r io.Reader = strings.NewReader(body)
					if !sized {
						r = trOpaque{r}
					}
					resp, err := c.Post(srv.URL, "text/plain", r)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
	}
}

func TestTransportKeyFromContext(t *testing.T) {
	t.Parallel()
	var got []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get(idemhttp.HeaderKey))
		mu.Unlock()
	}))
	defer srv.Close()
	c := &http.Client{Transport: idemhttp.Transport(&idemhttp.TransportConfig{Base: srv.Client().Transport})}
	ctx := idem.WithKey(context.Background(), "wf-1/2/charge")
	for _, own := range []string{"", "explicit"} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, strings.NewReader("x"))
		if own != "" {
			req.Header.Set(idemhttp.HeaderKey, own)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0] != "wf-1/2/charge" || got[1] != "explicit" {
		t.Fatalf("keys sent = %q; want the context's, then the request's own", got)
	}
}
