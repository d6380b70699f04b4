package idemclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
)

// seen is one request the fake API received.
type seen struct {
	method, path, query, auth, contentType, ua string
	body                                       map[string]any
}

// answer is a canned response.
type answer struct {
	status      int
	contentType string
	body        string
	header      map[string]string
}

func jsonAnswer(status int, body string) answer {
	return answer{status: status, contentType: "application/json", body: body}
}

func problemAnswer(status int, name, detail string) answer {
	b, _ := json.Marshal(map[string]any{"type": idemapi.ProblemBase + name, "title": "Title of " + name, "status": status, "detail": detail})
	return answer{status: status, contentType: "application/problem+json", body: string(b)}
}

// fake is an httptest server answering canned responses in order (the
// last one repeats) and recording what it received.
type fake struct {
	t   *testing.T
	srv *httptest.Server

	mu      sync.Mutex
	answers []answer
	reqs    []seen
}

type bundle struct {
	fake   *fake
	client *Client
	ctx    context.Context
}

func setup(t *testing.T, answers ...answer) *bundle {
	t.Helper()
	f := &fake{t: t, answers: answers}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	c, err := New(f.srv.URL, "s3cret", &Config{UserAgent: "idemclient-test"})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &bundle{fake: f, client: c, ctx: context.Background()}
}

func (f *fake) serve(w http.ResponseWriter, r *http.Request) {
	s := seen{method: r.Method, path: r.URL.EscapedPath(), query: r.URL.RawQuery, auth: r.Header.Get("Authorization"),
		contentType: r.Header.Get("Content-Type"), ua: r.Header.Get("User-Agent")}
	if b, _ := io.ReadAll(r.Body); len(b) > 0 {
		if err := json.Unmarshal(b, &s.body); err != nil {
			f.t.Errorf("the client sent a body that is no JSON object: %q", b)
		}
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, s)
	a := f.answers[0]
	if len(f.answers) > 1 {
		f.answers = f.answers[1:]
	}
	f.mu.Unlock()
	for k, v := range a.header {
		w.Header().Set(k, v)
	}
	if a.contentType != "" {
		w.Header().Set("Content-Type", a.contentType)
	}
	w.WriteHeader(a.status)
	_, _ = io.WriteString(w, a.body)
}

func (f *fake) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.reqs...)
}

func (f *fake) last() seen {
	f.t.Helper()
	r := f.requests()
	if len(r) == 0 {
		f.t.Fatal("the fake received no request")
	}
	return r[len(r)-1]
}

func beginParams() *idem.BeginParams {
	return &idem.BeginParams{Scope: "tenant-1", Key: "order-7", Fingerprint: "fp", Lease: 1500*time.Microsecond + 30*time.Second, Window: time.Nanosecond, Retention: 0}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	bad := []struct{ url, token, want string }{
		{"", "t", "http://"},
		{"127.0.0.1:7070", "t", "http://"},
		{"ftp://host", "t", "http://"},
		{"http://", "t", "no host"},
		{"http://user:pw@host", "t", "credentials"},
		{"http://host/?a=b", "t", "query"},
		{"http://host/#frag", "t", "query or fragment"},
		{"http://host", "", "token is empty"},
		{"http://host", "two words", "printable ASCII"},
		{"http://host", "tab\t", "printable ASCII"},
		{"http://[::1", "t", "does not parse"},
	}
	for _, c := range bad {
		_, err := New(c.url, c.token, nil)
		if !errors.Is(err, idem.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%q, %q): %v, want ErrInvalid saying %q", c.url, c.token, err, c.want)
		}
	}
	if _, err := New("http://host", "t", &Config{MaxResponse: -1}); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("negative MaxResponse: %v, want ErrInvalid", err)
	}
	for _, u := range []string{"http://127.0.0.1:7070", "https://ledger.example/idem/", "http://[::1]:80"} {
		c, err := New(u, "tok", nil)
		if err != nil {
			t.Errorf("New(%q): %v", u, err)
			continue
		}
		if strings.HasSuffix(c.base, "/") {
			t.Errorf("New(%q): base %q keeps a trailing slash", u, c.base)
		}
		c.Close()
	}
}

