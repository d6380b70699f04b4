package idemhttp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/idemkit/idem"
)

// Header names.
const (
	HeaderKey      = "Idempotency-Key"
	HeaderReplayed = "Idempotent-Replayed"
	HeaderExpires  = "Idempotency-Key-Expires"
)

// Config configures Middleware. The zero value (or nil) is sensible: keys
// on POST and PATCH, optional; scope by a digest of the Authorization
// header, method and route; 1 MiB request bodies, 10 MiB stored responses;
// a duplicate of a request in flight waits up to 10 s for its replay, then
// 409; 2xx and 4xx kept, 5xx/408/429 released.
type Config struct {
	// Methods the middleware applies to. Default POST and PATCH.
	Methods []string
	// RequireKey answers 400 to a request without a key (on Methods).
	RequireKey bool
	// Scope returns the principal a request acts for; keys never cross
	// scopes. Default: a digest of the Authorization header ("anonymous"
	// without one). The method and route are appended to it.
	Scope func(r *http.Request) (string, error)
	// Route names the route of a request for the scope. Default: r.Pattern
	// when a ServeMux matched one, else the path.
	Route func(r *http.Request) string
	// Fingerprint digests what a request means. Default: SHA-256 of method,
	// path, query, FingerprintHeaders and body.
	Fingerprint func(r *http.Request, body []byte) string
	// FingerprintHeaders are the request headers the default fingerprint
	// covers. Default Content-Type.
	FingerprintHeaders []string
	// MaxBody bounds the request body read for the fingerprint; larger: 413.
	// Default 1 MiB.
	MaxBody int64
	// MaxResponse bounds a stored response; a larger one is passed through
	// and the key released, never replayed truncated. Default 10 MiB.
	MaxResponse int64
	// MismatchStatus answers a key reused for another request. Default 422.
	MismatchStatus int
	// Wait is how long a duplicate of a request in flight waits for the
	// original to finish, then replays its response (or runs, if the
	// original's key was released). The wait polls the ledger
	// (idem.WithWait), so it works on every store, and is capped by the
	// ledger's idem.Config.MaxWait (default 30 s). A duplicate whose
	// original still runs after Wait gets 409 in-flight with a Retry-After
	// that estimates when the original will finish. Default DefaultWait;
	// negative: 409 at once.
	Wait time.Duration
	// Keep says which statuses are stored. Default: 2xx and 4xx but 408 and
	// 429; KeepEverything stores all (Stripe's practice).
	Keep func(status int) bool
	// StoredHeaders are the response headers stored and replayed. Default
	// DefaultStoredHeaders. Set-Cookie, Date, request ids and rate-limit
	// headers are never stored whatever this says.
	StoredHeaders []string
	// Lease and Window per request; 0 means the ledger's.
	Lease, Window time.Duration
	// Logger receives reasons for released keys; never keys or bodies.
	// Default slog.Default().
	Logger *slog.Logger
	// Clock dates the first execution's Idempotency-Key-Expires. Default:
	// the ledger's clock (Claim.KeepAlive always renews leases on it).
	Clock idem.Clock
}

// DefaultWait is Config.Wait's default.
const DefaultWait = 10 * time.Second

// DefaultStoredHeaders are the response headers a replay carries.
var DefaultStoredHeaders = []string{"Content-Type", "Content-Language", "Content-Encoding", "Content-Location",
	"Location", "ETag", "Last-Modified", "Link", "Cache-Control", "Vary"}

// KeepEverything stores every status, as Stripe does.
func KeepEverything(int) bool { return true }

// DefaultKeep stores 2xx and 4xx but 408 and 429: a retry of a timeout,
// a rate limit or a server error runs again.
func DefaultKeep(status int) bool {
	if status == http.StatusRequestTimeout || status == http.StatusTooManyRequests {
		return false
	}
	return status >= 200 && status < 500
}

