package idemapi_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemclient"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/storetest"
)

// remote serves store through the API on an httptest server and returns
// an idemclient of it bound to every scope.
func remote(t *testing.T, store idem.Store, cfg *idemapi.Config) *idemclient.Client {
	t.Helper()
	if cfg == nil {
		cfg = &idemapi.Config{}
	}
	cfg.Tokens = map[string][]string{"ops": {idemapi.AllScopes}}
	srv, err := idemapi.NewServer(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	c, err := idemclient.New(hs.URL, "ops", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestConformanceThroughClient runs the store suite through idemclient and
// the server in one process: the schema both sides use is one. Real
// clock: durations travel as whole milliseconds, so a manual clock's
// nanosecond steps would not survive the trip.
func TestConformanceThroughClient(t *testing.T) {
	t.Parallel()
	// The server's store judges time by the suite's manual clock: with the
	// real one, a loaded machine let short windows pass before the suite
	// looked (Sweep found records expired too early).
	storetest.Run(t, func(t *testing.T, clock idem.Clock) idem.Store {
		store := memstore.New(&memstore.Config{Clock: clock})
		t.Cleanup(func() { _ = store.Close() })
		return remote(t, store, nil)
	}, &storetest.Options{Resolution: time.Millisecond})
}

// TestClientErrorsSayItOnce: the errors a client gets from the real server
// name the operation, status, problem and the server's sentence, once.
func TestClientErrorsSayItOnce(t *testing.T) {
	t.Parallel()
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	c := remote(t, store, nil)
	ctx := context.Background()
	begin := &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Minute, Window: time.Hour}
	res, err := c.Begin(ctx, begin)
	if err != nil || res.Decision != idem.Acquired {
		t.Fatalf("begin: %+v, %v", res, err)
	}
	token := res.Record.Token
	if _, err := c.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: token}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		err  error
		is   error
		want string
	}{
		{second(c.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: token})), idem.ErrCompleted,
			"idemclient: complete: 409 completed: the key already holds an outcome, which is never replaced"},
		{c.Release(ctx, &idem.ReleaseParams{Scope: "s", Key: "k", Token: token}), idem.ErrCompleted,
			"idemclient: release: 409 completed: the key already holds an outcome, which is never replaced"},
		{c.Release(ctx, &idem.ReleaseParams{Scope: "s", Key: "nope", Token: 1}), idem.ErrLeaseLost,
			"idemclient: release: 409 lease-lost: the token no longer owns the key: its lease was taken over, or the key was released or deleted"},
		{second(c.Get(ctx, &idem.KeyParams{Scope: "s", Key: "nope"})), idem.ErrNotFound,
			"idemclient: get: 404 not-found: no record for the key in this scope"},
	} {
		if !errors.Is(tc.err, tc.is) || tc.err.Error() != tc.want {
			t.Errorf("error %q, want %q wrapping %v", tc.err, tc.want, tc.is)
		}
	}
	if res, err := c.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "other", Lease: time.Minute, Window: time.Hour}); err != nil || res.Decision != idem.Mismatch {
		t.Errorf("begin with another fingerprint: %+v, %v", res, err)
	}
}

func second[T any](_ T, err error) error { return err }