func TestBeginAcquired(t *testing.T) {
	t.Parallel()
	b := setup(t, jsonAnswer(200, `{"decision":"acquired","token":7,"attempt":2,"lease_until":"2030-01-02T03:04:35.5Z","takeover":true,"checkpoint":{"point":"charged","data":"AAEC/w=="},"future_field":1}`))
	p := beginParams()
	res, err := b.client.Begin(b.ctx, p)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	rec := res.Record
	if res.Decision != idem.Acquired || !res.Takeover || rec.Token != 7 || rec.Attempts != 2 || rec.State != idem.StatePending {
		t.Errorf("result %+v record %+v, want acquired takeover token 7 attempt 2 pending", res, rec)
	}
	if !rec.LeaseUntil.Equal(time.Date(2030, 1, 2, 3, 4, 35, 5e8, time.UTC)) {
		t.Errorf("lease until %s", rec.LeaseUntil)
	}
	if rec.Checkpoint == nil || rec.Checkpoint.Point != "charged" || !bytes.Equal(rec.Checkpoint.Data, []byte{0, 1, 2, 255}) {
		t.Errorf("checkpoint %+v", rec.Checkpoint)
	}
	if rec.Scope != p.Scope || rec.Key != p.Key || rec.Fingerprint != p.Fingerprint {
		t.Errorf("record names %s/%s %q", rec.Scope, rec.Key, rec.Fingerprint)
	}
	req := b.fake.last()
	if req.method != http.MethodPost || req.path != "/v1/begin" || req.auth != "Bearer s3cret" || req.contentType != "application/json" || req.ua != "idemclient-test" {
		t.Errorf("request %+v", req)
	}
	// 30.0015 s rounds up to 30002 ms; 1 ns to 1 ms, never to 0.
	want := map[string]any{"scope": "tenant-1", "key": "order-7", "fingerprint": "fp", "lease_ms": 30002.0, "window_ms": 1.0, "retention_ms": 0.0}
	for k, v := range want {
		if req.body[k] != v {
			t.Errorf("request field %s = %v, want %v", k, req.body[k], v)
		}
	}
	if len(req.body) != len(want) {
		t.Errorf("request body %v has fields beyond %v", req.body, want)
	}
}

func TestBeginReplayInFlightMismatch(t *testing.T) {
	t.Parallel()
	b := setup(t,
		jsonAnswer(200, `{"decision":"replay","outcome":{"data":"aGk=","meta":{"status":"201"}},"completed_at":"2030-01-02T03:04:05.000000001Z","expires_at":"2030-01-03T03:04:05.000000001Z"}`),
		jsonAnswer(200, `{"decision":"in_flight","retry_after_ms":1234}`),
		problemAnswer(422, "fingerprint-mismatch", "use a new key"),
		jsonAnswer(200, `{"decision":"acquired","token":1,"attempt":1,"lease_until":"2030-01-02T03:04:05Z","takeover":false,"checkpoint":null}`),
	)
	p := beginParams()
	res, err := b.client.Begin(b.ctx, p)
	if err != nil || res.Decision != idem.Replay {
		t.Fatalf("Begin: %+v, %v; want replay", res, err)
	}
	rec := res.Record
	if rec.State != idem.StateCompleted || string(rec.Outcome.Data) != "hi" || rec.Outcome.Meta["status"] != "201" || rec.Completed.Nanosecond() != 1 || !rec.Expires.Equal(rec.Completed.Add(24*time.Hour)) {
		t.Errorf("replay record %+v outcome %+v", rec, rec.Outcome)
	}

	res, err = b.client.Begin(b.ctx, p)
	if err != nil || res.Decision != idem.InFlight || res.RetryAfter != 1234*time.Millisecond {
		t.Errorf("Begin: %+v, %v; want in flight, 1.234s", res, err)
	}

	res, err = b.client.Begin(b.ctx, p)
	if err != nil || res.Decision != idem.Mismatch || res.Record != nil {
		t.Errorf("Begin: %+v, %v; want mismatch without a record", res, err)
	}

	res, err = b.client.Begin(b.ctx, p)
	if err != nil || res.Decision != idem.Acquired || res.Record.Checkpoint != nil || res.Takeover {
		t.Errorf("Begin: %+v, %v; want acquired without checkpoint", res, err)
	}
}

