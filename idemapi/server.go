package idemapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/httpstatus"
	"github.com/idemkit/idem/workflow"
)

// Size limits. An outcome travels as base64, 4/3 of its size, inside a
// body that also holds the scope, key, token, meta and JSON punctuation,
// so the body limit is derived from the outcome limit and not the other
// way round: the documented outcome limit is the one that holds.
const (
	// DefaultMaxOutcome is the default limit of an outcome's data, in
	// bytes as stored (before base64): 4 MiB.
	DefaultMaxOutcome = 4 << 20
	// BodyOverhead is the room a body has besides an outcome's data as
	// base64: 64 KiB.
	BodyOverhead = 64 << 10
	// DefaultMaxBody is the default limit of a request body:
	// MaxBodyFor(DefaultMaxOutcome), 5657944 bytes.
	DefaultMaxBody = (DefaultMaxOutcome+2)/3*4 + BodyOverhead
)

// MaxBodyFor returns the body limit that admits an outcome of maxOutcome
// bytes: its base64 length plus BodyOverhead.
func MaxBodyFor(maxOutcome int64) int64 { return (maxOutcome+2)/3*4 + BodyOverhead }

// MaxDuration bounds every duration a client sends (lease_ms, window_ms,
// retention_ms): a century, so that every time the ledger computes stays
// within the years RFC 3339 can write.
const MaxDuration = 100 * 365 * 24 * time.Hour

// Config configures a Server. A nil *Config is refused: a server needs
// tokens.
type Config struct {
	// Tokens maps each bearer token to the scopes it may use; AllScopes
	// ("*") grants every scope. At least one token is required.
	Tokens map[string][]string
	// MaxOutcome is the largest outcome data accepted by complete, in
	// bytes before base64 (413 above). Default DefaultMaxOutcome (4 MiB),
	// or, when only MaxBody is set, 3/4 of MaxBody if that is smaller.
	MaxOutcome int64
	// MaxBody is the largest request body accepted, in bytes (413 above).
	// Default MaxBodyFor(MaxOutcome): DefaultMaxBody (5657944) for the
	// default outcome limit. A MaxBody set below MaxBodyFor(MaxOutcome)
	// with MaxOutcome set too is refused: the outcome limit would lie.
	MaxBody int64
	// KeySecret, when set, makes the server store HMAC-SHA256(KeySecret,
	// key) instead of each key, exactly as idem.Config.KeySecret does for a
	// Ledger, so the store never holds raw keys. Requests name raw keys:
	// begin, complete, release, extend, checkpoint and GET or DELETE
	// /v1/keys/{key} work as without it (GET answers with the key asked
	// for); GET /v1/keys lists digests. Changing the secret forgets every
	// stored key.
	KeySecret []byte
	// DefaultLease and DefaultWindow apply to a begin that leaves lease_ms
	// or window_ms out. Defaults idem.DefaultLease (30 s) and
	// idem.DefaultWindow (24 h).
	DefaultLease  time.Duration
	DefaultWindow time.Duration
	// Logger receives one line per request (route, scope, status,
	// duration): successes at debug level, client errors at info, server
	// errors at error. Default: nothing is logged.
	Logger *slog.Logger
	// Readiness configures GET /readyz (Readiness): the store probe's
	// timeout and how long its result is kept. Nil means the defaults,
	// with Logger for its messages.
	Readiness *ReadinessConfig
	// Observer, when set, receives an idem.Event for every ledger
	// operation, besides the server's own metrics.
	Observer idem.Observer

	// Workflows, when set, mounts the workflow routes (/v1/workflows,
	// /v1/workflow-types; docs/api.md, "Workflows") over this engine;
	// without it they answer 501. The caller runs the engine (Run) and
	// owns its journal. A token uses the routes of a workflow type T only
	// if bound to the scope "wf:T" (WorkflowScope) or "*".
	Workflows *workflow.Engine
	// WorkflowTypes is the registry Workflows was made with: the types
	// listed, drawn and registered. Required with Workflows.
	WorkflowTypes *workflow.Registry
	// ParseWorkflow, when set, reads a declarative workflow document
	// (JSON or YAML; name is for its error messages) for POST
	// /v1/workflow-types; idem serve sets it to the declare package's
	// Parse. Without it that route answers 501. Its errors are shown to
	// the client as they are: they should name lines and columns.
	ParseWorkflow func(data []byte, name string) (*workflow.Definition, error)
	// MaxWorkflowDocument bounds a document of POST /v1/workflow-types,
	// in bytes (413 above). Default DefaultMaxWorkflowDocument (1 MiB).
	MaxWorkflowDocument int64
	// MaxWorkflowInput bounds a start's input and an event's payload, in
	// bytes of JSON (413 above); their bodies may be BodyOverhead more.
	// Default DefaultMaxWorkflowInput (256 KiB).
	MaxWorkflowInput int64
}

