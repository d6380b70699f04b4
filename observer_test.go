package idem_test

import (
	"context"
	"strings"
	"testing"

	"github.com/idemkit/idem"
)

// Events carry their key only as a digest: the raw key's, with or without
// a KeySecret, the same on Begin and on the claim's later operations.
func TestEventKeyDigest(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]*idem.Config{"raw": nil, "secret": {KeySecret: []byte("s3cret")}} {
		b := setup(t, cfg)
		ctx := context.Background()
		claim, err := b.ledger.Begin(ctx, "s", "order-42", "fp")
		if err != nil {
			t.Fatal(err)
		}
		if err := claim.Extend(ctx, idem.DefaultLease); err != nil {
			t.Fatal(err)
		}
		if err := claim.Complete(ctx, outcome("x")); err != nil {
			t.Fatal(err)
		}
		b.events.mu.Lock()
		want := idem.KeyDigest("order-42")
		if len(b.events.events) != 3 {
			t.Fatalf("%s: %d events", name, len(b.events.events))
		}
		for _, ev := range b.events.events {
			if got := ev.KeyDigest(); got != want {
				t.Errorf("%s: %s event digest %q, want %q", name, ev.Op, got, want)
			}
		}
		if last := b.events.events[2]; last.Op != idem.OpComplete || last.Attempt != 1 {
			t.Errorf("%s: complete event %+v, want attempt 1", name, last)
		}
		b.events.mu.Unlock()
	}
	d := idem.KeyDigest("order-42")
	if !strings.HasPrefix(d, "sha256:") || len(d) != len("sha256:")+16 || strings.Contains(d, "order") {
		t.Fatalf("digest %q", d)
	}
	if idem.KeyDigest("order-43") == d {
		t.Fatal("two keys have one digest")
	}
	if (&idem.Event{Op: idem.OpSweep}).KeyDigest() != "" {
		t.Fatal("a sweep has a key digest")
	}
}
