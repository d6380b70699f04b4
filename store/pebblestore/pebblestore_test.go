package pebblestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/wait"
	"github.com/idemkit/idem/storetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T, clock idem.Clock) idem.Store {
		s, err := Open(t.TempDir(), &Config{Clock: clock})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}, nil)
}

var start = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// bundle is what a test of this package needs.
type bundle struct {
	t     *testing.T
	ctx   context.Context
	dir   string
	clock *idem.ManualClock
	store *Store
}

// setup opens a store in a fresh directory on a manual clock, with the
// background sweeper off unless cfg says otherwise.
func setup(t *testing.T, cfg *Config) *bundle {
	t.Helper()
	b := &bundle{t: t, ctx: context.Background(), dir: t.TempDir(), clock: idem.NewManualClock(start)}
	if cfg == nil {
		cfg = &Config{SweepInterval: -1}
	}
	cfg.Clock = b.clock
	b.open(cfg)
	t.Cleanup(func() {
		if err := b.store.Close(); err != nil {
			t.Error(err)
		}
	})
	return b
}

func (b *bundle) open(cfg *Config) {
	b.t.Helper()
	s, err := Open(b.dir, cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	b.store = s
}

// reopen closes the store and opens the directory again.
func (b *bundle) reopen() {
	b.t.Helper()
	if err := b.store.Close(); err != nil {
		b.t.Fatal(err)
	}
	b.open(&Config{Clock: b.clock, SweepInterval: -1})
}

func (b *bundle) acquire(key string, lease, window time.Duration) *idem.Record {
	b.t.Helper()
	res, err := b.store.Begin(b.ctx, &idem.BeginParams{Scope: "s", Key: key, Fingerprint: "f", Lease: lease, Window: window})
	if err != nil {
		b.t.Fatal(err)
	}
	if res.Decision != idem.Acquired {
		b.t.Fatalf("begin %s: %s, want acquired", key, res.Decision)
	}
	return res.Record
}

func (b *bundle) complete(key string, window time.Duration, out idem.Outcome) *idem.Record {
	b.t.Helper()
	rec := b.acquire(key, time.Minute, window)
	done, err := b.store.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: key, Token: rec.Token, Outcome: out})
	if err != nil {
		b.t.Fatal(err)
	}
	return done
}

// completeMany completes n keys named prefix-i from several goroutines, so
// their syncs are shared.
func (b *bundle) completeMany(prefix string, n int, window time.Duration) {
	b.t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < n; i += 16 {
				key := fmt.Sprintf("%s-%04d", prefix, i)
				res, err := b.store.Begin(b.ctx, &idem.BeginParams{Scope: "s", Key: key, Lease: time.Minute, Window: window})
				if err == nil {
					_, err = b.store.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: key, Token: res.Record.Token})
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.t.Fatal(err)
	}
}

// countKeys counts the Pebble keys with prefix.
func (b *bundle) countKeys(prefix string) int {
	b.t.Helper()
	it, err := b.store.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: upperBound([]byte(prefix))})
	if err != nil {
		b.t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	return n
}

// checkIndex asserts that every record has exactly one index entry, at the
// time the record names and no later than its RetainUntil.
func (b *bundle) checkIndex() {
	b.t.Helper()
	records, entries := b.countKeys(prefixRecord), b.countKeys(prefixIndex)
	if records != entries {
		b.t.Fatalf("%d records but %d index entries", records, entries)
	}
	it, err := b.store.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixIndex), UpperBound: upperBound([]byte(prefixIndex))})
	if err != nil {
		b.t.Fatal(err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		at, ref, err := parseIndexKey(it.Key())
		if err != nil {
			b.t.Fatal(err)
		}
		rec, recAt, err := b.store.get(ref)
		if err != nil || rec == nil || !recAt.Equal(at) || rec.RetainUntil.Before(at) {
			b.t.Fatalf("index entry at %v for %q: record %+v at %v, %v", at, ref, rec, recAt, err)
		}
	}
}

// indexTime returns the time of the index entry of key.
func (b *bundle) indexTime(key string) time.Time {
	b.t.Helper()
	_, at, err := b.store.get(recordRef("s", key))
	if err != nil {
		b.t.Fatal(err)
	}
	return at
}

