package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// NewStore returns a fresh, empty store whose leases are judged by clock. It
// registers its own cleanup with t (t.Cleanup). Stores that judge leases by
// their own clock (a database, a remote server) ignore clock and run with
// Options.RealClock.
type NewStore func(t *testing.T, clock idem.Clock) idem.Store

// Options select how the suite drives a store. A nil *Options means
// defaults: ManualClock mode.
type Options struct {
	// RealClock is for stores that judge leases by their own clock. The
	// suite passes idem.SystemClock{}, uses short real leases and windows
	// (multiples of TimeUnit) and waits for them to pass by polling the
	// store. In the default mode the suite passes an *idem.ManualClock and
	// moves it.
	RealClock bool

	// TimeUnit is the shortest lease the suite uses in RealClock mode.
	// Default 200ms; raise it for a store far away. Ignored in ManualClock
	// mode.
	TimeUnit time.Duration

	// ScopePrefix is put before every scope the suite uses, for stores
	// that share a server or database with other runs, or whose access is
	// bound to scopes by prefix.
	ScopePrefix string

	// Resolution is the finest duration the store keeps in ManualClock
	// mode: a store behind an API that counts in milliseconds (idemclient)
	// cannot tell a lease 1ns from its end. Default 1ns.
	Resolution time.Duration

	// LinearizabilityRounds is how many seeded rounds of concurrent clients
	// the linearizability case checks. Default 4.
	LinearizabilityRounds int
}

func (o *Options) withDefaults() Options {
	var c Options
	if o != nil {
		c = *o
	}
	if c.TimeUnit <= 0 {
		c.TimeUnit = 200 * time.Millisecond
	}
	if c.Resolution <= 0 {
		c.Resolution = time.Nanosecond
	}
	if c.LinearizabilityRounds <= 0 {
		c.LinearizabilityRounds = 4
	}
	return c
}

// start is where every ManualClock of the suite begins: a round instant, so
// stores that keep microseconds (PostgreSQL) or milliseconds lose nothing.
var start = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// Run runs the conformance suite against the stores newStore returns. Each
// case is a subtest with a store of its own, so cases run in parallel and a
// moved clock or a Sweep in one never disturbs another.
func Run(t *testing.T, newStore NewStore, opts *Options) {
	t.Helper()
	o := opts.withDefaults()
	cases := []struct {
		name string
		run  func(t *testing.T, e *env)
	}{
		{"Lifecycle", testLifecycle},
		{"FingerprintBeforeInFlight", testFingerprintBeforeInFlight},
		{"ConcurrentBegin", testConcurrentBegin},
		{"Takeover", testTakeover},
		{"ExpiredOwnerCompletes", testExpiredOwnerCompletes},
		{"CompleteTwice", testCompleteTwice},
		{"Release", testRelease},
		{"ExtendAndCheckpoint", testExtendAndCheckpoint},
		{"Window", testWindow},
		{"Sweep", testSweep},
		{"TokensAcrossDelete", testTokensAcrossDelete},
		{"LargeOutcome", testLargeOutcome},
		{"Scopes", testScopes},
		{"LookupAndList", testLookupAndList},
		{"SizeByState", testSizeByState},
		{"InvalidParams", testInvalidParams},
		{"Linearizability", testLinearizability},
		{"StateMachine", testStateMachine},
		{"Close", testClose},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, newEnv(t, newStore, o))
		})
	}
}

// env is what one case needs: its store, its clock and the way time passes.
type env struct {
	t      *testing.T
	ctx    context.Context
	store  idem.Store
	opts   Options
	manual *idem.ManualClock // nil in RealClock mode
	// unit is the base duration of leases and windows: one second on a
	// ManualClock, Options.TimeUnit on the real one.
	unit   time.Duration
	probes atomic.Int64
}

