package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/bench"
	"github.com/idemkit/idem/internal/leakcheck"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/storetest"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

func newStore(t *testing.T, clock idem.Clock) idem.Store {
	s := memstore.New(&memstore.Config{Clock: clock})
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, newStore, nil)
}

// TestConformanceColliding runs the suite on a store whose records mostly
// share their map key's hash with another record's.
func TestConformanceColliding(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T, clock idem.Clock) idem.Store {
		s := memstore.NewColliding(&memstore.Config{Clock: clock})
		t.Cleanup(func() { s.Close() })
		return s
	}, nil)
}

// TestCollidingKeys: keys whose hashes collide are each found, replaced,
// deleted and swept as their own, whichever of them holds the hash.
func TestCollidingKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := idem.NewManualClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	s := memstore.NewColliding(&memstore.Config{Clock: clock})
	defer s.Close()
	begin := func(key string) *idem.BeginResult {
		t.Helper()
		res, err := s.Begin(ctx, &idem.BeginParams{Scope: "s", Key: key, Fingerprint: "fp-" + key, Lease: time.Minute, Window: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	keys := []string{"a", "bcd", "efghij", "k", "lmn"} // map keys of 4, 6, 9, 4 and 6 bytes: hashes 1, 0, 0, 1, 0
	for _, k := range keys {
		if res := begin(k); res.Decision != idem.Acquired {
			t.Fatalf("%s: %s", k, res.Decision)
		}
	}
	if n := s.Collided(); n != 3 {
		t.Fatalf("%d records kept apart, want 3", n)
	}
	// The hash holders go: the others are still found, and stay one record each.
	for _, k := range []string{"a", "bcd"} {
		if err := s.Delete(ctx, &idem.KeyParams{Scope: "s", Key: k}); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"efghij", "k", "lmn"} {
		rec, err := s.Get(ctx, &idem.KeyParams{Scope: "s", Key: k})
		if err != nil || rec.Key != k || rec.Fingerprint != "fp-"+k {
			t.Fatalf("%s: %+v, %v", k, rec, err)
		}
		if _, err := s.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: k, Token: rec.Token, Outcome: idem.Outcome{Data: []byte(k)}}); err != nil {
			t.Fatal(err)
		}
		if res := begin(k); res.Decision != idem.Replay || string(res.Record.Outcome.Data) != k {
			t.Fatalf("%s: %s", k, res.Decision)
		}
	}
	for _, k := range []string{"a", "bcd"} {
		if _, err := s.Get(ctx, &idem.KeyParams{Scope: "s", Key: k}); !errors.Is(err, idem.ErrNotFound) {
			t.Fatalf("%s deleted, Get: %v", k, err)
		}
		if res := begin(k); res.Decision != idem.Acquired || res.Record.Attempts != 1 {
			t.Fatalf("%s again: %s", k, res.Decision)
		}
	}
	if n, err := s.Size(ctx); err != nil || n != 5 {
		t.Fatalf("size %d, %v", n, err)
	}
	list, err := s.List(ctx, &idem.ListParams{Scope: "s"})
	if err != nil || len(list.Records) != 5 {
		t.Fatalf("listed %d, %v", len(list.Records), err)
	}
	clock.Advance(3 * time.Hour)
	if res, err := s.Sweep(ctx, &idem.SweepParams{}); err != nil || res.Deleted != 5 {
		t.Fatalf("swept %+v, %v", res, err)
	}
	if n, _ := s.Size(ctx); n != 0 || s.Collided() != 0 {
		t.Fatalf("%d records left, %d apart", n, s.Collided())
	}
}

// TestConformanceRealClock runs the suite as it runs a database or a remote
// server: memstore on the system clock, the suite waiting for real leases.
func TestConformanceRealClock(t *testing.T) {
	t.Parallel()
	storetest.Run(t, newStore, &storetest.Options{RealClock: true, ScopePrefix: "real/"})
}

