package idemapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// Readiness defaults.
const (
	// DefaultReadyTimeout bounds one store probe of /readyz: 2 s.
	DefaultReadyTimeout = 2 * time.Second
	// DefaultReadyCache is how long /readyz answers with the last probe's
	// result before probing again: 1 s.
	DefaultReadyCache = time.Second
)

// readyProbeScope and readyProbeKey name the key a store without
// idem.Pinger is probed with: a Get of a key no one writes (the scope is
// not one a token of idem serve can name: it holds a NUL).
const (
	readyProbeScope = "idem\x00readyz"
	readyProbeKey   = "probe"
)

// ReadinessConfig configures a Readiness. A nil *ReadinessConfig means the
// defaults.
type ReadinessConfig struct {
	// Timeout bounds one probe of the store. Default DefaultReadyTimeout.
	Timeout time.Duration
	// CacheFor is how long a probe's result answers every check after it,
	// so that load balancers polling many times a second probe the store
	// at most once per CacheFor. Default DefaultReadyCache.
	CacheFor time.Duration
	// Logger receives a warning when the store fails a probe after
	// passing the one before, and an info line when it passes again.
	// Default: nothing is logged.
	Logger *slog.Logger
	// Clock tells CacheFor's time. Default: the wall clock (idem.SystemClock).
	Clock idem.Clock
}

// Readiness tells whether a store can serve now: the readiness check of
// idem serve and idem proxy (GET /readyz), apart from liveness (/healthz,
// which only says the process answers). It probes the store with
// idem.Pinger when the store has it, else with a Get of a key that is never
// written (ErrNotFound is a pass), with a short timeout, and keeps the
// result for a moment. Concurrent checks share one probe. It is safe for
// concurrent use and serves GET and HEAD as an http.Handler.
type Readiness struct {
	store    idem.Store
	timeout  time.Duration
	cacheFor time.Duration
	log      *slog.Logger
	now      func() time.Time

	mu      sync.Mutex
	checked time.Time // of the last probe; zero: none yet
	err     error     // its result
}

// NewReadiness returns the readiness check of store.
func NewReadiness(store idem.Store, cfg *ReadinessConfig) *Readiness {
	r := &Readiness{store: store, timeout: DefaultReadyTimeout, cacheFor: DefaultReadyCache,
		log: slog.New(slog.DiscardHandler), now: time.Now}
	if cfg != nil {
		if cfg.Timeout > 0 {
			r.timeout = cfg.Timeout
		}
		if cfg.CacheFor > 0 {
			r.cacheFor = cfg.CacheFor
		}
		if cfg.Logger != nil {
			r.log = cfg.Logger
		}
		if cfg.Clock != nil {
			r.now = cfg.Clock.Now
		}
	}
	return r
}

// Check returns nil when the store passed its last probe, made at most
// CacheFor ago (else made now), and the probe's error otherwise. The probe
// runs under its own timeout, not ctx's: a caller that gives up does not
// fail the check of those waiting with it.
func (r *Readiness) Check(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.checked.IsZero() && r.now().Sub(r.checked) < r.cacheFor {
		return r.err
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout)
	err := r.probe(pctx)
	cancel()
	if err != nil && errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w: the store did not answer within %s: %w", idem.ErrUnavailable, r.timeout, err)
	}
	switch {
	case err != nil && (r.err == nil || r.checked.IsZero()):
		r.log.Warn("not ready: the store failed its probe", "error", err)
	case err == nil && r.err != nil:
		r.log.Info("ready: the store passed its probe again")
	}
	r.checked, r.err = r.now(), err
	return err
}

func (r *Readiness) probe(ctx context.Context) error {
	if p, ok := r.store.(idem.Pinger); ok {
		return p.Ping(ctx)
	}
	_, err := r.store.Get(ctx, &idem.KeyParams{Scope: readyProbeScope, Key: readyProbeKey})
	if errors.Is(err, idem.ErrNotFound) {
		return nil
	}
	return err
}

// ServeHTTP answers 200 "ready" (text/plain) when Check passes, and 503
// application/problem+json, type unavailable, when it fails; the detail
// does not carry the store's error (the check needs no token), which is
// logged instead. Methods other than GET and HEAD get 405.
func (r *Readiness) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeProblem(w, newProblem(http.StatusMethodNotAllowed, ProblemMethodNotAllowed, req.Method+" is not allowed here; use GET or HEAD"))
		return
	}
	if p := r.serve(w, req); p != nil {
		writeProblem(w, p)
	}
}

func (r *Readiness) serve(w http.ResponseWriter, req *http.Request) *problem {
	if err := r.Check(req.Context()); err != nil {
		// The cause is logged by Check, once per change, not per poll.
		return newProblem(http.StatusServiceUnavailable, ProblemUnavailable,
			"not ready: the store does not answer or does not accept writes; see the server's log")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = io.WriteString(w, "ready\n")
	return nil
}
