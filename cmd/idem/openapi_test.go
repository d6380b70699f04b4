package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/memstore"
)

// TestOpenAPIDocument loads docs/openapi.yaml and validates it against
// OpenAPI 3.1, then checks what the validator does not: every operation
// is named, every error is a problem of a type the server uses, and
// every problem type the server uses is in the document.
func TestOpenAPIDocument(t *testing.T) {
	t.Parallel()
	doc, err := loadOpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	if doc.OpenAPI != "3.1.0" || !doc.IsOpenAPI31OrLater() {
		t.Fatalf("openapi %q, want 3.1.0", doc.OpenAPI)
	}
	if doc.Components.SecuritySchemes["bearer"].Value.Scheme != "bearer" {
		t.Error("no bearer security scheme")
	}
	ids := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			if op.OperationID == "" || ids[op.OperationID] {
				t.Errorf("%s %s: operationId %q missing or repeated", method, path, op.OperationID)
			}
			ids[op.OperationID] = true
			for code, r := range op.Responses.Map() {
				_, problem := r.Value.Content["application/problem+json"]
				if strings.HasPrefix(code, "2") == problem {
					t.Errorf("%s %s %s: a problem must be exactly the 4xx and 5xx answers", method, path, code)
				}
			}
		}
	}

	// The problem types: each problem response pins its type URI(s).
	documented := map[string]int{}
	for name, r := range doc.Components.Responses {
		media := r.Value.Content["application/problem+json"]
		if media == nil {
			continue
		}
		props := media.Schema.Value.Properties
		status := int(props["status"].Value.Const.(float64))
		typ := props["type"].Value
		uris := slices.Clone(typ.Enum)
		if typ.Const != nil {
			uris = append(uris, typ.Const)
		}
		if len(uris) == 0 {
			t.Errorf("response %s does not pin its problem type", name)
		}
		for _, u := range uris {
			documented[strings.TrimPrefix(u.(string), idemapi.ProblemBase)] = status
		}
	}
	used := map[string]int{
		idemapi.ProblemInvalidRequest: 400, idemapi.ProblemUnauthorized: 401, idemapi.ProblemForbidden: 403,
		idemapi.ProblemNotFound: 404, idemapi.ProblemNoSuchRoute: 404, idemapi.ProblemMethodNotAllowed: 405,
		idemapi.ProblemLeaseLost: 409, idemapi.ProblemCompleted: 409, idemapi.ProblemBodyTooLarge: 413,
		idemapi.ProblemUnsupportedMediaType: 415, idemapi.ProblemFingerprintMismatch: 422,
		idemapi.ProblemInternal: 500, idemapi.ProblemNotImplemented: 501, idemapi.ProblemUnavailable: 503,
		idemapi.ProblemWorkflowNotFound: 404, idemapi.ProblemWorkflowTypeNotFound: 404, idemapi.ProblemWorkflowMismatch: 409,
		idemapi.ProblemWorkflowVersionConflict: 409, idemapi.ProblemWorkflowNotParked: 409,
		idemapi.ProblemWorkflowNotResumable: 409, idemapi.ProblemWorkflowFinished: 409,
	}
	if !maps.Equal(documented, used) {
		t.Errorf("problem types in the document %v, the server's %v", documented, used)
	}
}

// Tokens of the in-process servers of these tests.
const (
	apiOpsToken     = "openapi-ops-0123456789"
	apiBillingToken = "openapi-billing-0123456789"
)

// apiServer is an in-process API server behind the checker, which also
// records which (operation, status) pairs were seen.
type apiServer struct {
	url string
}

type coverage struct {
	mu   sync.Mutex
	seen map[string]bool // "operationId status"
}

func (c *coverage) add(op string, status int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[fmt.Sprintf("%s %d", op, status)] = true
}