func BenchmarkCycles(b *testing.B) {
	for _, callers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			s := memstore.New(nil)
			defer s.Close()
			bench.Cycles(b, s, callers)
		})
	}
}

// BenchmarkLedgerCycle is the middleware's ledger work for one first
// execution on memstore: Ledger.Begin, then Claim.Complete with an HTTP
// outcome (status, one header, a small body).
func BenchmarkLedgerCycle(b *testing.B) {
	ledger, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer ledger.Close()
	ctx := context.Background()
	data := []byte(`{"id":"ord_1","amount":100,"currency":"eur","status":"created"}`)
	fp := strings.Repeat("f", 64)
	b.ReportAllocs()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		key := make([]byte, 0, 32)
		for pb.Next() {
			key = strconv.AppendInt(append(key[:0], "bench-"...), n.Add(1), 10)
			claim, err := ledger.Begin(ctx, "9:anonymous POST /orders", string(key), fp)
			if err != nil {
				b.Fatal(err)
			}
			meta := map[string]string{"status": "201", "header:Content-Type": "application/json"}
			if err := claim.Complete(ctx, idem.Outcome{Data: data, Meta: meta}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestOutcomeMetaKept: the stored Meta comes back as stored (nil, empty,
// a few pairs or more than newEntry keeps on its stack) from a replay, Get
// and List, and a caller's copy is its own.
func TestOutcomeMetaKept(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := memstore.New(nil)
	defer s.Close()
	many := map[string]string{}
	for i := range 20 {
		many["header:X-"+strconv.Itoa(i)] = strings.Repeat("v", i)
	}
	for i, meta := range []map[string]string{nil, {}, {"status": "201", "header:Location": "/a\n/b", "": ""}, many} {
		key := strconv.Itoa(i)
		bp := &idem.BeginParams{Scope: "meta", Key: key, Fingerprint: "f", Lease: idem.DefaultLease, Window: idem.DefaultWindow}
		res, err := s.Begin(ctx, bp)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Complete(ctx, &idem.CompleteParams{Scope: "meta", Key: key, Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte("d"), Meta: maps.Clone(meta)}}); err != nil {
			t.Fatal(err)
		}
		for round := range 2 {
			replay, err := s.Begin(ctx, bp)
			if err != nil || replay.Decision != idem.Replay {
				t.Fatalf("meta %d: %v %v", i, replay, err)
			}
			got, err := s.Get(ctx, &idem.KeyParams{Scope: "meta", Key: key})
			if err != nil {
				t.Fatal(err)
			}
			list, err := s.List(ctx, &idem.ListParams{Scope: "meta", Cursor: strconv.Itoa(i - 1), Limit: 1})
			if err != nil || len(list.Records) != 1 {
				t.Fatalf("meta %d: list %v %v", i, list, err)
			}
			for _, rec := range []*idem.Record{replay.Record, got, list.Records[0]} {
				if !reflect.DeepEqual(rec.Outcome.Meta, meta) || (rec.Outcome.Meta == nil) != (meta == nil) {
					t.Fatalf("meta %d round %d: %#v, stored %#v", i, round, rec.Outcome.Meta, meta)
				}
				if rec.Outcome.Meta != nil {
					rec.Outcome.Meta["changed"] = "by the caller" // must not reach the store
				}
			}
		}
	}
}

// TestKeyAcrossScopes: one key in thousands of scopes is a record of its
// own in each, and every one answers under its own scope, also when each
// scope is asked again.
func TestKeyAcrossScopes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := memstore.New(nil)
	defer s.Close()
	const scopes = 2500
	for round := range 2 {
		for i := range scopes {
			scope := "scope-" + strconv.Itoa(i)
			res, err := s.Begin(ctx, &idem.BeginParams{Scope: scope, Key: "k", Fingerprint: "f", Lease: idem.DefaultLease, Window: idem.DefaultWindow})
			if err != nil {
				t.Fatal(err)
			}
			want := idem.Acquired
			if round == 1 {
				want = idem.InFlight
			}
			if res.Decision != want || res.Record.Scope != scope {
				t.Fatalf("round %d, %s: %s for scope %q, want %s", round, scope, res.Decision, res.Record.Scope, want)
			}
		}
	}
	for i := range scopes {
		scope := "scope-" + strconv.Itoa(i)
		list, err := s.List(ctx, &idem.ListParams{Scope: scope, Limit: 10})
		if err != nil || len(list.Records) != 1 || list.Records[0].Scope != scope {
			t.Fatalf("%s: %+v %v", scope, list, err)
		}
	}
}

// BenchmarkRetained is what the records a store keeps cost: the heap per
// completed record and the time of a full collection per record, for a
// store holding 100 000 records shaped like the middleware's (BenchmarkLedgerCycle).
func BenchmarkRetained(b *testing.B) {
	const n = 100_000
	ctx := context.Background()
	data := []byte(`{"id":"ord_1","amount":100,"currency":"eur","status":"created"}`)
	fp := strings.Repeat("f", 64)
	var (
		gc    time.Duration
		bytes float64
	)
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s := memstore.New(nil)
		for i := range n {
			key := "bench-" + strconv.Itoa(i)
			res, err := s.Begin(ctx, &idem.BeginParams{Scope: "9:anonymous POST /orders", Key: key, Fingerprint: fp, Lease: idem.DefaultLease, Window: idem.DefaultWindow})
			if err != nil {
				b.Fatal(err)
			}
			meta := map[string]string{"status": "201", "header:Content-Type": "application/json"}
			if _, err := s.Complete(ctx, &idem.CompleteParams{Scope: "9:anonymous POST /orders", Key: key, Token: res.Record.Token, Outcome: idem.Outcome{Data: data, Meta: meta}}); err != nil {
				b.Fatal(err)
			}
		}
		// The fastest of a few full collections: they mark the records and
		// little else, and the fastest is the one least disturbed.
		fastest := time.Duration(1 << 62)
		for range 5 {
			start := time.Now()
			runtime.GC()
			fastest = min(fastest, time.Since(start))
		}
		gc += fastest
		runtime.ReadMemStats(&after)
		bytes += float64(after.HeapAlloc - before.HeapAlloc)
		runtime.KeepAlive(s)
	}
	b.ReportMetric(bytes/float64(b.N)/n, "B/record")
	b.ReportMetric(float64(gc.Nanoseconds())/float64(b.N)/n, "gc-ns/record")
}

// TestListOrder: List pages through keys in byte order whatever their
// lengths (memstore keeps each key after its length).
func TestListOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := memstore.New(nil)
	defer s.Close()
	for _, key := range []string{"c", "ab", "b", "aa", "a", "ba"} {
		if _, err := s.Begin(ctx, &idem.BeginParams{Scope: "order", Key: key, Fingerprint: "f", Lease: idem.DefaultLease, Window: idem.DefaultWindow}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	cursor := ""
	for {
		list, err := s.List(ctx, &idem.ListParams{Scope: "order", Limit: 4, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range list.Records {
			got = append(got, rec.Key)
		}
		if cursor = list.NextCursor; cursor == "" {
			break
		}
	}
	if want := []string{"a", "aa", "ab", "b", "ba", "c"}; !slices.Equal(got, want) {
		t.Fatalf("keys %q, want %q", got, want)
	}
}

// TestTimesKept: a stored record's times come back Equal to the clock's,
// to the nanosecond, from a clock in another zone, and past the range of
// Unix nanoseconds (a retention of ~292 years).
func TestTimesKept(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.FixedZone("east", 5*3600))
	clock := idem.NewManualClock(start)
	s := memstore.New(&memstore.Config{Clock: clock})
	defer s.Close()
	const lease, window, retention = time.Second, 2 * time.Hour, time.Duration(math.MaxInt64)
	res, err := s.Begin(ctx, &idem.BeginParams{Scope: "times", Key: "k", Fingerprint: "f", Lease: lease, Window: window, Retention: retention})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(500 * time.Millisecond)
	done := start.Add(500 * time.Millisecond)
	completed, err := s.Complete(ctx, &idem.CompleteParams{Scope: "times", Key: "k", Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte("d")}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, &idem.KeyParams{Scope: "times", Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	// Every record the store returns, from a write or a read, has its
	// times in UTC without a monotonic reading (the package doc).
	for name, rec := range map[string]*idem.Record{"Begin": res.Record, "Complete": completed, "Get": got} {
		for _, tm := range []time.Time{rec.LeaseUntil, rec.Created, rec.RetainUntil} {
			if tm.Location() != time.UTC || tm != tm.Round(0) {
				t.Errorf("%s: time %v is not UTC without a monotonic reading", name, tm)
			}
		}
	}
	if completed.Completed.Location() != time.UTC || completed.Expires.Location() != time.UTC {
		t.Errorf("Complete: Completed %v, Expires %v; want UTC", completed.Completed, completed.Expires)
	}
	for _, c := range []struct {
		name      string
		got, want time.Time
	}{
		{"LeaseUntil", got.LeaseUntil, start.Add(lease)},
		{"Created", got.Created, start},
		{"Completed", got.Completed, done},
		{"Expires", got.Expires, done.Add(window)},
		{"RetainUntil", got.RetainUntil, done.Add(retention)},
	} {
		if !c.got.Equal(c.want) {
			t.Errorf("%s %v, want %v", c.name, c.got, c.want)
		}
	}
	if got.Window != window || got.Retention != retention || got.Token != res.Record.Token || got.Attempts != 1 {
		t.Errorf("got %+v", got)
	}
}

// TestKeyLengths: records whose map key (scope and key, each after its
// length) fits the lookup's small stack room, just fits, just does not,
// or is as long as ValidateKey allows, each complete, replay, list and
// delete under their own names.
func TestKeyLengths(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := memstore.New(nil)
	defer s.Close()
	for i, n := range [][2]int{{1, 1}, {63, 63}, {63, 64}, {64, 64}, {idem.MaxScopeLen, 1}, {idem.MaxScopeLen, idem.MaxKeyLen}} {
		// Each case has a scope of its own.
		scope, key := strings.Repeat(string(rune('a'+i)), n[0]), strings.Repeat("k", n[1])
		// Two keys of the same length in one scope.
		for _, k := range []string{key, key[:len(key)-1] + "x"} {
			bp := &idem.BeginParams{Scope: scope, Key: k, Fingerprint: "f", Lease: idem.DefaultLease, Window: idem.DefaultWindow}
			res, err := s.Begin(ctx, bp)
			if err != nil || res.Decision != idem.Acquired {
				t.Fatalf("%v %q: Begin %v %v", n, k, res, err)
			}
			out := idem.Outcome{Data: []byte(k)}
			if _, err := s.Complete(ctx, &idem.CompleteParams{Scope: scope, Key: k, Token: res.Record.Token, Outcome: out}); err != nil {
				t.Fatalf("%v %q: Complete: %v", n, k, err)
			}
			replay, err := s.Begin(ctx, bp)
			if err != nil || replay.Decision != idem.Replay || replay.Record.Scope != scope || replay.Record.Key != k || string(replay.Record.Outcome.Data) != k {
				t.Fatalf("%v %q: replay %+v %v", n, k, replay, err)
			}
		}
		list, err := s.List(ctx, &idem.ListParams{Scope: scope, Limit: 10})
		if err != nil || len(list.Records) != 2 {
			t.Fatalf("%v: List %+v %v", n, list, err)
		}
		if err := s.Delete(ctx, &idem.KeyParams{Scope: scope, Key: key}); err != nil {
			t.Fatalf("%v: Delete: %v", n, err)
		}
		if _, err := s.Get(ctx, &idem.KeyParams{Scope: scope, Key: key}); !errors.Is(err, idem.ErrNotFound) {
			t.Fatalf("%v: Get after Delete: %v, want ErrNotFound", n, err)
		}
	}
}
