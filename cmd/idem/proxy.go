package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/idemotel"
	"github.com/idemkit/idem/internal/httpstatus"
)

// defaultProxyStore is where idem proxy keeps its ledger without --store:
// a directory of its own, so a proxy and an `idem serve` started in the same
// directory never fight over ./idem-data (Pebble locks its directory).
const defaultProxyStore = "file:./idem-proxy-data"

const proxyUsage = `Usage: idem proxy --upstream URL [flags]

Puts the Idempotency-Key middleware in front of any HTTP service: a request
with a key runs on the upstream once; every duplicate gets the stored
response (status, body, allow-listed headers) with Idempotent-Replayed: true.
A duplicate of a request in flight waits for the original (--wait) and
replays it, or answers 409 with Retry-After; the same key with another
request answers 422. 2xx and 4xx answers are kept; 5xx, 408 and 429 release
the key so a retry runs again. An unreachable upstream answers 502, one that
does not answer within --upstream-timeout 504 (application/problem+json),
and both release the key. The handler is idemhttp.Proxy: a Go program can
run the same.

Flags:
  --upstream URL         the service behind the proxy, like http://127.0.0.1:8080
                         (required)
  --listen ADDR          where clients connect; port 0 picks a free port
                         (default 127.0.0.1:7071)
  --admin ADDR           where GET /metrics (Prometheus), GET /healthz
                         (liveness: 200 while the process answers), GET
                         /readyz (readiness: 503 while the store fails its
                         probe) and, with --ui-tokens, /ui answer; "" for
                         none (default 127.0.0.1:7072)
  --ui-tokens FILE       serve the dashboard at /ui on --admin (docs/ui.md):
                         who may sign in, one "TOKEN SCOPE[,SCOPE...]" per
                         line as in idem serve's --tokens. The proxy's scopes
                         are each request's principal (a digest of its
                         Authorization, or --scope-header's value) with method
                         and route, like "7:billing POST /orders": bind
                         operators to *.
                         Without it the admin listener has no /ui
  --ui                   with --ui-tokens, serve the dashboard (default true;
                         --ui=false turns it off)
  --ui-secure-cookie     mark the dashboard's session cookie Secure although
                         --admin is plain HTTP (behind a proxy that
                         terminates TLS)
  --store URL            where the ledger lives (default ` + defaultProxyStore + `,
                         apart from idem serve's ./idem-data):
                            ` + storeURLHelp + `
  --require-key          answer 400 to a request on --methods without an
                         Idempotency-Key (default: pass it through)
  --methods LIST         comma-separated methods the keys apply to
                         (default POST,PATCH)
  --scope-header NAME    take the scope (tenant) from this request header
                         instead of a digest of Authorization (callers
                         without Authorization share one scope); a request on
                         --methods without it answers 400. Trust: the proxy
                         then believes the header, so only a gateway that
                         authenticates callers and sets (overwrites) it may
                         reach the proxy; a caller who can set it can read
                         another tenant's stored responses by key.
  --lease DURATION       how long an execution holds its key before a retry
                         may take it over, renewed while the upstream works
                         (default 30s)
  --window DURATION      how long a stored response is replayed (default 24h)
  --wait DURATION        a duplicate of a request in flight waits up to this
                         for the original and replays it; if the original is
                         still running then, 409 with a Retry-After that
                         estimates when it will finish (at least 1 s, from
                         recent executions on the same path); 0 answers 409
                         at once (default 10s)
  --upstream-timeout DURATION
                         longest upstream exchange, from sending the request
                         to the end of the answer; past it the client gets
                         504 upstream-timeout and the key is released, so a
                         retry runs again (the upstream may still act on the
                         abandoned request: set it above the slowest answer);
                         0 for none, when a hung upstream holds its key for
                         as long as it hangs (default 60s)
  --max-body BYTES       largest request body; larger ones get 413
                         (default 1048576, 1 MiB)
  --max-response BYTES   largest answer stored; a larger one is passed through
                         to the client unstored (Idempotent-Replayed: false)
                         and the key released, so a retry runs on the upstream
                         again: set it above the largest answer of any path
                         that must not run twice (default 10485760, 10 MiB)
  --key-secret-file FILE keep only HMAC-SHA256 digests of keys in the store,
                         keyed by the secret in FILE (its bytes without
                         trailing newlines, as idem serve reads it; an empty
                         one is refused; keep it mode 0600); a store's keys
                         are only found again with the same secret
                         (default: keys are stored as sent)
  --drain DURATION       on SIGTERM or SIGINT, how long in-flight requests
                         may finish before the store is closed (default 10s)
  --sweep-interval DURATION
                         how often expired records are removed from a mem:,
                         postgres:// or redis:// store (default 1m); sweep a
                         large Redis ledger every 10m or so (see serve)
  --log-level LEVEL      debug, info, warn or error (default info); logs
                         never hold keys or bodies
` + readyHelp + `
` + tlsHelp + `                         (on --listen; --admin stays plain HTTP)

` + envHelp + `
Example:
  idem proxy --listen :7071 --upstream http://127.0.0.1:8080 --require-key
  curl -X POST -H 'Idempotency-Key: "order-42"' -d '{"sku":"x"}' localhost:7071/orders
  curl -X POST -H 'Idempotency-Key: "order-42"' -d '{"sku":"x"}' localhost:7071/orders  # replayed
  curl localhost:7072/metrics
`