func startAPI(t *testing.T, store idem.Store, seen *coverage, configure ...func(*idemapi.Config)) *apiServer {
	t.Helper()
	cfg := &idemapi.Config{
		Tokens:  map[string][]string{apiOpsToken: {idemapi.AllScopes}, apiBillingToken: {"billing"}},
		MaxBody: 256 << 10,
	}
	for _, f := range configure {
		f(cfg)
	}
	h, err := idemapi.NewServer(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	checker := checkerFor(t)
	checked := apiChecked(t, h)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusRecorder{ResponseWriter: w}
		checked.ServeHTTP(sw, r)
		if route, _, err := checker.route(r); err == nil {
			seen.add(route.Operation.OperationID, sw.status)
		} else {
			seen.add("unrouted", sw.status)
		}
	}))
	t.Cleanup(srv.Close)
	return &apiServer{url: srv.URL}
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// call sends one request: body is JSON-encoded unless it is a string
// (sent as is, for bodies a test makes invalid on purpose).
func (a *apiServer) call(t *testing.T, method, path, token string, body any, contentType string) (int, []byte, http.Header) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, a.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, data, resp.Header
}

// expect sends a request and checks its status (and problem type).
func (a *apiServer) expect(t *testing.T, want int, problem, method, path, token string, body any) []byte {
	t.Helper()
	ct := ""
	if body != nil {
		ct = "application/json"
	}
	return a.expectCT(t, want, problem, method, path, token, body, ct)
}

func (a *apiServer) expectCT(t *testing.T, want int, problem, method, path, token string, body any, ct string) []byte {
	t.Helper()
	status, data, _ := a.call(t, method, path, token, body, ct)
	if status != want {
		t.Errorf("%s %s: %d %s, want %d", method, path, status, data, want)
		return data
	}
	if problem != "" {
		var p idemapi.Problem
		if err := json.Unmarshal(data, &p); err != nil || p.Type != idemapi.ProblemBase+problem {
			t.Errorf("%s %s: problem %s, want type %s", method, path, data, problem)
		}
	}
	return data
}

type obj = map[string]any

// acquire begins a fresh key in scope billing and returns its token.
func (a *apiServer) acquire(t *testing.T, key string) int64 {
	t.Helper()
	var b struct{ Token int64 }
	data := a.expect(t, 200, "", "POST", "/v1/begin", apiBillingToken, obj{"scope": "billing", "key": key, "fingerprint": "f", "lease_ms": 60000})
	if err := json.Unmarshal(data, &b); err != nil || b.Token <= 0 {
		t.Fatalf("begin %s: %s", key, data)
	}
	return b.Token
}

// panicStore fails every call with a panic: the server's 500.
type panicStore struct{}

func (panicStore) Begin(context.Context, *idem.BeginParams) (*idem.BeginResult, error) { panic("bug") }
func (panicStore) Complete(context.Context, *idem.CompleteParams) (*idem.Record, error) {
	panic("bug")
}
func (panicStore) Release(context.Context, *idem.ReleaseParams) error                  { panic("bug") }
func (panicStore) Extend(context.Context, *idem.ExtendParams) (*idem.Record, error)    { panic("bug") }
func (panicStore) Checkpoint(context.Context, *idem.CheckpointParams) error            { panic("bug") }
func (panicStore) Get(context.Context, *idem.KeyParams) (*idem.Record, error)          { panic("bug") }
func (panicStore) Delete(context.Context, *idem.KeyParams) error                       { panic("bug") }
func (panicStore) Sweep(context.Context, *idem.SweepParams) (*idem.SweepResult, error) { panic("bug") }
func (panicStore) List(context.Context, *idem.ListParams) (*idem.ListResult, error)    { panic("bug") }
func (panicStore) Size(context.Context) (int64, error)                                 { panic("bug") }
func (panicStore) Close() error                                                        { return nil }

// storeOnly hides every optional capability of the store it wraps, List
// among them: listing is 501.
type storeOnly struct{ idem.Store }

