package pebblestore

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// reads runs op and returns how many records it read from Pebble.
func (b *bundle) reads(op func()) int64 {
	b.t.Helper()
	before := b.store.recordReads.Load()
	op()
	return b.store.recordReads.Load() - before
}

// checkPendingIsOnDisk asserts that key has a pending entry and that it is
// exactly the record, and index time, that Pebble holds.
func (b *bundle) checkPendingIsOnDisk(key string) {
	b.t.Helper()
	ref := recordRef("s", key)
	st := b.store.stripeOf(ref)
	st.mu.Lock()
	i := st.find(ref)
	var cached pendingRecord
	if i >= 0 {
		cached = st.pending[i]
	}
	st.mu.Unlock()
	if i < 0 {
		b.t.Fatalf("%s: no pending entry", key)
	}
	v, closer, err := b.store.db.Get(recordKey("s", key))
	if err != nil {
		b.t.Fatal(err)
	}
	defer closer.Close()
	rec, at, err := decodeRecord(v)
	if err != nil {
		b.t.Fatal(err)
	}
	if !reflect.DeepEqual(cached.rec, rec) || !cached.at.Equal(at) {
		b.t.Fatalf("%s: pending entry %+v at %v, Pebble holds %+v at %v", key, cached.rec, cached.at, rec, at)
	}
}

// TestOwnerReadsNoPebble: after Begin, the owner's Extend, Checkpoint and
// Complete (or Release) read the record from the stripe, which holds
// exactly the synced value; the completed outcome is on disk.
func TestOwnerReadsNoPebble(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	var rec *idem.Record
	if n := b.reads(func() { rec = b.acquire("k", time.Minute, time.Hour) }); n != 1 {
		t.Fatalf("Begin of a fresh key read %d records, want 1", n)
	}
	b.checkPendingIsOnDisk("k")
	n := b.reads(func() {
		if _, err := b.store.Extend(b.ctx, &idem.ExtendParams{Scope: "s", Key: "k", Token: rec.Token, Lease: time.Hour}); err != nil {
			t.Fatal(err)
		}
		b.checkPendingIsOnDisk("k")
		if err := b.store.Checkpoint(b.ctx, &idem.CheckpointParams{Scope: "s", Key: "k", Token: rec.Token, Point: "p", Data: []byte("d")}); err != nil {
			t.Fatal(err)
		}
		b.checkPendingIsOnDisk("k")
		if _, err := b.store.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: rec.Token, Outcome: idem.Outcome{Data: []byte("out")}}); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("Extend, Checkpoint and Complete read %d records from Pebble, want 0", n)
	}
	if got := len(b.store.stripeOf(recordRef("s", "k")).pending); got != 0 {
		t.Fatalf("%d pending entries after Complete, want 0", got)
	}
	b.reopen()
	got, err := b.store.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "k"})
	if err != nil || got.State != idem.StateCompleted || string(got.Outcome.Data) != "out" {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}

	rel := b.acquire("r", time.Minute, time.Hour)
	if n := b.reads(func() {
		if err := b.store.Release(b.ctx, &idem.ReleaseParams{Scope: "s", Key: "r", Token: rel.Token}); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("Release read %d records from Pebble, want 0", n)
	}
	var again *idem.Record
	if n := b.reads(func() { again = b.acquire("r", time.Minute, time.Hour) }); n != 1 || again.Attempts != 2 {
		t.Fatalf("Begin after Release read %d records (want 1, the released one), attempts %d (want 2)", n, again.Attempts)
	}
}

// TestMissReadsPebble: after a reopen the stripes are empty, and the owner
// of a pending record still completes, reading it from Pebble.
func TestMissReadsPebble(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	rec := b.acquire("k", time.Minute, time.Hour)
	b.reopen()
	if n := b.reads(func() {
		if _, err := b.store.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: rec.Token}); err != nil {
			t.Fatal(err)
		}
	}); n != 1 {
		t.Fatalf("Complete after reopen read %d records, want 1", n)
	}
	b.checkIndex()
}

// TestDeleteForgetsPending: a deleted pending record is gone for Begin and
// its stale owner is refused.
func TestDeleteForgetsPending(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	old := b.acquire("k", time.Hour, time.Hour)
	if err := b.store.Delete(b.ctx, &idem.KeyParams{Scope: "s", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "k"}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
	}
	if _, err := b.store.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: old.Token}); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("Complete of a deleted record: %v, want ErrLeaseLost", err)
	}
	cur := b.acquire("k", time.Hour, time.Hour) // not in flight: the record is gone
	if cur.Token <= old.Token || cur.Attempts != 1 {
		t.Fatalf("Begin after Delete: token %d (old %d), attempts %d", cur.Token, old.Token, cur.Attempts)
	}
	if err := b.store.Release(b.ctx, &idem.ReleaseParams{Scope: "s", Key: "k", Token: old.Token}); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("Release by the stale owner: %v, want ErrLeaseLost", err)
	}
	if _, err := b.store.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: cur.Token}); err != nil {
		t.Fatal(err)
	}
	b.checkIndex()
}

