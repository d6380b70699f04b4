package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// TestServeKeySecretFile: with --key-secret-file serve stores the digests
// idem.Config.KeySecret makes (the file's trailing newline is not part of
// the secret); raw keys keep working and a list shows digests. An empty
// secret file stops serve.
func TestServeKeySecretFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secret := filepath.Join(dir, "key-secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, dir, "--listen", "127.0.0.1:0", "--store", "mem:", "--tokens", writeTokens(t, dir), "--key-secret-file", secret, "--log-level", "error")
	if lines := p.next(t) + "\n" + p.next(t); !strings.Contains(lines, "idem serve: keys are stored as HMAC-SHA256 digests (--key-secret-file "+secret+")") {
		t.Errorf("the startup lines do not say keys are digested:\n%s", lines)
	}
	ctx := context.Background()
	c := newRemote(t, "http://"+p.addr, "billing-0123456789")
	res, err := c.Begin(ctx, &idem.BeginParams{Scope: "billing", Key: "order-42", Fingerprint: "f", Lease: time.Minute, Window: time.Hour})
	if err != nil || res.Decision != idem.Acquired {
		t.Fatalf("begin: %+v, %v", res, err)
	}
	if _, err := c.Complete(ctx, &idem.CompleteParams{Scope: "billing", Key: "order-42", Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte("ok")}}); err != nil {
		t.Fatal(err)
	}
	if rec, err := c.Get(ctx, &idem.KeyParams{Scope: "billing", Key: "order-42"}); err != nil || rec.Key != "order-42" || string(rec.Outcome.Data) != "ok" {
		t.Fatalf("get by raw key: %+v, %v", rec, err)
	}
	ledger, err := idem.New(memstore.New(nil), &idem.Config{KeySecret: []byte("s3cret")})
	if err != nil {
		t.Fatal(err)
	}
	page, err := c.List(ctx, &idem.ListParams{Scope: "billing"})
	if err != nil || len(page.Records) != 1 || page.Records[0].Key != ledger.StoredKey("order-42") {
		t.Fatalf("list: %+v, %v; want the digest %s", page, err, ledger.StoredKey("order-42"))
	}

	empty := filepath.Join(dir, "empty-secret")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runIdem(t, dir, "serve", "--listen", "127.0.0.1:0", "--store", "mem:", "--key-secret-file", empty)
	if code != 1 || !strings.Contains(stderr, "--key-secret-file "+empty+" is empty") {
		t.Fatalf("empty secret: exit %d, stderr %s", code, stderr)
	}
	_, stderr, code = runIdem(t, dir, "serve", "--listen", "127.0.0.1:0", "--store", "mem:", "--key-secret-file", filepath.Join(dir, "missing"))
	if code != 1 || !strings.Contains(stderr, "--key-secret-file") || !strings.Contains(stderr, "no such file") {
		t.Fatalf("missing secret: exit %d, stderr %s", code, stderr)
	}
}

// TestServeHelpKeySecretAndLimits: --help documents the key secret file
// and the body limit derived from the outcome limit.
func TestServeHelpKeySecretAndLimits(t *testing.T) {
	t.Parallel()
	out, _, code := runIdem(t, t.TempDir(), "serve", "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"--key-secret-file FILE", "HMAC-SHA256", "an empty one is refused", "(default 5657944: an outcome of 4 MiB"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}