type middleware struct {
	ledger         *idem.Ledger
	next           http.Handler
	methods        []string
	requireKey     bool
	scope          func(*http.Request) (string, error)
	route          func(*http.Request) string
	fingerprint    func(*http.Request, []byte) string
	maxBody        int64
	maxResponse    int64
	mismatchStatus int
	keep           func(int) bool
	stored         []string // canonical names, never-stored ones removed
	fpHeaders      []string // canonical FingerprintHeaders (default fingerprint)
	recycleBody    bool     // the default fingerprint keeps no reference to the body
	bodyEarly      bool     // a Config function sees the request before Begin: give it the body then
	dates          *dateCache
	lease, window  time.Duration
	logger         *slog.Logger
	clock          idem.Clock
	beginOpts      []idem.CallOption
	waitOpts       []idem.CallOption // beginOpts and WithWait; nil without Wait
	beatLease      time.Duration     // the lease KeepAlive renews
	durations      *routeDurations
}

// Middleware returns the Idempotency-Key middleware over ledger. A nil cfg
// means defaults; see Config.
//
// As net/http asks, a handler must not use the request body or the
// ResponseWriter after it returns: the middleware reuses their buffers.
func Middleware(ledger *idem.Ledger, cfg *Config) func(http.Handler) http.Handler {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	m := &middleware{ledger: ledger, requireKey: c.RequireKey, scope: c.Scope, route: c.Route,
		fingerprint: c.Fingerprint, maxBody: c.MaxBody, maxResponse: c.MaxResponse,
		mismatchStatus: c.MismatchStatus, keep: c.Keep, lease: c.Lease, window: c.Window,
		logger: c.Logger, clock: c.Clock}
	m.methods = c.Methods
	if len(m.methods) == 0 {
		m.methods = []string{http.MethodPost, http.MethodPatch}
	}
	// A Scope, Route or Fingerprint function may read r.Body: it gets
	// the body read for the fingerprint before Begin. Otherwise only a
	// first execution's handler needs it.
	m.bodyEarly = m.scope != nil || m.route != nil || m.fingerprint != nil
	if m.scope == nil {
		m.scope = AuthorizationScope
	}
	if m.route == nil {
		m.route = defaultRoute
	}
	if m.fingerprint == nil {
		headers := c.FingerprintHeaders
		if headers == nil {
			headers = []string{"Content-Type"}
		}
		for _, name := range headers {
			m.fpHeaders = append(m.fpHeaders, http.CanonicalHeaderKey(name))
		}
		m.recycleBody = true
	}
	m.dates = &dateCache{}
	if m.maxBody <= 0 {
		m.maxBody = 1 << 20
	}
	if m.maxResponse <= 0 {
		m.maxResponse = 10 << 20
	}
	if m.mismatchStatus == 0 {
		m.mismatchStatus = http.StatusUnprocessableEntity
	}
	if m.keep == nil {
		m.keep = DefaultKeep
	}
	stored := c.StoredHeaders
	if stored == nil {
		stored = DefaultStoredHeaders
	}
	for _, h := range stored {
		h = http.CanonicalHeaderKey(h)
		if !neverStored(h) && !slices.Contains(m.stored, h) {
			m.stored = append(m.stored, h)
		}
	}
	if m.logger == nil {
		m.logger = slog.Default()
	}
	if m.clock == nil {
		m.clock = m.ledger.Clock()
	}
	if m.lease > 0 {
		m.beginOpts = append(m.beginOpts, idem.WithLease(m.lease))
	}
	m.beatLease = m.lease
	if m.beatLease <= 0 {
		m.beatLease = m.ledger.Lease()
	}
	if m.window > 0 {
		m.beginOpts = append(m.beginOpts, idem.WithWindow(m.window))
	}
	wait := c.Wait
	if wait == 0 {
		wait = DefaultWait
	}
	if wait > 0 {
		// A second Begin waits, after the first found the key in flight:
		// the first, on every request, has no option to allocate for.
		m.waitOpts = append(slices.Clip(m.beginOpts), idem.WithWait(wait))
	}
	m.durations = &routeDurations{}
	return func(next http.Handler) http.Handler {
		mm := *m
		mm.next = next
		return &mm
	}
}

