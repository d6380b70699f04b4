package idemui

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/workflow"
)

//go:embed templates/*.html static/*
var assets embed.FS

// DefaultPrefix is where the dashboard is mounted unless Config.Prefix
// says otherwise.
const DefaultPrefix = "/ui"

// DefaultSessionTTL is how long a sign-in lasts unless Config.SessionTTL
// says otherwise.
const DefaultSessionTTL = 8 * time.Hour

// maxSessions bounds the sessions held at once; sign-ins beyond it are
// refused until some expire or sign out.
const maxSessions = 10000

// cookieName names the session cookie.
const cookieName = "idem_ui_session"

// Config configures the dashboard. Store and Tokens are required.
type Config struct {
	// Store is the ledger the Keys and Messaging pages read and delete
	// from. The caller keeps owning it.
	Store idem.Store
	// Tokens maps each bearer token to its scopes, exactly as
	// idemapi.Config.Tokens (the same map serves both): a session sees
	// and acts on what its token may use through the API.
	Tokens map[string][]string
	// KeySecret is the secret the store's keys are digested with
	// (idemapi.Config.KeySecret, idem.Config.KeySecret), if any: a key
	// searched for is digested with it; the store's digests are shown.
	KeySecret []byte
	// Prefix is the path the handler is mounted at, without a trailing
	// slash (default DefaultPrefix, "/ui"). Mount the handler on Prefix+"/"
	// without stripping it: links and the cookie's path use it.
	Prefix string
	// Rates, when set, feeds the Rates page (and the duplicates per scope
	// on the Messaging page); give the same Rates as the API server's or
	// the ledger's Observer and run it (Rates.Run).
	Rates *Rates
	// Workflows and WorkflowTypes, when set, feed the Workflows pages, as
	// idemapi.Config's do.
	Workflows     *workflow.Engine
	WorkflowTypes *workflow.Registry
	// MessagingScopes are the ledger scopes of messaging.Consumers shown
	// on the Messaging page (default "messages", the consumer's default
	// scope); any other can be asked for there.
	MessagingScopes []string
	// Outbox, when set, is the outbox table whose unsent rows the
	// Messaging page counts (pgstore.Store.Outbox). Only a token bound to
	// "*" sees it: the outbox belongs to no scope.
	Outbox messaging.Outbox
	// SessionTTL is how long a sign-in lasts (default DefaultSessionTTL).
	SessionTTL time.Duration
	// SecureCookie forces the Secure attribute on the session cookie
	// also when a request did not arrive over TLS (a TLS-terminating
	// proxy in front). Over TLS it is always set.
	SecureCookie bool
	// Clock times sessions and the pages' "now" (default the system
	// clock).
	Clock idem.Clock
	// Logger receives a line for sign-ins, sign-outs and every action
	// (delete, cancel, retry, resume), without tokens or keys. Default:
	// nothing is logged.
	Logger *slog.Logger
}

// Handler is the dashboard: server-rendered HTML pages over a ledger, its
// rates and a workflow engine (docs/ui.md). Make one with New.
type Handler struct {
	cfg      Config
	tokens   *idemapi.TokenSet
	digests  *idem.Ledger // with KeySecret: its StoredKey digests keys
	clock    idem.Clock
	log      *slog.Logger
	pages    map[string]*template.Template
	static   http.Handler
	mux      *http.ServeMux
	protect  *http.CrossOriginProtection
	mu       sync.Mutex
	sessions map[string]*session
	failed   map[string]*failedSignins // by client address; guarded by mu
}

// failedSignins counts an address's refused sign-ins since a time.
type failedSignins struct {
	n     int
	since time.Time
}

// The sign-in limit: after MaxFailedSignins refused tokens from one
// address within SigninWindow, its sign-ins (right or wrong) are refused
// with 429 until the window has passed. At most maxTrackedAddrs addresses
// are counted at a time.
const (
	MaxFailedSignins = 10
	SigninWindow     = time.Minute
	maxTrackedAddrs  = 10000
)

// session is one sign-in.
type session struct {
	grant   *idemapi.Grant
	csrf    string
	expires time.Time
}