// TestOpenAPIEveryRouteAndStatus drives every operation of the document to
// every status it documents, through the checker, and fails on any
// (operation, status) pair left out.
func TestOpenAPIEveryRouteAndStatus(t *testing.T) {
	t.Parallel()
	seen := &coverage{seen: map[string]bool{}}
	clock := idem.NewManualClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	mem := memstore.New(&memstore.Config{Clock: clock})
	t.Cleanup(func() { _ = mem.Close() })
	good := startAPI(t, mem, seen)
	closed := memstore.New(nil)
	_ = closed.Close()
	down := startAPI(t, closed, seen)
	buggy := startAPI(t, panicStore{}, seen)
	nolist := startAPI(t, storeOnly{memstore.New(nil)}, seen)

	type op struct {
		method, path string
		body         func(key string, token int64) any // nil: no body
		scoped       bool                              // refused 403 to a token of another scope
		owned        bool                              // needs an owner's token (409 when stale)
	}
	bill := func(key string, extra obj) obj {
		o := obj{"scope": "billing", "key": key}
		maps.Copy(o, extra)
		return o
	}
	ops := map[string]op{
		"begin": {method: "POST", path: "/v1/begin", scoped: true, body: func(k string, _ int64) any {
			return bill(k, obj{"fingerprint": "f", "lease_ms": 60000, "window_ms": 3600000, "retention_ms": 7200000})
		}},
		"complete": {method: "POST", path: "/v1/complete", scoped: true, owned: true, body: func(k string, tok int64) any {
			return bill(k, obj{"token": tok, "outcome": obj{"data": "aGk=", "meta": obj{"status": "200"}}})
		}},
		"release": {method: "POST", path: "/v1/release", scoped: true, owned: true, body: func(k string, tok int64) any {
			return bill(k, obj{"token": tok})
		}},
		"extend": {method: "POST", path: "/v1/extend", scoped: true, owned: true, body: func(k string, tok int64) any {
			return bill(k, obj{"token": tok, "lease_ms": 90000})
		}},
		"checkpoint": {method: "POST", path: "/v1/checkpoint", scoped: true, owned: true, body: func(k string, tok int64) any {
			return bill(k, obj{"token": tok, "point": "charged", "data": "AAEC"})
		}},
		"sweep":       {method: "POST", path: "/v1/sweep", scoped: true, body: func(string, int64) any { return obj{"limit": 10} }},
		"listKeys":    {method: "GET", path: "/v1/keys?scope=billing&state=completed&limit=2", scoped: true},
		"getKey":      {method: "GET", path: "/v1/keys/KEY?scope=billing", scoped: true},
		"deleteKey":   {method: "DELETE", path: "/v1/keys/KEY?scope=billing", scoped: true},
		"metrics":     {method: "GET", path: "/metrics"},
		"healthz":     {method: "GET", path: "/healthz"},
		"healthzHead": {method: "HEAD", path: "/healthz"},
		"readyz":      {method: "GET", path: "/readyz"},
		"readyzHead":  {method: "HEAD", path: "/readyz"},
	}
	n := 0
	fresh := func() string { n++; return fmt.Sprintf("key-%d", n) }
	keyPath := func(o op, key string) string { return strings.Replace(o.path, "KEY", key, 1) }
	bodyOf := func(o op, key string, tok int64) any {
		if o.body == nil {
			return nil
		}
		return o.body(key, tok)
	}

	for _, name := range slices.Sorted(maps.Keys(ops)) {
		o := ops[name]
		t.Run(name, func(t *testing.T) {
			// 200 (204 for delete) on a key in the state the operation needs.
			key := fresh()
			tok := good.acquire(t, key)
			switch name {
			case "getKey":
				good.expect(t, 200, "", "POST", "/v1/checkpoint", apiBillingToken, bill(key, obj{"token": tok, "point": "p", "data": ""}))
				good.expect(t, 200, "", o.method, keyPath(o, key), apiBillingToken, nil)
				good.expect(t, 200, "", "POST", "/v1/complete", apiBillingToken, bill(key, obj{"token": tok, "outcome": obj{"data": ""}}))
				good.expect(t, 200, "", o.method, keyPath(o, key), apiBillingToken, nil)
			case "deleteKey":
				good.expect(t, 204, "", o.method, keyPath(o, key), apiBillingToken, nil)
			case "begin":
				// acquired above; then in flight, replay, and a takeover
				// that hands over a checkpoint.
				decision := func(data []byte) (d struct {
					Decision   string
					Takeover   bool
					Checkpoint *idem.Checkpoint
				}) {
					if err := json.Unmarshal(data, &d); err != nil {
						t.Fatalf("%v: %s", err, data)
					}
					return d
				}
				if d := decision(good.expect(t, 200, "", o.method, o.path, apiBillingToken, bodyOf(o, key, 0))); d.Decision != "in_flight" {
					t.Errorf("a second begin: %+v, want in_flight", d)
				}
				good.expect(t, 200, "", "POST", "/v1/complete", apiBillingToken, bill(key, obj{"token": tok, "outcome": obj{"data": "aGk="}}))
				if d := decision(good.expect(t, 200, "", o.method, o.path, apiBillingToken, bodyOf(o, key, 0))); d.Decision != "replay" {
					t.Errorf("a begin after complete: %+v, want replay", d)
				}
				k2 := fresh()
				t2 := good.acquire(t, k2)
				good.expect(t, 200, "", "POST", "/v1/checkpoint", apiBillingToken, bill(k2, obj{"token": t2, "point": "charged", "data": "AQ=="}))
				clock.Advance(2 * time.Minute) // past the 60 s lease
				d := decision(good.expect(t, 200, "", o.method, o.path, apiBillingToken, bill(k2, obj{"fingerprint": "f"})))
				if d.Decision != "acquired" || !d.Takeover || d.Checkpoint == nil || d.Checkpoint.Point != "charged" || string(d.Checkpoint.Data) != "\x01" {
					t.Errorf("a begin after the lease ended: %+v, want a takeover with the checkpoint", d)
				}
			case "sweep", "metrics":
				good.expect(t, 200, "", o.method, o.path, apiOpsToken, bodyOf(o, key, tok))
			case "listKeys":
				good.expect(t, 200, "", "POST", "/v1/complete", apiBillingToken, bill(key, obj{"token": tok}))
				good.expect(t, 200, "", o.method, o.path, apiBillingToken, nil)
			default:
				good.expect(t, 200, "", o.method, keyPath(o, key), apiBillingToken, bodyOf(o, key, tok))
			}
			if strings.HasPrefix(name, "healthz") {
				return
			}
			if strings.HasPrefix(name, "readyz") {
				// 503: the store is closed (no token needed either way;
				// HEAD has no body to read the problem from).
				problem := idemapi.ProblemUnavailable
				if o.method == http.MethodHead {
					problem = ""
				}
				down.expect(t, 503, problem, o.method, o.path, "", nil)
				return
			}

			// 401: no token, and an unknown one.
			good.expect(t, 401, idemapi.ProblemUnauthorized, o.method, keyPath(o, key), "", bodyOf(o, key, tok))
			good.expect(t, 401, idemapi.ProblemUnauthorized, o.method, keyPath(o, key), "wrong-token", bodyOf(o, key, tok))
			if name == "metrics" {
				buggy.expect(t, 500, idemapi.ProblemInternal, o.method, o.path, apiOpsToken, nil)
				return
			}

			// 403: another scope (sweep: a token not bound to *).
			if name == "sweep" {
				good.expect(t, 403, idemapi.ProblemForbidden, o.method, o.path, apiBillingToken, bodyOf(o, key, tok))
			} else {
				other := strings.Replace(keyPath(o, key), "scope=billing", "scope=other", 1)
				var body any
				if o.body != nil {
					b := o.body(key, tok).(obj)
					b["scope"] = "other"
					body = b
				}
				good.expect(t, 403, idemapi.ProblemForbidden, o.method, other, apiBillingToken, body)
			}

			// 400: an empty key, a missing scope, a bad field.
			switch o.method {
			case "POST":
				good.expect(t, 400, idemapi.ProblemInvalidRequest, o.method, o.path, apiOpsToken, `{"scope":"billing","key":"","limit":-1}`)
				good.expect(t, 400, idemapi.ProblemInvalidRequest, o.method, o.path, apiOpsToken, `{"nope":1}`)
				good.expect(t, 400, idemapi.ProblemInvalidRequest, o.method, o.path, apiOpsToken, `{} {}`)
				// 413 and 415.
				big := `{"scope":"billing","key":"` + strings.Repeat("k", 300<<10) + `"}`
				good.expect(t, 413, idemapi.ProblemBodyTooLarge, o.method, o.path, apiOpsToken, big)
				good.expectCT(t, 415, idemapi.ProblemUnsupportedMediaType, o.method, o.path, apiOpsToken, bodyOf(o, key, tok), "text/plain")
			default:
				good.expect(t, 400, idemapi.ProblemInvalidRequest, o.method, strings.Replace(keyPath(o, key), "scope=billing", "scope=", 1), apiOpsToken, nil)
			}
			if name == "listKeys" {
				good.expect(t, 400, idemapi.ProblemInvalidRequest, o.method, "/v1/keys?scope=billing&limit=1001", apiOpsToken, nil)
				good.expect(t, 400, idemapi.ProblemInvalidRequest, o.method, "/v1/keys?scope=billing&state=done", apiOpsToken, nil)
				nolist.expect(t, 501, idemapi.ProblemNotImplemented, o.method, o.path, apiOpsToken, nil)
			}
			if name == "getKey" || name == "deleteKey" {
				good.expect(t, 404, idemapi.ProblemNotFound, o.method, keyPath(o, "no-such-key"), apiOpsToken, nil)
			}
			if name == "begin" {
				good.expect(t, 422, idemapi.ProblemFingerprintMismatch, o.method, o.path, apiOpsToken, bill(key, obj{"fingerprint": "other"}))
			}

			// 409: a stale token, and a key already completed.
			if o.owned {
				k := fresh()
				kt := good.acquire(t, k)
				good.expect(t, 409, idemapi.ProblemLeaseLost, o.method, o.path, apiBillingToken, o.body(k, kt+1))
				good.expect(t, 200, "", "POST", "/v1/complete", apiBillingToken, bill(k, obj{"token": kt}))
				good.expect(t, 409, idemapi.ProblemCompleted, o.method, o.path, apiBillingToken, o.body(k, kt))
			}

			// 500: the store panics; 503: it is closed.
			buggy.expect(t, 500, idemapi.ProblemInternal, o.method, keyPath(o, key), apiOpsToken, bodyOf(o, key, 1))
			down.expect(t, 503, idemapi.ProblemUnavailable, o.method, keyPath(o, key), apiOpsToken, bodyOf(o, key, 1))
		})
	}

	t.Run("workflows", func(t *testing.T) { driveWorkflowRoutes(t, seen) })

	// What answers a path or method the document does not have.
	t.Run("unrouted", func(t *testing.T) {
		good.expect(t, 404, idemapi.ProblemNoSuchRoute, "GET", "/v2/begin", apiOpsToken, nil)
		good.expect(t, 404, idemapi.ProblemNoSuchRoute, "GET", "/v1/keys/a/b?scope=billing", apiOpsToken, nil)
		good.expect(t, 405, idemapi.ProblemMethodNotAllowed, "GET", "/v1/begin", apiOpsToken, nil)
		good.expect(t, 400, idemapi.ProblemInvalidRequest, "GET", "/v1/keys/?scope=billing", apiOpsToken, nil)
		// A key holding a slash, escaped, is one segment.
		k := "a/b c"
		tok := good.acquire(t, k)
		good.expect(t, 200, "", "POST", "/v1/release", apiBillingToken, bill(k, obj{"token": tok}))
		good.expect(t, 200, "", "GET", "/v1/keys/a%2Fb%20c?scope=billing", apiBillingToken, nil)
	})

	seen.mu.Lock()
	defer seen.mu.Unlock()
	doc := checkerFor(t).doc
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for code := range op.Responses.Map() {
				if !seen.seen[op.OperationID+" "+code] {
					t.Errorf("%s %s (%s): status %s documented but never seen", method, path, op.OperationID, code)
				}
			}
		}
	}
	for _, want := range []string{"unrouted 404", "unrouted 405", "unrouted 400"} {
		if !seen.seen[want] {
			t.Errorf("%s never seen", want)
		}
	}
}