type proxyOptions struct {
	listen, admin, store, scopeHeader, logLevel, keySecretFile string
	uiTokens                                                   string
	ui                                                         uiOptions
	upstream                                                   *url.URL
	methods                                                    []string
	requireKey                                                 bool
	maxBody, maxResponse                                       int64
	lease, window, wait, drain, sweep, upstreamTimeout         time.Duration
	tls                                                        tlsFiles
	ready                                                      readyFlags
}

func runProxy(args []string, stdout, stderr io.Writer) int {
	return runLongLived("proxy", args, stdout, stderr, parseProxyFlags, runProxyServer)
}

// parseProxyFlags returns the options, or an exit code >= 0 when proxy
// should stop here (help, usage error).
func parseProxyFlags(args []string, stdout, stderr io.Writer) (*proxyOptions, int) {
	fs := flag.NewFlagSet("idem proxy", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := &proxyOptions{}
	var upstream, methods string
	fs.StringVar(&upstream, "upstream", "", "")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7071", "")
	fs.StringVar(&o.admin, "admin", "127.0.0.1:7072", "")
	fs.StringVar(&o.store, "store", defaultProxyStore, "")
	fs.BoolVar(&o.requireKey, "require-key", false, "")
	fs.StringVar(&methods, "methods", "POST,PATCH", "")
	fs.StringVar(&o.scopeHeader, "scope-header", "", "")
	fs.DurationVar(&o.lease, "lease", idem.DefaultLease, "")
	fs.DurationVar(&o.window, "window", idem.DefaultWindow, "")
	fs.DurationVar(&o.wait, "wait", 10*time.Second, "")
	fs.DurationVar(&o.upstreamTimeout, "upstream-timeout", idemhttp.DefaultUpstreamTimeout, "")
	fs.Int64Var(&o.maxBody, "max-body", 1<<20, "")
	fs.Int64Var(&o.maxResponse, "max-response", 10<<20, "")
	fs.StringVar(&o.keySecretFile, "key-secret-file", "", "")
	fs.DurationVar(&o.drain, "drain", 10*time.Second, "")
	fs.DurationVar(&o.sweep, "sweep-interval", time.Minute, "")
	fs.StringVar(&o.logLevel, "log-level", "info", "")
	fs.StringVar(&o.uiTokens, "ui-tokens", "", "")
	o.ui.register(fs)
	o.ready.register(fs)
	o.tls.register(fs)
	if code := parseCommandFlags(fs, args, proxyUsage, stdout, stderr); code >= 0 {
		return nil, code
	}
	var bad string
	var err error
	o.upstream, err = parseUpstream(upstream)
	if err != nil {
		bad = err.Error()
	}
	o.methods, err = parseMethods(methods)
	if err != nil && bad == "" {
		bad = err.Error()
	}
	if bad == "" {
		switch {
		case o.scopeHeader != "" && !validHeaderName(o.scopeHeader):
			bad = fmt.Sprintf("--scope-header %q is not a header name", o.scopeHeader)
		case o.uiTokens != "" && o.admin == "":
			bad = "--ui-tokens serves the dashboard on --admin, which is off (\"\"): give --admin ADDR"
		case o.maxResponse <= 0:
			bad = fmt.Sprintf("--max-response must be positive, got %d", o.maxResponse)
		case o.wait < 0 || o.wait > idemapi.MaxDuration:
			bad = fmt.Sprintf("--wait must not be negative, got %s", o.wait)
		case o.upstreamTimeout < 0:
			bad = fmt.Sprintf("--upstream-timeout must not be negative (0 for none), got %s", o.upstreamTimeout)
		default:
			bad = badServerFlags(o.maxBody, o.lease, o.window, o.drain, o.sweep, &o.ready, &o.tls)
		}
	}
	if bad != "" {
		fmt.Fprintf(stderr, "idem proxy: %s\n", bad)
		return nil, 2
	}
	return o, -1
}

// parseUpstream accepts an absolute http or https URL without a query or
// fragment; its path prefixes every proxied path.
func parseUpstream(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("--upstream is required, like --upstream http://127.0.0.1:8080")
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("--upstream %q does not parse: %w", raw, idem.ErrInvalid)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("--upstream %q: want an http:// or https:// URL: %w", raw, idem.ErrInvalid)
	case u.Host == "":
		return nil, fmt.Errorf("--upstream %q has no host: %w", raw, idem.ErrInvalid)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return nil, fmt.Errorf("--upstream %q: no query, fragment or user info: %w", raw, idem.ErrInvalid)
	}
	return u, nil
}