// neverStored reports the response headers no replay may carry: cookies,
// the date, request ids, rate limits and the middleware's own headers.
func neverStored(canonical string) bool {
	l := strings.ToLower(canonical)
	switch l {
	case "set-cookie", "set-cookie2", "date", "retry-after",
		strings.ToLower(HeaderReplayed), strings.ToLower(HeaderExpires):
		return true
	}
	return strings.HasPrefix(l, "ratelimit") || strings.HasPrefix(l, "x-ratelimit") ||
		strings.Contains(l, "request-id") || strings.Contains(l, "requestid") ||
		strings.Contains(l, "correlation-id") || strings.Contains(l, "trace-id") || l == "traceparent"
}

// AuthorizationScope is the default Config.Scope: a SHA-256 digest of the
// Authorization header, or "anonymous" without one. The raw credential is
// never stored.
func AuthorizationScope(r *http.Request) (string, error) {
	auth := r.Header["Authorization"]
	if len(auth) == 0 {
		return "anonymous", nil
	}
	d := digesters.Get().(*digester)
	b := d.buf[:0]
	for _, v := range auth {
		b = appendFramed(b, v)
	}
	d.h.Reset()
	d.h.Write(b)
	var out [len("auth:") + 2*sha256.Size]byte
	copy(out[:], "auth:")
	hex.Encode(out[len("auth:"):], d.h.Sum(d.sum[:0]))
	if cap(b) <= 64<<10 {
		d.buf = b[:0]
		digesters.Put(d)
	}
	return string(out[:]), nil
}

func defaultRoute(r *http.Request) string {
	if r.Pattern != "" {
		return r.Pattern
	}
	return r.URL.Path
}

// ledgerScope joins principal, method and route unambiguously (the
// principal is length-prefixed, a method has no spaces) and digests the
// result when it would not fit the ledger's 255-byte scope.
func ledgerScope(principal, method, route string) string {
	s := strconv.Itoa(len(principal)) + ":" + principal + " " + method + " " + route
	if len(s) > idem.MaxScopeLen || !utf8.ValidString(s) {
		sum := sha256.Sum256([]byte(s))
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	return s
}

func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !slices.Contains(m.methods, r.Method) {
		m.next.ServeHTTP(w, r)
		return
	}
	key, present, err := ParseKey(r.Header)
	if err != nil {
		writeProblem(w, problemKeyInvalid, err.Error())
		return
	}
	if !present {
		if m.requireKey {
			writeProblem(w, problemKeyRequired, "this request needs an "+HeaderKey+" header")
			return
		}
		m.next.ServeHTTP(w, r)
		return
	}

	if r.ContentLength > m.maxBody {
		writeProblem(w, problemBodyTooLarge, fmt.Sprintf("the body is over the limit of %d bytes", m.maxBody))
		return
	}
	var body []byte
	hasBody := r.Body != nil && r.Body != http.NoBody
	if hasBody {
		buf := getBuffer()
		body, err = readBody(buf.b[:0], r.Body, m.maxBody+1, r.ContentLength)
		buf.b = body
		if err != nil {
			putBuffer(buf)
			writeProblem(w, problemBodyUnreadable, "the request body could not be read")
			return
		}
		if int64(len(body)) > m.maxBody {
			putBuffer(buf)
			writeProblem(w, problemBodyTooLarge, fmt.Sprintf("the body is over the limit of %d bytes", m.maxBody))
			return
		}
		if m.bodyEarly {
			rb := &replayedBody{}
			rb.Reset(body)
			r.Body = rb
			if m.recycleBody {
				// After the handler returns its body reads nothing, and
				// the buffer serves another request.
				defer func() {
					rb.Reset(nil)
					putBuffer(buf)
				}()
			}
		} else {
			// execute hands the body to the handler, and makes it read
			// nothing once the handler returned.
			defer putBuffer(buf)
		}
	}

	principal, err := m.scope(r)
	if err != nil {
		writeProblem(w, problemScope, "the request's principal could not be determined")
		return
	}
	route := m.route(r)
	scope := ledgerScope(principal, r.Method, route)
	var fp string
	if m.fingerprint != nil {
		fp = m.fingerprint(r, body)
	} else {
		fp = fingerprintCanonical(r, m.fpHeaders, body)
	}

	claim, err := m.ledger.Begin(r.Context(), scope, key, fp, m.beginOpts...)
	if m.waitOpts != nil && errors.Is(err, idem.ErrInFlight) {
		claim, err = m.ledger.Begin(r.Context(), scope, key, fp, m.waitOpts...)
	}
	if err != nil {
		m.beginFailed(w, r, route, err)
		return
	}
	if claim.Replayed() {
		m.replay(w, r, claim)
		return
	}
	m.execute(w, r, route, claim, hasBody && !m.bodyEarly, body)
}