func TestProblems(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		answer answer
		want   error
		says   string
	}{
		{"invalid", problemAnswer(400, "invalid-request", "key is empty"), idem.ErrInvalid, "idemclient: complete: 400 invalid-request: key is empty"},
		{"too large", problemAnswer(413, "body-too-large", "over 4194304 bytes"), idem.ErrInvalid, "idemclient: complete: 413 body-too-large: over 4194304 bytes"},
		{"lease lost", problemAnswer(409, "lease-lost", "stale token"), idem.ErrLeaseLost, "idemclient: complete: 409 lease-lost: stale token"},
		{"completed", problemAnswer(409, "completed", "already"), idem.ErrCompleted, "idemclient: complete: 409 completed: already"},
		{"not found", problemAnswer(404, "not-found", "no record"), idem.ErrNotFound, "idemclient: complete: 404 not-found: no record"},
		{"unauthorized", problemAnswer(401, "unauthorized", "send a token"), ErrUnauthorized, "idemclient: complete: 401 unauthorized: send a token"},
		{"forbidden", problemAnswer(403, "forbidden", "not bound"), ErrForbidden, "idemclient: complete: 403 forbidden: not bound"},
		{"unavailable", problemAnswer(503, "unavailable", "shutting down"), ErrUnavailable, "idemclient: complete: 503 unavailable: shutting down"},
		{"not implemented", problemAnswer(501, "not-implemented", "no list"), idem.ErrNotImplemented, "idemclient: complete: 501 not-implemented: no list"},
		{"mismatch outside begin", problemAnswer(422, "fingerprint-mismatch", "x"), idem.ErrFingerprintMismatch, "idemclient: complete: 422 fingerprint-mismatch: x"},
		{"unknown problem", problemAnswer(418, "teapot", "short and stout"), ErrProtocol, "idemclient: complete: unexpected answer 418 teapot: short and stout"},
		{"foreign problem type", answer{400, "application/problem+json", `{"type":"about:blank","title":"Bad","status":400}`, nil}, ErrProtocol, "idemclient: complete: unexpected answer 400: Bad"},
		{"html 404", answer{404, "text/html", "<html><body>Not Found</body></html>", nil}, ErrProtocol, "idemclient: complete: unexpected answer 404: <html><body>Not Found</body></html>"},
		{"html 502", answer{502, "text/html", "<h1>Bad gateway</h1>", nil}, ErrUnavailable, "idemclient: complete: 502: <h1>Bad gateway</h1>"},
		{"bare 401", answer{401, "", "", nil}, ErrUnauthorized, "idemclient: complete: 401: Unauthorized"},
		{"json garbage", answer{409, "application/problem+json", `{"type":`, nil}, ErrProtocol, "idemclient: complete: unexpected answer 409: {\"type\":"},
		{"binary", answer{500, "application/octet-stream", "\x00\xff\x01bin\n", nil}, ErrProtocol, "idemclient: complete: unexpected answer 500: ???bin"},
		{"redirect", answer{302, "", "", map[string]string{"Location": "http://elsewhere/"}}, ErrProtocol, "idemclient: complete: unexpected answer 302: redirected to http://elsewhere/; point the client at the server itself"},
		{"unexpected 2xx", answer{201, "application/json", "{}", nil}, ErrProtocol, "idemclient: complete: unexpected answer: status 201, want 200"},
		{"html 200", answer{200, "text/html", "<html>hello</html>", nil}, ErrProtocol, "idemclient: complete: unexpected answer: content type \"text/html\", want application/json (\"<html>hello</html>\")"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, c.answer)
			_, err := b.client.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: 3, Outcome: idem.Outcome{Data: []byte("x")}})
			if !errors.Is(err, c.want) {
				t.Fatalf("error %v, want one wrapping %v", err, c.want)
			}
			if err.Error() != c.says {
				t.Errorf("error %q, want %q", err, c.says)
			}
			var pe *ProblemError
			if c.answer.status >= 300 && (!errors.As(err, &pe) || pe.Status != c.answer.status || pe.Op != "complete") {
				t.Errorf("error %#v, want a *ProblemError with status %d", err, c.answer.status)
			}
		})
	}
}