// Server is the http.Handler of the idem API (docs/api.md).
type Server struct {
	store   idem.Store
	tokens  *TokenSet
	maxBody int64
	maxOut  int64
	lease   time.Duration
	window  time.Duration
	log     *slog.Logger
	obs     idem.Observer
	metrics *Metrics
	ready   *Readiness
	digests *idem.Ledger // with Config.KeySecret: its StoredKey digests keys

	wf       *workflow.Engine
	wfTypes  *workflow.Registry
	parseWF  func(data []byte, name string) (*workflow.Definition, error)
	maxDoc   int64
	maxInput int64
}

// NewServer returns the handler of the API over store. The caller keeps owning
// the store (and closes it after the HTTP server has drained).
func NewServer(store idem.Store, cfg *Config) (*Server, error) {
	if store == nil {
		return nil, fmt.Errorf("%w: idemapi: store is nil", idem.ErrInvalid)
	}
	if cfg == nil || len(cfg.Tokens) == 0 {
		return nil, fmt.Errorf("%w: idemapi: Config.Tokens is empty; every request would be refused (bind a token to a scope)", idem.ErrInvalid)
	}
	s := &Server{
		store:   store,
		maxBody: cfg.MaxBody,
		maxOut:  cfg.MaxOutcome,
		lease:   cfg.DefaultLease,
		window:  cfg.DefaultWindow,
		log:     cfg.Logger,
		obs:     cfg.Observer,
		metrics: newMetrics(routeNames()),
	}
	if s.lease == 0 {
		s.lease = idem.DefaultLease
	}
	if s.window == 0 {
		s.window = idem.DefaultWindow
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	rcfg := ReadinessConfig{Logger: s.log}
	if cfg.Readiness != nil {
		rcfg = *cfg.Readiness
		if rcfg.Logger == nil {
			rcfg.Logger = s.log
		}
	}
	s.ready = NewReadiness(store, &rcfg)
	if err := s.configureWorkflows(cfg); err != nil {
		return nil, err
	}
	switch {
	case s.maxOut < 0:
		return nil, fmt.Errorf("%w: idemapi: Config.MaxOutcome must be positive (or 0 for 4 MiB), got %d", idem.ErrInvalid, s.maxOut)
	case s.maxBody < 0:
		return nil, fmt.Errorf("%w: idemapi: Config.MaxBody must be positive (or 0 to derive it from MaxOutcome), got %d", idem.ErrInvalid, s.maxBody)
	case s.maxOut > 0 && s.maxBody > 0 && s.maxBody < MaxBodyFor(s.maxOut):
		return nil, fmt.Errorf("%w: idemapi: Config.MaxBody %d cannot hold an outcome of Config.MaxOutcome %d bytes as base64 with the other fields: make it at least %d, or 0 to derive it",
			idem.ErrInvalid, s.maxBody, s.maxOut, MaxBodyFor(s.maxOut))
	case s.lease < 0 || s.lease > MaxDuration:
		return nil, fmt.Errorf("%w: idemapi: Config.DefaultLease must be positive (or 0 for 30s), got %s", idem.ErrInvalid, s.lease)
	case s.window < 0 || s.window > MaxDuration:
		return nil, fmt.Errorf("%w: idemapi: Config.DefaultWindow must be positive (or 0 for 24h), got %s", idem.ErrInvalid, s.window)
	}
	switch {
	case s.maxOut == 0 && s.maxBody == 0:
		s.maxOut, s.maxBody = DefaultMaxOutcome, DefaultMaxBody
	case s.maxBody == 0:
		s.maxBody = MaxBodyFor(s.maxOut)
	case s.maxOut == 0:
		s.maxOut = min(DefaultMaxOutcome, s.maxBody/4*3)
	}
	if len(cfg.KeySecret) > 0 {
		// The ledger's own digest, so that a server and a Ledger with one
		// secret over one store name the same records.
		l, err := idem.New(store, &idem.Config{KeySecret: bytes.Clone(cfg.KeySecret)})
		if err != nil {
			return nil, err
		}
		s.digests = l
	}
	tokens, err := NewTokenSet(cfg.Tokens)
	if err != nil {
		return nil, err
	}
	s.tokens = tokens
	return s, nil
}

// storedKey is the key as the store holds it (Config.KeySecret).
func (s *Server) storedKey(key string) string {
	if s.digests == nil {
		return key
	}
	return s.digests.StoredKey(key)
}

// request is what one request carries through the handler, for the log
// line and the metrics.
type request struct {
	route string
	scope string
	token *Grant
	err   error // cause of a 5xx
}

type route struct {
	name    string
	methods []string
	handle  func(s *Server, w http.ResponseWriter, r *http.Request, req *request) *problem
	public  bool // no token needed
}

var routes = map[string]*route{
	"/healthz":        {name: "healthz", methods: []string{http.MethodGet, http.MethodHead}, handle: (*Server).healthz, public: true},
	"/readyz":         {name: "readyz", methods: []string{http.MethodGet, http.MethodHead}, handle: (*Server).readyz, public: true},
	"/metrics":        {name: "metrics", methods: []string{http.MethodGet}, handle: (*Server).serveMetrics},
	"/v1/begin":       {name: "begin", methods: []string{http.MethodPost}, handle: (*Server).begin},
	"/v1/complete":    {name: "complete", methods: []string{http.MethodPost}, handle: (*Server).complete},
	"/v1/release":     {name: "release", methods: []string{http.MethodPost}, handle: (*Server).release},
	"/v1/extend":      {name: "extend", methods: []string{http.MethodPost}, handle: (*Server).extend},
	"/v1/checkpoint":  {name: "checkpoint", methods: []string{http.MethodPost}, handle: (*Server).checkpoint},
	"/v1/sweep":       {name: "sweep", methods: []string{http.MethodPost}, handle: (*Server).sweep},
	"/v1/keys":        {name: "keys_list", methods: []string{http.MethodGet}, handle: (*Server).list},
	keysPrefix + "{}": {name: "keys", methods: []string{http.MethodGet, http.MethodDelete}, handle: (*Server).keyRecord},

	"/v1/workflow-types":       {name: "workflow_types", methods: []string{http.MethodGet, http.MethodPost}, handle: (*Server).workflowTypes},
	wfTypesPrefix + "{}/graph": {name: "workflow_graph", methods: []string{http.MethodGet}, handle: (*Server).workflowGraph},
	"/v1/workflows":            {name: "workflows", methods: []string{http.MethodGet, http.MethodPost}, handle: (*Server).workflows},
	wfPrefix + "{}":            {name: "workflow", methods: []string{http.MethodGet}, handle: (*Server).workflowGet},
	wfPrefix + "{}/events":     {name: "workflow_events", methods: []string{http.MethodPost}, handle: (*Server).workflowSignal},
	wfPrefix + "{}/cancel":     {name: "workflow_cancel", methods: []string{http.MethodPost}, handle: (*Server).workflowCancel},
	wfPrefix + "{}/retry":      {name: "workflow_retry", methods: []string{http.MethodPost}, handle: (*Server).workflowRetry},
	wfPrefix + "{}/resume":     {name: "workflow_resume", methods: []string{http.MethodPost}, handle: (*Server).workflowResume},
}

const keysPrefix = "/v1/keys/"

var notFoundRoute = &route{name: "unknown", public: true, handle: func(*Server, http.ResponseWriter, *http.Request, *request) *problem {
	return newProblem(http.StatusNotFound, ProblemNoSuchRoute, "no such route; see docs/api.md")
}}

func lookupRoute(r *http.Request) *route {
	path := r.URL.EscapedPath()
	if rt, ok := routes[path]; ok {
		return rt
	}
	if rest, ok := strings.CutPrefix(path, keysPrefix); ok && !strings.Contains(rest, "/") {
		return routes[keysPrefix+"{}"]
	}
	if rt := lookupWorkflowRoute(path); rt != nil {
		return rt
	}
	return notFoundRoute
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w := httpstatus.New(rw)
	rt := lookupRoute(r)
	req := &request{route: rt.name}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			req.err = fmt.Errorf("panic: %v", v)
			if w.Status() == 0 {
				writeProblem(w, newProblem(http.StatusInternalServerError, ProblemInternal, "the server failed; this is a bug"))
			}
		}
		s.finish(r.Context(), req, w.Status(), time.Since(start))
	}()
	if p := s.dispatch(w, r, rt, req); p != nil {
		if p.err != nil {
			req.err = p.err
		}
		writeProblem(w, p)
	}
}