// TestOpenAPIRoutesMatchTheServer checks that the document and the server
// have the same routes, each with the same methods, black-box: every route
// the server registers has a route label in its metrics, which every
// operation of the document names (x-idem-route); every documented path
// and method reaches its route (its request counter moves), and every
// other method is 405 with exactly the document's methods in Allow.
func TestOpenAPIRoutesMatchTheServer(t *testing.T) {
	t.Parallel()
	a := startAPI(t, memstore.New(nil), &coverage{seen: map[string]bool{}})
	doc := checkerFor(t).doc

	metrics := func() map[string]int {
		_, data, _ := a.call(t, "GET", "/metrics", apiOpsToken, nil, "")
		counts := map[string]int{}
		re := regexp.MustCompile(`^idem_request_duration_seconds_count\{route="([^"]+)"\} (\d+)$`)
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				var n int
				fmt.Sscan(m[2], &n)
				counts[m[1]] = n
			}
		}
		return counts
	}
	served := slices.DeleteFunc(slices.Sorted(maps.Keys(metrics())), func(r string) bool { return r == "unknown" })

	var documented []string
	for path, item := range doc.Paths.Map() {
		var methods []string
		for method, op := range item.Operations() {
			methods = append(methods, method)
			route, _ := op.Extensions["x-idem-route"].(string)
			if !slices.Contains(documented, route) {
				documented = append(documented, route)
			}
			concrete := concretePath(path) + "?scope=billing"
			before := metrics()[route]
			status, data, _ := a.call(t, method, concrete, apiOpsToken, nil, "")
			if status == 404 && bytes.Contains(data, []byte(idemapi.ProblemNoSuchRoute)) || status == 405 {
				t.Errorf("%s %s: %d %s; the server has no such route", method, path, status, data)
			}
			after := metrics()[route]
			if route == "metrics" {
				after-- // the counting request itself
			}
			if after != before+1 {
				t.Errorf("%s %s is documented as route %q, but that route counted %d requests for it", method, path, route, after-before)
			}
		}
		sort.Strings(methods)
		for _, m := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
			if slices.Contains(methods, m) {
				continue
			}
			status, _, h := a.call(t, m, concretePath(path), apiOpsToken, nil, "")
			allow := strings.Split(h.Get("Allow"), ", ")
			sort.Strings(allow)
			if status != 405 || !slices.Equal(allow, methods) {
				t.Errorf("%s %s: %d, Allow %v; want 405 and the document's methods %v", m, path, status, allow, methods)
			}
		}
	}
	sort.Strings(documented)
	if !slices.Equal(documented, served) {
		t.Errorf("routes in the document %v, routes the server registers %v", documented, served)
	}
}

