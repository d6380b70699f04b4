package idemhttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// TransportConfig configures Transport. The zero value is sensible.
type TransportConfig struct {
	// Base does the requests. Default http.DefaultTransport.
	Base http.RoundTripper
	// Methods that get a key and are retried. Default POST and PATCH.
	// Requests with other methods pass through once, untouched.
	Methods []string
	// MaxAttempts per logical request, the first included. Default 4.
	MaxAttempts int
	// BaseDelay and MaxDelay shape exponential backoff with full jitter.
	// Defaults 100 ms and 5 s. A Retry-After longer than MaxDelay is obeyed
	// up to the request's deadline.
	BaseDelay, MaxDelay time.Duration
	// Timeout bounds a logical request, retries included. Default none (the
	// request's context decides).
	Timeout time.Duration
	// BudgetRatio caps retries as a fraction of requests over a sliding
	// window, so an outage does not become a retry storm. Default 0.1.
	BudgetRatio float64
	// MaxBody bounds a body buffered for replay; a larger one is sent once,
	// without retries. Default 1 MiB. A request with GetBody set (as
	// http.NewRequest sets for bytes, strings and their readers) is never
	// buffered: GetBody replays it, whatever its size.
	MaxBody int64
	// NewKey makes a key per logical request. Default NewUUIDv7.
	NewKey func() string

	// BudgetMin is how many retries the budget allows per window on top of
	// BudgetRatio, so a client with little traffic can still retry.
	// Default 10.
	BudgetMin int
	// BudgetWindow is the sliding window of the retry budget. Default 10 s.
	BudgetWindow time.Duration
	// MaxRetryAfter bounds how long a Retry-After is waited for when the
	// request has no deadline; a longer one returns the response instead.
	// Default 1 min.
	MaxRetryAfter time.Duration
	// Retryable decides whether an attempt's outcome is retried. Default
	// RetryableOutcome.
	Retryable func(resp *http.Response, err error) bool
	// OnRetry, when set, is called before each retry's wait (for logs and
	// metrics).
	OnRetry func(RetryEvent)
	// Clock times the backoff waits and the Timeout. Default
	// idem.SystemClock; tests inject an *idem.ManualClock.
	Clock idem.Clock
}

// RetryEvent describes a retry about to happen.
type RetryEvent struct {
	Key     string        // the logical request's Idempotency-Key
	Attempt int           // the attempt that failed, 1 for the first
	Status  int           // its status, 0 after a transport error
	Err     error         // its transport error, if any
	Wait    time.Duration // the wait before the next attempt
	Request *http.Request // the logical request
}

// RetryableOutcome is the default retry decision: any transport error but
// a cancelled or expired context (the key makes a repeat safe even when
// the first attempt reached the server), and the statuses 409 (in flight
// at the server), 429 and 5xx. Other 4xx are never retried.
func RetryableOutcome(resp *http.Response, err error) bool {
	if err != nil {
		return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
	}
	switch s := resp.StatusCode; {
	case s == http.StatusConflict, s == http.StatusTooManyRequests:
		return true
	case s >= 500 && s <= 599:
		return true
	}
	return false
}

type transport struct {
	cfg    TransportConfig
	budget *retryBudget
	err    error
}

// Transport returns a RoundTripper that adds an Idempotency-Key to each
// logical request and retries it with the same key.
//
// A request that carries its own Idempotency-Key keeps it; one without,
// whose context carries a key (idem.WithKey, as a workflow action's
// context carries its step key), is sent with that key; any other gets
// NewKey's. Attempts are retried on transport errors, 409, 429 and 5xx
// (see RetryableOutcome), after an exponential backoff with full jitter,
// or at least the response's Retry-After. When the next wait would pass the request's deadline (its
// context's or Timeout), when MaxAttempts is reached or when the retry
// budget is spent, the last response or error is returned at once. The
// body of a response that is retried is drained and closed.
//
// An invalid config (a negative field) makes every RoundTrip return an
// error wrapping idem.ErrInvalid that names the field.
func Transport(cfg *TransportConfig) http.RoundTripper {
	t := &transport{}
	t.cfg, t.err = cfg.withDefaults()
	if t.err == nil {
		t.budget = newRetryBudget(t.cfg.BudgetRatio, t.cfg.BudgetMin, t.cfg.BudgetWindow)
	}
	return t
}