func TestReopenReplaysByteExact(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	want := map[string]*idem.Record{}
	var maxToken int64
	for i := range 40 {
		key := fmt.Sprintf("k%02d", i)
		out := idem.Outcome{Data: bytes.Repeat([]byte{byte(i), 0, 0xff}, i*50)}
		if i%3 == 0 {
			out.Meta = map[string]string{"status": fmt.Sprint(200 + i), "content-type": "application/json"}
		}
		rec := b.complete(key, time.Hour, out)
		want[key] = rec
		maxToken = max(maxToken, rec.Token)
	}
	pending := b.acquire("pending", time.Minute, time.Hour)
	if err := b.store.Checkpoint(b.ctx, &idem.CheckpointParams{Scope: "s", Key: "pending", Token: pending.Token, Point: "p1", Data: []byte("d1")}); err != nil {
		t.Fatal(err)
	}
	released := b.acquire("released", time.Minute, time.Hour)
	if err := b.store.Release(b.ctx, &idem.ReleaseParams{Scope: "s", Key: "released", Token: released.Token}); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"pending", "released"} {
		rec, err := b.store.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: key})
		if err != nil {
			t.Fatal(err)
		}
		want[key] = rec
	}
	maxToken = max(maxToken, pending.Token, released.Token)

	b.reopen()
	if size, err := b.store.Size(b.ctx); err != nil || size != int64(len(want)) {
		t.Fatalf("Size after reopen: %d, %v; want %d", size, err, len(want))
	}
	for key, w := range want {
		got, err := b.store.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: key})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, w) {
			t.Fatalf("%s after reopen:\n got %+v\nwant %+v", key, got, w)
		}
		if w.State != idem.StateCompleted {
			continue
		}
		res, err := b.store.Begin(b.ctx, &idem.BeginParams{Scope: "s", Key: key, Fingerprint: "f", Lease: time.Minute, Window: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if res.Decision != idem.Replay || !bytes.Equal(res.Record.Outcome.Data, w.Outcome.Data) ||
			!reflect.DeepEqual(res.Record.Outcome.Meta, w.Outcome.Meta) {
			t.Fatalf("%s after reopen: %s %+v, want a byte-exact replay", key, res.Decision, res.Record)
		}
	}
	b.checkIndex()
	if rec := b.acquire("fresh", time.Minute, time.Hour); rec.Token <= maxToken {
		t.Fatalf("token after reopen %d, not above %d", rec.Token, maxToken)
	}
	// The pending owner's lease is still judged by the clock after a restart.
	res, err := b.store.Begin(b.ctx, &idem.BeginParams{Scope: "s", Key: "pending", Fingerprint: "f", Lease: time.Minute, Window: time.Hour})
	if err != nil || res.Decision != idem.InFlight {
		t.Fatalf("pending after reopen: %+v, %v; want in flight", res, err)
	}
}

func TestTokensIncreaseAcrossBlocksAndReopens(t *testing.T) {
	t.Parallel()
	const block = 1024
	b := setup(t, &Config{SweepInterval: -1, tokenBlock: block})
	const writers = 16
	seen := map[int64]bool{}
	var before int64 // the highest token before the last reopen
	for round := range 3 {
		// Enough acquisitions to cross a reserved block, on keys that are
		// released, deleted and taken again.
		tokens := make([][]int64, writers)
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for i := range block/writers + 10 {
					key := fmt.Sprintf("w%d-k%d", w, i%3)
					res, err := b.store.Begin(b.ctx, &idem.BeginParams{Scope: "s", Key: key, Lease: time.Minute, Window: time.Hour})
					if err != nil || res.Decision != idem.Acquired {
						t.Errorf("begin %s: %+v, %v", key, res, err)
						return
					}
					tokens[w] = append(tokens[w], res.Record.Token)
					if err := b.store.Release(b.ctx, &idem.ReleaseParams{Scope: "s", Key: key, Token: res.Record.Token}); err != nil {
						t.Error(err)
						return
					}
					if i%50 == 0 {
						if err := b.store.Delete(b.ctx, &idem.KeyParams{Scope: "s", Key: key}); err != nil {
							t.Error(err)
							return
						}
					}
				}
			})
		}
		wg.Wait()
		var highest int64
		for w, ts := range tokens {
			for i, tok := range ts {
				if seen[tok] {
					t.Fatalf("round %d: token %d handed out twice", round, tok)
				}
				seen[tok] = true
				if tok <= before || (i > 0 && tok <= ts[i-1]) {
					t.Fatalf("round %d, writer %d: token %d after %d (before reopen: %d)", round, w, tok, ts[max(i-1, 0)], before)
				}
				highest = max(highest, tok)
			}
		}
		before = highest
		if err := b.store.Close(); err != nil {
			t.Fatal(err)
		}
		b.open(&Config{Clock: b.clock, SweepInterval: -1, tokenBlock: block})
	}
	b.checkIndex()
}