func TestBrokenAnswers(t *testing.T) {
	t.Parallel()
	bodies := []string{
		`{"decision":"maybe"}`,
		`{"decision":"mismatch"}`,
		`{}`,
		`{"decision":"acquired","attempt":1,"lease_until":"2030-01-02T03:04:05Z","takeover":false}`,
		`{"decision":"acquired","token":0,"attempt":1,"lease_until":"2030-01-02T03:04:05Z","takeover":false}`,
		`{"decision":"acquired","token":3,"attempt":1,"lease_until":"yesterday","takeover":false}`,
		`{"decision":"acquired","token":3,"attempt":1,"lease_until":"2030-01-02T03:04:05Z"}`,
		`{"decision":"acquired","token":3,"attempt":1,"lease_until":"2030-01-02T03:04:05Z","takeover":false,"checkpoint":{"data":""}}`,
		`{"decision":"acquired","token":3,"attempt":1,"lease_until":"2030-01-02T03:04:05Z","takeover":false,"checkpoint":7}`,
		`{"decision":"replay","completed_at":"2030-01-02T03:04:05Z","expires_at":"2030-01-02T03:04:05Z"}`,
		`{"decision":"replay","outcome":{"data":"!!"},"completed_at":"2030-01-02T03:04:05Z","expires_at":"2030-01-02T03:04:05Z"}`,
		`{"decision":"replay","outcome":{"data":""},"expires_at":"2030-01-02T03:04:05Z"}`,
		`{"decision":"in_flight"}`,
		`{"decision":"in_flight","retry_after_ms":-5}`,
		`{"decision":"in_flight","retry_after_ms":0}`,
		`{"decision":"in_flight","retry_after_ms":"5"}`,
		`{"decision":"in_flight","retry_after_ms":9223372036854775807}`,
		`{"decision":"in_flight","retry_after_ms":5} {}`,
		`[]`,
		`null`,
		``,
	}
	for _, body := range bodies {
		b := setup(t, jsonAnswer(200, body))
		res, err := b.client.Begin(b.ctx, beginParams())
		if !errors.Is(err, ErrProtocol) || res != nil {
			t.Errorf("answer %s: %+v, %v; want ErrProtocol", body, res, err)
		}
	}
}

func TestKeysInThePath(t *testing.T) {
	t.Parallel()
	keys := []string{"plain", "a/b", "100%", "sp ace", "q?x=1", "hash#", "..", ".", "日本", "a%2Fb", "+plus", "semi;colon"}
	for _, key := range keys {
		rec := map[string]any{"scope": "tenant/1", "key": key, "fingerprint": "f", "state": "completed", "token": 4, "attempts": 1,
			"checkpoint": nil, "outcome": map[string]any{"data": "", "meta": map[string]string{}}, "created": "2030-01-02T03:04:05Z",
			"completed": "2030-01-02T03:04:06Z", "expires": "2030-01-03T03:04:06Z", "retain_until": "2030-01-03T03:04:06Z", "window_ms": 86400000, "retention_ms": 0}
		body, _ := json.Marshal(rec)
		b := setup(t, jsonAnswer(200, string(body)), answer{status: 204})
		got, err := b.client.Get(b.ctx, &idem.KeyParams{Scope: "tenant/1", Key: key})
		if err != nil {
			t.Fatalf("Get(%q): %v", key, err)
		}
		if got.Key != key || got.Window != 24*time.Hour || got.Outcome == nil || got.State != idem.StateCompleted {
			t.Errorf("Get(%q): %+v", key, got)
		}
		if err := b.client.Delete(b.ctx, &idem.KeyParams{Scope: "tenant/1", Key: key}); err != nil {
			t.Fatalf("Delete(%q): %v", key, err)
		}
		for _, req := range b.fake.requests() {
			seg, ok := strings.CutPrefix(req.path, "/v1/keys/")
			if !ok || strings.Contains(seg, "/") {
				t.Errorf("key %q: path %q is not one segment under /v1/keys/", key, req.path)
				continue
			}
			if dec, err := url.PathUnescape(seg); err != nil || dec != key {
				t.Errorf("key %q: the server decodes %q, %v", key, dec, err)
			}
			if q, _ := url.ParseQuery(req.query); q.Get("scope") != "tenant/1" {
				t.Errorf("key %q: query %q", key, req.query)
			}
		}
	}
}

