package idemhttp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// DefaultUpstreamTimeout is Proxy.UpstreamTimeout's default.
const DefaultUpstreamTimeout = 60 * time.Second

// ErrUpstreamTimeout is the cause of an upstream exchange that
// Proxy.UpstreamTimeout ended; the error Proxy.ErrorHandler receives then
// wraps it.
var ErrUpstreamTimeout = errors.New("idemhttp: the upstream did not answer in time")

// Proxy is a reverse proxy with the Idempotency-Key middleware in front:
// a request with a key runs on the upstream once, and every duplicate gets
// the stored answer. It is the handler of `idem proxy`.
//
// Set Ledger and Upstream (or Rewrite); every other field has a working
// zero value, as httputil.ReverseProxy's do, which Proxy is built on. The
// fields must not change once the Proxy has served a request, and a Proxy
// must not be copied after that.
//
// On top of the middleware (see Config), the proxy:
//
//   - keeps the upstream exchange going when the client disconnects, so
//     its answer is stored and the client's retry replays it (a lost
//     lease still stops it);
//   - bounds the exchange by UpstreamTimeout: past it the client gets 504
//     upstream-timeout and the key is released, so a retry runs again;
//   - answers an upstream that cannot be reached, or fails before its
//     answer is complete, with 502 bad-gateway, and releases the key.
//
// A 502 or 504 is never kept by the default Config.Keep, and carries no
// Idempotency-Key-Expires, as no response of a released key does. An
// answer over Config.MaxResponse (default 10 MiB) is passed through to
// the client unstored and the key released: a retry runs on the upstream
// again, so set it above the largest answer of any route that must not
// run twice.
//
// An upstream that fails after part of its answer reached the client (a
// streamed answer: one without Content-Length, or one over MaxResponse)
// cannot be answered with a problem any more: the connection is aborted
// (http.ErrAbortHandler) and the key released. That needs the Proxy to be
// served by net/http's Server, as httputil.ReverseProxy does.
type Proxy struct {
	// Ledger records the answers. Required.
	Ledger *idem.Ledger
	// Upstream is the service behind the proxy, like
	// http://127.0.0.1:8080; its path prefixes every proxied path.
	// Required unless Rewrite is set.
	Upstream *url.URL
	// Rewrite, when set, replaces the default rewrite of the outbound
	// request (SetURL(Upstream), then SetXForwarded), as in
	// httputil.ReverseProxy.
	Rewrite func(*httputil.ProxyRequest)
	// Config configures the middleware. nil means defaults, but for Route,
	// which defaults to the request's path here: the upstream's routes are
	// unknown. Config.Clock also times UpstreamTimeout.
	Config *Config
	// ScopeHeader, when set, takes the scope (the tenant) from this
	// request header instead of Config.Scope, and answers a request on
	// Config.Methods without exactly one non-empty such header with 400
	// missing-scope. Only a gateway that authenticates callers and sets
	// (overwrites) the header may then reach the proxy: a caller who can
	// set it can read another tenant's stored answers by key.
	ScopeHeader string
	// Transport does the upstream requests. Default: a clone of
	// http.DefaultTransport that keeps up to 256 idle connections per host.
	Transport http.RoundTripper
	// UpstreamTimeout bounds an upstream exchange, from sending the request
	// to the end of the answer's body. 0 means DefaultUpstreamTimeout;
	// negative, no bound (a hung upstream then holds its key for as long
	// as it hangs, since the lease is renewed while it works).
	UpstreamTimeout time.Duration
	// ErrorHandler answers a failed upstream exchange; err wraps
	// ErrUpstreamTimeout when UpstreamTimeout ended it. Default: 504
	// upstream-timeout or 502 bad-gateway (application/problem+json).
	// Whatever it answers is stored if Config.Keep keeps its status: keep
	// it a 5xx, so that a retry runs again.
	ErrorHandler func(w http.ResponseWriter, r *http.Request, err error)

	once    sync.Once
	handler http.Handler
}

// ServeHTTP proxies r.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.once.Do(p.init)
	p.handler.ServeHTTP(w, r)
}

