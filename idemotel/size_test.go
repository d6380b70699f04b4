package idemotel_test

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// sizerOnly hides every capability of a store but idem.Sizer.
type sizerOnly struct {
	idem.Store
	sizer idem.Sizer
}

func (s sizerOnly) Size(ctx context.Context) (int64, error) { return s.sizer.Size(ctx) }

// bare hides every capability of a store.
type bare struct{ idem.Store }

// sizeFixture fills a memstore with 2 pending, 3 completed and 1 released
// records.
func sizeFixture(t *testing.T) *memstore.Store {
	t.Helper()
	ctx := context.Background()
	store := memstore.New(nil)
	t.Cleanup(func() { store.Close() })
	begin := func(key string) *idem.Record {
		res, err := store.Begin(ctx, &idem.BeginParams{Scope: "s", Key: key, Fingerprint: "f", Lease: time.Hour, Window: time.Hour})
		if err != nil || res.Decision != idem.Acquired {
			t.Fatalf("Begin %s: %+v %v", key, res, err)
		}
		return res.Record
	}
	begin("p1")
	begin("p2")
	for _, k := range []string{"c1", "c2", "c3"} {
		rec := begin(k)
		if _, err := store.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: k, Token: rec.Token}); err != nil {
			t.Fatal(err)
		}
	}
	rec := begin("r1")
	if err := store.Release(ctx, &idem.ReleaseParams{Scope: "s", Key: "r1", Token: rec.Token}); err != nil {
		t.Fatal(err)
	}
	return store
}

// idem.ledger.records has one point per state, with idem.record.state, for
// a store that counts by state; one point without attributes for a store
// that counts only its total; nothing for a store that cannot count.
func TestLedgerSizeByState(t *testing.T) {
	store := sizeFixture(t)
	for _, c := range []struct {
		name  string
		store idem.Store
		want  map[string]float64 // by rendered attributes; nil: no metric
	}{
		{"StateSizer", store, map[string]float64{
			"idem.record.state=pending": 2, "idem.record.state=completed": 3, "idem.record.state=released": 1}},
		{"Sizer", sizerOnly{store, store}, map[string]float64{"": 6}},
		{"neither", bare{store}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			if err := r.tel.ObserveLedgerSize(c.store); err != nil {
				t.Fatal(err)
			}
			got, ok := r.collect(t)["idem.ledger.records"]
			if c.want == nil {
				if ok {
					t.Fatalf("idem.ledger.records %v, want no metric", got)
				}
				return
			}
			if !maps.Equal(got, c.want) {
				t.Errorf("idem.ledger.records points %v, want %v", got, c.want)
			}
		})
	}
}
