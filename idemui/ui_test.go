package idemui_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemui"
	"github.com/idemkit/idem/internal/uitest"
	"github.com/idemkit/idem/workflow"
)

// client is a browser-like client of the fixture's server: a cookie jar,
// no redirects followed, the server's origin on every post.
type client struct {
	t    *testing.T
	srv  *httptest.Server
	http *http.Client
	csrf string
}

func newClient(t *testing.T, srv *httptest.Server) *client {
	jar, _ := cookiejar.New(nil)
	hc := *srv.Client() // a copy: the server's client is shared
	hc.Jar = jar
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &client{t: t, srv: srv, http: &hc}
}

func serve(t *testing.T, f *uitest.Fixture) *httptest.Server {
	srv := httptest.NewServer(f.Handler)
	t.Cleanup(srv.Close)
	return srv
}

func (c *client) do(req *http.Request) (*http.Response, string) {
	c.t.Helper()
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if m := csrfField.FindStringSubmatch(string(b)); m != nil {
		c.csrf = m[1]
	}
	return resp, string(b)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (c *client) get(path string) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.srv.URL+path, nil)
	resp, body := c.do(req)
	return resp.StatusCode, body
}

// post sends a form from the server's own origin.
func (c *client) post(path string, form url.Values) (*http.Response, string) {
	c.t.Helper()
	return c.postFrom(c.srv.URL, path, form)
}

func (c *client) postFrom(origin, path string, form url.Values) (*http.Response, string) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	return c.do(req)
}

// signIn signs in with token and loads a page for its CSRF token.
func signIn(t *testing.T, srv *httptest.Server, token string) *client {
	t.Helper()
	c := newClient(t, srv)
	resp, _ := c.post("/ui/signin", url.Values{"token": {token}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in answered %d, want 303", resp.StatusCode)
	}
	if code, _ := c.get("/ui/rates"); code != http.StatusOK || c.csrf == "" {
		t.Fatalf("after sign-in /ui/rates answered %d (csrf %q)", code, c.csrf)
	}
	return c
}

func mustContain(t *testing.T, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("page lacks %q", w)
		}
	}
}

func mustNotContain(t *testing.T, body string, bad ...string) {
	t.Helper()
	for _, w := range bad {
		if strings.Contains(body, w) {
			t.Errorf("page shows %q", w)
		}
	}
}

