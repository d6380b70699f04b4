package idemapi_test

import (
	"encoding/json"
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

var fuzzPaths = []string{"/v1/begin", "/v1/complete", "/v1/release", "/v1/extend", "/v1/checkpoint", "/v1/sweep"}

// FuzzHandler sends arbitrary bodies to every POST endpoint: the answer is
// never a 5xx and always JSON or problem+json. The store is shared across
// inputs so that later inputs meet records earlier ones made.
func FuzzHandler(f *testing.F) {
	for i, body := range []string{
		`{"scope":"a","key":"k","fingerprint":"f","lease_ms":1000,"window_ms":60000,"retention_ms":0}`,
		`{"scope":"a","key":"k","token":1,"outcome":{"data":"AAE=","meta":{"s":"200"}}}`,
		`{"scope":"a","key":"k","token":1}`,
		`{"scope":"a","key":"k","token":1,"lease_ms":500}`,
		`{"scope":"a","key":"k","token":1,"point":"p","data":"AA=="}`,
		`{"limit":3}`,
	} {
		f.Add(uint8(i), "application/json", []byte(body))
	}
	f.Add(uint8(0), "application/json", []byte(`{"scope":"a","key":"k","lease_ms":-1}`))
	f.Add(uint8(1), "application/json", []byte(`{"scope":"a","key":"k","token":1,"outcome":{"data":"!"}}`))
	f.Add(uint8(0), "text/plain", []byte(`{}`))
	f.Add(uint8(2), "application/json", []byte(`{"scope":"a","key":"k","token":1}{}`))
	f.Add(uint8(3), "application/json", []byte(`{"scope":"a","key":"k","token":9223372036854775807,"lease_ms":3153600000000}`))
	f.Add(uint8(0), "application/json", []byte("{\"scope\":\"a\",\"key\":\"\xff\"}"))
	f.Add(uint8(0), "application/json", []byte(`{"scope":"a","KEY":"k"}`))
	f.Add(uint8(0), "application/json", []byte(`{"scope":"a","key":"k","key":"l"}`))
	f.Add(uint8(0), "application/json", []byte(`{"scope":"a","key":"\udcff"}`))
	f.Add(uint8(1), "application/json", []byte(`{"scope":"a","key":"k","token":1,"outcome":{"data":"AA\nE=","meta":{"a":"1","a":"2"}}}`))
	f.Add(uint8(1), "application/json", []byte(`{"scope":"a","key":"k","token":1,"outcome":[]}`))

	store := memstore.New(nil)
	f.Cleanup(func() { _ = store.Close() })
	srv, err := idemapi.NewServer(store, &idemapi.Config{Tokens: map[string][]string{"t": {"*"}}, MaxBody: 4096})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, route uint8, contentType string, body []byte) {
		req := httptest.NewRequest(http.MethodPost, fuzzPaths[int(route)%len(fuzzPaths)], strings.NewReader(string(body)))
		req.Header.Set("Content-Type", contentType)
		req.Header.Set("Authorization", "Bearer t")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		ct := rec.Header().Get("Content-Type")
		if ct != "application/json" && ct != "application/problem+json" {
			t.Fatalf("Content-Type %q for %q", ct, body)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("answer is not JSON: %q", rec.Body)
		}
		if ct == "application/problem+json" {
			var p idemapi.Problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Status != rec.Code || !strings.HasPrefix(p.Type, idemapi.ProblemBase) {
				t.Fatalf("bad problem %q (%v)", rec.Body, err)
			}
		}
	})
}

// FuzzParseTokens: any input parses or fails with ErrInvalid, never
// panics; what parses holds usable tokens and scopes.
func FuzzParseTokens(f *testing.F) {
	f.Add("# operators\nsecret-1 *\n\nsecret-2 billing,orders\n")
	f.Add("tok a,,b\n")
	f.Add("tok\n")
	f.Add("tok a b\n")
	f.Add("t a\nt b\n")
	f.Add("t\xff a\n")
	f.Add("t \xff\n")
	f.Add("\ttok\tscope  \r\n")
	f.Fuzz(func(t *testing.T, in string) {
		tokens, err := idemapi.ParseTokens(strings.NewReader(in))
		if err != nil {
			if !strings.Contains(err.Error(), idem.ErrInvalid.Error()) || !strings.Contains(err.Error(), "line ") {
				t.Fatalf("error %q lacks ErrInvalid or the line", err)
			}
			return
		}
		for tok, scopes := range tokens {
			if tok == "" || strings.ContainsAny(tok, " \t\r\n") || len(scopes) == 0 {
				t.Fatalf("unusable entry %q -> %q", tok, scopes)
			}
			for _, s := range scopes {
				if s == "" || len(s) > idem.MaxScopeLen || strings.Contains(s, ",") {
					t.Fatalf("bad scope %q", s)
				}
			}
		}
		if len(tokens) > 0 {
			if _, err := idemapi.NewServer(memstore.New(nil), &idemapi.Config{Tokens: tokens}); err != nil {
				t.Fatalf("parsed tokens refused by New: %v", err)
			}
		}
	})
}

// FuzzKeysRequest sends arbitrary key paths and query strings to the
// record and listing endpoints: never a 5xx, always JSON, problem+json or
// an empty 204.
func FuzzKeysRequest(f *testing.F) {
	f.Add(true, "DELETE", "k", "scope=a")
	f.Add(false, "GET", "", "scope=a&state=pending&limit=2&cursor=k1")
	f.Add(true, "GET", "a%2Fb", "scope=a")
	f.Add(true, "GET", "%ff", "scope=%ff")
	f.Add(false, "GET", "", "scope=a&limit=-1")
	f.Add(false, "GET", "", "scope=a;b&limit=1e3")

	store := memstore.New(nil)
	f.Cleanup(func() { _ = store.Close() })
	srv, err := idemapi.NewServer(store, &idemapi.Config{Tokens: map[string][]string{"t": {"*"}}})
	if err != nil {
		f.Fatal(err)
	}
	ctx := f.Context()
	for _, k := range []string{"k", "k1", "k2", "a/b"} {
		res, err := store.Begin(ctx, &idem.BeginParams{Scope: "a", Key: k, Lease: time.Minute, Window: time.Hour})
		if err != nil {
			f.Fatal(err)
		}
		if _, err := store.Complete(ctx, &idem.CompleteParams{Scope: "a", Key: k, Token: res.Record.Token}); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, record bool, method, key, query string) {
		path := "/v1/keys"
		if record {
			path += "/" + key
		}
		u, err := url.ParseRequestURI(path + "?" + query)
		if err != nil {
			return // net/http refuses it before any handler runs
		}
		req := &http.Request{Method: method, URL: u, Header: http.Header{"Authorization": {"Bearer t"}}, Body: http.NoBody}
		req = req.WithContext(t.Context())
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("status %d for %s %s: %s", rec.Code, method, u, rec.Body)
		}
		if rec.Code == http.StatusNoContent {
			return
		}
		if ct := rec.Header().Get("Content-Type"); (ct != "application/json" && ct != "application/problem+json") || !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %s: %q %q", method, u, ct, rec.Body)
		}
	})
}
