package idemhttp_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
)

// storeOutcome completes key in the scope the middleware gives post(key,
// body) with out, as another writer would.
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