func (c *TransportConfig) withDefaults() (TransportConfig, error) {
	var cfg TransportConfig
	if c != nil {
		cfg = *c
	}
	if cfg.Base == nil {
		cfg.Base = http.DefaultTransport
	}
	if cfg.Methods == nil {
		cfg.Methods = []string{http.MethodPost, http.MethodPatch}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.BaseDelay, 100*time.Millisecond)
	def(&cfg.MaxDelay, 5*time.Second)
	def(&cfg.BudgetWindow, 10*time.Second)
	def(&cfg.MaxRetryAfter, time.Minute)
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 4
	}
	if cfg.BudgetRatio == 0 {
		cfg.BudgetRatio = 0.1
	}
	if cfg.BudgetMin == 0 {
		cfg.BudgetMin = 10
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = 1 << 20
	}
	if cfg.NewKey == nil {
		cfg.NewKey = NewUUIDv7
	}
	if cfg.Retryable == nil {
		cfg.Retryable = RetryableOutcome
	}
	if cfg.Clock == nil {
		cfg.Clock = idem.SystemClock{}
	}
	invalid := func(field string, v any) error {
		return fmt.Errorf("%w: idemhttp: TransportConfig.%s must not be negative (0 means the default), got %v", idem.ErrInvalid, field, v)
	}
	switch {
	case cfg.MaxAttempts < 0:
		return cfg, invalid("MaxAttempts", cfg.MaxAttempts)
	case cfg.BaseDelay < 0:
		return cfg, invalid("BaseDelay", cfg.BaseDelay)
	case cfg.MaxDelay < 0:
		return cfg, invalid("MaxDelay", cfg.MaxDelay)
	case cfg.Timeout < 0:
		return cfg, invalid("Timeout", cfg.Timeout)
	case cfg.BudgetRatio < 0 || math.IsNaN(cfg.BudgetRatio):
		return cfg, invalid("BudgetRatio", cfg.BudgetRatio)
	case cfg.MaxBody < 0:
		return cfg, invalid("MaxBody", cfg.MaxBody)
	case cfg.BudgetMin < 0:
		return cfg, invalid("BudgetMin", cfg.BudgetMin)
	case cfg.BudgetWindow < 0:
		return cfg, invalid("BudgetWindow", cfg.BudgetWindow)
	case cfg.MaxRetryAfter < 0:
		return cfg, invalid("MaxRetryAfter", cfg.MaxRetryAfter)
	}
	return cfg, nil
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.err != nil {
		closeBody(req)
		return nil, t.err
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	if !slices.Contains(t.cfg.Methods, method) {
		return t.cfg.Base.RoundTrip(req)
	}

	start := t.cfg.Clock.Now()
	ctx, cancel := t.requestContext(req.Context())
	resp, err := t.attempts(ctx, start, req)
	if err != nil || resp == nil {
		cancel()
		return resp, err
	}
	if t.cfg.Timeout > 0 {
		resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	}
	return resp, nil
}

// requestContext bounds a logical request by Timeout. Its cancel runs when
// the caller closes the response body.
func (t *transport) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if t.cfg.Timeout > 0 {
		return context.WithTimeout(ctx, t.cfg.Timeout)
	}
	return ctx, func() {}
}