func TestSignIn(t *testing.T) {
	f := uitest.New(t, nil)
	srv := serve(t, f)
	c := newClient(t, srv)

	resp, body := c.post("/ui/signin", url.Values{"token": {"not-a-token"}})
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d, want 401", resp.StatusCode)
	}
	mustContain(t, body, `id="signin-error"`, `name="token"`)
	if len(resp.Cookies()) != 0 {
		t.Fatalf("wrong token got a cookie: %v", resp.Cookies())
	}
	code, body := c.get("/ui/keys?scope=billing")
	if code != http.StatusUnauthorized {
		t.Fatalf("keys after a wrong token: %d, want 401", code)
	}
	mustContain(t, body, `name="token"`)
	mustNotContain(t, body, "order-42", "Sign out")

	resp, _ = c.post("/ui/signin", url.Values{"token": {uitest.BillingToken}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/keys" {
		t.Fatalf("sign-in: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	var ck *http.Cookie
	for _, k := range resp.Cookies() {
		if k.Name == "idem_ui_session" {
			ck = k
		}
	}
	if ck == nil || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure || ck.Path != "/ui/" || ck.MaxAge != int(idemui.DefaultSessionTTL/time.Second) {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, not Secure over plain HTTP, path /ui/, 8h", ck)
	}
	code, body = c.get("/ui/keys?scope=billing")
	if code != http.StatusOK {
		t.Fatalf("keys after sign-in: %d", code)
	}
	mustContain(t, body, "order-42", "Sign out", "<code>billing</code>")
}

func TestSignInOverTLSSetsSecure(t *testing.T) {
	f := uitest.New(t, nil)
	srv := httptest.NewTLSServer(f.Handler)
	t.Cleanup(srv.Close)
	c := newClient(t, srv)
	c.http.Transport.(*http.Transport).TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	resp, _ := c.post("/ui/signin", url.Values{"token": {uitest.OpsToken}})
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 || !resp.Cookies()[0].Secure {
		t.Fatalf("over TLS: %d, cookies %v; want one Secure cookie", resp.StatusCode, resp.Cookies())
	}
}

func TestSignInNextStaysInside(t *testing.T) {
	srv := serve(t, uitest.New(t, nil))
	for next, want := range map[string]string{
		"/ui/rates":             "/ui/rates",
		"//evil.example/ui/":    "/ui/keys",
		"https://evil.example/": "/ui/keys",
		"/elsewhere":            "/ui/keys",
	} {
		c := newClient(t, srv)
		resp, _ := c.post("/ui/signin", url.Values{"token": {uitest.OpsToken}, "next": {next}})
		if got := resp.Header.Get("Location"); got != want {
			t.Errorf("next %q: redirected to %q, want %q", next, got, want)
		}
	}
}

func TestUnauthenticated(t *testing.T) {
	srv := serve(t, uitest.New(t, nil))
	c := newClient(t, srv)
	for _, path := range []string{"/ui/", "/ui/keys?scope=billing", "/ui/keys/record?scope=billing&key=order-42", "/ui/rates",
		"/ui/workflows", "/ui/workflows/instance?id=order-7", "/ui/messaging", "/ui/nowhere"} {
		code, body := c.get(path)
		if code != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", path, code)
		}
		mustContain(t, body, `name="token"`)
		mustNotContain(t, body, "<code>order-42</code>", "X-Order", "order-7</code>", "fp-43", "no such account", "<svg", "Sign out")
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/ui/rates.json", nil)
	resp, body := c.do(req)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Content-Type") != "application/problem+json" || !strings.Contains(body, "#unauthorized") {
		t.Fatalf("rates.json: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	// A made-up session cookie is no session.
	u, _ := url.Parse(srv.URL + "/ui/")
	c.http.Jar.SetCookies(u, []*http.Cookie{{Name: "idem_ui_session", Value: "made-up"}})
	if code, _ := c.get("/ui/keys?scope=billing"); code != http.StatusUnauthorized {
		t.Fatalf("forged cookie: %d, want 401", code)
	}
	// The stylesheet is public, and the only thing that is.
	if code, body := c.get("/ui/static/ui.css"); code != http.StatusOK || !strings.Contains(body, "svg.diagram") {
		t.Fatalf("ui.css: %d", code)
	}
}

func TestSessionExpiresAndSignOut(t *testing.T) {
	f := uitest.New(t, nil)
	srv := serve(t, f)
	c := signIn(t, srv, uitest.OpsToken)
	f.Clock.Advance(idemui.DefaultSessionTTL - time.Second)
	if code, _ := c.get("/ui/keys?scope=billing"); code != http.StatusOK {
		t.Fatalf("before expiry: %d", code)
	}
	f.Clock.Advance(time.Second)
	if code, _ := c.get("/ui/keys?scope=billing"); code != http.StatusUnauthorized {
		t.Fatalf("at expiry: %d, want 401", code)
	}

	c = signIn(t, srv, uitest.OpsToken)
	resp, _ := c.post("/ui/signout", url.Values{"csrf": {c.csrf}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/signin" {
		t.Fatalf("sign-out: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if code, _ := c.get("/ui/keys?scope=billing"); code != http.StatusUnauthorized {
		t.Fatalf("after sign-out: %d, want 401", code)
	}
}

func TestSecurityHeaders(t *testing.T) {
	srv := serve(t, uitest.New(t, nil))
	c := signIn(t, srv, uitest.OpsToken)
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/ui/keys?scope=billing", nil)
	resp, _ := c.do(req)
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "script-src") {
		t.Errorf("CSP %q", csp)
	}
	if resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("headers %v", resp.Header)
	}
}

func TestKeysPage(t *testing.T) {
	srv := serve(t, uitest.New(t, nil))
	billing := signIn(t, srv, uitest.BillingToken)

	code, body := billing.get("/ui/keys?scope=billing")
	if code != http.StatusOK {
		t.Fatalf("keys: %d", code)
	}
	mustContain(t, body, "order-42", "order-43")
	_, body = billing.get("/ui/keys?scope=billing&state=completed")
	mustContain(t, body, "order-42")
	mustNotContain(t, body, "order-43")
	_, body = billing.get("/ui/keys?scope=billing&state=pending")
	mustContain(t, body, "order-43")
	mustNotContain(t, body, "order-42")
	if code, _ := billing.get("/ui/keys?scope=billing&state=bogus"); code != http.StatusBadRequest {
		t.Errorf("bad state: %d, want 400", code)
	}

	// Scopes as in the API: billing's token sees nothing of shop.
	code, body = billing.get("/ui/keys?scope=shop")
	if code != http.StatusForbidden {
		t.Fatalf("billing token on shop: %d, want 403", code)
	}
	mustNotContain(t, body, "cart-1")
	if code, body := billing.get("/ui/keys/record?scope=shop&key=cart-1"); code != http.StatusForbidden || strings.Contains(body, "cart") && strings.Contains(body, "Stored key") {
		t.Fatalf("billing token on shop's record: %d", code)
	}
	shop := signIn(t, srv, uitest.ShopToken)
	_, body = shop.get("/ui/keys")
	mustContain(t, body, "cart-1")
	mustNotContain(t, body, "order-42")

	// Search opens the record.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/ui/keys?scope=billing&key=order-42", nil)
	resp, _ := billing.do(req)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/keys/record?key=order-42&scope=billing" {
		t.Fatalf("search: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestRecordPage(t *testing.T) {
	srv := serve(t, uitest.New(t, nil))
	c := signIn(t, srv, uitest.BillingToken)

	code, body := c.get("/ui/keys/record?scope=billing&key=order-42")
	if code != http.StatusOK {
		t.Fatalf("record: %d", code)
	}
	mustContain(t, body, `id="outcome-status">201<`, "X-Order", "<code>42</code>", `id="state">completed<`, `id="attempts">1<`, "Show bodies")
	mustNotContain(t, body, `{&#34;order&#34;:42}`, `id="body"`)
	_, body = c.get("/ui/keys/record?scope=billing&key=order-42&bodies=1")
	mustContain(t, body, `id="body">{&#34;order&#34;:42}</pre>`)

	_, body = c.get("/ui/keys/record?scope=billing&key=order-43")
	mustContain(t, body, `id="state">pending<`, "fp-43", "point <code>charged</code>", "lease until 20", "fencing token <code>")
	mustNotContain(t, body, "ch_1")
	_, body = c.get("/ui/keys/record?scope=billing&key=order-43&bodies=1")
	mustContain(t, body, `{&#34;charge&#34;:&#34;ch_1&#34;}`)

	if code, _ := c.get("/ui/keys/record?scope=billing&key=nope"); code != http.StatusNotFound {
		t.Errorf("unknown key: %d, want 404", code)
	}
}

func TestKeysHashed(t *testing.T) {
	f := uitest.New(t, &uitest.Options{KeySecret: []byte("s3cret")})
	srv := serve(t, f)
	c := signIn(t, srv, uitest.BillingToken)
	digest := f.Ledger.StoredKey("order-42")
	if !strings.HasPrefix(digest, "hmac-sha256:") {
		t.Fatalf("digest %q", digest)
	}
	_, body := c.get("/ui/keys?scope=billing")
	mustContain(t, body, digest, `id="search-digest"`)
	mustNotContain(t, body, "order-42")
	for _, q := range []string{"key=order-42", "digest=" + url.QueryEscape(digest)} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/ui/keys?scope=billing&"+q, nil)
		resp, _ := c.do(req)
		code, body := c.get(resp.Header.Get("Location"))
		if code != http.StatusOK {
			t.Fatalf("%s: %d", q, code)
		}
		mustContain(t, body, `id="stored">`+digest+`<`, `id="outcome-status">201<`)
	}
}

func TestDeleteKey(t *testing.T) {
	f := uitest.New(t, nil)
	srv := serve(t, f)
	c := signIn(t, srv, uitest.BillingToken)
	ctx := context.Background()
	exists := func() bool {
		_, err := f.Store.Get(ctx, &idem.KeyParams{Scope: "billing", Key: "order-42"})
		if err != nil && !errors.Is(err, idem.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	code, body := c.get("/ui/keys/delete?scope=billing&stored=order-42")
	if code != http.StatusOK {
		t.Fatalf("confirmation page: %d", code)
	}
	mustContain(t, body, `id="confirm"`, "order-42")
	if !exists() {
		t.Fatal("showing the confirmation deleted the record")
	}
	form := url.Values{"scope": {"billing"}, "stored": {"order-42"}, "confirm": {"yes"}}

	for name, tc := range map[string]struct {
		origin string
		csrf   string
		form   url.Values
		want   int
	}{
		"no csrf":          {c.srv.URL, "", form, http.StatusForbidden},
		"wrong csrf":       {c.srv.URL, "x" + c.csrf, form, http.StatusForbidden},
		"cross origin":     {"https://evil.example", c.csrf, form, http.StatusForbidden},
		"not confirmed":    {c.srv.URL, c.csrf, url.Values{"scope": {"billing"}, "stored": {"order-42"}}, http.StatusBadRequest},
		"scope not bound":  {c.srv.URL, c.csrf, url.Values{"scope": {"shop"}, "stored": {"cart-1"}, "confirm": {"yes"}}, http.StatusForbidden},
		"other token csrf": {c.srv.URL, signIn(t, srv, uitest.ShopToken).csrf, form, http.StatusForbidden},
	} {
		fm := url.Values{}
		for k, v := range tc.form {
			fm[k] = v
		}
		if tc.csrf != "" {
			fm.Set("csrf", tc.csrf)
		}
		resp, _ := c.postFrom(tc.origin, "/ui/keys/delete", fm)
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d, want %d", name, resp.StatusCode, tc.want)
		}
		if !exists() {
			t.Fatalf("%s deleted the record", name)
		}
	}
	if _, err := f.Store.Get(ctx, &idem.KeyParams{Scope: "shop", Key: "cart-1"}); err != nil {
		t.Fatalf("shop's record: %v", err)
	}

	fm := url.Values{"csrf": {c.csrf}}
	for k, v := range form {
		fm[k] = v
	}
	resp, _ := c.post("/ui/keys/delete", fm)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/keys?deleted=1&scope=billing" {
		t.Fatalf("delete: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if exists() {
		t.Fatal("the record is still stored")
	}
	_, body = c.get("/ui/keys?deleted=1&scope=billing")
	mustContain(t, body, `id="deleted"`, "order-43")
	mustNotContain(t, body, "order-42")
}

var pointsAttr = regexp.MustCompile(`<polyline class="data s0" data-series="duplicate rate" points="([^"]*)"`)

func TestRatesPage(t *testing.T) {
	f := uitest.New(t, nil)
	srv := serve(t, f)
	c := signIn(t, srv, uitest.ShopToken)
	code, body := c.get("/ui/rates")
	if code != http.StatusOK {
		t.Fatalf("rates: %d", code)
	}
	if n := strings.Count(body, `<svg class="chart"`); n != 3 {
		t.Fatalf("%d charts, want 3", n)
	}
	m := pointsAttr.FindStringSubmatch(body)
	if m == nil || len(strings.Fields(m[1])) != 6 {
		t.Fatalf("duplicate rate line %v: want 6 points", m)
	}
	// Samples 2..6 are all replays: their points sit at the top (y = 28).
	for _, p := range strings.Fields(m[1])[1:] {
		if !strings.HasSuffix(p, ",28.0") {
			t.Errorf("point %s is not at the top of the chart", p)
		}
	}
	mustContain(t, body, `data-series="replayed"`, `data-series="mean"`, "6 samples of 10s")

	code, body = c.get("/ui/rates.json")
	var out struct{ Samples []idemui.Sample }
	if err := json.Unmarshal([]byte(body), &out); code != http.StatusOK || err != nil {
		t.Fatalf("rates.json: %d %v", code, err)
	}
	if len(out.Samples) != 6 {
		t.Fatalf("%d samples, want 6", len(out.Samples))
	}
	for i, s := range out.Samples[1:] {
		if s.Begins != int64(i+2) || s.Replayed != int64(i+2) || s.DuplicateRate() != 1 || !s.At.Equal(uitest.Start.Add(time.Duration(i+2)*10*time.Second)) {
			t.Errorf("sample %d: %+v", i+1, s)
		}
	}
}

func TestRatesRing(t *testing.T) {
	clock := idem.NewManualClock(uitest.Start)
	r := idemui.NewRates(&idemui.RatesConfig{Interval: time.Second, Keep: 3 * time.Second, Clock: clock})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	for i := 1; i <= 5; i++ {
		r.Observe(ctx, &idem.Event{Op: idem.OpBegin, Scope: "a", Decision: idem.Replay})
		r.Observe(ctx, &idem.Event{Op: idem.OpComplete, Scope: "a", TimeToIdempotence: time.Duration(i) * time.Second})
		r.Observe(ctx, &idem.Event{Op: idem.OpComplete, Scope: "a", Err: idem.ErrLeaseLost})
		waitFor(t, func() bool { return clock.Waiters() == 1 })
		clock.Advance(time.Second)
		waitFor(t, func() bool {
			return len(r.Samples()) == min(i, 3) && r.Samples()[min(i, 3)-1].At.Equal(uitest.Start.Add(time.Duration(i)*time.Second))
		})
	}
	got := r.Samples()
	for j, s := range got { // samples 3, 4 and 5
		i := j + 3
		if s.Begins != 1 || s.Replayed != 1 || s.Completed != 1 || s.LeaseLost != 1 || s.MeanTTI() != time.Duration(i)*time.Second {
			t.Errorf("sample %d: %+v", i, s)
		}
	}
	if sc := r.Scopes(); len(sc) != 1 || sc[0].Begins != 5 || sc[0].Replayed != 5 {
		t.Errorf("scopes %+v", sc)
	}
}

// waitFor polls cond, with a deadline, for something another goroutine
// does.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWorkflowsPage(t *testing.T) {
	srv := serve(t, uitest.New(t, nil))
	c := signIn(t, srv, uitest.BillingToken)
	code, body := c.get("/ui/workflows")
	if code != http.StatusOK {
		t.Fatalf("workflows: %d", code)
	}
	mustContain(t, body, `href="/ui/workflows?type=order&amp;status=running">1</a>`, `href="/ui/workflows?type=order&amp;status=succeeded">1</a>`, "order-7", "order-8",
		`<td class="by-state"><a href="/ui/workflows?type=order&amp;state=reserved">reserved: 1</a> </td>`)
	_, body = c.get("/ui/workflows?status=running")
	mustContain(t, body, "order-7")
	mustNotContain(t, body, "order-8</code>")

	shop := signIn(t, srv, uitest.ShopToken)
	code, body = shop.get("/ui/workflows")
	if code != http.StatusForbidden {
		t.Fatalf("shop token: %d, want 403", code)
	}
	mustNotContain(t, body, "order-7")
	if code, _ := shop.get("/ui/workflows/instance?id=order-7"); code != http.StatusNotFound {
		t.Fatalf("shop token on an instance: %d, want 404", code)
	}
}

var (
	takenEdge   = regexp.MustCompile(`<g class="edge taken" data-from="([^"]*)" data-to="([^"]*)"`)
	visitedNode = regexp.MustCompile(`<g class="state[^"]*visited[^"]*" data-state="([^"]*)"`)
	currentNode = regexp.MustCompile(`<g class="state[^"]*current[^"]*" data-state="([^"]*)"`)
)

func matches(re *regexp.Regexp, body string) []string {
	var out []string
	for _, m := range re.FindAllStringSubmatch(body, -1) {
		out = append(out, strings.Join(m[1:], "->"))
	}
	return out
}

func TestInstancePage(t *testing.T) {
	srv := serve(t, uitest.New(t, nil))
	c := signIn(t, srv, uitest.BillingToken)
	code, body := c.get("/ui/workflows/instance?id=order-7")
	if code != http.StatusOK {
		t.Fatalf("instance: %d", code)
	}
	if got := matches(takenEdge, body); strings.Join(got, ",") != "pending->reserved" {
		t.Errorf("taken edges %v, want pending->reserved", got)
	}
	if got := matches(visitedNode, body); strings.Join(got, ",") != "pending,reserved" {
		t.Errorf("visited %v", got)
	}
	if got := matches(currentNode, body); strings.Join(got, ",") != "reserved" {
		t.Errorf("current %v", got)
	}
	mustContain(t, body, "order-7/1/reserve", `id="cancel"`, "action_completed", `id="wf-status">running`)
	mustNotContain(t, body, `id="retry"`)

	_, body = c.get("/ui/workflows/instance?id=order-8")
	if got := matches(takenEdge, body); strings.Join(got, ",") != "pending->reserved,reserved->charged" {
		t.Errorf("order-8 taken edges %v", got)
	}
	mustNotContain(t, body, `id="cancel"`)
}

func TestWorkflowActions(t *testing.T) {
	f := uitest.New(t, nil)
	srv := serve(t, f)
	c := signIn(t, srv, uitest.BillingToken)
	ctx := context.Background()
	get := func(id string) *workflow.Instance {
		in, err := f.Engine.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	c.get("/ui/workflows/instance?id=order-7")

	// Refused: no CSRF token, another origin, a token without wf:order.
	if resp, _ := c.post("/ui/workflows/cancel", url.Values{"id": {"order-7"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("no csrf: %d", resp.StatusCode)
	}
	if resp, _ := c.postFrom("http://evil.example", "/ui/workflows/cancel", url.Values{"id": {"order-7"}, "csrf": {c.csrf}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross origin: %d", resp.StatusCode)
	}
	shop := signIn(t, srv, uitest.ShopToken)
	if resp, _ := shop.post("/ui/workflows/cancel", url.Values{"id": {"order-7"}, "csrf": {shop.csrf}}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("shop token: %d, want 404", resp.StatusCode)
	}
	if in := get("order-7"); in.CancelRequested || in.Status != workflow.Running {
		t.Fatalf("a refused cancel changed the instance: %+v", in)
	}

	// Retry of a running instance: the engine's refusal is shown.
	resp, body := c.post("/ui/workflows/retry", url.Values{"id": {"order-7"}, "csrf": {c.csrf}})
	if resp.StatusCode != http.StatusConflict || !strings.Contains(body, "not parked") {
		t.Errorf("retry of a running instance: %d %s", resp.StatusCode, body)
	}

	resp, _ = c.post("/ui/workflows/cancel", url.Values{"id": {"order-7"}, "csrf": {c.csrf}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/workflows/instance?done=cancel&id=order-7" {
		t.Fatalf("cancel: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if in := get("order-7"); !in.CancelRequested || in.CancelReason != "cancelled from the dashboard" {
		t.Fatalf("after cancel: %+v", in)
	}
	f.Settle(t)
	if in := get("order-7"); in.Status != workflow.Cancelled {
		t.Fatalf("after the engine ran: %s", in.Status)
	}
	// Cancelled after its reservation was compensated: not resumable.
	resp, body = c.post("/ui/workflows/resume", url.Values{"id": {"order-7"}, "state": {"pending"}, "csrf": {c.csrf}})
	if resp.StatusCode != http.StatusConflict || !strings.Contains(body, "cannot be resumed") && !strings.Contains(body, "not resumable") {
		t.Errorf("resume: %d %s", resp.StatusCode, body)
	}
}

func TestMessagingPage(t *testing.T) {
	srv := serve(t, uitest.New(t, nil))
	c := signIn(t, srv, uitest.BillingToken)
	code, body := c.get("/ui/messaging")
	if code != http.StatusOK {
		t.Fatalf("messaging: %d", code)
	}
	mustContain(t, body, `<td class="handled">1</td>`, `<td class="dead">1</td>`, `<td class="attempts">1</td>`, "msg-2", "no such account",
		"keeps no outbox")
	// msg-1 was delivered twice: one duplicate answered.
	mustContain(t, body, "<td>1</td></tr></tbody></table>")

	shop := signIn(t, srv, uitest.ShopToken)
	_, body = shop.get("/ui/messaging")
	mustContain(t, body, "not bound to this scope")
	mustNotContain(t, body, "msg-2", "no such account")
}

func TestNewRefusesBadConfig(t *testing.T) {
	f := uitest.New(t, nil)
	for name, cfg := range map[string]*idemui.Config{
		"nil":           nil,
		"no store":      {Tokens: f.Tokens},
		"no tokens":     {Store: f.Store},
		"bad token":     {Store: f.Store, Tokens: map[string][]string{"a b": {"x"}}},
		"prefix":        {Store: f.Store, Tokens: f.Tokens, Prefix: "/ui/"},
		"half workflow": {Store: f.Store, Tokens: f.Tokens, Workflows: f.Engine},
	} {
		if _, err := idemui.New(cfg); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestWorkflowRetryAndResume(t *testing.T) {
	f := uitest.New(t, nil)
	srv := serve(t, f)
	ctx := context.Background()
	var down atomic.Bool
	down.Store(true)
	pay := func(context.Context, *workflow.Step) ([]byte, error) {
		if down.Load() {
			return nil, workflow.Permanent(errors.New("bank down"))
		}
		return []byte("paid"), nil
	}
	if err := f.Types.Register(&workflow.Definition{
		Name: "payout", Version: 1, Initial: "new",
		States: []workflow.State{{Name: "new"}, {Name: "paid", Terminal: workflow.Success}},
		Transitions: []workflow.Transition{{From: "new", Event: "send", To: "paid",
			Action: &workflow.Action{Name: "pay", Run: pay, NoCompensation: true, OnExhausted: workflow.Park}}},
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"payout-1", "payout-2"} {
		if _, err := f.Engine.Start(ctx, "payout", 0, id, []byte(`{}`), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Engine.Signal(ctx, id, id+"-send", "send", nil); err != nil {
			t.Fatal(err)
		}
	}
	f.Settle(t)
	status := func(id string) workflow.Status {
		in, err := f.Engine.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return in.Status
	}
	if status("payout-1") != workflow.Parked || status("payout-2") != workflow.Parked {
		t.Fatalf("not parked: %s %s", status("payout-1"), status("payout-2"))
	}

	// The billing token is bound to wf:order only.
	billing := signIn(t, srv, uitest.BillingToken)
	if resp, _ := billing.post("/ui/workflows/retry", url.Values{"id": {"payout-1"}, "csrf": {billing.csrf}}); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("billing token retries payout: %d", resp.StatusCode)
	}
	if status("payout-1") != workflow.Parked {
		t.Fatal("a refused retry changed the instance")
	}

	ops := signIn(t, srv, uitest.OpsToken)
	_, body := ops.get("/ui/workflows/instance?id=payout-1")
	mustContain(t, body, `id="retry"`, `id="resume"`, "bank down", `id="wf-status">parked`)
	down.Store(false)
	resp, _ := ops.post("/ui/workflows/retry", url.Values{"id": {"payout-1"}, "csrf": {ops.csrf}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("retry: %d", resp.StatusCode)
	}
	resp, _ = ops.post("/ui/workflows/resume", url.Values{"id": {"payout-2"}, "state": {"new"}, "csrf": {ops.csrf}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("resume: %d", resp.StatusCode)
	}
	if status("payout-1") != workflow.Running || status("payout-2") != workflow.Running {
		t.Fatalf("after retry and resume: %s %s", status("payout-1"), status("payout-2"))
	}
	f.Settle(t)
	if status("payout-1") != workflow.Succeeded {
		t.Fatalf("payout-1 after the engine ran: %s", status("payout-1"))
	}
	// Resumed in "new", payout-2 waits for a new send there.
	if in, _ := f.Engine.Get(ctx, "payout-2"); in.Status != workflow.Running || in.State != "new" {
		t.Fatalf("payout-2 after the engine ran: %s in %s", in.Status, in.State)
	}
	// A resume into a terminal state is the engine's ErrInvalid: 400.
	resp, _ = ops.post("/ui/workflows/resume", url.Values{"id": {"payout-1"}, "state": {"paid"}, "csrf": {ops.csrf}})
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("resume into a terminal state: %d", resp.StatusCode)
	}
}

// A dashboard over a store alone: no rates, no engine, pages say so.
func TestDashboardWithStoreOnly(t *testing.T) {
	f := uitest.New(t, nil)
	ui, err := idemui.New(&idemui.Config{Store: f.Store, Tokens: f.Tokens})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ui)
	t.Cleanup(srv.Close)
	c := signIn(t, srv, uitest.OpsToken)
	for path, want := range map[string]string{
		"/ui/rates":                         "This server keeps no rates.",
		"/ui/workflows":                     "This server runs no workflow engine",
		"/ui/messaging":                     "keeps no outbox",
		"/ui/keys?scope=shop":               "<code>cart-1</code>",
		"/ui/workflows/instance?id=order-7": "This server runs no workflow engine.",
	} {
		code, body := c.get(path)
		if !strings.Contains(body, want) {
			t.Errorf("%s (%d) lacks %q", path, code, want)
		}
	}
	if code, body := c.get("/ui/rates.json"); code != http.StatusOK || strings.TrimSpace(body) != `{"samples":[]}` {
		t.Errorf("rates.json: %d %s", code, body)
	}
}

// Ten refused sign-ins from one address within a minute block its
// sign-ins, right token included, with 429 and Retry-After until the
// minute has passed; another address is not blocked, and a sign-in that
// gets through clears the count.
func TestSignInLimit(t *testing.T) {
	f := uitest.New(t, nil)
	signin := func(addr, token string) *http.Response {
		t.Helper()
		req := httptest.NewRequest(http.MethodPost, "/ui/signin", strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.RemoteAddr = addr + ":40000"
		rec := httptest.NewRecorder()
		f.Handler.ServeHTTP(rec, req)
		return rec.Result()
	}
	for i := range idemui.MaxFailedSignins {
		if resp := signin("192.0.2.7", "wrong"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("refused sign-in %d: %d, want 401", i+1, resp.StatusCode)
		}
	}
	f.Clock.Advance(20 * time.Second)
	resp := signin("192.0.2.7", uitest.OpsToken)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "40" {
		t.Fatalf("after %d refusals: %d, Retry-After %q; want 429, 40", idemui.MaxFailedSignins, resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	body, _ := io.ReadAll(resp.Body)
	mustContain(t, string(body), "Too many refused sign-ins from your address: try again in 40 s.")
	if resp := signin("192.0.2.8", uitest.OpsToken); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("another address: %d, want 303", resp.StatusCode)
	}
	f.Clock.Advance(40 * time.Second)
	if resp := signin("192.0.2.7", uitest.OpsToken); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after the window: %d, want 303", resp.StatusCode)
	}
	// The success cleared the count: nine more refusals do not block.
	for range idemui.MaxFailedSignins - 1 {
		signin("192.0.2.7", "wrong")
	}
	if resp := signin("192.0.2.7", uitest.OpsToken); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after a success and %d refusals: %d, want 303", idemui.MaxFailedSignins-1, resp.StatusCode)
	}
}