// New returns the dashboard handler. It serves only paths under
// cfg.Prefix; mount it there:
//
//	mux.Handle("/ui/", ui)
func New(cfg *Config) (*Handler, error) {
	if cfg == nil || cfg.Store == nil {
		return nil, fmt.Errorf("%w: idemui: Config.Store is required", idem.ErrInvalid)
	}
	if len(cfg.Tokens) == 0 {
		return nil, fmt.Errorf("%w: idemui: Config.Tokens is empty; nobody could sign in", idem.ErrInvalid)
	}
	if (cfg.Workflows == nil) != (cfg.WorkflowTypes == nil) {
		return nil, fmt.Errorf("%w: idemui: Config.Workflows and Config.WorkflowTypes go together", idem.ErrInvalid)
	}
	tokens, err := idemapi.NewTokenSet(cfg.Tokens)
	if err != nil {
		return nil, err
	}
	h := &Handler{cfg: *cfg, tokens: tokens, clock: cfg.Clock, log: cfg.Logger, sessions: map[string]*session{}, failed: map[string]*failedSignins{}}
	if h.cfg.Prefix == "" {
		h.cfg.Prefix = DefaultPrefix
	}
	if !strings.HasPrefix(h.cfg.Prefix, "/") || strings.HasSuffix(h.cfg.Prefix, "/") {
		return nil, fmt.Errorf("%w: idemui: Config.Prefix %q must start with / and not end with one", idem.ErrInvalid, h.cfg.Prefix)
	}
	if h.cfg.SessionTTL == 0 {
		h.cfg.SessionTTL = DefaultSessionTTL
	}
	if h.cfg.SessionTTL < 0 {
		return nil, fmt.Errorf("%w: idemui: Config.SessionTTL must be positive", idem.ErrInvalid)
	}
	if len(h.cfg.MessagingScopes) == 0 {
		h.cfg.MessagingScopes = []string{"messages"}
	}
	if h.clock == nil {
		h.clock = idem.SystemClock{}
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.KeySecret) > 0 {
		l, err := idem.New(cfg.Store, &idem.Config{KeySecret: bytes.Clone(cfg.KeySecret)})
		if err != nil {
			return nil, err
		}
		h.digests = l
	}
	if h.pages, err = parsePages(); err != nil {
		return nil, err
	}
	static, _ := fs.Sub(assets, "static")
	h.static = http.StripPrefix(h.cfg.Prefix+"/static/", http.FileServerFS(static))
	h.protect = http.NewCrossOriginProtection()
	h.routes()
	return h, nil
}

func (h *Handler) routes() {
	p := h.cfg.Prefix
	m := http.NewServeMux()
	m.Handle("GET "+p+"/static/", h.static)
	m.HandleFunc("GET "+p+"/signin", h.signinForm)
	m.HandleFunc("POST "+p+"/signin", h.signin)
	m.HandleFunc("POST "+p+"/signout", h.action(h.signout))
	m.HandleFunc("GET "+p+"/{$}", h.page(func(w http.ResponseWriter, r *http.Request, s *session) {
		http.Redirect(w, r, p+"/keys", http.StatusSeeOther)
	}))
	m.HandleFunc("GET "+p+"/keys", h.page(h.keys))
	m.HandleFunc("GET "+p+"/keys/record", h.page(h.record))
	m.HandleFunc("GET "+p+"/keys/delete", h.page(h.confirmDelete))
	m.HandleFunc("POST "+p+"/keys/delete", h.action(h.deleteKey))
	m.HandleFunc("GET "+p+"/rates", h.page(h.rates))
	m.HandleFunc("GET "+p+"/rates.json", h.api(h.ratesJSON))
	m.HandleFunc("GET "+p+"/workflows", h.page(h.workflows))
	m.HandleFunc("GET "+p+"/workflows/instance", h.page(h.instance))
	m.HandleFunc("POST "+p+"/workflows/cancel", h.action(h.wfCancel))
	m.HandleFunc("POST "+p+"/workflows/retry", h.action(h.wfRetry))
	m.HandleFunc("POST "+p+"/workflows/resume", h.action(h.wfResume))
	m.HandleFunc("GET "+p+"/messaging", h.page(h.messagingPage))
	m.HandleFunc(p+"/", func(w http.ResponseWriter, r *http.Request) {
		if h.current(r) == nil {
			h.unauthorized(w, r)
			return
		}
		h.render(w, r, http.StatusNotFound, "error", &page{Title: "Not found", Data: "No such page."}, h.current(r))
	})
	h.mux = m
}