// attempts runs the logical request req until it succeeds or may not be
// retried any more.
func (t *transport) attempts(ctx context.Context, start time.Time, req *http.Request) (*http.Response, error) {
	key := req.Header.Get(HeaderKey)
	if key == "" {
		// A key the caller's context carries (idem.WithKey: a workflow
		// step's key) names the logical operation better than a fresh one.
		var ok bool
		if key, ok = idem.KeyFrom(req.Context()); !ok {
			key = t.cfg.NewKey()
		}
	}
	body, replayable, err := t.replayableBody(req)
	if err != nil {
		return nil, err
	}
	t.budget.request(t.cfg.Clock.Now())

	for attempt := 1; ; attempt++ {
		out := req.Clone(ctx)
		out.Header.Set(HeaderKey, key)
		if body != nil {
			out.GetBody = nil
			if attempt == 1 && body.first != nil {
				out.Body = body.first
			} else if out.Body, err = body.open(); err != nil {
				return nil, fmt.Errorf("idemhttp: replaying the request body: %w", err)
			}
			if replayable {
				out.GetBody = body.open
			}
			if body.getBody == nil && replayable {
				// Buffered: the length is known now, so no chunked encoding.
				out.ContentLength = int64(len(body.buf))
			}
		}
		resp, err := t.cfg.Base.RoundTrip(out)
		if !replayable || attempt >= t.cfg.MaxAttempts || ctx.Err() != nil || !t.cfg.Retryable(resp, err) {
			return resp, err
		}

		wait := t.backoff(attempt)
		if resp != nil {
			if ra, ok := retryAfter(resp.Header, t.cfg.Clock.Now()); ok {
				wait = max(wait, ra)
			}
		}
		if !t.mayWait(ctx, start, wait) || !t.budget.allowRetry(t.cfg.Clock.Now()) {
			return resp, err
		}
		if t.cfg.OnRetry != nil {
			ev := RetryEvent{Key: key, Attempt: attempt, Err: err, Wait: wait, Request: req}
			if resp != nil {
				ev.Status = resp.StatusCode
			}
			t.cfg.OnRetry(ev)
		}
		if resp != nil {
			// Read a little so the connection can be reused; no more, a
			// large error page is not worth it.
			io.CopyN(io.Discard, resp.Body, 4<<10)
			resp.Body.Close()
		}
		if err := t.cfg.Clock.Sleep(ctx, wait); err != nil {
			return nil, fmt.Errorf("idemhttp: waiting to retry %s %s: %w", req.Method, req.URL.Redacted(), err)
		}
	}
}

// backoff returns the full-jitter wait after the given failed attempt:
// uniform in [0, min(MaxDelay, BaseDelay*2^(attempt-1))).
func (t *transport) backoff(attempt int) time.Duration {
	d := t.cfg.MaxDelay
	if shift := attempt - 1; shift < 62 {
		if b := t.cfg.BaseDelay << shift; b>>shift == t.cfg.BaseDelay && b < d {
			d = b
		}
	}
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// mayWait reports whether waiting wait leaves the request inside its
// deadlines: Timeout judged by the Clock, the context's by the wall clock.
func (t *transport) mayWait(ctx context.Context, start time.Time, wait time.Duration) bool {
	dl, hasDeadline := ctx.Deadline()
	if hasDeadline && time.Until(dl) <= wait {
		return false
	}
	if t.cfg.Timeout > 0 && t.cfg.Clock.Now().Add(wait).Sub(start) >= t.cfg.Timeout {
		return false
	}
	return hasDeadline || wait <= max(t.cfg.MaxRetryAfter, t.cfg.MaxDelay)
}

// requestBody replays a request body on each attempt.
type requestBody struct {
	first   io.ReadCloser // the first attempt's body, when not opened anew
	getBody func() (io.ReadCloser, error)
	buf     []byte
}

func (b *requestBody) open() (io.ReadCloser, error) {
	if b.getBody != nil {
		return b.getBody()
	}
	return io.NopCloser(bytes.NewReader(b.buf)), nil
}

// replayableBody prepares req's body for replay. It returns a nil body when
// req has none, and replayable false when the body is over MaxBody: it is
// then sent once, what was read put back in front of the rest.
func (t *transport) replayableBody(req *http.Request) (*requestBody, bool, error) {
	switch {
	case req.Body == nil || req.Body == http.NoBody:
		return nil, true, nil
	case req.GetBody != nil:
		return &requestBody{first: req.Body, getBody: req.GetBody}, true, nil
	case req.ContentLength > t.cfg.MaxBody:
		return &requestBody{first: req.Body}, false, nil
	}
	buf, err := io.ReadAll(io.LimitReader(req.Body, t.cfg.MaxBody+1))
	if err != nil {
		req.Body.Close()
		return nil, false, fmt.Errorf("idemhttp: reading the request body: %w", err)
	}
	if int64(len(buf)) > t.cfg.MaxBody {
		rest := req.Body
		return &requestBody{first: struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf), rest), rest}}, false, nil
	}
	req.Body.Close()
	return &requestBody{buf: buf}, true, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// cancelOnClose ends a Timeout's context once the caller is done with the
