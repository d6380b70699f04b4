package idem_test

import (
	"context"
	"testing"

	"github.com/idemkit/idem"
)

func TestKeyContext(t *testing.T) {
	t.Parallel()
	if k, ok := idem.KeyFrom(context.Background()); ok || k != "" {
		t.Fatalf("KeyFrom(background) = %q, %v; want none", k, ok)
	}
	ctx := idem.WithKey(context.Background(), "order-1/1/reserve")
	if k, ok := idem.KeyFrom(ctx); !ok || k != "order-1/1/reserve" {
		t.Fatalf("KeyFrom = %q, %v", k, ok)
	}
	if _, ok := idem.KeyFrom(idem.WithKey(ctx, "")); ok {
		t.Fatal("an empty key counts as a key")
	}
}
