// Package storetest is the conformance suite every idem.Store runs:
// storetest.Run(t, newStore, opts). A store is done when it passes.
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, clock idem.Clock) idem.Store {
//			s := mystore.New(&mystore.Config{Clock: clock})
//			t.Cleanup(func() { s.Close() })
//			return s
//		}, nil)
//	}
//
// NewStore must return a fresh, empty store each time it is called: every
// case gets a store of its own, so cases run in parallel and one case's
// clock moves and Sweeps never disturb another.
//
// # Clock modes
//
// By default the suite passes an *idem.ManualClock and moves it, so lease
// and window boundaries are checked to the nanosecond. A store that judges
// leases by its own clock (a database, a remote server) sets
// Options.RealClock: the suite then uses short real leases (multiples of
// Options.TimeUnit, 200ms by default) and waits for them by polling the
// store, taking a probe key in the scope "storetest-probe" (after Options.ScopePrefix) and deleting it
// afterwards. Every case runs in both modes; only the state machine's clock
// moves need the ManualClock.
//
// # What is checked
//
// Named cases cover the store contract (the idem.Store documentation, and
// docs/architecture.md in the repository): the lifecycle, the
// fingerprint checked before the in-flight state, one owner among 64
// concurrent Begins, takeover and fencing of stale owners, late owners,
// Complete twice, Release, Extend and Checkpoint, windows, retention and
// Sweep (with its Limit), tokens across Delete, byte-exact 1 MiB outcomes,
// scopes, Get/Delete/List/Size, invalid parameters, and Close.
//
// Two cases compare the store with a sequential model of one key (model.go,
// written from the contract, not from internal/transition):
//
//   - Linearizability: 8 concurrent clients run random operations; the
//     history is checked with porcupine, partitioned by key. On a failure the
//     error names an HTML visualization of the history in os.TempDir().
//   - StateMachine: rapid drives random sequences of every operation (and
//     clock moves) and compares each answer. Its size follows rapid's flags
//     (-rapid.checks, default 100; -rapid.steps); a failure prints a seed to
//     reproduce it.
//
// Optional capabilities (idem.Lister, idem.Sizer, idem.StateSizer) are
// checked when the store has them: SizeByState after a mix of Begins,
// Completes, Releases, Deletes and a Sweep, against List state by state. The suite checks behaviour only; it measures nothing.
package storetest