func TestGetRefusesAnotherRecord(t *testing.T) {
	t.Parallel()
	b := setup(t, jsonAnswer(200, `{"scope":"s","key":"other","state":"pending","token":1,"attempts":1}`))
	_, err := b.client.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "k"})
	if !errors.Is(err, ErrProtocol) {
		t.Errorf("Get answered by another key's record: %v, want ErrProtocol", err)
	}
}

func TestList(t *testing.T) {
	t.Parallel()
	page := `{"records":[{"scope":"s","key":"a","fingerprint":"f","state":"pending","token":1,"attempts":1,"lease_until":"2030-01-02T03:04:05Z","checkpoint":{"point":"p","data":""},"outcome":null,"window_ms":1000,"retention_ms":5000}],"next_cursor":"Yg=="}`
	b := setup(t, jsonAnswer(200, page), jsonAnswer(200, `{"records":[],"next_cursor":""}`))
	p := &idem.ListParams{Scope: "s", State: idem.StatePending, Cursor: "YQ=="}
	res, err := b.client.List(b.ctx, p)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(res.Records) != 1 || res.NextCursor != "Yg==" || res.Records[0].Checkpoint.Point != "p" || res.Records[0].Retention != 5*time.Second {
		t.Errorf("List: %+v", res)
	}
	if p.Limit != 0 {
		t.Errorf("List changed the caller's params: limit %d", p.Limit)
	}
	q, _ := url.ParseQuery(b.fake.last().query)
	if q.Get("scope") != "s" || q.Get("state") != "pending" || q.Get("limit") != "100" || q.Get("cursor") != "YQ==" {
		t.Errorf("List query %v", q)
	}
	res, err = b.client.List(b.ctx, &idem.ListParams{Scope: "s", Limit: 5})
	if err != nil || len(res.Records) != 0 || res.NextCursor != "" {
		t.Errorf("empty List: %+v, %v", res, err)
	}
}

func TestListRefusesBrokenPages(t *testing.T) {
	t.Parallel()
	bodies := []string{
		`{"records":[{"scope":"other","key":"a","state":"pending","token":1,"attempts":1}],"next_cursor":""}`, // another tenant's record
		`{"records":[{"scope":"s","key":"a","state":"released","token":1,"attempts":1}],"next_cursor":""}`,    // another state
		`{"records":[{"scope":"s","key":"a","state":"completed","token":1,"attempts":1}],"next_cursor":""}`,   // completed without outcome
		`{"records":[],"next_cursor":"x"}`,
		`{"next_cursor":""}`,
		`{"records":[]}`,
		`{"records":[{},{}],"next_cursor":""}`,
	}
	for _, body := range bodies {
		b := setup(t, jsonAnswer(200, body))
		_, err := b.client.List(b.ctx, &idem.ListParams{Scope: "s", State: idem.StatePending, Limit: 1})
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("List answered %s: %v, want ErrProtocol", body, err)
		}
	}
}

