package idemhttp_test

import (
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
)

// TestTransportThroughMiddleware runs the client Transport against a server
// behind the Middleware whose handler fails twice with 503 and whose
// network then loses the response of the run that succeeded: the effect
// happens once and the client still gets its outcome, as a replay.
func TestTransportThroughMiddleware(t *testing.T) {
	t.Parallel()
	store := memstore.New(nil)
	ledger, err := idem.New(store, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ledger.Close() })

	var runs, effects atomic.Int32
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) <= 2 {
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return
		}
		effects.Add(1) // the side effect that must happen once
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"order":"ord_1"}`)
	})
	server := idemhttp.Middleware(ledger, nil)(app)

	var (
		mu      sync.Mutex
		keys    []string
		dropped atomic.Bool
	)
	// The network: runs the server, then loses the first 201 on the way
	// back by closing the connection instead of writing it.
	network := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		keys = append(keys, r.Header.Get(idemhttp.HeaderKey))
		mu.Unlock()
		rec := httptest.NewRecorder()
		server.ServeHTTP(rec, r)
		if rec.Code == http.StatusCreated && dropped.CompareAndSwap(false, true) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				panic(err)
			}
			conn.Close()
			return
		}
		maps.Copy(w.Header(), rec.Header())
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
	})
	srv := httptest.NewServer(network)
	t.Cleanup(srv.Close)

	c := trClient(t, idemhttp.TransportConfig{MaxAttempts: 5})
	resp, err := c.Post(srv.URL+"/orders", "application/json", strings.NewReader(`{"sku":"A1"}`))
	if err != nil {
		t.Fatal(err)
	}
	body := trReadAll(t, resp)
	if resp.StatusCode != http.StatusCreated || body != `{"order":"ord_1"}` {
		t.Fatalf("got %d %q, want 201 and the order", resp.StatusCode, body)
	}
	if got := resp.Header.Get(idemhttp.HeaderReplayed); got != "true" {
		t.Fatalf("%s: %q, want true (the first 201 was lost)", idemhttp.HeaderReplayed, got)
	}
	if e, r := effects.Load(), runs.Load(); e != 1 || r != 3 {
		t.Fatalf("%d effects over %d handler runs, want 1 over 3", e, r)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(keys) != 4 {
		t.Fatalf("%d attempts reached the server, want 4 (503, 503, lost 201, replay)", len(keys))
	}
	for _, k := range keys {
		if k != keys[0] || k == "" {
			t.Fatalf("keys %q, want one key throughout", keys)
		}
	}
}
