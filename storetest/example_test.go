package storetest_test

import (
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/storetest"
)

// A store's conformance test: the function returns a fresh, empty store on
// the given clock and closes it when the case ends. Run needs a
// *testing.T, so this example is compiled, not run; memstore_test.go runs
// exactly this.
func ExampleRun() {
	_ = func(t *testing.T) {
		storetest.Run(t, func(t *testing.T, clock idem.Clock) idem.Store {
			s := memstore.New(&memstore.Config{Clock: clock})
			t.Cleanup(func() { s.Close() })
			return s
		}, nil)
	}
}

// A store that judges leases by its own clock (a database, a remote
// server) runs the suite on the real clock, with real leases of a few
// TimeUnits.
func ExampleOptions() {
	_ = func(t *testing.T, newStore storetest.NewStore) {
		storetest.Run(t, newStore, &storetest.Options{RealClock: true, TimeUnit: idem.DefaultLease / 100})
	}
}