func (s *Server) dispatch(w http.ResponseWriter, r *http.Request, rt *route, req *request) *problem {
	if rt.methods != nil && !containsString(rt.methods, r.Method) {
		w.Header().Set("Allow", strings.Join(rt.methods, ", "))
		return newProblem(http.StatusMethodNotAllowed, ProblemMethodNotAllowed, "use "+strings.Join(rt.methods, " or "))
	}
	if !rt.public {
		tok := s.authenticate(r)
		if tok == nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="idem"`)
			return newProblem(http.StatusUnauthorized, ProblemUnauthorized, "send Authorization: Bearer TOKEN with a token from the server's tokens file")
		}
		req.token = tok
	}
	return rt.handle(s, w, r, req)
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func (s *Server) finish(ctx context.Context, req *request, status int, d time.Duration) {
	if status == 0 {
		status = http.StatusOK
	}
	s.metrics.request(req.route, status, d)
	level := slog.LevelDebug
	switch {
	case status >= 500:
		level = slog.LevelError
	case status >= 400:
		level = slog.LevelInfo
	}
	if !s.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{slog.String("route", req.route), slog.Int("status", status), slog.Duration("duration", d)}
	if req.scope != "" {
		attrs = append(attrs, slog.String("scope", req.scope))
	}
	if req.err != nil {
		attrs = append(attrs, slog.String("error", req.err.Error()))
	}
	s.log.LogAttrs(ctx, level, "request", attrs...)
}

// authenticate returns the grant of the request's bearer token, nil if
// it has none or an unknown one (TokenSet.Lookup).
func (s *Server) authenticate(r *http.Request) *Grant {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return nil
	}
	return s.tokens.Lookup(token)
}

// admitKey admits an operation on one key: its params are valid (invalid
// of their Validate error) and the token is bound to scope; then key
// becomes the key as the store holds it (storedKey).
func (s *Server) admitKey(req *request, validateErr error, scope string, key *string) *problem {
	if p := invalid(validateErr); p != nil {
		return p
	}
	if p := authorize(req, scope); p != nil {
		return p
	}
	*key = s.storedKey(*key)
	return nil
}

// authorize checks that the request's token is bound to scope.
func authorize(req *request, scope string) *problem {
	req.scope = scope
	if req.token.Allows(scope) {
		return nil
	}
	return newProblem(http.StatusForbidden, ProblemForbidden, "the token is not bound to this scope")
}

// decode reads the body as exactly one JSON object into v, strictly (see
// checkStrict).
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) *problem {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return newProblem(http.StatusUnsupportedMediaType, ProblemUnsupportedMediaType, "send the body as Content-Type: application/json")
	}
	if r.ContentLength > s.maxBody {
		return tooLarge(s.maxBody)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return tooLarge(s.maxBody)
		}
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "the body could not be read")
	}
	if err := checkStrict(body, shapeFor(reflect.TypeOf(v))); err != nil {
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, err.Error())
	}
	if err := json.Unmarshal(body, v); err != nil {
		// checkStrict admits only what decodes: this is a bug.
		return &problem{status: http.StatusInternalServerError, name: ProblemInternal, detail: "the server failed to decode a body it accepted; this is a bug", err: err}
	}
	return nil
}

func tooLarge(limit int64) *problem {
	return newProblem(http.StatusRequestEntityTooLarge, ProblemBodyTooLarge, fmt.Sprintf("the body is over the limit of %d bytes", limit))
}

// millis converts a duration field; nil means def. A field whose zero
// would mean nothing (a lease, a window) must be positive.
func millis(field string, v *int64, def time.Duration) (time.Duration, *problem) {
	if v == nil {
		return def, nil
	}
	switch {
	case *v == 0 && def > 0:
		return 0, newProblem(http.StatusBadRequest, ProblemInvalidRequest, field+" must be positive (leave it out for the server's default)")
	case *v < 0:
		return 0, newProblem(http.StatusBadRequest, ProblemInvalidRequest, field+" must not be negative")
	case *v > MaxDuration.Milliseconds():
		return 0, newProblem(http.StatusBadRequest, ProblemInvalidRequest, fmt.Sprintf("%s must be at most %d (a century)", field, MaxDuration.Milliseconds()))
	}
	return time.Duration(*v) * time.Millisecond, nil
}

// invalid turns a Validate error into a problem.
func invalid(err error) *problem {
	if err == nil {
		return nil
	}
	return newProblem(http.StatusBadRequest, ProblemInvalidRequest, invalidDetail(err))
}

func (s *Server) observe(ctx context.Context, ev *idem.Event) {
	s.metrics.Observe(ctx, ev)
	if s.obs != nil {
		s.obs.Observe(ctx, ev)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) *problem {
	body, err := json.Marshal(v)
	if err != nil {
		return &problem{status: http.StatusInternalServerError, name: ProblemInternal, detail: "the server could not encode its answer", err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request, _ *request) *problem {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
	return nil
}

// readyz is readiness, apart from healthz's liveness: 503 while the store
// fails its probe (Readiness).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request, _ *request) *problem {
	return s.ready.serve(w, r)
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request, _ *request) *problem {
	size := readSize(r.Context(), s.store)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_ = s.metrics.write(w, size)
	return nil
}

func (s *Server) begin(w http.ResponseWriter, r *http.Request, req *request) *problem {
	var in BeginRequest
	if p := s.decode(w, r, &in); p != nil {
		return p
	}
	lease, p := millis("lease_ms", in.LeaseMS, s.lease)
	if p != nil {
		return p
	}
	window, p := millis("window_ms", in.WindowMS, s.window)
	if p != nil {
		return p
	}
	retention, p := millis("retention_ms", in.RetentionMS, 0)
	if p != nil {
		return p
	}
	params := &idem.BeginParams{Scope: in.Scope, Key: in.Key, Fingerprint: in.Fingerprint, Lease: lease, Window: window, Retention: retention}
	if p := s.admitKey(req, params.Validate(), in.Scope, &params.Key); p != nil {
		return p
	}
	start := time.Now()
	res, err := s.store.Begin(r.Context(), params)
	ev := &idem.Event{Op: idem.OpBegin, Scope: in.Scope, Duration: time.Since(start), Err: err}
	if err == nil {
		ev.Decision, ev.Takeover = res.Decision, res.Takeover
		if res.Decision == idem.Acquired && res.Record != nil {
			ev.Attempt = res.Record.Attempts
		}
	}
	s.observe(r.Context(), ev)
	if err != nil {
		return problemFor(err)
	}
	out := BeginResponse{Decision: res.Decision}
	switch res.Decision {
	case idem.Acquired:
		rec := res.Record
		takeover := res.Takeover
		cp, err := json.Marshal(checkpointJSON(rec.Checkpoint))
		if err != nil {
			return problemFor(err)
		}
		raw := json.RawMessage(cp)
		out.Token, out.Attempt, out.LeaseUntil = &rec.Token, &rec.Attempts, ptr(FormatTime(rec.LeaseUntil))
		out.Takeover, out.Checkpoint = &takeover, &raw
	case idem.Replay:
		rec := res.Record
		out.Outcome = outcomeJSON(rec.Outcome)
		if out.Outcome == nil {
			out.Outcome = &idem.Outcome{Data: []byte{}}
		}
		out.CompletedAt, out.ExpiresAt = ptr(FormatTime(rec.Completed)), ptr(FormatTime(rec.Expires))
	case idem.InFlight:
		ms := int64(math.Ceil(float64(res.RetryAfter) / float64(time.Millisecond)))
		out.RetryAfterMS = &ms
		w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(res.RetryAfter.Seconds())), 10))
	case idem.Mismatch:
		return newProblem(http.StatusUnprocessableEntity, ProblemFingerprintMismatch, mismatchDetail)
	default:
		return &problem{status: http.StatusServiceUnavailable, name: ProblemUnavailable, detail: "the store failed; try again",
			err: fmt.Errorf("store answered unknown decision %q", res.Decision)}
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) complete(w http.ResponseWriter, r *http.Request, req *request) *problem {
	var in CompleteRequest
	if p := s.decode(w, r, &in); p != nil {
		return p
	}
	if n := int64(len(in.Outcome.Data)); n > s.maxOut {
		return newProblem(http.StatusRequestEntityTooLarge, ProblemBodyTooLarge, fmt.Sprintf("outcome.data is %d bytes, over the limit of %d bytes", n, s.maxOut))
	}
	params := &idem.CompleteParams{Scope: in.Scope, Key: in.Key, Token: in.Token, Outcome: in.Outcome}
	if p := s.admitKey(req, params.Validate(), in.Scope, &params.Key); p != nil {
		return p
	}
	start := time.Now()
	rec, err := s.store.Complete(r.Context(), params)
	ev := &idem.Event{Op: idem.OpComplete, Scope: in.Scope, Duration: time.Since(start), Err: err}
	if err == nil {
		ev.TimeToIdempotence = rec.Completed.Sub(rec.Created)
	}
	s.observe(r.Context(), ev)
	if err != nil {
		return problemFor(err)
	}
	return writeJSON(w, http.StatusOK, CompleteResponse{
		CompletedAt: ptr(FormatTime(rec.Completed)), ExpiresAt: ptr(FormatTime(rec.Expires)), Created: FormatTime(rec.Created),
	})
}

func (s *Server) release(w http.ResponseWriter, r *http.Request, req *request) *problem {
	var in ReleaseRequest
	if p := s.decode(w, r, &in); p != nil {
		return p
	}
	params := &idem.ReleaseParams{Scope: in.Scope, Key: in.Key, Token: in.Token}
	if p := s.admitKey(req, params.Validate(), in.Scope, &params.Key); p != nil {
		return p
	}
	start := time.Now()
	err := s.store.Release(r.Context(), params)
	s.observe(r.Context(), &idem.Event{Op: idem.OpRelease, Scope: in.Scope, Duration: time.Since(start), Err: err})
	if err != nil {
		return problemFor(err)
	}
	return writeJSON(w, http.StatusOK, struct{}{})
}

func (s *Server) extend(w http.ResponseWriter, r *http.Request, req *request) *problem {
	var in ExtendRequest
	if p := s.decode(w, r, &in); p != nil {
		return p
	}
	lease, p := millis("lease_ms", in.LeaseMS, s.lease)
	if p != nil {
		return p
	}
	params := &idem.ExtendParams{Scope: in.Scope, Key: in.Key, Token: in.Token, Lease: lease}
	if p := s.admitKey(req, params.Validate(), in.Scope, &params.Key); p != nil {
		return p
	}
	start := time.Now()
	rec, err := s.store.Extend(r.Context(), params)
	s.observe(r.Context(), &idem.Event{Op: idem.OpExtend, Scope: in.Scope, Duration: time.Since(start), Err: err})
	if err != nil {
		return problemFor(err)
	}
	return writeJSON(w, http.StatusOK, ExtendResponse{LeaseUntil: ptr(FormatTime(rec.LeaseUntil))})
}

func (s *Server) checkpoint(w http.ResponseWriter, r *http.Request, req *request) *problem {
	var in CheckpointRequest
	if p := s.decode(w, r, &in); p != nil {
		return p
	}
	params := &idem.CheckpointParams{Scope: in.Scope, Key: in.Key, Token: in.Token, Point: in.Point, Data: in.Data}
	if p := s.admitKey(req, params.Validate(), in.Scope, &params.Key); p != nil {
		return p
	}
	start := time.Now()
	err := s.store.Checkpoint(r.Context(), params)
	s.observe(r.Context(), &idem.Event{Op: idem.OpCheckpoint, Scope: in.Scope, Duration: time.Since(start), Err: err})
	if err != nil {
		return problemFor(err)
	}
	return writeJSON(w, http.StatusOK, struct{}{})
}

func (s *Server) sweep(w http.ResponseWriter, r *http.Request, req *request) *problem {
	var in SweepRequest
	if p := s.decode(w, r, &in); p != nil {
		return p
	}
	params := &idem.SweepParams{Limit: in.Limit}
	if p := invalid(params.Validate()); p != nil {
		return p
	}
	if !req.token.All() {
		return newProblem(http.StatusForbidden, ProblemForbidden, "sweep spans every scope: it needs a token bound to "+AllScopes)
	}
	res, err := s.store.Sweep(r.Context(), params)
	if err != nil {
		return problemFor(err)
	}
	return writeJSON(w, http.StatusOK, SweepResponse{Deleted: &res.Deleted})
}

// keyRecord serves GET and DELETE /v1/keys/{key}?scope=S.
func (s *Server) keyRecord(w http.ResponseWriter, r *http.Request, req *request) *problem {
	key, err := url.PathUnescape(strings.TrimPrefix(r.URL.EscapedPath(), keysPrefix))
	if err != nil {
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "the key in the path is not valid percent-encoding")
	}
	q, p := parseQuery(r)
	if p != nil {
		return p
	}
	params := &idem.KeyParams{Scope: q.Get("scope"), Key: key}
	if p := s.admitKey(req, params.Validate(), params.Scope, &params.Key); p != nil {
		return p
	}
	if r.Method == http.MethodDelete {
		if err := s.store.Delete(r.Context(), params); err != nil {
			return problemFor(err)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	rec, err := s.store.Get(r.Context(), params)
	if err != nil {
		return problemFor(err)
	}
	out := EncodeRecord(rec)
	out.Key = key // the caller's key, also when the store holds its digest
	return writeJSON(w, http.StatusOK, out)
}

// parseQuery parses the query string; a parameter given twice is refused,
// as a repeated JSON field is, rather than one of the two winning.
func parseQuery(r *http.Request) (url.Values, *problem) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, newProblem(http.StatusBadRequest, ProblemInvalidRequest, "the query string is malformed")
	}
	for _, name := range []string{"scope", "state", "limit", "cursor"} {
		if len(q[name]) > 1 {
			return nil, newProblem(http.StatusBadRequest, ProblemInvalidRequest, "the query parameter "+name+" is given twice")
		}
	}
	return q, nil
}

// list serves GET /v1/keys?scope=S&state=&limit=&cursor=.
func (s *Server) list(w http.ResponseWriter, r *http.Request, req *request) *problem {
	q, p := parseQuery(r)
	if p != nil {
		return p
	}
	params := &idem.ListParams{Scope: q.Get("scope"), State: idem.State(q.Get("state")), Cursor: q.Get("cursor")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "limit must be an integer")
		}
		params.Limit = n
	}
	if p := invalid(params.Validate()); p != nil {
		return p
	}
	if !utf8.ValidString(params.Cursor) {
		// A cursor is a key the server wrote: one that is not UTF-8 was
		// made up, and a store would compare it as replaced text.
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "cursor is not valid UTF-8")
	}
	if p := authorize(req, params.Scope); p != nil {
		return p
	}
	lister, ok := s.store.(idem.Lister)
	if !ok {
		return problemFor(fmt.Errorf("list: %w", idem.ErrNotImplemented))
	}
	res, err := lister.List(r.Context(), params)
	if err != nil {
		return problemFor(err)
	}
	out := ListResponse{Records: make([]*Record, 0, len(res.Records)), NextCursor: &res.NextCursor}
	for _, rec := range res.Records {
		out.Records = append(out.Records, EncodeRecord(rec))
	}
	return writeJSON(w, http.StatusOK, out)
}

func ptr[T any](v T) *T { return &v }

// routeNames lists the route label values.
func routeNames() []string {
	names := []string{notFoundRoute.name}
	for _, rt := range routes {
		names = append(names, rt.name)
	}
	return names
}