func newEnv(t *testing.T, newStore NewStore, o Options) *env {
	t.Helper()
	e := &env{t: t, ctx: context.Background(), opts: o}
	var clock idem.Clock = idem.SystemClock{}
	e.unit = o.TimeUnit
	if !o.RealClock {
		e.manual = idem.NewManualClock(start)
		clock = e.manual
		e.unit = time.Second
	}
	e.store = newStore(t, clock)
	if e.store == nil {
		t.Fatal("storetest: NewStore returned nil")
	}
	return e
}

// scope names one of the case's scopes.
func (e *env) scope(name string) string { return e.opts.ScopePrefix + name }

// pass lets at least d pass on the store's clock. On a ManualClock it moves
// the clock by exactly d. On the real clock it takes a probe key (in a scope
// of its own) with a lease of d and polls Begin until the store itself
// judges that lease over, so the wait follows the store's clock, not the
// test's; the probe record is deleted afterwards.
func (e *env) pass(d time.Duration) {
	e.t.Helper()
	if e.manual != nil {
		e.manual.Advance(d)
		return
	}
	p := &idem.BeginParams{Scope: e.scope("storetest-probe"), Key: fmt.Sprintf("probe-%d", e.probes.Add(1)),
		Fingerprint: "probe", Lease: d, Window: time.Hour}
	if res := e.begin(p); res.Decision != idem.Acquired {
		e.t.Fatalf("probe %s: %s, want acquired", p.Key, res.Decision)
	}
	e.poll(d, fmt.Sprintf("the store's clock to pass %s", d), func() bool {
		return e.begin(p).Decision == idem.Acquired
	})
	if err := e.store.Delete(e.ctx, &idem.KeyParams{Scope: p.Scope, Key: p.Key}); err != nil {
		e.t.Fatalf("delete probe: %v", err)
	}
}

// poll calls cond until it is true. expect is how long the condition should
// take; the deadline leaves generous room for a loaded machine.
func (e *env) poll(expect time.Duration, what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(2*expect + 50*e.unit + 5*time.Second)
	interval := max(e.unit/20, time.Millisecond)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("storetest: waited too long for %s", what)
		}
		<-time.After(interval)
	}
}

func (e *env) begin(p *idem.BeginParams) *idem.BeginResult {
	e.t.Helper()
	res, err := e.store.Begin(e.ctx, p)
	if err != nil {
		e.t.Fatalf("Begin(%s/%s): %v", p.Scope, p.Key, err)
	}
	if res == nil {
		e.t.Fatalf("Begin(%s/%s): nil result", p.Scope, p.Key)
	}
	return res
}

// acquire begins p and fails unless the caller now owns the key.
func (e *env) acquire(p *idem.BeginParams) *idem.Record {
	e.t.Helper()
	res := e.begin(p)
	if res.Decision != idem.Acquired {
		e.t.Fatalf("Begin(%s/%s): %s, want acquired", p.Scope, p.Key, res.Decision)
	}
	if res.Record == nil || res.Record.Token <= 0 {
		e.t.Fatalf("Begin(%s/%s): acquired without a positive token: %+v", p.Scope, p.Key, res.Record)
	}
	return res.Record
}

func (e *env) complete(scope, key string, token int64, out idem.Outcome) {
	e.t.Helper()
	if _, err := e.store.Complete(e.ctx, &idem.CompleteParams{Scope: scope, Key: key, Token: token, Outcome: out}); err != nil {
		e.t.Fatalf("Complete(%s/%s, %d): %v", scope, key, token, err)
	}
}

func (e *env) get(scope, key string) *idem.Record {
	e.t.Helper()
	rec, err := e.store.Get(e.ctx, &idem.KeyParams{Scope: scope, Key: key})
	if err != nil {
		e.t.Fatalf("Get(%s/%s): %v", scope, key, err)
	}
	if rec == nil {
		e.t.Fatalf("Get(%s/%s): nil record", scope, key)
	}
	return rec
}

// wantErr fails unless err wraps target.
func wantErr(t testing.TB, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: error %v, want one wrapping %v", what, err, target)
	}
}