// ServeHTTP implements http.Handler. Every response forbids framing and
// caching and allows no script, style or image from elsewhere; every
// state-changing request must come from the dashboard's own origin
// (http.CrossOriginProtection) and carry its session's CSRF token.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "same-origin")
	hd.Set("Cache-Control", "no-store")
	if r.URL.Path == h.cfg.Prefix {
		http.Redirect(w, r, h.cfg.Prefix+"/", http.StatusSeeOther)
		return
	}
	if err := h.protect.Check(r); err != nil {
		h.render(w, r, http.StatusForbidden, "error", &page{Title: "Refused", Data: "Cross-origin request refused."}, nil)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// current returns the request's live session, nil if none.
func (h *Handler) current(r *http.Request) *session {
	c, err := r.Cookie(cookieName)
	if err != nil || c.Value == "" {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions[c.Value]
	if s == nil {
		return nil
	}
	if !h.clock.Now().Before(s.expires) {
		delete(h.sessions, c.Value)
		return nil
	}
	return s
}

// page wraps a page's handler: without a session it shows the sign-in
// form instead.
func (h *Handler) page(fn func(w http.ResponseWriter, r *http.Request, s *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := h.current(r)
		if s == nil {
			h.unauthorized(w, r)
			return
		}
		fn(w, r, s)
	}
}

// api wraps a JSON route: without a session it answers 401 with a
// problem, as the API does.
func (h *Handler) api(fn func(w http.ResponseWriter, r *http.Request, s *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := h.current(r)
		if s == nil {
			writeProblem(w, http.StatusUnauthorized, idemapi.ProblemUnauthorized, "sign in at "+h.cfg.Prefix+"/signin")
			return
		}
		fn(w, r, s)
	}
}

// action wraps a state-changing form post: it needs a session and the
// session's CSRF token in the form's csrf field.
func (h *Handler) action(fn func(w http.ResponseWriter, r *http.Request, s *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := h.current(r)
		if s == nil {
			h.unauthorized(w, r)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			h.render(w, r, http.StatusBadRequest, "error", &page{Title: "Bad request", Data: "The form could not be read."}, s)
			return
		}
		got := r.PostForm.Get("csrf")
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) != 1 {
			h.log.Info("idemui: CSRF token refused", "path", r.URL.Path)
			h.render(w, r, http.StatusForbidden, "error", &page{Title: "Refused", Data: "The form's CSRF token is missing or wrong: reload the page and try again."}, s)
			return
		}
		fn(w, r, s)
	}
}

func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request) {
	next := r.URL.Path
	if r.URL.RawQuery != "" {
		next += "?" + r.URL.RawQuery
	}
	if r.Method != http.MethodGet {
		next = ""
	}
	h.render(w, r, http.StatusUnauthorized, "signin", &page{Title: "Sign in", Data: signinData{Next: next}}, nil)
}

type signinData struct {
	Next  string
	Error string
}

func (h *Handler) signinForm(w http.ResponseWriter, r *http.Request) {
	if h.current(r) != nil {
		http.Redirect(w, r, h.cfg.Prefix+"/keys", http.StatusSeeOther)
		return
	}
	h.render(w, r, http.StatusOK, "signin", &page{Title: "Sign in", Data: signinData{Next: h.safeNext(r.URL.Query().Get("next"))}}, nil)
}

// safeNext keeps a redirect target within the dashboard.
func (h *Handler) safeNext(next string) string {
	u, err := url.Parse(next)
	if err != nil || next == "" || u.Scheme != "" || u.Host != "" || strings.HasPrefix(next, "//") || strings.Contains(next, "\\") ||
		!strings.HasPrefix(u.Path, h.cfg.Prefix+"/") {
		return ""
	}
	return next
}

