package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/store/pebblestore"
)

// TestKeysKeySecretFile: on a store whose keys are kept as digests (serve
// or proxy with --key-secret-file), idem keys finds and deletes a record by
// its raw key given the same secret file, and by nothing else.
func TestKeysKeySecretFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "idem-data")
	secretFile := filepath.Join(dir, "key-secret")
	if err := os.WriteFile(secretFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := pebblestore.Open(data, &pebblestore.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ledger, err := idem.New(s, &idem.Config{KeySecret: []byte("s3cret")}) // as serve reads the file
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	claim, err := ledger.Begin(ctx, "billing", "order-42", "f", idem.WithLease(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := claim.Complete(ctx, idem.Outcome{Data: []byte("ok")}); err != nil {
		t.Fatal(err)
	}
	digest := ledger.StoredKey("order-42")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	store := "file:" + data

	out, errOut, code := runCLI(t, "keys", "show", "order-42", "--store", store, "--scope", "billing", "--key-secret-file", secretFile)
	if code != 0 || errOut != "" || !strings.Contains(out, digest) || !strings.Contains(out, "state         completed") {
		t.Fatalf("show with the secret: exit %d, stderr %q\n%s", code, errOut, out)
	}
	if _, errOut, code := runCLI(t, "keys", "show", "order-42", "--store", store, "--scope", "billing"); code != 1 || !strings.Contains(errOut, "no record for key order-42") {
		t.Errorf("show without the secret: exit %d, stderr %q; want 1, no record", code, errOut)
	}
	out, _, code = runCLI(t, "keys", "ls", "--store", store, "--scope", "billing", "--key-secret-file", secretFile)
	if code != 0 || !strings.Contains(out, digest) || strings.Contains(out, "order-42") {
		t.Errorf("ls: exit %d; want the digest, never the raw key:\n%s", code, out)
	}
	out, errOut, code = runCLI(t, "keys", "delete", "order-42", "--store", store, "--scope", "billing", "--key-secret-file", secretFile)
	if code != 0 || out != "deleted order-42 from scope billing\n" {
		t.Fatalf("delete: exit %d, %q, stderr %q", code, out, errOut)
	}
	s, err = pebblestore.Open(data, &pebblestore.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Get(ctx, &idem.KeyParams{Scope: "billing", Key: digest}); !errors.Is(err, idem.ErrNotFound) {
		t.Errorf("after delete, the digest's record: %v; want ErrNotFound", err)
	}

	if _, errOut, code := runCLI(t, "keys", "ls", "--server", "http://127.0.0.1:1", "--token", "t", "--key-secret-file", secretFile); code != 2 || !strings.Contains(errOut, "--key-secret-file is for --store") {
		t.Errorf("--server with --key-secret-file: exit %d, stderr %q; want 2", code, errOut)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runCLI(t, "keys", "show", "order-42", "--store", store, "--key-secret-file", empty); code != 1 || !strings.Contains(errOut, "is empty") {
		t.Errorf("an empty secret file: exit %d, stderr %q; want 1", code, errOut)
	}
}
