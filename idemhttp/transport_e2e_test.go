package idemhttp_test

import (
	"context"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// TestTransportRetryMeetsSlowOriginal: the network loses the connection of
// a request while the server works on it, and the Transport retries with
// the same key while the original still runs. The retry converges about
// when the original finishes, not when its 30 s lease would end: the
// server makes it wait for the original and replays it (by default), or,
// with Config.Wait disabled, answers 409 with a Retry-After estimating
// the original's end (1 s here), which the Transport honours.
func TestTransportRetryMeetsSlowOriginal(t *testing.T) {
	t.Parallel()
	for name, wait := range map[string]time.Duration{"server waits": 0, "409": -1} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			inFlight := &inFlightCounter{}
			ledger, err := idem.New(memstore.New(nil), &idem.Config{Lease: 30 * time.Second, Observer: inFlight})
			if err != nil {
				t.Fatal(err)
			}
			var runs atomic.Int32
			entered, gate := make(chan struct{}), make(chan struct{})
			server := idemhttp.Middleware(ledger, &idemhttp.Config{Wait: wait})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				runs.Add(1)
				close(entered)
				<-gate // the original's work
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, `{"order":"ord_1"}`)
			}))
			var attempts atomic.Int32
			var orphan sync.WaitGroup
			t.Cleanup(orphan.Wait)
			network := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if attempts.Add(1) > 1 {
					server.ServeHTTP(w, r)
					return
				}
				// The first attempt reaches the server, whose work goes
				// on; the client's connection drops.
				orphan.Go(func() { server.ServeHTTP(httptest.NewRecorder(), r.Clone(context.WithoutCancel(r.Context()))) })
				<-entered
				conn, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					panic(err)
				}
				conn.Close()
			})
			srv := httptest.NewServer(network)
			t.Cleanup(srv.Close)

			// The original finishes once the retry has met it.
			go func() {
				deadline := time.Now().Add(10 * time.Second)
				for inFlight.n.Load() == 0 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond) // polling a condition
				}
				close(gate)
			}()
			var waits []time.Duration
			c := trClient(t, idemhttp.TransportConfig{Clock: idem.SystemClock{}, MaxAttempts: 5,
				OnRetry: func(ev idemhttp.RetryEvent) { waits = append(waits, ev.Wait) }})
			began := time.Now()
			resp, err := c.Post(srv.URL+"/orders", "application/json", strings.NewReader(`{"sku":"A1"}`))
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(began)
			if body := trReadAll(t, resp); resp.StatusCode != http.StatusCreated || body != `{"order":"ord_1"}` ||
				resp.Header.Get(idemhttp.HeaderReplayed) != "true" {
				t.Fatalf("got %d %q %q, want the original's 201 replayed", resp.StatusCode, resp.Header.Get(idemhttp.HeaderReplayed), body)
			}
			if n := runs.Load(); n != 1 {
				t.Fatalf("the handler ran %d times, want 1", n)
			}
			if took > 10*time.Second {
				t.Fatalf("the retry converged after %s, want about the original's duration (the lease is 30 s)", took)
			}
			for _, w := range waits {
				if w > 2*time.Second {
					t.Fatalf("the Transport waited %s before a retry (waits %v), want at most the 1 s estimate", w, waits)
				}
			}
			if wait < 0 && len(waits) != 2 {
				t.Fatalf("retries %v, want two (the lost connection, the 409)", waits)
			}
		})
	}
}