func (h *Handler) signin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	_ = r.ParseForm()
	next := h.safeNext(r.PostForm.Get("next"))
	addr := clientAddr(r)
	now := h.clock.Now()
	if wait := h.signinBlocked(addr, now); wait > 0 {
		secs := int((wait + time.Second - 1) / time.Second)
		h.log.Warn("idemui: sign-in limited", "addr", addr)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		h.render(w, r, http.StatusTooManyRequests, "signin", &page{Title: "Sign in", Data: signinData{Next: next,
			Error: fmt.Sprintf("Too many refused sign-ins from your address: try again in %d s.", secs)}}, nil)
		return
	}
	grant := h.tokens.Lookup(strings.TrimSpace(r.PostForm.Get("token")))
	if grant == nil {
		h.signinFailed(addr, now)
		h.log.Info("idemui: sign-in refused", "addr", addr)
		h.render(w, r, http.StatusUnauthorized, "signin", &page{Title: "Sign in", Data: signinData{Next: next, Error: "That token is not valid."}}, nil)
		return
	}
	id, csrf := randomToken(), randomToken()
	h.mu.Lock()
	delete(h.failed, addr)
	for k, s := range h.sessions {
		if !now.Before(s.expires) {
			delete(h.sessions, k)
		}
	}
	full := len(h.sessions) >= maxSessions
	if !full {
		h.sessions[id] = &session{grant: grant, csrf: csrf, expires: now.Add(h.cfg.SessionTTL)}
	}
	h.mu.Unlock()
	if full {
		h.render(w, r, http.StatusServiceUnavailable, "signin", &page{Title: "Sign in", Data: signinData{Next: next, Error: "Too many sessions: try again later."}}, nil)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: id, Path: h.cfg.Prefix + "/", MaxAge: int(h.cfg.SessionTTL / time.Second),
		HttpOnly: true, Secure: r.TLS != nil || h.cfg.SecureCookie, SameSite: http.SameSiteStrictMode,
	})
	h.log.Info("idemui: signed in", "scopes", strings.Join(grant.Scopes(), ","))
	if next == "" {
		next = h.cfg.Prefix + "/keys"
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// clientAddr is the host of the request's remote address (behind a
// reverse proxy, the proxy's: its clients then share one limit).
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// signinBlocked returns how long addr must wait before it may sign in
// again (0: it may now).
func (h *Handler) signinBlocked(addr string, now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.failed[addr]
	if f == nil {
		return 0
	}
	if end := f.since.Add(SigninWindow); !now.Before(end) {
		delete(h.failed, addr)
		return 0
	} else if f.n >= MaxFailedSignins {
		return end.Sub(now)
	}
	return 0
}

// signinFailed counts a refused sign-in from addr.
func (h *Handler) signinFailed(addr string, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.failed[addr]
	if f == nil {
		if len(h.failed) >= maxTrackedAddrs {
			for a, g := range h.failed {
				if !now.Before(g.since.Add(SigninWindow)) {
					delete(h.failed, a)
				}
			}
			if len(h.failed) >= maxTrackedAddrs {
				return // too many addresses at once: this one goes uncounted
			}
		}
		f = &failedSignins{since: now}
		h.failed[addr] = f
	}
	f.n++
}

func (h *Handler) signout(w http.ResponseWriter, r *http.Request, _ *session) {
	if c, err := r.Cookie(cookieName); err == nil {
		h.mu.Lock()
		delete(h.sessions, c.Value)
		h.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: h.cfg.Prefix + "/", MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil || h.cfg.SecureCookie, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, h.cfg.Prefix+"/signin", http.StatusSeeOther)
}

func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// page is what every template gets.
type page struct {
	Title  string
	Nav    string
	Prefix string
	CSRF   string
	Scopes []string
	Flash  string
	Data   any
}

var funcs = template.FuncMap{
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05.000Z")
	},
	"q":    url.QueryEscape,
	"list": func(v ...string) []string { return v },
	"svg":  func(s string) template.HTML { return template.HTML(s) }, // only for SVG this package built, with every text escaped
}

func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", n)
		if err != nil {
			return nil, err
		}
		pages[base] = t
	}
	return pages, nil
}

func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, name string, p *page, s *session) {
	p.Prefix = h.cfg.Prefix
	if s != nil {
		p.CSRF = s.csrf
		p.Scopes = s.grant.Scopes()
	}
	if p.Nav == "" {
		p.Nav = name
	}
	var buf bytes.Buffer
	if err := h.pages[name].Execute(&buf, p); err != nil {
		h.log.Error("idemui: rendering failed", "page", name, "error", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, s *session, status int, msg string) {
	h.render(w, r, status, "error", &page{Title: http.StatusText(status), Data: msg}, s)
}

// writeProblem answers with application/problem+json, as the API does.
func writeProblem(w http.ResponseWriter, status int, name, detail string) {
	body, _ := json.Marshal(idemapi.Problem{Type: idemapi.ProblemBase + name, Title: http.StatusText(status), Status: status, Detail: detail})
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
