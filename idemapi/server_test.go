package idemapi_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/memstore"
)

const (
	tokA   = "token-a"   // scope a
	tokAB  = "token-ab"  // scopes a and b
	tokAll = "token-all" // every scope
)

var start = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

type bundle struct {
	clock *idem.ManualClock
	store *memstore.Store
	srv   *idemapi.Server
}

func setup(t *testing.T) *bundle {
	t.Helper()
	clock := idem.NewManualClock(start)
	store := memstore.New(&memstore.Config{Clock: clock})
	t.Cleanup(func() { _ = store.Close() })
	srv, err := idemapi.NewServer(store, &idemapi.Config{
		Tokens:  map[string][]string{tokA: {"a"}, tokAB: {"a", "b"}, tokAll: {"*"}},
		MaxBody: 1024,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{clock: clock, store: store, srv: srv}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// call sends a request with a JSON body (none when body is "") as token.
func (b *bundle) call(t *testing.T, method, path, token, body string) *response {
	t.Helper()
	return b.raw(t, method, path, token, "application/json", body)
}

func (b *bundle) raw(t *testing.T, method, path, token, contentType, body string) *response {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, r)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	b.srv.ServeHTTP(rec, req)
	return &response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

// ok checks a 200 JSON answer and decodes it into v.
func ok(t *testing.T, r *response, v any) {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json", ct)
	}
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// isProblem checks an application/problem+json answer with status and name.
func isProblem(t *testing.T, r *response, status int, name string) idemapi.Problem {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json; body %s", ct, r.body)
	}
	var p idemapi.Problem
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("decode problem %s: %v", r.body, err)
	}
	if p.Type != idemapi.ProblemBase+name || p.Status != status || p.Title == "" {
		t.Fatalf("problem %+v, want type #%s status %d", p, name, status)
	}
	return p
}

type acquired struct {
	Decision   string           `json:"decision"`
	Token      int64            `json:"token"`
	Attempt    int              `json:"attempt"`
	LeaseUntil string           `json:"lease_until"`
	Takeover   bool             `json:"takeover"`
	Checkpoint *idem.Checkpoint `json:"checkpoint"`
}

type replay struct {
	Decision    string       `json:"decision"`
	Outcome     idem.Outcome `json:"outcome"`
	CompletedAt string       `json:"completed_at"`
	ExpiresAt   string       `json:"expires_at"`
}

type inFlight struct {
	Decision     string `json:"decision"`
	RetryAfterMS int64  `json:"retry_after_ms"`
}

type completed struct {
	CompletedAt string `json:"completed_at"`
	ExpiresAt   string `json:"expires_at"`
	Created     string `json:"created"`
}

type record struct {
	Scope       string           `json:"scope"`
	Key         string           `json:"key"`
	Fingerprint string           `json:"fingerprint"`
	State       string           `json:"state"`
	Token       int64            `json:"token"`
	Attempts    int              `json:"attempts"`
	LeaseUntil  string           `json:"lease_until"`
	Checkpoint  *idem.Checkpoint `json:"checkpoint"`
	Outcome     *idem.Outcome    `json:"outcome"`
	Created     string           `json:"created"`
	Completed   string           `json:"completed"`
	Expires     string           `json:"expires"`
	RetainUntil string           `json:"retain_until"`
	WindowMS    int64            `json:"window_ms"`
	RetentionMS int64            `json:"retention_ms"`
}

type list struct {
	Records    []record `json:"records"`
	NextCursor string   `json:"next_cursor"`
}

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func (b *bundle) acquire(t *testing.T, scope, key string) acquired {
	t.Helper()
	var a acquired
	ok(t, b.call(t, "POST", "/v1/begin", tokAll, fmt.Sprintf(`{"scope":%q,"key":%q,"fingerprint":"f"}`, scope, key)), &a)
	if a.Decision != "acquired" {
		t.Fatalf("decision %q, want acquired", a.Decision)
	}
	return a
}

func completeBody(scope, key string, token int64, data []byte) string {
	// base64 needs no escaping; %q would walk megabytes rune by rune.
	return fmt.Sprintf(`{"scope":%q,"key":%q,"token":%d,"outcome":{"data":"`, scope, key, token) +
		base64.StdEncoding.EncodeToString(data) + `","meta":{"status":"201"}}}`
}

func TestBeginCompleteReplay(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var a acquired
	ok(t, b.call(t, "POST", "/v1/begin", tokA, `{"scope":"a","key":"order-1","fingerprint":"F","lease_ms":5000,"window_ms":60000}`), &a)
	want := acquired{Decision: "acquired", Token: a.Token, Attempt: 1, LeaseUntil: ts(start.Add(5 * time.Second))}
	if a != want || a.Token <= 0 {
		t.Fatalf("begin = %+v, want %+v", a, want)
	}

	// Bytes that are not UTF-8 and not JSON-friendly come back unchanged.
	data := []byte{0, 1, 2, 0xff, 0xfe, '"', '\\', '\n'}
	b.clock.Advance(2 * time.Second)
	var c completed
	ok(t, b.call(t, "POST", "/v1/complete", tokA, completeBody("a", "order-1", a.Token, data)), &c)
	done := start.Add(2 * time.Second)
	if c != (completed{CompletedAt: ts(done), ExpiresAt: ts(done.Add(time.Minute)), Created: ts(start)}) {
		t.Fatalf("complete = %+v", c)
	}

	for i := 0; i < 2; i++ {
		var rp replay
		ok(t, b.call(t, "POST", "/v1/begin", tokAB, `{"scope":"a","key":"order-1","fingerprint":"F"}`), &rp)
		if rp.Decision != "replay" || !bytes.Equal(rp.Outcome.Data, data) || rp.Outcome.Meta["status"] != "201" || len(rp.Outcome.Meta) != 1 {
			t.Fatalf("replay %d = %+v, want data %v", i, rp, data)
		}
		if rp.CompletedAt != ts(done) || rp.ExpiresAt != ts(done.Add(time.Minute)) {
			t.Fatalf("replay times %+v", rp)
		}
	}

	// The same key in another scope is another record.
	var other acquired
	ok(t, b.call(t, "POST", "/v1/begin", tokAB, `{"scope":"b","key":"order-1","fingerprint":"F"}`), &other)
	if other.Decision != "acquired" || other.Token == a.Token {
		t.Fatalf("scope b begin = %+v", other)
	}
}

func TestBeginInFlightSaysWhenToRetry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.acquire(t, "a", "k")
	for _, tc := range []struct {
		advance    time.Duration
		ms         int64
		retryAfter string
	}{
		{0, 30000, "30"},
		{10500 * time.Millisecond, 19500, "20"}, // whole seconds, rounded up
		{19499*time.Millisecond + 500*time.Microsecond, 1, "1"},
	} {
		b.clock.Advance(tc.advance)
		r := b.call(t, "POST", "/v1/begin", tokA, `{"scope":"a","key":"k","fingerprint":"f"}`)
		var f inFlight
		ok(t, r, &f)
		if f.Decision != "in_flight" || f.RetryAfterMS != tc.ms || r.header.Get("Retry-After") != tc.retryAfter {
			t.Fatalf("in flight = %+v, Retry-After %q; want %d ms, %q", f, r.header.Get("Retry-After"), tc.ms, tc.retryAfter)
		}
	}
}

