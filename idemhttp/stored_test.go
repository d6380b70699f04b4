package idemhttp_test

import (
	"context"
	"net/http"
	"slices"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
)

// storeOutcome completes key in the scope the middleware gives post(key,
// body) with out, as an earlier version (or another writer) would have.
func storeOutcome(t *testing.T, b *bundle, key, body string, out idem.Outcome) {
	t.Helper()
	fp := idemhttp.Fingerprint(post(key, body), []string{"Content-Type"}, []byte(body))
	claim, err := b.ledger.Begin(context.Background(), "9:anonymous POST /orders", key, fp)
	if err != nil {
		t.Fatal(err)
	}
	if err := claim.Complete(context.Background(), out); err != nil {
		t.Fatal(err)
	}
}

// TestReplaysEarlierForm: a response stored in the form of earlier
// versions (status and headers in Meta, Data the body) replays as it did,
// and StoredResponse reads it.
func TestReplaysEarlierForm(t *testing.T) {
	t.Parallel()
	b := setup(t, false, nil)
	h := b.serve(nil, created)
	out := idem.Outcome{Data: []byte("stored earlier"), Meta: map[string]string{
		"status": "202", "header:Location": "/a\n/b", "header:Content-Type": "text/plain"}}
	storeOutcome(t, b, "old", `{"a":1}`, out)

	res := do(h, post("old", `{"a":1}`))
	if got := readBody(t, res); got != "stored earlier" || res.StatusCode != http.StatusAccepted ||
		res.Header.Get(idemhttp.HeaderReplayed) != "true" || res.Header.Get(idemhttp.HeaderExpires) == "" ||
		!slices.Equal(res.Header.Values("Location"), []string{"/a", "/b"}) || res.Header.Get("Content-Type") != "text/plain" {
		t.Fatalf("replay %d %v %q", res.StatusCode, res.Header, got)
	}
	if n := b.runs.Load(); n != 0 {
		t.Fatalf("handler ran %d times", n)
	}
	status, header, body, err := idemhttp.StoredResponse(&out)
	if err != nil || status != 202 || string(body) != "stored earlier" || len(header) != 2 ||
		!slices.Equal(header["Location"], []string{"/a", "/b"}) {
		t.Fatalf("StoredResponse %d %v %q %v", status, header, body, err)
	}
}

// TestUnreadableStoredResponse: an outcome in no form this version reads
// (a later version's, say) is neither replayed as garbage nor run again.
func TestUnreadableStoredResponse(t *testing.T) {
	t.Parallel()
	b := setup(t, false, nil)
	h := b.serve(nil, created)
	for i, data := range [][]byte{nil, []byte("\x02later form"), []byte("\x01\x00\xc9\x05Link")} {
		key := "later" + string(rune('a'+i))
		storeOutcome(t, b, key, `{"a":1}`, idem.Outcome{Data: data})
		wantProblem(t, do(h, post(key, `{"a":1}`)), http.StatusServiceUnavailable, "ledger-unavailable")
		if _, _, _, err := idemhttp.StoredResponse(&idem.Outcome{Data: data}); err == nil {
			t.Fatalf("StoredResponse read %q", data)
		}
	}
	if n := b.runs.Load(); n != 0 {
		t.Fatalf("handler ran %d times", n)
	}
}

// TestNothingWrittenStoresHeaders: a handler that sets headers and writes
// nothing answers 200 with them, and so does its replay.
func TestNothingWrittenStoresHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t, false, nil)
	h := b.serve(nil, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "/orders/7")
		w.Header().Set("X-Request-Id", "not stored")
	})
	for i, want := range []string{"false", "true"} {
		res := do(h, post("empty", ""))
		if got := readBody(t, res); got != "" || res.StatusCode != http.StatusOK || res.Header.Get("Location") != "/orders/7" ||
			res.Header.Get(idemhttp.HeaderReplayed) != want {
			t.Fatalf("response %d: %d %v %q", i, res.StatusCode, res.Header, got)
		}
	}
	if n := b.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
}
