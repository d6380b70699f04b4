package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// The API tests check every request they send and every response they
// get against docs/openapi.yaml (kin-openapi's openapi3filter), so the
// document cannot drift from the server:
//
//   - apiChecked wraps a handler served in process;
//   - checkedTransport wraps the client of a test that talks to an
//     `idem serve` process (newClient);
//   - checkedProxy puts a checking reverse proxy in front of such a process
//     for clients the test cannot hand a transport (idemclient, idem keys
//     --server: startMemServe).
//
// A request the document refuses (a test that sends a bad body on
// purpose) is not a failure by itself, but the server must refuse it too,
// with a problem response the document describes for that operation; a
// 2xx answer to it means the document is stricter than the server.

// openAPIPath is docs/openapi.yaml from this package's directory.
const openAPIPath = "../../docs/openapi.yaml"

// loadOpenAPI loads the document and checks it against the OpenAPI 3.1
// specification.
func loadOpenAPI() (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(openAPIPath)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", openAPIPath, err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("%s does not validate: %w", openAPIPath, err)
	}
	return doc, nil
}

// apiChecker validates exchanges against the document.
type apiChecker struct {
	doc    *openapi3.T
	router routers.Router
	// unrouted stands for a request to a path or method the document does
	// not have: the answers it may get are problems.
	unrouted *routers.Route
}

var sharedChecker = sync.OnceValues(func() (*apiChecker, error) {
	doc, err := loadOpenAPI()
	if err != nil {
		return nil, err
	}
	// Routes match on the path alone: the servers of the document name the
	// default address, the tests listen on others.
	doc.Servers = nil
	router, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	resp := doc.Components.Responses
	unrouted := openapi3.NewOperation()
	unrouted.Responses = openapi3.NewResponses(
		openapi3.WithStatus(400, resp["InvalidRequest"]),
		openapi3.WithStatus(401, resp["Unauthorized"]),
		openapi3.WithStatus(404, resp["NoSuchRoute"]),
		openapi3.WithStatus(405, resp["MethodNotAllowed"]),
	)
	return &apiChecker{doc: doc, router: router, unrouted: &routers.Route{Spec: doc, Operation: unrouted}}, nil
})

// checkerFor returns the shared checker or fails tb.
func checkerFor(tb testing.TB) *apiChecker {
	tb.Helper()
	c, err := sharedChecker()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// bearerPresent is the document's security scheme as a validator sees it:
// the header is there; whether the token is known is the server's call.
func bearerPresent(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	token, ok := strings.CutPrefix(in.RequestValidationInput.Request.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return errors.New("no Authorization: Bearer TOKEN")
	}
	return nil
}

// route finds the operation of req and its path parameters, unescaped;
// an error when the document has none (the unrouted stand-in is returned
// then).
func (c *apiChecker) route(req *http.Request) (*routers.Route, map[string]string, error) {
	// Route on the escaped path, so that a key holding %2F stays one
	// segment as the server sees it.
	escaped := req.URL.EscapedPath()
	routed := req.Clone(context.Background())
	routed.URL.Path, routed.URL.RawPath = escaped, ""
	route, params, err := c.router.FindRoute(routed)
	if err != nil {
		return c.unrouted, nil, fmt.Errorf("no operation in the document: %w", err)
	}
	// The router forgives a trailing slash and an empty last segment; the
	// server does not, so the path must be the template filled in.
	filled := route.Path
	for k, v := range params {
		filled = strings.Replace(filled, "{"+k+"}", v, 1)
		if u, err := url.PathUnescape(v); err == nil {
			params[k] = u
		}
	}
	if filled != escaped || strings.Contains(route.Path, "{") && slices.Contains(slices.Collect(maps.Values(params)), "") {
		return c.unrouted, nil, fmt.Errorf("no operation in the document for the path %s", escaped)
	}
	return route, params, nil
}

// check validates one exchange. req's body has been read: reqBody holds it.
func (c *apiChecker) check(req *http.Request, reqBody []byte, status int, header http.Header, respBody []byte) error {
	ctx := context.Background()
	what := req.Method + " " + req.URL.RequestURI()
	route, params, reqErr := c.route(req)
	opts := &openapi3filter.Options{
		AuthenticationFunc:    bearerPresent,
		IncludeResponseStatus: true,
		MultiError:            true,
	}
	in := &openapi3filter.RequestValidationInput{Request: req.Clone(ctx), PathParams: params, Route: route, Options: opts}
	in.Request.Body = io.NopCloser(bytes.NewReader(reqBody))
	if reqErr == nil {
		reqErr = openapi3filter.ValidateRequest(ctx, in)
	}
	if reqErr != nil && status < 400 {
		return fmt.Errorf("%s: the server answered %d to a request the document refuses: %v", what, status, reqErr)
	}
	in.Request.Body = io.NopCloser(bytes.NewReader(reqBody))
	respIn := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: status, Header: header,
		Body: io.NopCloser(bytes.NewReader(respBody)), Options: opts,
	}
	if err := openapi3filter.ValidateResponse(ctx, respIn); err != nil {
		return fmt.Errorf("%s: the %d response does not match the document: %v\nbody: %.300s", what, status, err, respBody)
	}
	// What openapi3filter leaves alone: a HEAD's status, and the body of a
	// response the document gives no content.
	if r := route.Operation.Responses.Status(status); r == nil {
		return fmt.Errorf("%s: status %d is not in the document", what, status)
	} else if len(r.Value.Content) == 0 && len(respBody) > 0 {
		return fmt.Errorf("%s: the %d response has a body (%.100q) the document does not describe", what, status, respBody)
	}
	return nil
}