// execution is what a first execution keeps, in one allocation. It is
// not pooled: a handler that (wrongly) writes after its return must never
// reach another request's response, and the response's header values
// stay in its header map.
type execution struct {
	rec     recorder
	ctx     leaseContext
	req     http.Request // the handler's: the request with ctx
	body    replayedBody // the handler's request body, unless Config's functions saw it first
	headers [2]string    // Idempotent-Replayed and Idempotency-Key-Expires
}

func (m *middleware) beginFailed(w http.ResponseWriter, r *http.Request, route string, err error) {
	var inFlight *idem.InFlightError
	switch {
	case errors.As(err, &inFlight):
		wait := m.retryAfter(r.Method, route, inFlight)
		secs := int64((wait + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
		writeProblem(w, problemInFlight, "a request with this key is being processed; retry later")
	case errors.Is(err, idem.ErrFingerprintMismatch):
		p := problemMismatch
		p.status = m.mismatchStatus
		writeProblem(w, p, "this key was used with a different request")
	case r.Context().Err() != nil:
		// The client went away while waiting; nobody reads this answer.
		writeProblem(w, problemUnavailable, "the request was cancelled")
	default:
		m.logger.Warn("idemhttp: ledger failed", "method", r.Method, "error", err)
		writeProblem(w, problemUnavailable, "the idempotency ledger is unavailable; retry with the same key")
	}
}

func (m *middleware) replay(w http.ResponseWriter, r *http.Request, claim *idem.Claim) {
	out := claim.Outcome()
	head, err := parseStoredHead(out.Data)
	if err != nil {
		m.logger.Warn("idemhttp: the stored response cannot be replayed", "method", r.Method, "error", err)
		writeProblem(w, problemUnavailable, "the stored response cannot be read by this server")
		return
	}
	h := w.Header()
	// One backing array for the headers' values; each header gets a full
	// slice expression, so an append by a later writer copies. The names
	// and values are substrings of one copy of the stored head.
	values := make([]string, 2, 2+head.lines)
	values[0], values[1] = "true", m.dates.format(m.expires(claim.Record()))
	h[HeaderReplayed] = values[0:1:1]
	h[HeaderExpires] = values[1:2:2]
	it := storedHeaders{string(out.Data[3:head.end])}
	for name, count, ok := it.next(); ok; name, count, ok = it.next() {
		start := len(values)
		for range count {
			values = append(values, it.take())
		}
		h[name] = values[start:len(values):len(values)]
	}
	status := head.status
	if status < 200 || status > 999 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = w.Write(out.Data[head.end+1:])
}

// expires is when the key is kept at least until: its first attempt plus
// the window, by the store's clock. A first execution cannot know when it
// will complete, so replays say the same instant, earlier than the exact
// Completed + window: every response to a key carries the same value.
func (m *middleware) expires(rec idem.Record) time.Time {
	window := rec.Window
	if window <= 0 {
		window = m.window
	}
	if window <= 0 {
		window = idem.DefaultWindow
	}
	created := rec.Created
	if created.IsZero() {
		created = m.clock.Now()
	}
	return created.Add(window).UTC()
}

// retryAfter estimates when the in-flight original of a request on route
// will finish: the recent first executions' typical duration there, less
// how long the original has run (if the store said when it started; with
// no recent executions, a guess that it runs as long again). At least a
// second, and at most until its lease ends, when a retry may take it over.
func (m *middleware) retryAfter(method, route string, e *idem.InFlightError) time.Duration {
	var ran time.Duration
	if !e.Started.IsZero() {
		ran = max(m.clock.Now().Sub(e.Started), 0)
	}
	estimate := ran
	if typical, ok := m.durations.typical(method, route); ok {
		estimate = typical - ran
	}
	return min(max(estimate, time.Second), max(e.RetryAfter, time.Second))
}

func (m *middleware) execute(w http.ResponseWriter, r *http.Request, route string, claim *idem.Claim, setBody bool, body []byte) {
	ex := &execution{}
	if setBody {
		ex.body.Reset(body)
		r.Body = &ex.body
	}
	rec := claim.Record()
	h := w.Header()
	values := ex.headers[:]
	values[0], values[1] = "false", m.dates.format(m.expires(rec))
	h[HeaderReplayed] = values[0:1:1]
	h[HeaderExpires] = values[1:2:2]

	// The outcome is recorded, and the lease extended, on a context the
	// client's going away does not cancel.
	finish := context.WithoutCancel(r.Context())
	workCtx := &ex.ctx
	workCtx.Context = r.Context()
	defer workCtx.end()
	// A refused extension cancels the handler's context with the
	// refusal as its cause.
	stopKeepAlive := claim.KeepAlive(finish, m.beatLease, workCtx.lose)

	rw := &ex.rec
	*rw = recorder{rw: w, max: m.maxResponse, stored: m.stored, keep: m.keep}
	stopped := false
	defer func() {
		if !stopped { // the handler panicked
			stopKeepAlive()
		}
		ex.body.Reset(nil) // the buffer serves another request
		rw.discard()
		if p := recover(); p != nil {
			if err := claim.Release(finish); err != nil {
				m.logger.Warn("idemhttp: releasing after a panic failed", "method", r.Method, "error", err)
			}
			panic(p)
		}
	}()
	// The request with the handler's context, in the execution's
	// allocation: WithContext's own copy stays on the stack.
	ex.req = *r.WithContext(workCtx)
	began := m.clock.Now()
	m.next.ServeHTTP(rw, &ex.req)
	stopKeepAlive()
	stopped = true
	m.durations.add(r.Method, route, m.clock.Now().Sub(began))
	m.finish(finish, r, claim, rw)
}

// finish stores the recorded response or releases the key, then answers
// the client: with the handler's response once it is stored (or the key
// released), with a problem when it could not be stored.
func (m *middleware) finish(ctx context.Context, r *http.Request, claim *idem.Claim, rw *recorder) {
	if rw.status == 0 && !rw.hijacked {
		rw.WriteHeader(http.StatusOK) // what net/http sends for a handler that wrote nothing
	}
	status := rw.status
	if status == 0 {
		status = http.StatusOK
	}
	release := func(reason string) {
		if err := claim.Release(ctx); err != nil {
			m.logger.Warn("idemhttp: releasing the key failed", "reason", reason, "method", r.Method, "status", status, "error", err)
			return
		}
		m.logger.Info("idemhttp: key released", "reason", reason, "method", r.Method, "status", status)
	}
	switch {
	case rw.hijacked:
		release("the handler hijacked the connection")
		return
	case rw.overflow:
		release(fmt.Sprintf("the response is over the limit of %d bytes", m.maxResponse))
		return
	case !m.keep(status):
		// Not stored: a retry runs again whether or not the release
		// reached the store (if not, once the lease ends).
		if err := claim.Release(ctx); err != nil {
			m.logger.Warn("idemhttp: releasing the key failed", "method", r.Method, "status", status, "error", err)
		}
		rw.send(status)
		return
	}
	// The recorder holds the response in its stored form. Stores copy
	// the outcome: the buffer serves another response after.
	err := claim.Complete(ctx, idem.Outcome{Data: rw.body.b})
	if err == nil {
		rw.send(status)
		return
	}
	m.logger.Warn("idemhttp: storing the response failed", "method", r.Method, "status", status, "streamed", rw.passing, "error", err)
	if rw.passing {
		return // streamed: the client has it already
	}
	// The client must not take an answer for the outcome that duplicates
	// will not get: the handler's response is dropped.
	h := rw.rw.Header()
	clear(h)
	h.Set("Retry-After", "1")
	if errors.Is(err, idem.ErrLeaseLost) || errors.Is(err, idem.ErrCompleted) {
		writeProblem(rw.rw, problemLeaseLost, "another attempt took this key over; retry with the same key")
		return
	}
	writeProblem(rw.rw, problemNotRecorded, "the outcome could not be recorded; retry with the same key")
}

// routeDurations keeps a moving average of how long first executions
// take per method and route, for the Retry-After of a duplicate that finds
// one in flight. It keeps up to maxRoutes routes (a Route that returns
// the path of every order would grow without bound); later ones have no
// estimate.
type routeDurations struct {
	mu     sync.RWMutex
	routes map[routeKey]*atomic.Int64 // nanoseconds
}

type routeKey struct{ method, route string }

const maxRoutes = 1024

func (d *routeDurations) add(method, route string, took time.Duration) {
	d.mu.RLock()
	avg := d.routes[routeKey{method, route}]
	d.mu.RUnlock()
	if avg == nil {
		d.mu.Lock()
		if avg = d.routes[routeKey{method, route}]; avg == nil {
			if len(d.routes) >= maxRoutes {
				d.mu.Unlock()
				return
			}
			if d.routes == nil {
				d.routes = map[routeKey]*atomic.Int64{}
			}
			avg = new(atomic.Int64)
			avg.Store(int64(took))
			d.routes[routeKey{method, route}] = avg
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
	}
	// A quarter of the way to the new sample: recent executions count
	// most. Concurrent updates may lose a sample, which an estimate bears.
	old := avg.Load()
	avg.Store(old + (int64(took)-old)/4)
}

func (d *routeDurations) typical(method, route string) (time.Duration, bool) {
	d.mu.RLock()
	avg := d.routes[routeKey{method, route}]
	d.mu.RUnlock()
	if avg == nil {
		return 0, false
	}
	return time.Duration(avg.Load()), true
}

// buffer is a pooled byte slice: request bodies and recorded responses.
type buffer struct{ b []byte }

var buffers = sync.Pool{New: func() any { return &buffer{b: make([]byte, 0, 1024)} }}

// maxPooled bounds the buffers kept for reuse.
const maxPooled = 64 << 10

func getBuffer() *buffer { return buffers.Get().(*buffer) }

func putBuffer(b *buffer) {
	if cap(b.b) <= maxPooled {
		b.b = b.b[:0]
		buffers.Put(b)
	}
}

// readBody appends r's bytes to dst until EOF or until it holds limit
// bytes; size, when known, sizes the buffer once.
func readBody(dst []byte, r io.Reader, limit, size int64) ([]byte, error) {
	if size >= 0 && int64(cap(dst)) < min(size+1, limit) {
		dst = slices.Grow(dst, int(min(size+1, limit)))
	}
	for int64(len(dst)) < limit {
		if len(dst) == cap(dst) {
			dst = slices.Grow(dst, int(min(int64(max(cap(dst), 512)), limit-int64(len(dst)))))
		}
		room := dst[len(dst):cap(dst)]
		if int64(len(room)) > limit-int64(len(dst)) {
			room = room[:limit-int64(len(dst))]
		}
		n, err := r.Read(room)
		dst = dst[:len(dst)+n]
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// replayedBody is the request body the handler reads: the bytes the
// middleware read and fingerprinted. Its reads and Reset exclude each
// other: a handler may hand the body to a transport that goes on reading
// it after the handler returned (httputil.ReverseProxy when the upstream
// exchange breaks off), while the middleware resets it to recycle the
// buffer; once reset, it reads nothing.
type replayedBody struct {
	mu sync.Mutex
	r  bytes.Reader
}

func (b *replayedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.r.Read(p)
}

// Reset makes the body read body.
func (b *replayedBody) Reset(body []byte) {
	b.mu.Lock()
	b.r.Reset(body)
	b.mu.Unlock()
}

func (*replayedBody) Close() error { return nil }

// dateCache formats HTTP dates, reusing the last one: they have whole
// seconds, and concurrent requests mostly share theirs.
type dateCache struct{ last atomic.Pointer[formattedDate] }

type formattedDate struct {
	unix int64
	text string
}

func (c *dateCache) format(t time.Time) string {
	unix := t.Unix()
	if d := c.last.Load(); d != nil && d.unix == unix {
		return d.text
	}
	d := &formattedDate{unix: unix, text: t.UTC().Format(http.TimeFormat)}
	c.last.Store(d)
	return d.text
}

// recorder holds a response (status, headers, body up to max) until the
// middleware has stored it, and keeps the copy the ledger stores. A
// handler that flushes, or a body over max, turns it into a pass-through:
// what was held goes out, and the rest goes to the client as written.
type recorder struct {
	rw       http.ResponseWriter
	max      int64
	status   int
	stored   []string       // the header names to keep
	keep     func(int) bool // Config.Keep: a status it does not keep releases the key
	body     *buffer        // from the pool: the response's stored form; nil until the status is held
	head     int            // where the body starts in body.b, after the stored head
	late     http.Header    // rw's headers as of WriteHeader, changed after it
	passing  bool           // rw has the status: the response goes through
	overflow bool
	hijacked bool
}

// Header is rw's header map until the status is written. While the
// response is held after that, changes go to a copy, as net/http ignores
// them (but for trailers, which the copy passes on once sent).
func (w *recorder) Header() http.Header {
	if w.status == 0 || w.passing {
		return w.rw.Header()
	}
	if w.late == nil {
		w.late = w.rw.Header().Clone()
	}
	return w.late
}

func (w *recorder) WriteHeader(code int) {
	if w.passing {
		w.rw.WriteHeader(code) // let net/http log the superfluous call
		return
	}
	if w.status != 0 {
		return // superfluous: the held status stands
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.rw.WriteHeader(code) // informational: the final status comes later
		return
	}
	w.status = code
	// The stored head: the status and the stored headers as of now.
	w.body = getBuffer()
	w.body.b = appendStoredHead(w.body.b[:0], code, w.stored, w.rw.Header())
	w.head = len(w.body.b)
}

func (w *recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.overflow {
		return w.rw.Write(p)
	}
	if w.body == nil { // the handler returned (it must not write now): absorbed as before
		if w.passing {
			return w.rw.Write(p)
		}
		return len(p), nil
	}
	if int64(len(p)+len(w.body.b)-w.head) > w.max {
		w.overflow = true
		w.send(w.status)
		w.discard()
		return w.rw.Write(p)
	}
	w.body.b = append(w.body.b, p...)
	if w.passing {
		return w.rw.Write(p)
	}
	return len(p), nil
}

// send writes the held response to rw, once; status is the one to write
// if the handler wrote none.
func (w *recorder) send(status int) {
	if w.passing {
		return
	}
	w.passing = true
	if w.status != 0 {
		status = w.status
	}
	if w.overflow || !w.keep(status) {
		// The key is released: it is not kept until then.
		delete(w.rw.Header(), HeaderExpires)
	}
	w.rw.WriteHeader(status)
	if w.body != nil && len(w.body.b) > w.head {
		_, _ = w.rw.Write(w.body.b[w.head:])
	}
	if w.late != nil {
		h := w.rw.Header()
		clear(h)
		maps.Copy(h, w.late) // net/http sends the declared trailers
		w.late = nil
	}
}

// reset drops the held response, as if the handler had written nothing
// yet (but for the middleware's headers), and reports whether it could:
// not once any of it went to the client.
func (w *recorder) reset() bool {
	if w.passing || w.overflow || w.hijacked {
		return false
	}
	w.status = 0
	w.discard()
	w.late = nil
	h := w.rw.Header()
	for name := range h {
		if name != HeaderReplayed && name != HeaderExpires {
			delete(h, name)
		}
	}
	return true
}

// discard returns the body buffer to the pool.
func (w *recorder) discard() {
	if w.body != nil {
		putBuffer(w.body)
		w.body = nil
	}
}

// Flush sends what was written so far to the client (http.Flusher); the
// rest of the response streams. A streamed response reaches the client
// before the middleware stores it.
func (w *recorder) Flush() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.send(w.status)
	_ = http.NewResponseController(w.rw).Flush()
}

// Hijack hands the connection to the handler; the key is then released,
// since the response is no longer the middleware's to record.
func (w *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, buf, err := http.NewResponseController(w.rw).Hijack()
	if err == nil {
		w.hijacked = true
	}
	return conn, buf, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *recorder) Unwrap() http.ResponseWriter { return w.rw }