func TestTakeoverHandsOnCheckpointAndFencesTheOldOwner(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.acquire(t, "a", "job")
	ok(t, b.call(t, "POST", "/v1/checkpoint", tokA, fmt.Sprintf(`{"scope":"a","key":"job","token":%d,"point":"charged","data":"AAEC"}`, first.Token)), &struct{}{})
	var ext struct {
		LeaseUntil string `json:"lease_until"`
	}
	b.clock.Advance(time.Second)
	ok(t, b.call(t, "POST", "/v1/extend", tokA, fmt.Sprintf(`{"scope":"a","key":"job","token":%d,"lease_ms":2000}`, first.Token)), &ext)
	if ext.LeaseUntil != ts(start.Add(3*time.Second)) {
		t.Fatalf("extend lease_until %s", ext.LeaseUntil)
	}
	b.clock.Advance(2 * time.Second) // the lease ends

	var second acquired
	ok(t, b.call(t, "POST", "/v1/begin", tokA, `{"scope":"a","key":"job","fingerprint":"f"}`), &second)
	if second.Decision != "acquired" || !second.Takeover || second.Attempt != 2 || second.Token <= first.Token {
		t.Fatalf("takeover = %+v (first token %d)", second, first.Token)
	}
	if second.Checkpoint == nil || second.Checkpoint.Point != "charged" || !bytes.Equal(second.Checkpoint.Data, []byte{0, 1, 2}) {
		t.Fatalf("checkpoint handed on = %+v", second.Checkpoint)
	}

	stale := fmt.Sprintf(`{"scope":"a","key":"job","token":%d}`, first.Token)
	isProblem(t, b.call(t, "POST", "/v1/complete", tokA, completeBody("a", "job", first.Token, []byte("x"))), 409, idemapi.ProblemLeaseLost)
	isProblem(t, b.call(t, "POST", "/v1/release", tokA, stale), 409, idemapi.ProblemLeaseLost)
	isProblem(t, b.call(t, "POST", "/v1/extend", tokA, stale), 409, idemapi.ProblemLeaseLost)
	isProblem(t, b.call(t, "POST", "/v1/checkpoint", tokA, fmt.Sprintf(`{"scope":"a","key":"job","token":%d,"point":"p"}`, first.Token)), 409, idemapi.ProblemLeaseLost)

	ok(t, b.call(t, "POST", "/v1/complete", tokA, completeBody("a", "job", second.Token, []byte("done"))), &completed{})
	isProblem(t, b.call(t, "POST", "/v1/complete", tokA, completeBody("a", "job", second.Token, []byte("again"))), 409, idemapi.ProblemCompleted)
	isProblem(t, b.call(t, "POST", "/v1/release", tokA, fmt.Sprintf(`{"scope":"a","key":"job","token":%d}`, second.Token)), 409, idemapi.ProblemCompleted)
}

func TestReleaseFreesTheKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.acquire(t, "a", "k")
	r := b.call(t, "POST", "/v1/release", tokA, fmt.Sprintf(`{"scope":"a","key":"k","token":%d}`, a.Token))
	ok(t, r, &struct{}{})
	if string(r.body) != "{}\n" {
		t.Fatalf("release body %q", r.body)
	}
	again := b.acquire(t, "a", "k")
	if again.Attempt != 2 || again.Takeover || again.Token <= a.Token {
		t.Fatalf("after release = %+v", again)
	}
}

func TestMismatchIs422(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.acquire(t, "a", "k")
	isProblem(t, b.call(t, "POST", "/v1/begin", tokA, `{"scope":"a","key":"k","fingerprint":"other"}`), 422, idemapi.ProblemFingerprintMismatch)
	ok(t, b.call(t, "POST", "/v1/complete", tokA, completeBody("a", "k", a.Token, nil)), &completed{})
	isProblem(t, b.call(t, "POST", "/v1/begin", tokA, `{"scope":"a","key":"k","fingerprint":"other"}`), 422, idemapi.ProblemFingerprintMismatch)
}

func TestKeysGetDeleteList(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.acquire(t, "a", "a/b c")
	ok(t, b.call(t, "POST", "/v1/complete", tokA, completeBody("a", "a/b c", a.Token, []byte("out"))), &completed{})

	path := "/v1/keys/" + url.PathEscape("a/b c") + "?scope=a"
	var rec record
	ok(t, b.call(t, "GET", path, tokA, ""), &rec)
	want := record{Scope: "a", Key: "a/b c", Fingerprint: "f", State: "completed", Token: a.Token, Attempts: 1,
		LeaseUntil: ts(start.Add(30 * time.Second)), Outcome: rec.Outcome, Created: ts(start), Completed: ts(start),
		Expires: ts(start.Add(24 * time.Hour)), RetainUntil: ts(start.Add(24 * time.Hour)), WindowMS: 86400000}
	if rec != want || rec.Outcome == nil || string(rec.Outcome.Data) != "out" {
		t.Fatalf("get = %+v, want %+v", rec, want)
	}

	r := b.call(t, "DELETE", path, tokA, "")
	if r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	isProblem(t, b.call(t, "GET", path, tokA, ""), 404, idemapi.ProblemNotFound)
	isProblem(t, b.call(t, "DELETE", path, tokA, ""), 404, idemapi.ProblemNotFound)

	// Five keys, pages of two, one of them pending and filtered by state.
	for i := 0; i < 5; i++ {
		a := b.acquire(t, "b", fmt.Sprintf("k%d", i))
		if i != 3 {
			ok(t, b.call(t, "POST", "/v1/complete", tokAll, completeBody("b", fmt.Sprintf("k%d", i), a.Token, nil)), &completed{})
		}
	}
	var keys []string
	cursor := ""
	pages := 0
	for {
		var page list
		ok(t, b.call(t, "GET", "/v1/keys?scope=b&limit=2&cursor="+url.QueryEscape(cursor), tokAB, ""), &page)
		pages++
		for _, r := range page.Records {
			keys = append(keys, r.Key)
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
	}
	if got := strings.Join(keys, ","); got != "k0,k1,k2,k3,k4" || pages != 3 {
		t.Fatalf("listed %s in %d pages", got, pages)
	}
	var pending list
	ok(t, b.call(t, "GET", "/v1/keys?scope=b&state=pending", tokAB, ""), &pending)
	if len(pending.Records) != 1 || pending.Records[0].Key != "k3" || pending.Records[0].Outcome != nil || pending.NextCursor != "" {
		t.Fatalf("pending = %+v", pending)
	}
	var empty list
	r = b.call(t, "GET", "/v1/keys?scope=nobody", tokAll, "")
	ok(t, r, &empty)
	if !strings.Contains(string(r.body), `"records":[]`) {
		t.Fatalf("empty list body %s", r.body)
	}
}

func TestSweepNeedsTheWildcardToken(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.acquire(t, "a", "k")
	ok(t, b.call(t, "POST", "/v1/complete", tokA, completeBody("a", "k", a.Token, nil)), &completed{})
	isProblem(t, b.call(t, "POST", "/v1/sweep", tokAB, `{}`), 403, idemapi.ProblemForbidden)
	var res struct {
		Deleted int `json:"deleted"`
	}
	ok(t, b.call(t, "POST", "/v1/sweep", tokAll, `{"limit":10}`), &res)
	if res.Deleted != 0 {
		t.Fatalf("swept %d before the window ended", res.Deleted)
	}
	b.clock.Advance(24 * time.Hour)
	ok(t, b.call(t, "POST", "/v1/sweep", tokAll, `{}`), &res)
	if res.Deleted != 1 {
		t.Fatalf("swept %d, want 1", res.Deleted)
	}
}

func TestHealthz(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.call(t, "GET", "/healthz", "", "")
	if r.status != 200 || string(r.body) != "ok\n" {
		t.Fatalf("healthz: %d %q", r.status, r.body)
	}
	if r := b.call(t, "HEAD", "/healthz", "", ""); r.status != 200 {
		t.Fatalf("HEAD healthz: %d", r.status)
	}
	isProblem(t, b.call(t, "POST", "/healthz", "", ""), 405, idemapi.ProblemMethodNotAllowed)
}

func TestProblems(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := b.acquire(t, "a", "k")
	long := strings.Repeat("x", 256)
	for _, tc := range []struct {
		name, method, path, token, contentType, body string
		status                                       int
		problem, detail                              string
	}{
		{"malformed JSON", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a",`, 400, idemapi.ProblemInvalidRequest, "the body ends inside a JSON value"},
		{"syntax error", "POST", "/v1/begin", tokA, "application/json", `{"scope" "a"}`, 400, idemapi.ProblemInvalidRequest, "malformed JSON at byte 9"},
		{"unknown field", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2","lease":5}`, 400, idemapi.ProblemInvalidRequest, "unknown field \"lease\""},
		{"unknown nested field", "POST", "/v1/complete", tokA, "application/json", `{"scope":"a","key":"k","token":1,"outcome":{"body":""}}`, 400, idemapi.ProblemInvalidRequest, "unknown field \"outcome.body\""},
		{"wrong type", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":7}`, 400, idemapi.ProblemInvalidRequest, "key must be a string, not a number"},
		{"fractional ms", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2","lease_ms":1.5}`, 400, idemapi.ProblemInvalidRequest, "lease_ms must be an integer, not 1.5"},
		{"not an object", "POST", "/v1/begin", tokA, "application/json", `[1,2]`, 400, idemapi.ProblemInvalidRequest, "the body must be a JSON object, not an array"},
		{"null", "POST", "/v1/begin", tokA, "application/json", `null`, 400, idemapi.ProblemInvalidRequest, "the body must be a JSON object, not null"},
		{"two values", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2"} {}`, 400, idemapi.ProblemInvalidRequest, "unexpected data after the JSON object at byte 25"},
		{"trailing garbage", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2"}x`, 400, idemapi.ProblemInvalidRequest, "unexpected data after the JSON object at byte 24"},
		{"empty body", "POST", "/v1/begin", tokA, "application/json", ``, 400, idemapi.ProblemInvalidRequest, "the body is empty; send a JSON object"},
		{"empty key", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":""}`, 400, idemapi.ProblemInvalidRequest, "key is empty"},
		{"key over 255 bytes", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"` + long + `"}`, 400, idemapi.ProblemInvalidRequest, "key is 256 bytes, over the limit of 255"},
		{"scope over 255 bytes", "POST", "/v1/begin", tokAll, "application/json", `{"scope":"` + long + `","key":"k"}`, 400, idemapi.ProblemInvalidRequest, "scope is 256 bytes, over the limit of 255"},
		{"empty scope", "POST", "/v1/begin", tokAll, "application/json", `{"key":"k"}`, 400, idemapi.ProblemInvalidRequest, "scope is empty"},
		{"negative lease", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2","lease_ms":-1}`, 400, idemapi.ProblemInvalidRequest, "lease_ms must not be negative"},
		{"zero lease", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2","lease_ms":0}`, 400, idemapi.ProblemInvalidRequest, "lease_ms must be positive (leave it out for the server's default)"},
		{"negative window", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2","window_ms":-5}`, 400, idemapi.ProblemInvalidRequest, "window_ms must not be negative"},
		{"negative retention", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2","retention_ms":-5}`, 400, idemapi.ProblemInvalidRequest, "retention_ms must not be negative"},
		{"lease over a century", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2","lease_ms":9223372036854775807}`, 400, idemapi.ProblemInvalidRequest, "lease_ms must be at most 3153600000000 (a century)"},
		{"ms overflow", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2","lease_ms":92233720368547758070}`, 400, idemapi.ProblemInvalidRequest, "lease_ms is out of range: 92233720368547758070"},
		{"fingerprint too long", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2","fingerprint":"` + strings.Repeat("f", 1025) + `"}`, 413, idemapi.ProblemBodyTooLarge, "the body is over the limit of 1024 bytes"},
		{"negative extend", "POST", "/v1/extend", tokA, "application/json", fmt.Sprintf(`{"scope":"a","key":"k","token":%d,"lease_ms":-1}`, a.Token), 400, idemapi.ProblemInvalidRequest, "lease_ms must not be negative"},
		{"zero token", "POST", "/v1/complete", tokA, "application/json", `{"scope":"a","key":"k","token":0}`, 400, idemapi.ProblemInvalidRequest, "token must be positive, got 0"},
		{"bad base64", "POST", "/v1/complete", tokA, "application/json", `{"scope":"a","key":"k","token":1,"outcome":{"data":"!!"}}`, 400, idemapi.ProblemInvalidRequest, "outcome.data is not valid base64 (standard alphabet, padded), at byte 51"},
		{"empty point", "POST", "/v1/checkpoint", tokA, "application/json", fmt.Sprintf(`{"scope":"a","key":"k","token":%d}`, a.Token), 400, idemapi.ProblemInvalidRequest, "checkpoint point is empty"},
		{"negative sweep", "POST", "/v1/sweep", tokAll, "application/json", `{"limit":-1}`, 400, idemapi.ProblemInvalidRequest, "sweep limit must not be negative, got -1"},
		{"get without scope", "GET", "/v1/keys/k", tokA, "", "", 400, idemapi.ProblemInvalidRequest, "scope is empty"},
		{"get empty key", "GET", "/v1/keys/?scope=a", tokA, "", "", 400, idemapi.ProblemInvalidRequest, "key is empty"},
		{"list bad limit", "GET", "/v1/keys?scope=a&limit=ten", tokA, "", "", 400, idemapi.ProblemInvalidRequest, "limit must be an integer"},
		{"list limit too big", "GET", "/v1/keys?scope=a&limit=1001", tokA, "", "", 400, idemapi.ProblemInvalidRequest, "limit must be between 0 and 1000, got 1001"},
		{"list bad state", "GET", "/v1/keys?scope=a&state=done", tokA, "", "", 400, idemapi.ProblemInvalidRequest, "state \"done\" is not one of pending, completed, released"},
		{"get scope twice", "GET", "/v1/keys/k?scope=a&scope=b", tokAB, "", "", 400, idemapi.ProblemInvalidRequest, "the query parameter scope is given twice"},
		{"list cursor twice", "GET", "/v1/keys?scope=a&cursor=a&cursor=b", tokA, "", "", 400, idemapi.ProblemInvalidRequest, "the query parameter cursor is given twice"},
		{"list without scope", "GET", "/v1/keys", tokA, "", "", 400, idemapi.ProblemInvalidRequest, "scope is empty"},

		{"no token", "POST", "/v1/begin", "", "application/json", `{"scope":"a","key":"k2"}`, 401, idemapi.ProblemUnauthorized, "send Authorization: Bearer TOKEN with a token from the server's tokens file"},
		{"unknown token", "POST", "/v1/begin", "token-z", "application/json", `{"scope":"a","key":"k2"}`, 401, idemapi.ProblemUnauthorized, "send Authorization: Bearer TOKEN with a token from the server's tokens file"},
		{"token prefix", "POST", "/v1/begin", "token-a-", "application/json", `{"scope":"a","key":"k2"}`, 401, idemapi.ProblemUnauthorized, "send Authorization: Bearer TOKEN with a token from the server's tokens file"},
		{"metrics without token", "GET", "/metrics", "", "", "", 401, idemapi.ProblemUnauthorized, "send Authorization: Bearer TOKEN with a token from the server's tokens file"},
		{"get without token", "GET", "/v1/keys/k?scope=a", "", "", "", 401, idemapi.ProblemUnauthorized, "send Authorization: Bearer TOKEN with a token from the server's tokens file"},

		{"begin other scope", "POST", "/v1/begin", tokA, "application/json", `{"scope":"b","key":"k"}`, 403, idemapi.ProblemForbidden, "the token is not bound to this scope"},
		{"complete other scope", "POST", "/v1/complete", tokA, "application/json", `{"scope":"b","key":"k","token":1}`, 403, idemapi.ProblemForbidden, "the token is not bound to this scope"},
		{"release other scope", "POST", "/v1/release", tokA, "application/json", `{"scope":"b","key":"k","token":1}`, 403, idemapi.ProblemForbidden, "the token is not bound to this scope"},
		{"extend other scope", "POST", "/v1/extend", tokA, "application/json", `{"scope":"b","key":"k","token":1}`, 403, idemapi.ProblemForbidden, "the token is not bound to this scope"},
		{"checkpoint other scope", "POST", "/v1/checkpoint", tokA, "application/json", `{"scope":"b","key":"k","token":1,"point":"p"}`, 403, idemapi.ProblemForbidden, "the token is not bound to this scope"},
		{"get other scope", "GET", "/v1/keys/k?scope=b", tokA, "", "", 403, idemapi.ProblemForbidden, "the token is not bound to this scope"},
		{"delete other scope", "DELETE", "/v1/keys/k?scope=b", tokA, "", "", 403, idemapi.ProblemForbidden, "the token is not bound to this scope"},
		{"list other scope", "GET", "/v1/keys?scope=b", tokA, "", "", 403, idemapi.ProblemForbidden, "the token is not bound to this scope"},

		{"get missing", "GET", "/v1/keys/nope?scope=a", tokA, "", "", 404, idemapi.ProblemNotFound, "no record for the key in this scope"},
		{"unknown route", "GET", "/v2/begin", tokA, "", "", 404, idemapi.ProblemNoSuchRoute, "no such route; see docs/api.md"},
		{"nested key path", "GET", "/v1/keys/a/b?scope=a", tokA, "", "", 404, idemapi.ProblemNoSuchRoute, "no such route; see docs/api.md"},
		{"GET begin", "GET", "/v1/begin", tokA, "", "", 405, idemapi.ProblemMethodNotAllowed, "use POST"},
		{"PUT key", "PUT", "/v1/keys/k?scope=a", tokA, "", "", 405, idemapi.ProblemMethodNotAllowed, "use GET or DELETE"},

		{"too large", "POST", "/v1/begin", tokA, "application/json", `{"scope":"a","key":"k2","fingerprint":"` + strings.Repeat("f", 2000) + `"}`, 413, idemapi.ProblemBodyTooLarge, "the body is over the limit of 1024 bytes"},
		{"no content type", "POST", "/v1/begin", tokA, "", `{"scope":"a","key":"k2"}`, 415, idemapi.ProblemUnsupportedMediaType, "send the body as Content-Type: application/json"},
		{"text body", "POST", "/v1/begin", tokA, "text/plain", `{"scope":"a","key":"k2"}`, 415, idemapi.ProblemUnsupportedMediaType, "send the body as Content-Type: application/json"},
		{"bad media type", "POST", "/v1/begin", tokA, "application/json; =", `{"scope":"a","key":"k2"}`, 415, idemapi.ProblemUnsupportedMediaType, "send the body as Content-Type: application/json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := b.raw(t, tc.method, tc.path, tc.token, tc.contentType, tc.body)
			p := isProblem(t, r, tc.status, tc.problem)
			if tc.status == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if tc.status == 405 && r.header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
			if p.Detail != tc.detail {
				t.Errorf("detail %q, want %q", p.Detail, tc.detail)
			}
		})
	}
	// None of those touched the record.
	var rec record
	ok(t, b.call(t, "GET", "/v1/keys/k?scope=a", tokA, ""), &rec)
	if rec.State != "pending" || rec.Token != a.Token || rec.Checkpoint != nil {
		t.Fatalf("record changed by bad requests: %+v", rec)
	}
	var page list
	ok(t, b.call(t, "GET", "/v1/keys?scope=a", tokA, ""), &page)
	if len(page.Records) != 1 {
		t.Fatalf("bad requests created records: %+v", page)
	}
}

func TestContentTypeWithCharsetIsJSON(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var a acquired
	ok(t, b.raw(t, "POST", "/v1/begin", tokA, "Application/JSON; charset=utf-8", `{"scope":"a","key":"k"}`), &a)
	if a.Decision != "acquired" {
		t.Fatalf("begin = %+v", a)
	}
}

func TestStreamedBodyOverTheLimitIs413(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := `{"scope":"a","key":"k","fingerprint":"` + strings.Repeat("f", 4000) + `"}`
	req := httptest.NewRequest("POST", "/v1/begin", io.MultiReader(strings.NewReader(body))) // no length known
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tokA)
	rec := httptest.NewRecorder()
	b.srv.ServeHTTP(rec, req)
	isProblem(t, &response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}, 413, idemapi.ProblemBodyTooLarge)
}

func TestClosedStoreIs503(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if err := b.store.Close(); err != nil {
		t.Fatal(err)
	}
	isProblem(t, b.call(t, "POST", "/v1/begin", tokA, `{"scope":"a","key":"k"}`), 503, idemapi.ProblemUnavailable)
	isProblem(t, b.call(t, "GET", "/v1/keys/k?scope=a", tokA, ""), 503, idemapi.ProblemUnavailable)
}

func TestNewRefusesUnusableConfig(t *testing.T) {
	t.Parallel()
	store := memstore.New(nil)
	for name, cfg := range map[string]*idemapi.Config{
		"nil":            nil,
		"no tokens":      {},
		"no scopes":      {Tokens: map[string][]string{"t": nil}},
		"space in token": {Tokens: map[string][]string{"a b": {"s"}}},
		"negative body":  {Tokens: map[string][]string{"t": {"s"}}, MaxBody: -1},
		"negative lease": {Tokens: map[string][]string{"t": {"s"}}, DefaultLease: -time.Second},
	} {
		if _, err := idemapi.NewServer(store, cfg); err == nil || !strings.Contains(err.Error(), idem.ErrInvalid.Error()) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

// TestInvalidUTF8IsRefused: keys that differ only in bytes that are not
// UTF-8 are refused, in a body and in the path, so they never name one
// record (encoding/json would have read both as U+FFFD U+FFFD).
func TestInvalidUTF8IsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, key := range []string{"\xff\xfe", "\xfe\xff"} {
		p := isProblem(t, b.call(t, "POST", "/v1/begin", tokA, `{"scope":"a","key":"`+key+`"}`), 400, idemapi.ProblemInvalidRequest)
		if p.Detail != "key is not valid UTF-8 (byte 20)" {
			t.Errorf("begin %q: detail %q", key, p.Detail)
		}
		p = isProblem(t, b.call(t, "GET", "/v1/keys/"+url.PathEscape(key)+"?scope=a", tokA, ""), 400, idemapi.ProblemInvalidRequest)
		if p.Detail != "key is not valid UTF-8" {
			t.Errorf("get %q: detail %q", key, p.Detail)
		}
		isProblem(t, b.call(t, "DELETE", "/v1/keys/"+url.PathEscape(key)+"?scope=a", tokA, ""), 400, idemapi.ProblemInvalidRequest)
	}
	for _, key := range []string{`\udcff`, `\udcfe`} {
		p := isProblem(t, b.call(t, "POST", "/v1/begin", tokA, `{"scope":"a","key":"`+key+`"}`), 400, idemapi.ProblemInvalidRequest)
		if p.Detail != "key holds a lone UTF-16 surrogate escape, which is no character (byte 20)" {
			t.Errorf("begin %s: detail %q", key, p.Detail)
		}
	}
	p := isProblem(t, b.call(t, "GET", "/v1/keys?scope=%FF", tokA, ""), 400, idemapi.ProblemInvalidRequest)
	if p.Detail != "scope is not valid UTF-8" {
		t.Errorf("list: detail %q", p.Detail)
	}
	p = isProblem(t, b.call(t, "GET", "/v1/keys?scope=a&cursor=%FF", tokA, ""), 400, idemapi.ProblemInvalidRequest)
	if p.Detail != "cursor is not valid UTF-8" {
		t.Errorf("list cursor: detail %q", p.Detail)
	}
	if n, _ := b.store.Size(t.Context()); n != 0 {
		t.Fatalf("%d records after refused requests", n)
	}
}

// TestOutcomeLimit: with the default limits an outcome of exactly
// DefaultMaxOutcome bytes is stored and replayed whole, one byte more is a
// 413 naming the limit; the body limit is derived to fit it as base64.
func TestOutcomeLimit(t *testing.T) {
	t.Parallel()
	if idemapi.DefaultMaxOutcome != 4<<20 || idemapi.DefaultMaxBody != 5657944 || idemapi.MaxBodyFor(idemapi.DefaultMaxOutcome) != idemapi.DefaultMaxBody {
		t.Fatalf("limits %d %d", idemapi.DefaultMaxOutcome, idemapi.DefaultMaxBody)
	}
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	srv, err := idemapi.NewServer(store, &idemapi.Config{Tokens: map[string][]string{tokAll: {"*"}}})
	if err != nil {
		t.Fatal(err)
	}
	b := &bundle{store: store, srv: srv}
	at := bytes.Repeat([]byte{0xa5}, idemapi.DefaultMaxOutcome)
	a := b.acquire(t, "a", "at")
	var c completed
	ok(t, b.call(t, "POST", "/v1/complete", tokAll, completeBody("a", "at", a.Token, at)), &c)
	var r replay
	ok(t, b.call(t, "POST", "/v1/begin", tokAll, `{"scope":"a","key":"at","fingerprint":"f"}`), &r)
	if r.Decision != "replay" || !bytes.Equal(r.Outcome.Data, at) {
		t.Fatalf("replay of %d bytes: %s, %d bytes", len(at), r.Decision, len(r.Outcome.Data))
	}

	a = b.acquire(t, "a", "over")
	p := isProblem(t, b.call(t, "POST", "/v1/complete", tokAll, completeBody("a", "over", a.Token, append(at, 0))), 413, idemapi.ProblemBodyTooLarge)
	if p.Detail != "outcome.data is 4194305 bytes, over the limit of 4194304 bytes" {
		t.Fatalf("detail %q", p.Detail)
	}
	var rec record
	ok(t, b.call(t, "GET", "/v1/keys/over?scope=a", tokAll, ""), &rec)
	if rec.State != "pending" {
		t.Fatalf("record after a refused complete: %+v", rec)
	}
}

// TestOutcomeLimitConfigured: MaxOutcome alone derives the body limit;
// MaxBody alone caps the outcome at 3/4 of it; a MaxBody too small for the
// MaxOutcome given is refused.
func TestOutcomeLimitConfigured(t *testing.T) {
	t.Parallel()
	tokens := map[string][]string{tokAll: {"*"}}
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	srv, err := idemapi.NewServer(store, &idemapi.Config{Tokens: tokens, MaxOutcome: 3000})
	if err != nil {
		t.Fatal(err)
	}
	b := &bundle{store: store, srv: srv}
	a := b.acquire(t, "a", "at")
	ok(t, b.call(t, "POST", "/v1/complete", tokAll, completeBody("a", "at", a.Token, make([]byte, 3000))), new(completed))
	a = b.acquire(t, "a", "over")
	p := isProblem(t, b.call(t, "POST", "/v1/complete", tokAll, completeBody("a", "over", a.Token, make([]byte, 3001))), 413, idemapi.ProblemBodyTooLarge)
	if p.Detail != "outcome.data is 3001 bytes, over the limit of 3000 bytes" {
		t.Fatalf("detail %q", p.Detail)
	}
	// The derived body limit: MaxBodyFor(3000) = 4000 + 65536.
	big := `{"scope":"a","key":"k","fingerprint":"` + strings.Repeat("f", 69537-len(`{"scope":"a","key":"k","fingerprint":""}`)) + `"}`
	p = isProblem(t, b.call(t, "POST", "/v1/begin", tokAll, big), 413, idemapi.ProblemBodyTooLarge)
	if p.Detail != "the body is over the limit of 69536 bytes" {
		t.Fatalf("detail %q", p.Detail)
	}

	srv, err = idemapi.NewServer(store, &idemapi.Config{Tokens: tokens, MaxBody: 4000})
	if err != nil {
		t.Fatal(err)
	}
	b = &bundle{store: store, srv: srv}
	a = b.acquire(t, "b", "over")
	p = isProblem(t, b.call(t, "POST", "/v1/complete", tokAll, `{"scope":"b","key":"over","token":`+fmt.Sprint(a.Token)+`,"outcome":{"data":"`+strings.Repeat("A", 4004)+`"}}`), 413, idemapi.ProblemBodyTooLarge)
	if p.Detail != "the body is over the limit of 4000 bytes" {
		t.Fatalf("detail %q", p.Detail)
	}

	_, err = idemapi.NewServer(store, &idemapi.Config{Tokens: tokens, MaxOutcome: 3000, MaxBody: 69535})
	if !errors.Is(err, idem.ErrInvalid) || !strings.Contains(err.Error(), "make it at least 69536") {
		t.Fatalf("MaxBody below MaxBodyFor(MaxOutcome): %v", err)
	}
}