// parseMethods parses a comma-separated method list, upper-cased.
func parseMethods(raw string) ([]string, error) {
	var methods []string
	for m := range strings.SplitSeq(raw, ",") {
		m = strings.ToUpper(strings.TrimSpace(m))
		if m == "" || !validHeaderName(m) { // a method is a token, as a header name is
			return nil, fmt.Errorf("--methods %q: want a list like POST,PATCH: %w", raw, idem.ErrInvalid)
		}
		if !slices.Contains(methods, m) {
			methods = append(methods, m)
		}
	}
	return methods, nil
}

// validHeaderName reports whether s is an RFC 9110 token.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// proxyRoute is the route name of proxied requests in the metrics.
const proxyRoute = "proxy"

// runProxyServer runs until ctx ends, then drains and closes the store.
func runProxyServer(ctx context.Context, o *proxyOptions, stdout, stderr io.Writer) error {
	logger, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return err
	}

	store, secret, closeStore, err := openServerStore(ctx, o.store, o.keySecretFile, nil)
	if err != nil {
		return err
	}
	metrics := idemapi.NewMetrics([]string{proxyRoute})
	obs := observers{metrics}
	var dash *dashboard
	if o.ui.on && o.uiTokens != "" && o.admin != "" {
		tokens, err := readUITokens(o.uiTokens)
		if err == nil && len(tokens) == 0 {
			err = errors.New("it holds no tokens: add lines like `TOKEN SCOPE[,SCOPE...]`")
		}
		if err != nil {
			return errors.Join(fmt.Errorf("--ui-tokens %s: %w", o.uiTokens, err), closeStore())
		}
		rates := newRates(&o.ui)
		obs = append(obs, rates)
		if dash, err = newDashboard(&o.ui, rates, store, tokens, secret, nil, nil, logger); err != nil {
			return errors.Join(err, closeStore())
		}
	}
	tel, telLine, err := startTelemetry(ctx, "idem-proxy", store, &closeStore)
	if err != nil {
		return errors.Join(err, closeStore())
	}
	if tel != nil {
		obs = append(obs, tel)
	}
	ledger, err := idem.New(store, &idem.Config{Lease: o.lease, Window: o.window, KeySecret: secret,
		MaxWait: max(o.wait, 30*time.Second), Observer: obs})
	if err != nil {
		return errors.Join(err, closeStore())
	}
	handler := newProxyHandler(ledger, o, logger, metrics, tel)

	ln, err := o.tls.listen(o.listen)
	if err != nil {
		return errors.Join(fmt.Errorf("--listen %s: %w", o.listen, err), closeStore())
	}
	var adminLn net.Listener
	if o.admin != "" {
		if adminLn, err = net.Listen("tcp", o.admin); err != nil {
			return errors.Join(fmt.Errorf("--admin %s: %w", o.admin, err), ln.Close(), closeStore())
		}
	}

	fmt.Fprintf(stdout, "idem proxy: listening on %s://%s, upstream %s\n", o.tls.scheme(), ln.Addr(), o.upstream.Redacted())
	if adminLn != nil {
		fmt.Fprintf(stdout, "idem proxy: admin on http://%s (/metrics, /healthz, /readyz)\n", adminLn.Addr())
		if dash != nil {
			fmt.Fprintf(stdout, "idem proxy: dashboard on http://%s/ui/ (sign in with a token of --ui-tokens)\n", adminLn.Addr())
		}
	}
	keys := "keys stored as sent"
	if secret != nil {
		keys = "keys stored as HMAC-SHA256 digests (--key-secret-file)"
	}
	fmt.Fprintf(stdout, "idem proxy: store %s, data in %s, %s\n", redactURL(o.store), describeStore(store, o.store), keys)
	if telLine != "" {
		fmt.Fprintf(stdout, "idem proxy: %s\n", telLine)
	}

	errorLog := slog.NewLogLogger(logger.Handler(), slog.LevelWarn)
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: errorLog}
	servers := []listening{{srv, ln}}
	if adminLn != nil {
		ready := idemapi.NewReadiness(store, o.ready.config(logger))
		admin := &http.Server{Handler: dash.mount(adminHandler(store, metrics, ready)), ReadHeaderTimeout: 10 * time.Second, ErrorLog: errorLog}
		servers = append(servers, listening{admin, adminLn})
	}
	ratesCtx, stopRates := context.WithCancel(ctx)
	ratesDone := dash.run(ratesCtx)
	defer func() { stopRates(); <-ratesDone }()
	return runServers(ctx, "proxy", stdout, logger, store, o.sweep, o.drain, closeStore, servers...)
}

