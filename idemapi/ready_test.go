package idemapi_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/memstore"
)

// countingStore is a memory store that counts its Gets, the probe of a
// store without idem.Pinger.
type countingStore struct {
	idem.Store
	gets atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, p *idem.KeyParams) (*idem.Record, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, p)
}

// TestReadyzServer: /readyz needs no token, answers 200 while the store
// serves and 503 problem+json once it is closed, while /healthz stays 200.
func TestReadyzServer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.call(t, "GET", "/readyz", "", "")
	if r.status != 200 || string(r.body) != "ready\n" || r.header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("readyz: %d %q %q", r.status, r.body, r.header.Get("Content-Type"))
	}
	if r := b.call(t, "HEAD", "/readyz", "", ""); r.status != 200 {
		t.Fatalf("HEAD readyz: %d", r.status)
	}
	isProblem(t, b.call(t, "POST", "/readyz", "", ""), 405, idemapi.ProblemMethodNotAllowed)

	closed := memstore.New(nil)
	_ = closed.Close()
	srv, err := idemapi.NewServer(closed, &idemapi.Config{Tokens: map[string][]string{tokAll: {"*"}}})
	if err != nil {
		t.Fatal(err)
	}
	down := &bundle{clock: b.clock, store: closed, srv: srv}
	p := isProblem(t, down.call(t, "GET", "/readyz", "", ""), 503, idemapi.ProblemUnavailable)
	if p.Detail == "" {
		t.Errorf("503 without a detail: %+v", p)
	}
	if r := down.call(t, "GET", "/healthz", "", ""); r.status != 200 {
		t.Fatalf("healthz of a server whose store is closed: %d, want 200 (liveness)", r.status)
	}
}

// TestReadinessCache: one probe serves every check for CacheFor; the next
// check after it probes again and sees the store's new state.
func TestReadinessCache(t *testing.T) {
	t.Parallel()
	clock := idem.NewManualClock(start)
	mem := memstore.New(nil)
	store := &countingStore{Store: mem}
	r := idemapi.NewReadiness(store, &idemapi.ReadinessConfig{CacheFor: time.Second, Clock: clock})
	get := func() *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec
	}
	for range 5 {
		if rec := get(); rec.Code != 200 || rec.Body.String() != "ready\n" {
			t.Fatalf("readyz: %d %q", rec.Code, rec.Body)
		}
	}
	if n := store.gets.Load(); n != 1 {
		t.Fatalf("%d probes for 5 checks within CacheFor, want 1", n)
	}
	_ = mem.Close()
	if rec := get(); rec.Code != 200 {
		t.Fatalf("within CacheFor of a passed probe: %d, want the kept 200", rec.Code)
	}
	clock.Advance(time.Second)
	rec := get()
	if rec.Code != 503 || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("after the store closed: %d %q %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	if n := store.gets.Load(); n != 2 {
		t.Fatalf("%d probes, want 2", n)
	}
	if err := r.Check(context.Background()); !errors.Is(err, idem.ErrClosed) {
		t.Fatalf("Check: %v, want the store's ErrClosed", err)
	}
	rec = httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodDelete, "/readyz", nil))
	if rec.Code != 405 || rec.Header().Get("Allow") != "GET, HEAD" {
		t.Fatalf("DELETE: %d, Allow %q", rec.Code, rec.Header().Get("Allow"))
	}
}