func TestOtherOperations(t *testing.T) {
	t.Parallel()
	b := setup(t,
		jsonAnswer(200, `{"completed_at":"2030-01-02T03:04:06Z","expires_at":"2030-01-03T03:04:06Z","created":"2030-01-02T03:04:05Z"}`),
		jsonAnswer(200, `{}`),
		jsonAnswer(200, `{"lease_until":"2030-01-02T03:05:00Z"}`),
		jsonAnswer(200, `{}`),
		jsonAnswer(200, `{"deleted":3}`),
	)
	rec, err := b.client.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: 9})
	if err != nil || rec.State != idem.StateCompleted || rec.Completed.Sub(rec.Created) != time.Second || rec.Token != 9 {
		t.Errorf("Complete: %+v, %v", rec, err)
	}
	if out := b.fake.last().body["outcome"].(map[string]any); out["data"] != "" {
		t.Errorf("Complete of a nil outcome sent data %v, want an empty string", out["data"])
	}
	if err := b.client.Release(b.ctx, &idem.ReleaseParams{Scope: "s", Key: "k", Token: 9}); err != nil {
		t.Errorf("Release: %v", err)
	}
	ext, err := b.client.Extend(b.ctx, &idem.ExtendParams{Scope: "s", Key: "k", Token: 9, Lease: time.Minute})
	if err != nil || ext.LeaseUntil.Minute() != 5 {
		t.Errorf("Extend: %+v, %v", ext, err)
	}
	if b.fake.last().body["lease_ms"] != 60000.0 {
		t.Errorf("Extend sent %v", b.fake.last().body)
	}
	if err := b.client.Checkpoint(b.ctx, &idem.CheckpointParams{Scope: "s", Key: "k", Token: 9, Point: "p", Data: []byte{1}}); err != nil {
		t.Errorf("Checkpoint: %v", err)
	}
	if got := b.fake.last().body; got["point"] != "p" || got["data"] != "AQ==" {
		t.Errorf("Checkpoint sent %v", got)
	}
	res, err := b.client.Sweep(b.ctx, &idem.SweepParams{Limit: 5})
	if err != nil || res.Deleted != 3 {
		t.Errorf("Sweep: %+v, %v", res, err)
	}
	paths := []string{}
	for _, r := range b.fake.requests() {
		paths = append(paths, r.method+" "+r.path)
	}
	want := "POST /v1/complete,POST /v1/release,POST /v1/extend,POST /v1/checkpoint,POST /v1/sweep"
	if strings.Join(paths, ",") != want {
		t.Errorf("requests %v, want %s", paths, want)
	}
}

func TestInvalidParamsSendNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, jsonAnswer(200, `{}`))
	c, ctx := b.client, b.ctx
	errs := []error{
		second(c.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "", Lease: time.Second, Window: time.Second})),
		second(c.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Lease: 0, Window: time.Second})),
		second(c.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "k"})),
		c.Release(ctx, &idem.ReleaseParams{Scope: "s", Key: "k", Token: -1}),
		second(c.Extend(ctx, &idem.ExtendParams{Scope: "s", Key: "k", Token: 1})),
		c.Checkpoint(ctx, &idem.CheckpointParams{Scope: "s", Key: "k", Token: 1}),
		second(c.Get(ctx, &idem.KeyParams{Key: "k"})),
		c.Delete(ctx, &idem.KeyParams{Scope: "s", Key: strings.Repeat("k", 256)}),
		second(c.Sweep(ctx, &idem.SweepParams{Limit: -1})),
		second(c.List(ctx, &idem.ListParams{Scope: "s", State: "bogus"})),
		// What Go's JSON encoder would send as U+FFFD, the server would
		// take for another key: refused before encoding.
		second(c.Begin(ctx, &idem.BeginParams{Scope: "s\xff", Key: "k", Lease: time.Second, Window: time.Second})),
		second(c.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "\xff\xfe", Lease: time.Second, Window: time.Second})),
		second(c.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "\xfe\xff", Lease: time.Second, Window: time.Second})),
		second(c.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: 1, Outcome: idem.Outcome{Meta: map[string]string{"\xff": "v"}}})),
		second(c.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: 1, Outcome: idem.Outcome{Meta: map[string]string{"m": "\xff"}}})),
		c.Release(ctx, &idem.ReleaseParams{Scope: "s", Key: "\xff", Token: 1}),
		second(c.Extend(ctx, &idem.ExtendParams{Scope: "s", Key: "\xff", Token: 1, Lease: time.Second})),
		c.Checkpoint(ctx, &idem.CheckpointParams{Scope: "s", Key: "k", Token: 1, Point: "p\xff"}),
		second(c.Get(ctx, &idem.KeyParams{Scope: "s", Key: "\xff\xfe"})),
		c.Delete(ctx, &idem.KeyParams{Scope: "s", Key: "\xfe\xff"}),
		second(c.List(ctx, &idem.ListParams{Scope: "s", Cursor: "\xff"})),
	}
	for i, err := range errs {
		if !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("call %d: %v, want ErrInvalid", i, err)
		}
	}
	if n := len(b.fake.requests()); n != 0 {
		t.Errorf("invalid calls sent %d requests, want 0", n)
	}
}

