package watermill_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/idemkit/idem"
	idemwatermill "github.com/idemkit/idem/broker/watermill"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/store/pebblestore"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// testRepository checks Watermill's IsDuplicate contract on a ledger whose
// store judges windows by clock.
func testRepository(t *testing.T, store idem.Store, clock *idem.ManualClock) {
	ctx := context.Background()
	ledger, err := idem.New(store, &idem.Config{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	repo, err := idemwatermill.KeyRepository(ledger, "dedup", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	isDup := func(key string, want bool) {
		t.Helper()
		got, err := repo.IsDuplicate(ctx, key)
		if err != nil || got != want {
			t.Fatalf("IsDuplicate(%q) = %v, %v; want %v", key, got, err, want)
		}
	}
	isDup("a", false) // first sight: recorded
	isDup("a", true)
	isDup("b", false)
	clock.Advance(59 * time.Second)
	isDup("a", true) // within the ttl
	clock.Advance(2 * time.Second)
	isDup("a", false) // the ttl passed: a new first sight
	isDup("a", true)
	isDup("b", false) // b's ttl passed too

	rec, err := ledger.Get(ctx, "dedup", "a")
	if err != nil || rec.State != idem.StateCompleted || rec.Outcome == nil || rec.Outcome.Meta["watermill"] != "seen" {
		t.Fatalf("record of a = %+v, %v; want completed", rec, err)
	}
	if got, want := rec.Expires, clock.Now().Add(time.Minute); !got.Equal(want) {
		t.Fatalf("record of a expires at %s, want %s (ttl after it was recorded)", got, want)
	}

	// Watermill's hashers return raw digest bytes: stored by their SHA-256.
	raw := string([]byte{0xff, 0x00, 0xfe, 0x01})
	isDup(raw, false)
	isDup(raw, true)
	sum := sha256.Sum256([]byte(raw))
	stored := "sha256:" + hex.EncodeToString(sum[:])
	if got := idemwatermill.StoredKey(raw); got != stored {
		t.Fatalf("StoredKey(raw) = %q, want %q", got, stored)
	}
	if rec, err := ledger.Get(ctx, "dedup", stored); err != nil || rec.State != idem.StateCompleted {
		t.Fatalf("record of the raw key = %+v, %v", rec, err)
	}
	long := strings.Repeat("k", idem.MaxKeyLen+1)
	isDup(long, false)
	isDup(long, true)

	// A second repository on the same store (another process) shares keys.
	other, err := idemwatermill.KeyRepository(ledger, "dedup", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if dup, err := other.IsDuplicate(ctx, "a"); err != nil || !dup {
		t.Fatalf("other repository: IsDuplicate(a) = %v, %v; want true", dup, err)
	}
	// Another scope is another key space.
	sep, err := idemwatermill.KeyRepository(ledger, "dedup-2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if dup, err := sep.IsDuplicate(ctx, "a"); err != nil || dup {
		t.Fatalf("other scope: IsDuplicate(a) = %v, %v; want false", dup, err)
	}

	if _, err := repo.IsDuplicate(ctx, ""); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("empty key: err = %v, want idem.ErrInvalid", err)
	}
}

func TestKeyRepositoryMemstore(t *testing.T) {
	clock := idem.NewManualClock(epoch)
	testRepository(t, memstore.New(&memstore.Config{Clock: clock}), clock)
}

func TestKeyRepositoryPebble(t *testing.T) {
	clock := idem.NewManualClock(epoch)
	store, err := pebblestore.Open(t.TempDir(), &pebblestore.Config{Clock: clock, SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	testRepository(t, store, clock)
}

func TestKeyRepositoryInvalid(t *testing.T) {
	ledger := newLedger(t)
	for name, f := range map[string]func() error{
		"nil ledger": func() error { _, err := idemwatermill.KeyRepository(nil, "s", time.Minute); return err },
		"zero ttl":   func() error { _, err := idemwatermill.KeyRepository(ledger, "s", 0); return err },
		"empty scope": func() error {
			_, err := idemwatermill.KeyRepository(ledger, "", time.Minute)
			return err
		},
	} {
		if err := f(); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("%s: err = %v, want idem.ErrInvalid", name, err)
		}
	}
}

// The one-line switch: Watermill's Deduplicator on KeyRepository drops a
// duplicate on a real router, and two routers (two processes) sharing the
// store drop each other's duplicates, which the map repository cannot.
func TestKeyRepositoryInDeduplicator(t *testing.T) {
	store := memstore.New(nil)
	newDedup := func() message.HandlerMiddleware {
		ledger, err := idem.New(store, nil)
		if err != nil {
			t.Fatal(err)
		}
		repo, err := idemwatermill.KeyRepository(ledger, "dedup", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return (&middleware.Deduplicator{Repository: repo, KeyFactory: middleware.NewMessageHasherSHA256(1 << 20)}).Middleware
	}
	log1, log2 := &handlerLog{}, &handlerLog{}
	r1 := newRig(t, log1.handler, newDedup())
	r2 := newRig(t, log2.handler, newDedup())
	r1.publish(t, "m1", "order-1")
	r1.publish(t, "m1-again", "order-1") // same payload: the Deduplicator's key
	r2.publish(t, "m1-elsewhere", "order-1")
	r2.publish(t, "m2", "order-2")
	c1, _, _ := log1.snapshot()
	c2, _, _ := log2.snapshot()
	if !equal(c1, []string{"m1:order-1"}) || !equal(c2, []string{"m2:order-2"}) {
		t.Fatalf("router 1 ran %q, router 2 ran %q; want order-1 once in all", c1, c2)
	}
}
