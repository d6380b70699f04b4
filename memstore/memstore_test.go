package memstore_test

import (
	"fmt"
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