func TestClose(t *testing.T) {
	t.Parallel()
	b := setup(t, jsonAnswer(200, `{"decision":"in_flight","retry_after_ms":5}`))
	if _, err := b.client.Begin(b.ctx, beginParams()); err != nil {
		t.Fatalf("Begin before Close: %v", err)
	}
	if err := b.client.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	c, ctx := b.client, b.ctx
	errs := map[string]error{
		"Begin":      second(c.Begin(ctx, beginParams())),
		"Complete":   second(c.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: 1})),
		"Release":    c.Release(ctx, &idem.ReleaseParams{Scope: "s", Key: "k", Token: 1}),
		"Extend":     second(c.Extend(ctx, &idem.ExtendParams{Scope: "s", Key: "k", Token: 1, Lease: time.Second})),
		"Checkpoint": c.Checkpoint(ctx, &idem.CheckpointParams{Scope: "s", Key: "k", Token: 1, Point: "p"}),
		"Get":        second(c.Get(ctx, &idem.KeyParams{Scope: "s", Key: "k"})),
		"Delete":     c.Delete(ctx, &idem.KeyParams{Scope: "s", Key: "k"}),
		"Sweep":      second(c.Sweep(ctx, &idem.SweepParams{})),
		"List":       second(c.List(ctx, &idem.ListParams{Scope: "s"})),
	}
	for name, err := range errs {
		if !errors.Is(err, idem.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	if n := len(b.fake.requests()); n != 1 {
		t.Errorf("%d requests, want only the one before Close", n)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestTransportErrorsAndContext(t *testing.T) {
	t.Parallel()
	b := setup(t, jsonAnswer(200, `{}`))
	ctx, cancel := context.WithCancel(b.ctx)
	cancel()
	if _, err := b.client.Get(ctx, &idem.KeyParams{Scope: "s", Key: "k"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a cancelled context: %v, want context.Canceled", err)
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.URL
	srv.Close() // nothing listens there any more
	c, err := New(addr, "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "k"})
	if err == nil || errors.Is(err, ErrProtocol) || errors.Is(err, idem.ErrNotFound) || !strings.Contains(err.Error(), "idemclient: get") {
		t.Errorf("Get of a closed port: %v, want the transport error", err)
	}
}

func TestMaxResponse(t *testing.T) {
	t.Parallel()
	f := &fake{t: t, answers: []answer{jsonAnswer(200, `{"deleted":1,"pad":"`+strings.Repeat("x", 200)+`"}`)}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	defer f.srv.Close()
	c, err := New(f.srv.URL+"/", "t", &Config{MaxResponse: 100, HTTPClient: f.srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Sweep(context.Background(), &idem.SweepParams{}); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "over 100 bytes") {
		t.Errorf("an answer over MaxResponse: %v, want ErrProtocol", err)
	}
	if p := f.last().path; p != "/v1/sweep" {
		t.Errorf("path %q with a base URL ending in /, want /v1/sweep", p)
	}
}

func second[T any](_ T, err error) error { return err }