func TestLockedDirectory(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	s, err := Open(b.dir, nil)
	if err == nil {
		s.Close()
		t.Fatal("a second Open of the same directory succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), b.dir) {
		t.Fatalf("err %v, want ErrLocked naming %s", err, b.dir)
	}
	// The held store still works.
	b.acquire("k", time.Minute, time.Hour)
}

func TestOpenRejectsEmptyDir(t *testing.T) {
	t.Parallel()
	if _, err := Open("", nil); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("err %v, want ErrInvalid", err)
	}
}

func TestCloseTwiceAndUseAfterClose(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{}) // with the background sweeper
	if err := b.store.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "k"}); !errors.Is(err, idem.ErrClosed) {
		t.Fatalf("Get after Close: %v, want ErrClosed", err)
	}
	if _, err := b.store.Sweep(b.ctx, &idem.SweepParams{}); !errors.Is(err, idem.ErrClosed) {
		t.Fatalf("Sweep after Close: %v, want ErrClosed", err)
	}
	// Cleanup closes it again: a second Close returns nil.
}

// TestSweepCostFollowsExpired: with many live records and few expired,
// Sweep looks only at the index entries of the expired ones.
func TestSweepCostFollowsExpired(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const live, expired = 400, 7
	b.completeMany("live", live, 10*time.Hour)
	b.completeMany("old", expired, time.Hour)
	// A pending record whose lease ran out but whose retention has not.
	b.acquire("orphan", time.Minute, 5*time.Hour)
	b.checkIndex()

	b.clock.Advance(2 * time.Hour)
	res, err := b.store.Sweep(b.ctx, &idem.SweepParams{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Deleted != expired {
		t.Fatalf("Sweep deleted %d, want %d", res.Deleted, expired)
	}
	if visited := b.store.sweepVisited.Load(); visited != expired {
		t.Fatalf("Sweep visited %d index entries, want only the %d expired", visited, expired)
	}
	if size, _ := b.store.Size(b.ctx); size != live+1 {
		t.Fatalf("Size %d, want %d", size, live+1)
	}
	b.checkIndex()
	res, err = b.store.Sweep(b.ctx, &idem.SweepParams{})
	if err != nil || res.Deleted != 0 {
		t.Fatalf("second Sweep: %+v, %v", res, err)
	}
	if visited := b.store.sweepVisited.Load(); visited != expired {
		t.Fatalf("a Sweep with nothing expired visited %d entries", visited-expired)
	}
	for i := range expired {
		if _, err := b.store.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: fmt.Sprintf("old-%04d", i)}); !errors.Is(err, idem.ErrNotFound) {
			t.Fatalf("swept record old-%04d: %v, want ErrNotFound", i, err)
		}
	}
}

func TestSweepLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.completeMany("old", 10, time.Hour)
	b.clock.Advance(2 * time.Hour)
	var got []int
	for {
		res, err := b.store.Sweep(b.ctx, &idem.SweepParams{Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		if res.Deleted == 0 {
			break
		}
		got = append(got, res.Deleted)
	}
	if !reflect.DeepEqual(got, []int{3, 3, 3, 1}) {
		t.Fatalf("deleted per Sweep %v, want [3 3 3 1]", got)
	}
	if size, _ := b.store.Size(b.ctx); size != 0 {
		t.Fatalf("Size %d after sweeping everything", size)
	}
	b.checkIndex()
}

func TestBackgroundSweeper(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{SweepInterval: time.Minute})
	b.complete("old", time.Hour, idem.Outcome{Data: []byte("x")})
	b.complete("new", 10*time.Hour, idem.Outcome{Data: []byte("y")})
	wait.For(t, "the sweeper to wait on the clock", func() bool { return b.clock.Waiters() > 0 })
	b.clock.Advance(2 * time.Hour)
	wait.For(t, "the sweeper to remove the expired record", func() bool {
		_, err := b.store.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "old"})
		return errors.Is(err, idem.ErrNotFound)
	})
	if _, err := b.store.Get(b.ctx, &idem.KeyParams{Scope: "s", Key: "new"}); err != nil {
		t.Fatalf("live record: %v", err)
	}
	if size, _ := b.store.Size(b.ctx); size != 1 {
		t.Fatalf("Size %d, want 1", size)
	}
}