// TestSweepForgetsPending: Sweep removes an abandoned pending record, whose
// stale owner is then refused; an entry Sweep moves leaves the record
// consistent with its index, so it is swept when due.
func TestSweepForgetsPending(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	gone := b.acquire("gone", time.Minute, time.Hour)
	kept := b.acquire("kept", time.Minute, time.Minute)
	ext, err := b.store.Extend(b.ctx, &idem.ExtendParams{Scope: "s", Key: "kept", Token: kept.Token, Lease: 3 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(2 * time.Hour)
	if sw, err := b.store.Sweep(b.ctx, &idem.SweepParams{}); err != nil || sw.Deleted != 1 {
		t.Fatalf("Sweep: %+v, %v; want the abandoned record removed", sw, err)
	}
	if _, err := b.store.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "gone", Token: gone.Token}); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("Complete of a swept record: %v, want ErrLeaseLost", err)
	}
	if _, err := b.store.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "gone"}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("Get of a swept record: %v, want ErrNotFound", err)
	}
	if at := b.indexTime("kept"); !at.Equal(ext.RetainUntil) {
		t.Fatalf("kept's entry at %v, want its RetainUntil %v", at, ext.RetainUntil)
	}
	done, err := b.store.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "kept", Token: kept.Token})
	if err != nil {
		t.Fatal(err)
	}
	b.checkIndex()
	b.clock.Set(done.RetainUntil)
	if sw, err := b.store.Sweep(b.ctx, &idem.SweepParams{}); err != nil || sw.Deleted != 1 {
		t.Fatalf("Sweep at RetainUntil: %+v, %v", sw, err)
	}
	if n := b.countKeys(prefixIndex) + b.countKeys(prefixRecord); n != 0 {
		t.Fatalf("%d keys left", n)
	}
}

// TestStripeBounded: a stripe keeps at most pendingPerStripe small pending
// records and nothing else.
func TestStripeBounded(t *testing.T) {
	t.Parallel()
	var st stripe
	pending := &idem.Record{State: idem.StatePending}
	for i := range 3 * pendingPerStripe {
		st.remember(fmt.Appendf(nil, "ref-%d", i), pending, time.Time{}, 1)
	}
	if len(st.pending) != pendingPerStripe {
		t.Fatalf("%d entries, want %d", len(st.pending), pendingPerStripe)
	}
	if st.find(fmt.Appendf(nil, "ref-%d", 3*pendingPerStripe-1)) < 0 {
		t.Fatal("the newest entry was dropped")
	}
	st.remember([]byte("big"), pending, time.Time{}, pendingMaxValue+1)
	st.remember([]byte("done"), &idem.Record{State: idem.StateCompleted}, time.Time{}, 1)
	for _, k := range []string{"big", "done"} {
		if st.find([]byte(k)) >= 0 {
			t.Fatalf("%s was kept", k)
		}
	}
}

// TestPendingEntryIsPrivate: the records the store hands out while a key is
// pending (Begin, Extend, Checkpoint, Get) are copies: scribbling on them
// changes nothing the stripe keeps.
func TestPendingEntryIsPrivate(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	scribble := func(r *idem.Record) {
		r.Token, r.State, r.Fingerprint = -1, idem.StateReleased, "x"
		if r.Checkpoint != nil {
			r.Checkpoint.Point, r.Checkpoint.Data[0] = "x", 'x'
		}
	}
	rec := b.acquire("k", time.Minute, time.Hour)
	token := rec.Token
	scribble(rec)
	b.checkPendingIsOnDisk("k")
	ext, err := b.store.Extend(b.ctx, &idem.ExtendParams{Scope: "s", Key: "k", Token: token, Lease: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	scribble(ext)
	b.checkPendingIsOnDisk("k")
	if err := b.store.Checkpoint(b.ctx, &idem.CheckpointParams{Scope: "s", Key: "k", Token: token, Point: "p", Data: []byte("d")}); err != nil {
		t.Fatal(err)
	}
	got, err := b.store.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	scribble(got)
	b.checkPendingIsOnDisk("k")
	again, err := b.store.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "k"})
	if err != nil || again.Token != token || again.Fingerprint != "f" || again.Checkpoint.Point != "p" || string(again.Checkpoint.Data) != "d" {
		t.Fatalf("Get after scribbling: %+v, %v", again, err)
	}
}