// newProxyHandler is the handler chain of idem proxy: telemetry (if tel
// is set: a span per request, traceparent sent upstream), metrics, then
// idemhttp.Proxy.
func newProxyHandler(ledger *idem.Ledger, o *proxyOptions, logger *slog.Logger, metrics *idemapi.Metrics, tel *idemotel.Telemetry) http.Handler {
	wait, timeout := o.wait, o.upstreamTimeout
	if wait == 0 {
		wait = -1 // the flag's 0 is the library's "none"
	}
	if timeout == 0 {
		timeout = -1
	}
	p := &idemhttp.Proxy{
		Ledger:   ledger,
		Upstream: o.upstream,
		Config: &idemhttp.Config{
			Methods:     o.methods,
			RequireKey:  o.requireKey,
			MaxBody:     o.maxBody,
			MaxResponse: o.maxResponse,
			Wait:        wait,
			Lease:       o.lease,
			Window:      o.window,
			Logger:      logger,
		},
		ScopeHeader:     o.scopeHeader,
		UpstreamTimeout: timeout,
	}
	if tel != nil {
		p.Transport = tel.Transport(idemhttp.UpstreamTransport())
	}
	var h http.Handler = p
	if metrics != nil {
		h = countRequests(metrics, h)
	}
	if tel != nil {
		h = tel.Handler(proxyRoute, h)
	}
	return h
}

// adminHandler answers GET /metrics, GET /healthz (liveness) and GET
// /readyz (readiness: ready's check of the store).
func adminHandler(store idem.Store, metrics *idemapi.Metrics, ready *idemapi.Readiness) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/readyz", ready)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_ = metrics.WriteStore(r.Context(), w, store)
	})
	return mux
}

// observers hands every Event to each of its Observers.
type observers []idem.Observer

func (os observers) Observe(ctx context.Context, ev *idem.Event) {
	for _, o := range os {
		o.Observe(ctx, ev)
	}
}

// countRequests records every proxied request's status and duration.
func countRequests(metrics *idemapi.Metrics, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := httpstatus.New(w)
		next.ServeHTTP(sw, r)
		status := sw.Status()
		if status == 0 {
			status = http.StatusOK
		}
		metrics.Request(proxyRoute, status, time.Since(start))
	})
}