// response body.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// retryAfter returns the wait a response's Retry-After asks for.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := h.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	d, err := parseRetryAfter(v, now)
	return d, err == nil
}

// parseRetryAfter parses a Retry-After value (RFC 9110 §10.2.3): either
// delay-seconds or an HTTP-date, returned as the wait from now (0 for a
// date in the past). Absurdly large values saturate rather than overflow.
func parseRetryAfter(v string, now time.Time) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, fmt.Errorf("%w: idemhttp: empty Retry-After", idem.ErrInvalid)
	}
	if v[0] >= '0' && v[0] <= '9' {
		for i := 0; i < len(v); i++ {
			if v[i] < '0' || v[i] > '9' {
				return 0, fmt.Errorf("%w: idemhttp: Retry-After %q is neither delay-seconds nor an HTTP-date", idem.ErrInvalid, v)
			}
		}
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil || secs > uint64(math.MaxInt64/int64(time.Second)) {
			return time.Duration(math.MaxInt64), nil
		}
		return time.Duration(secs) * time.Second, nil
	}
	at, err := http.ParseTime(v)
	if err != nil {
		return 0, fmt.Errorf("%w: idemhttp: Retry-After %q is neither delay-seconds nor an HTTP-date", idem.ErrInvalid, v)
	}
	return max(at.Sub(now), 0), nil
}

// retryBudget allows retries while, over a sliding window, retries stay
// within ratio*requests + min. The window is split into slots that expire
// one at a time. Safe for concurrent use.
type retryBudget struct {
	mu    sync.Mutex
	ratio float64
	min   int64
	slot  time.Duration
	head  int64 // slot number (time / slot) of slots[head%len]
	slots [10]struct{ requests, retries int64 }
}

func newRetryBudget(ratio float64, min int, window time.Duration) *retryBudget {
	slot := window / 10
	if slot <= 0 {
		slot = 1
	}
	return &retryBudget{ratio: ratio, min: int64(min), slot: slot}
}

// roll moves the window to now, forgetting slots that left it.
func (b *retryBudget) roll(now time.Time) {
	n := now.UnixNano() / int64(b.slot)
	if n <= b.head {
		return
	}
	if n-b.head >= int64(len(b.slots)) {
		clear(b.slots[:])
	} else {
		for i := b.head + 1; i <= n; i++ {
			b.slots[i%int64(len(b.slots))] = struct{ requests, retries int64 }{}
		}
	}
	b.head = n
}

func (b *retryBudget) request(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.roll(now)
	b.slots[b.head%int64(len(b.slots))].requests++
}

// allowRetry spends one retry if the budget has one.
func (b *retryBudget) allowRetry(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.roll(now)
	var requests, retries int64
	for _, s := range b.slots {
		requests += s.requests
		retries += s.retries
	}
	if float64(retries+1) > b.ratio*float64(requests)+float64(b.min) {
		return false
	}
	b.slots[b.head%int64(len(b.slots))].retries++
	return true
}