// TestKeySecret: with Config.KeySecret the store holds the digests an
// idem.Ledger with the same secret makes, never the raw keys; every call
// by raw key works, and a list shows digests.
func TestKeySecret(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret")
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	c := remote(t, store, &idemapi.Config{KeySecret: secret})
	ctx := context.Background()
	ledger, err := idem.New(store, &idem.Config{KeySecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	const key = "order-42"
	digest := ledger.StoredKey(key)
	if digest == key {
		t.Fatal("no digest")
	}

	res, err := c.Begin(ctx, &idem.BeginParams{Scope: "s", Key: key, Fingerprint: "f", Lease: time.Minute, Window: time.Hour})
	if err != nil || res.Decision != idem.Acquired {
		t.Fatalf("begin: %+v, %v", res, err)
	}
	if _, err := c.Extend(ctx, &idem.ExtendParams{Scope: "s", Key: key, Token: res.Record.Token, Lease: time.Minute}); err != nil {
		t.Fatalf("extend: %v", err)
	}
	if err := c.Checkpoint(ctx, &idem.CheckpointParams{Scope: "s", Key: key, Token: res.Record.Token, Point: "p"}); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if _, err := c.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: key, Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte("done")}}); err != nil {
		t.Fatalf("complete: %v", err)
	}
	// The store holds the digest only.
	if _, err := store.Get(ctx, &idem.KeyParams{Scope: "s", Key: key}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("the store holds the raw key: %v", err)
	}
	if rec, err := ledger.Get(ctx, "s", key); err != nil || rec.Key != digest || string(rec.Outcome.Data) != "done" {
		t.Fatalf("the ledger with the same secret: %+v, %v", rec, err)
	}
	// Get by raw key answers the raw key; list shows the digest.
	if rec, err := c.Get(ctx, &idem.KeyParams{Scope: "s", Key: key}); err != nil || rec.Key != key || string(rec.Outcome.Data) != "done" {
		t.Fatalf("get: %+v, %v", rec, err)
	}
	page, err := c.List(ctx, &idem.ListParams{Scope: "s"})
	if err != nil || len(page.Records) != 1 || page.Records[0].Key != digest {
		t.Fatalf("list: %+v, %v", page, err)
	}
	if res, err := c.Begin(ctx, &idem.BeginParams{Scope: "s", Key: key, Fingerprint: "f", Lease: time.Minute, Window: time.Hour}); err != nil || res.Decision != idem.Replay || string(res.Record.Outcome.Data) != "done" {
		t.Fatalf("begin again: %+v, %v", res, err)
	}
	if err := c.Delete(ctx, &idem.KeyParams{Scope: "s", Key: key}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if n, _ := store.Size(ctx); n != 0 {
		t.Fatalf("%d records after delete", n)
	}
	// Release by raw key too.
	res, err = c.Begin(ctx, &idem.BeginParams{Scope: "s", Key: key, Fingerprint: "f", Lease: time.Minute, Window: time.Hour})
	if err != nil || res.Decision != idem.Acquired {
		t.Fatalf("begin after delete: %+v, %v", res, err)
	}
	if err := c.Release(ctx, &idem.ReleaseParams{Scope: "s", Key: key, Token: res.Record.Token}); err != nil {
		t.Fatalf("release: %v", err)
	}
	if rec, err := ledger.Get(ctx, "s", key); err != nil || rec.State != idem.StateReleased {
		t.Fatalf("after release: %+v, %v", rec, err)
	}
}

// TestMountedUnderPrefix: the server mounted with http.StripPrefix on a
// service's mux serves an idemclient whose base URL has the prefix, keys
// that need escaping included; the service's own routes stay its own.
func TestMountedUnderPrefix(t *testing.T) {
	t.Parallel()
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	api, err := idemapi.NewServer(store, &idemapi.Config{Tokens: map[string][]string{"tok": {"s"}}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ledger/", http.StripPrefix("/ledger", api))
	mux.HandleFunc("/v1/begin", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "the service's", http.StatusTeapot) })
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	c, err := idemclient.New(hs.URL+"/ledger", "tok", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()
	for _, key := range []string{"k", "a/b", "100%", "日本"} {
		res, err := c.Begin(ctx, &idem.BeginParams{Scope: "s", Key: key, Lease: time.Minute, Window: time.Hour})
		if err != nil || res.Decision != idem.Acquired {
			t.Fatalf("begin %q: %+v, %v", key, res, err)
		}
		if _, err := c.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: key, Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte(key)}}); err != nil {
			t.Fatalf("complete %q: %v", key, err)
		}
		if rec, err := c.Get(ctx, &idem.KeyParams{Scope: "s", Key: key}); err != nil || string(rec.Outcome.Data) != key {
			t.Fatalf("get %q: %+v, %v", key, rec, err)
		}
	}
	if n, _ := store.Size(ctx); n != 4 {
		t.Fatalf("%d records, want 4", n)
	}
	resp, err := http.Post(hs.URL+"/v1/begin", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusTeapot {
		t.Fatalf("the service's own route answered %d", resp.StatusCode)
	}
}