// TestOpenAPICheckerCatchesDrift feeds the checker exchanges that break
// the document, so that the API tests passing through it mean something.
func TestOpenAPICheckerCatchesDrift(t *testing.T) {
	t.Parallel()
	c := checkerFor(t)
	jsonHeader := http.Header{"Content-Type": {"application/json"}}
	problemHeader := http.Header{"Content-Type": {"application/problem+json"}, "X-Content-Type-Options": {"nosniff"}}
	begin := `{"scope":"s","key":"k"}`
	acquired := `{"decision":"acquired","token":1,"attempt":1,"lease_until":"2026-01-02T03:04:05.123456789Z","takeover":false,"checkpoint":null}`
	for _, tc := range []struct {
		name, method, path, reqBody string
		status                      int
		header                      http.Header
		respBody                    string
		ok                          bool
	}{
		{"acquired", "POST", "/v1/begin", begin, 200, jsonHeader, acquired, true},
		{"in flight", "POST", "/v1/begin", begin, 200, jsonHeader, `{"decision":"in_flight","retry_after_ms":3}`, true},
		{"an extra response field", "POST", "/v1/begin", begin, 200, jsonHeader, strings.Replace(acquired, `"token":1`, `"token":1,"owner":"x"`, 1), false},
		{"a missing response field", "POST", "/v1/begin", begin, 200, jsonHeader, strings.Replace(acquired, `"takeover":false,`, "", 1), false},
		{"an unknown decision", "POST", "/v1/begin", begin, 200, jsonHeader, `{"decision":"mismatch"}`, false},
		{"token 0", "POST", "/v1/begin", begin, 200, jsonHeader, strings.Replace(acquired, `"token":1`, `"token":0`, 1), false},
		{"a time that is not one", "POST", "/v1/begin", begin, 200, jsonHeader, strings.Replace(acquired, "2026-01-02T03:04:05.123456789Z", "tomorrow", 1), false},
		{"an undocumented status", "POST", "/v1/begin", begin, 404, problemHeader, `{"type":"https://github.com/idemkit/idem/blob/main/docs/api.md#not-found","title":"t","status":404}`, false},
		{"a problem of another status's type", "POST", "/v1/begin", begin, 422, problemHeader, `{"type":"https://github.com/idemkit/idem/blob/main/docs/api.md#completed","title":"t","status":422}`, false},
		{"a problem as plain JSON", "POST", "/v1/begin", begin, 422, jsonHeader, `{"type":"https://github.com/idemkit/idem/blob/main/docs/api.md#fingerprint-mismatch","title":"t","status":422}`, false},
		{"a 401 without WWW-Authenticate", "POST", "/v1/begin", begin, 401, problemHeader, `{"type":"https://github.com/idemkit/idem/blob/main/docs/api.md#unauthorized","title":"t","status":401}`, false},
		{"200 to an unknown request field", "POST", "/v1/begin", `{"scope":"s","key":"k","KEY":"k"}`, 200, jsonHeader, acquired, false},
		{"400 to an unknown request field", "POST", "/v1/begin", `{"scope":"s","key":"k","KEY":"k"}`, 400, problemHeader, `{"type":"https://github.com/idemkit/idem/blob/main/docs/api.md#invalid-request","title":"t","status":400,"detail":"d"}`, true},
		{"200 to a negative lease", "POST", "/v1/begin", `{"scope":"s","key":"k","lease_ms":-1}`, 200, jsonHeader, acquired, false},
		{"204 with a body", "DELETE", "/v1/keys/k?scope=s", "", 204, jsonHeader, `{}`, false},
		{"204", "DELETE", "/v1/keys/k?scope=s", "", 204, http.Header{}, ``, true},
		{"an unknown path answered 200", "GET", "/v1/nope", "", 200, jsonHeader, `{}`, false},
		{"405 without Allow", "GET", "/v1/begin", "", 405, problemHeader, `{"type":"https://github.com/idemkit/idem/blob/main/docs/api.md#method-not-allowed","title":"t","status":405}`, false},
	} {
		req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.reqBody))
		req.Header.Set("Authorization", "Bearer x")
		if tc.reqBody != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		err := c.check(req, []byte(tc.reqBody), tc.status, tc.header, []byte(tc.respBody))
		if (err == nil) != tc.ok {
			t.Errorf("%s: check = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestOpenAPIMarkdownNamesEveryOperation keeps the table of docs/openapi.md
// (operationId and route) equal to the document.
func TestOpenAPIMarkdownNamesEveryOperation(t *testing.T) {
	t.Parallel()
	md, err := os.ReadFile("../../docs/openapi.md")
	if err != nil {
		t.Fatal(err)
	}
	inTable := map[string]string{}
	for _, m := range regexp.MustCompile("`([a-zA-Z]+)` \\| `([A-Z]+ [^`]+)`").FindAllStringSubmatch(string(md), -1) {
		inTable[m[1]] = m[2]
	}
	inDoc := map[string]string{}
	for path, item := range checkerFor(t).doc.Paths.Map() {
		for method, op := range item.Operations() {
			inDoc[op.OperationID] = method + " " + path
		}
	}
	if !maps.Equal(inTable, inDoc) {
		t.Errorf("docs/openapi.md lists %v, the document has %v", inTable, inDoc)
	}
}
