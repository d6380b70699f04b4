package main

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemclient"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/storetest"
)

// The tokens of the idemclient tests: one bound to every scope (the suite
// makes up scopes and sweeps), one bound to "billing" only.
const (
	opsToken     = "conformance-ops-0123456789"
	billingToken = "conformance-billing-0123456789"
)

// startMemServe starts `idem serve` on a fresh mem: store, with the
// background sweeper slowed down so that only the test's Sweeps remove
// records (testSweep counts them). It returns the base URL of a proxy to
// it that checks every exchange against docs/openapi.yaml.
func startMemServe(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(opsToken+" *\n"+billingToken+" billing\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, dir, "--listen", "127.0.0.1:0", "--store", "mem:", "--tokens", tokens,
		"--sweep-interval", "24h", "--log-level", "error")
	return checkedProxy(t, "http://"+p.addr)
}

func newRemote(t *testing.T, base, token string) *idemclient.Client {
	t.Helper()
	c, err := idemclient.New(base, token, nil)
	if err != nil {
		t.Fatalf("idemclient.New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestIdemclientConformance runs the store suite through idemclient against
// the real `idem serve` process. Every case gets a server process of its
// own: Sweep spans the whole store, and testSweep counts what it removes.
func TestIdemclientConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T, _ idem.Clock) idem.Store {
		return newRemote(t, startMemServe(t), opsToken)
	}, &storetest.Options{RealClock: true})
}

