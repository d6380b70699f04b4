package memstore_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/idemkit/idem"
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
			storetest.BenchCycles(b, s, callers)
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