// apiChecked serves h through the checker: every exchange that does not
// validate fails t.
func apiChecked(t testing.TB, h http.Handler) http.Handler {
	c := checkerFor(t)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("read the request body: %v", err)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if err := c.check(r, body, rec.Code, rec.Header(), rec.Body.Bytes()); err != nil {
			t.Errorf("openapi: %v", err)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
}

// checkedTransport checks every exchange that goes through next. A
// failure is returned as the round trip's error, and reported to t, or
// when there is none (newClient has no t) kept for TestMain to fail the
// run with.
type checkedTransport struct {
	next http.RoundTripper
	t    testing.TB
}

var (
	uncheckedMu       sync.Mutex
	uncheckedFailures []string
)

// openAPIFailures returns the failures no test could be told about.
func openAPIFailures() []string {
	uncheckedMu.Lock()
	defer uncheckedMu.Unlock()
	return append([]string(nil), uncheckedFailures...)
}

func (ct *checkedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c, err := sharedChecker()
	if err != nil {
		return nil, err
	}
	var body []byte
	if req.Body != nil {
		body, err = io.ReadAll(req.Body)
		_ = req.Body.Close()
		if err != nil {
			return nil, err
		}
	}
	out := req.Clone(req.Context())
	out.Body = io.NopCloser(bytes.NewReader(body))
	resp, err := ct.next.RoundTrip(out)
	if err != nil {
		return nil, err // no answer, nothing to check
	}
	respBody, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(respBody))
	// The header a proxy adds is not the server's.
	header := resp.Header.Clone()
	if err := c.check(req, body, resp.StatusCode, header, respBody); err != nil {
		err = fmt.Errorf("openapi: %w", err)
		if ct.t != nil {
			ct.t.Errorf("%v", err)
		} else {
			uncheckedMu.Lock()
			uncheckedFailures = append(uncheckedFailures, err.Error())
			uncheckedMu.Unlock()
			fmt.Fprintln(os.Stderr, err)
		}
		return nil, err
	}
	return resp, nil
}

// checkedProxy serves a checking reverse proxy to base (an idem serve) for
// the life of t and returns its URL.
func checkedProxy(t *testing.T, base string) string {
	t.Helper()
	target, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	checkerFor(t)
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
		},
		Transport: &checkedTransport{next: http.DefaultTransport, t: t},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			http.Error(w, err.Error(), http.StatusBadGateway)
		},
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	return srv.URL
}