// TestIndexEntryIsALowerBound: a Begin puts the index entry at now +
// window, which no later RetainUntil of that lease undercuts, so Extend,
// Checkpoint, Complete and Release leave it alone; a takeover with a
// shorter window moves it earlier; Delete removes it.
func TestIndexEntryIsALowerBound(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	rec := b.acquire("k", time.Minute, time.Hour)
	want := start.Add(time.Hour)
	if at := b.indexTime("k"); !at.Equal(want) {
		t.Fatalf("index entry at %v, want %v", at, want)
	}
	if _, err := b.store.Extend(b.ctx, &idem.ExtendParams{Scope: "s", Key: "k", Token: rec.Token, Lease: 5 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := b.store.Checkpoint(b.ctx, &idem.CheckpointParams{Scope: "s", Key: "k", Token: rec.Token, Point: "p"}); err != nil {
		t.Fatal(err)
	}
	if at := b.indexTime("k"); !at.Equal(want) {
		t.Fatalf("index entry moved to %v by Extend or Checkpoint", at)
	}
	b.checkIndex()
	b.clock.Advance(10 * time.Minute)
	taken := b.acquire("k", time.Minute, 30*time.Minute) // takeover, shorter window
	if at, want := b.indexTime("k"), start.Add(40*time.Minute); !at.Equal(want) {
		t.Fatalf("index entry after takeover at %v, want %v", at, want)
	}
	if _, err := b.store.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: taken.Token}); err != nil {
		t.Fatal(err)
	}
	b.checkIndex()
	if err := b.store.Delete(b.ctx, &idem.KeyParams{Scope: "s", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	if n := b.countKeys(prefixIndex); n != 0 {
		t.Fatalf("%d index entries after Delete", n)
	}
}

// TestSweepMovesEarlyEntries: a record kept past its window (Retention) has
// its entry come due first; Sweep moves it once to RetainUntil and removes
// the record when that passes.
func TestSweepMovesEarlyEntries(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	res, err := b.store.Begin(b.ctx, &idem.BeginParams{Scope: "s", Key: "k", Lease: time.Minute, Window: time.Hour, Retention: 10 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	done, err := b.store.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: res.Record.Token})
	if err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(2 * time.Hour)
	for range 2 {
		sw, err := b.store.Sweep(b.ctx, &idem.SweepParams{})
		if err != nil || sw.Deleted != 0 {
			t.Fatalf("Sweep before RetainUntil: %+v, %v", sw, err)
		}
	}
	if visited := b.store.sweepVisited.Load(); visited != 1 {
		t.Fatalf("visited %d entries, want the early one once", visited)
	}
	if at := b.indexTime("k"); !at.Equal(done.RetainUntil) {
		t.Fatalf("entry moved to %v, want RetainUntil %v", at, done.RetainUntil)
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

func TestListCursor(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, key := range []string{"a", "b", "b\x00", "c"} {
		b.complete(key, time.Hour, idem.Outcome{})
	}
	// A scope that extends "s" must not show up in it.
	if _, err := b.store.Begin(b.ctx, &idem.BeginParams{Scope: "s2", Key: "a", Lease: time.Minute, Window: time.Hour}); err != nil {
		t.Fatal(err)
	}
	var keys []string
	p := &idem.ListParams{Scope: "s", Limit: 1}
	for {
		page, err := b.store.List(b.ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Records {
			keys = append(keys, r.Key)
		}
		if page.NextCursor == "" {
			break
		}
		p.Cursor = page.NextCursor
	}
	if !reflect.DeepEqual(keys, []string{"a", "b", "b\x00", "c"}) {
		t.Fatalf("listed %q", keys)
	}
	if _, err := b.store.List(b.ctx, &idem.ListParams{Scope: "s", Cursor: "!!"}); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("bad cursor: %v, want ErrInvalid", err)
	}
}

func TestCacheSizeReachesPebble(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ configured, want int64 }{
		{0, DefaultCacheSize},
		{-1, DefaultCacheSize},
		{1 << 20, 1 << 20},
	} {
		if got := pebbleOptions(nil, tc.configured).CacheSize; got != tc.want {
			t.Errorf("CacheSize %d: Pebble gets %d, want %d", tc.configured, got, tc.want)
		}
	}
}