func (p *Proxy) init() {
	if p.Ledger == nil || (p.Upstream == nil && p.Rewrite == nil) {
		p.handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeProblem(w, problemProxyMisconfigured, "idemhttp.Proxy needs a Ledger and an Upstream (or Rewrite)")
		})
		return
	}
	var cfg Config
	if p.Config != nil {
		cfg = *p.Config
	}
	if cfg.Route == nil {
		cfg.Route = func(r *http.Request) string { return r.URL.Path }
	}
	if len(cfg.Methods) == 0 {
		cfg.Methods = []string{http.MethodPost, http.MethodPatch}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if p.ScopeHeader != "" {
		name := http.CanonicalHeaderKey(p.ScopeHeader)
		cfg.Scope = func(r *http.Request) (string, error) {
			v := r.Header[name]
			if len(v) != 1 || v[0] == "" {
				return "", fmt.Errorf("%w: want one %s header", idem.ErrInvalid, name)
			}
			return "header:" + v[0], nil
		}
	}
	u := &upstream{timeout: p.UpstreamTimeout, clock: cfg.Clock, logger: cfg.Logger, errorHandler: p.ErrorHandler}
	if u.timeout == 0 {
		u.timeout = DefaultUpstreamTimeout
	}
	if u.clock == nil {
		u.clock = p.Ledger.Clock()
	}
	where := "the upstream"
	if p.Upstream != nil {
		where += " " + p.Upstream.Redacted()
	}
	u.where = where
	rewrite := p.Rewrite
	if rewrite == nil {
		target := p.Upstream
		rewrite = func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.SetXForwarded()
		}
	}
	transport := p.Transport
	if transport == nil {
		transport = UpstreamTransport()
	}
	u.proxy = &httputil.ReverseProxy{
		Rewrite:      rewrite,
		Transport:    transport,
		BufferPool:   copyBuffers{},
		ErrorLog:     slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
		ErrorHandler: u.failed,
	}
	h := Middleware(p.Ledger, &cfg)(u)
	if p.ScopeHeader != "" {
		h = requireScopeHeader(http.CanonicalHeaderKey(p.ScopeHeader), cfg.Methods, h)
	}
	p.handler = h
}

// UpstreamTransport returns a new transport as Proxy.Transport's default,
// for a caller that wraps it (a tracing transport): it keeps an idle
// upstream connection for every client connection of a busy proxy,
// instead of opening and closing one per request (http.DefaultTransport
// keeps 2 per host).
func UpstreamTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 256
	return t
}

// upstream is the handler behind the middleware: the reverse proxy, with
// the exchange detached from the client and bounded by the timeout.
type upstream struct {
	proxy        *httputil.ReverseProxy
	timeout      time.Duration
	clock        idem.Clock
	logger       *slog.Logger
	where        string // "the upstream URL", for problem details
	errorHandler func(http.ResponseWriter, *http.Request, error)
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The client going away does not stop the exchange: cancelling it
	// would leave unknown whether the upstream acted, and the key
	// released for a second execution. A cancellation with another cause
	// (the middleware's, when the lease was lost) still stops it.
	parent := r.Context()
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(parent))
	defer cancel(nil)
	stop := context.AfterFunc(parent, func() {
		if cause := context.Cause(parent); !errors.Is(cause, context.Canceled) {
			cancel(cause)
		}
	})
	defer stop()
	if u.timeout > 0 {
		stopTimer := u.clock.AfterFunc(u.timeout, func() { cancel(ErrUpstreamTimeout) })
		defer stopTimer()
	}
	r = r.WithContext(ctx)
	defer func() {
		if v := recover(); v != nil {
			// ReverseProxy aborts when the answer's body fails mid-copy.
			// While the middleware still holds the answer, nothing has
			// reached the client: answer the failure instead.
			rec, held := w.(*recorder)
			if v != http.ErrAbortHandler || !held || !rec.reset() {
				panic(v)
			}
			err := errors.New("idemhttp: the upstream's answer broke off")
			if cause := context.Cause(ctx); cause != nil {
				err = fmt.Errorf("%w: %w", err, cause)
			}
			u.failed(w, r, err)
		}
	}()
	u.proxy.ServeHTTP(w, r)
}

// failed answers a failed exchange: always a 5xx, also when the client
// went away, since whether the upstream acted is unknown and the key must
// not keep this answer.
func (u *upstream) failed(w http.ResponseWriter, r *http.Request, err error) {
	timedOut := errors.Is(context.Cause(r.Context()), ErrUpstreamTimeout)
	if timedOut && !errors.Is(err, ErrUpstreamTimeout) {
		err = fmt.Errorf("%w: %w", ErrUpstreamTimeout, err)
	}
	u.logger.Warn("idemhttp: upstream round trip failed", "method", r.Method, "timeout", timedOut, "error", err)
	if u.errorHandler != nil {
		u.errorHandler(w, r, err)
		return
	}
	if timedOut {
		writeProblem(w, problemUpstreamTimeout, fmt.Sprintf("%s did not answer within %s; the idempotency key, if any, is free again", u.where, u.timeout))
		return
	}
	writeProblem(w, problemBadGateway, u.where+" could not be reached or failed mid-answer; the idempotency key, if any, is free again")
}

// copyBuffers reuses the buffers ReverseProxy copies response bodies
// through; without a pool it allocates 32 KiB per request.
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { return new([32 << 10]byte) }}

func (copyBuffers) Get() []byte { return copyBufferPool.Get().(*[32 << 10]byte)[:] }
func (copyBuffers) Put(b []byte) {
	if cap(b) == 32<<10 {
		copyBufferPool.Put((*[32 << 10]byte)(b[:32<<10]))
	}
}

// requireScopeHeader answers 400 to a request on methods without exactly
// one non-empty header name (canonical): without it the request has no
// scope, and guessing one could hand a tenant another tenant's stored
// answer.
func requireScopeHeader(name string, methods []string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slices.Contains(methods, r.Method) {
			if v := r.Header[name]; len(v) != 1 || v[0] == "" {
				writeProblem(w, problemMissingScope,
					fmt.Sprintf("a %s request needs exactly one non-empty %s header, which names the scope of its idempotency key", r.Method, name))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