// TestIdemclientAgainstServe checks the error mapping and the key encoding
// against the real server, not a fake of it.
func TestIdemclientAgainstServe(t *testing.T) {
	t.Parallel()
	base := startMemServe(t)
	ctx := context.Background()
	ops, billing := newRemote(t, base, opsToken), newRemote(t, base, billingToken)
	stranger := newRemote(t, base, "no-such-token")
	begin := func(scope, key, fp string) *idem.BeginParams {
		return &idem.BeginParams{Scope: scope, Key: key, Fingerprint: fp, Lease: time.Minute, Window: time.Hour}
	}

	if _, err := stranger.Begin(ctx, begin("billing", "k", "f")); !errors.Is(err, idemclient.ErrUnauthorized) {
		t.Errorf("unknown token: %v, want ErrUnauthorized", err)
	}
	if _, err := billing.Begin(ctx, begin("shipping", "k", "f")); !errors.Is(err, idemclient.ErrForbidden) {
		t.Errorf("token of another scope: %v, want ErrForbidden", err)
	}
	if _, err := billing.Sweep(ctx, &idem.SweepParams{}); !errors.Is(err, idemclient.ErrForbidden) {
		t.Errorf("Sweep with a token not bound to *: %v, want ErrForbidden", err)
	}
	if _, err := ops.Sweep(ctx, &idem.SweepParams{}); err != nil {
		t.Errorf("Sweep with the * token: %v", err)
	}
	var pe *idemclient.ProblemError
	if _, err := billing.Get(ctx, &idem.KeyParams{Scope: "billing", Key: "missing"}); !errors.Is(err, idem.ErrNotFound) || !errors.As(err, &pe) || pe.Status != 404 || pe.Name != "not-found" {
		t.Errorf("Get of a missing key: %v, want a 404 not-found problem", err)
	}

	// Keys that need escaping reach the server as themselves.
	for _, key := range []string{"a/b", "100%", "sp ace", "q?x=1#f", ".", "..", "日本", "a%2Fb"} {
		res, err := billing.Begin(ctx, begin("billing", key, "f"))
		if err != nil || res.Decision != idem.Acquired {
			t.Fatalf("Begin(%q): %+v, %v", key, res, err)
		}
		if _, err := billing.Complete(ctx, &idem.CompleteParams{Scope: "billing", Key: key, Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte(key)}}); err != nil {
			t.Fatalf("Complete(%q): %v", key, err)
		}
		rec, err := billing.Get(ctx, &idem.KeyParams{Scope: "billing", Key: key})
		if err != nil || rec.Key != key || string(rec.Outcome.Data) != key {
			t.Errorf("Get(%q): %+v, %v", key, rec, err)
		}
		if res, err := billing.Begin(ctx, begin("billing", key, "other")); err != nil || res.Decision != idem.Mismatch {
			t.Errorf("Begin(%q) with another fingerprint: %+v, %v; want mismatch", key, res, err)
		}
		if err := billing.Delete(ctx, &idem.KeyParams{Scope: "billing", Key: key}); err != nil {
			t.Errorf("Delete(%q): %v", key, err)
		}
	}
	// An outcome of the documented limit (4 MiB) goes through serve's
	// default body limit; one byte more is refused naming the limit.
	res, err := billing.Begin(ctx, begin("billing", "at-limit", "f"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := billing.Complete(ctx, &idem.CompleteParams{Scope: "billing", Key: "at-limit", Token: res.Record.Token, Outcome: idem.Outcome{Data: make([]byte, 4<<20)}}); err != nil {
		t.Errorf("an outcome of 4 MiB: %v", err)
	}
	res, err = billing.Begin(ctx, begin("billing", "over-limit", "f"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = billing.Complete(ctx, &idem.CompleteParams{Scope: "billing", Key: "over-limit", Token: res.Record.Token, Outcome: idem.Outcome{Data: make([]byte, 4<<20+1)}})
	if want := "idemclient: complete: 413 body-too-large: outcome.data is 4194305 bytes, over the limit of 4194304 bytes"; err == nil || err.Error() != want {
		t.Errorf("an outcome of 4 MiB + 1: %v, want %q", err, want)
	}
	// The server's limit on bodies is ErrInvalid, with its words.
	res, err = billing.Begin(ctx, begin("billing", "big", "f"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = billing.Complete(ctx, &idem.CompleteParams{Scope: "billing", Key: "big", Token: res.Record.Token, Outcome: idem.Outcome{Data: make([]byte, 5<<20)}})
	if !errors.Is(err, idem.ErrInvalid) || !errors.As(err, &pe) || pe.Name != "body-too-large" {
		t.Errorf("a 5 MiB outcome: %v, want a body-too-large ErrInvalid", err)
	}
}

// TestIdemclientLedger runs the ledger's Do through a remote server: the
// second call replays the first one's outcome.
func TestIdemclientLedger(t *testing.T) {
	t.Parallel()
	ledger, err := idem.New(newRemote(t, startMemServe(t), billingToken), nil)
	if err != nil {
		t.Fatal(err)
	}
	runs := 0
	fn := func(ctx context.Context, c *idem.Claim) (idem.Outcome, error) {
		runs++
		return idem.Outcome{Data: []byte("charged"), Meta: map[string]string{"status": "201"}}, nil
	}
	for i := range 3 {
		res, err := ledger.Do(context.Background(), "billing", "order-7", "amount=500", fn)
		if err != nil || string(res.Outcome.Data) != "charged" || res.Replayed != (i > 0) {
			t.Fatalf("Do %d: %+v, %v", i, res, err)
		}
	}
	if _, err := ledger.Do(context.Background(), "billing", "order-7", "amount=900", fn); !errors.Is(err, idem.ErrFingerprintMismatch) {
		t.Errorf("Do with another fingerprint: %v, want ErrFingerprintMismatch", err)
	}
	if runs != 1 {
		t.Errorf("the function ran %d times, want 1", runs)
	}
}

// BenchmarkIdemclientCycle measures one begin + complete (100-byte outcome)
// through idemclient and loopback HTTP to the API handler over a mem:
// store, with GOMAXPROCS*4 concurrent callers. ns/op is per cycle.
func BenchmarkIdemclientCycle(b *testing.B) {
	h, err := idemapi.NewServer(memstore.New(nil), &idemapi.Config{Tokens: map[string][]string{opsToken: {"bench"}}})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	c, err := idemclient.New(srv.URL, opsToken, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, payload := context.Background(), make([]byte, 100)
	var n atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := fmt.Sprintf("key-%d", n.Add(1))
			res, err := c.Begin(ctx, &idem.BeginParams{Scope: "bench", Key: key, Fingerprint: "f", Lease: time.Minute, Window: time.Hour})
			if err != nil || res.Decision != idem.Acquired {
				b.Errorf("Begin: %+v, %v", res, err)
				return
			}
			if _, err := c.Complete(ctx, &idem.CompleteParams{Scope: "bench", Key: key, Token: res.Record.Token, Outcome: idem.Outcome{Data: payload}}); err != nil {
				b.Errorf("Complete: %v", err)
				return
			}
		}
	})
}
