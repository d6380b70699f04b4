package storetest

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// The suite must fail stores that break the contract. These tests run the
// linearizability check and the state machine against deliberately broken
// wrappers of memstore and expect both to notice.

// tokenBlind ignores fencing tokens: a stale owner acts as the current one.
type tokenBlind struct{ idem.Store }

func (s tokenBlind) current(ctx context.Context, scope, key string, token int64) int64 {
	if rec, err := s.Get(ctx, &idem.KeyParams{Scope: scope, Key: key}); err == nil {
		return rec.Token
	}
	return token
}

func (s tokenBlind) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	q := *p
	q.Token = s.current(ctx, p.Scope, p.Key, p.Token)
	return s.Store.Complete(ctx, &q)
}

func (s tokenBlind) Release(ctx context.Context, p *idem.ReleaseParams) error {
	q := *p
	q.Token = s.current(ctx, p.Scope, p.Key, p.Token)
	return s.Store.Release(ctx, &q)
}

// twoOwners hands a live lease to a second caller instead of answering in
// flight.
type twoOwners struct{ idem.Store }

func (s twoOwners) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	res, err := s.Store.Begin(ctx, p)
	if err == nil && res.Decision == idem.InFlight {
		res.Decision, res.RetryAfter = idem.Acquired, 0
	}
	return res, err
}

// metaLoser forgets outcome metadata on Get.
type metaLoser struct{ idem.Store }

func (s metaLoser) Get(ctx context.Context, p *idem.KeyParams) (*idem.Record, error) {
	rec, err := s.Store.Get(ctx, p)
	if err == nil && rec.Outcome != nil {
		rec.Outcome.Meta = nil
	}
	return rec, err
}

// eagerSweeper also sweeps pending records whose lease is live.
type eagerSweeper struct {
	*memstore.Store
	scopes *sync.Map // every scope Begin saw
}

func (s eagerSweeper) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	s.scopes.Store(p.Scope, true)
	return s.Store.Begin(ctx, p)
}

func (s eagerSweeper) Sweep(ctx context.Context, p *idem.SweepParams) (*idem.SweepResult, error) {
	res, err := s.Store.Sweep(ctx, p)
	if err != nil {
		return nil, err
	}
	s.scopes.Range(func(scope, _ any) bool {
		l, err := s.List(ctx, &idem.ListParams{Scope: scope.(string), State: idem.StatePending, Limit: idem.MaxListSize})
		for _, r := range l.Records {
			if err == nil && s.Delete(ctx, &idem.KeyParams{Scope: r.Scope, Key: r.Key}) == nil {
				res.Deleted++
			}
		}
		return err == nil
	})
	return res, nil
}

func brokenEnv(t *testing.T, wrap func(*memstore.Store) idem.Store) *env {
	return newEnv(t, func(t *testing.T, clock idem.Clock) idem.Store {
		s := memstore.New(&memstore.Config{Clock: clock})
		t.Cleanup(func() { s.Close() })
		return wrap(s)
	}, (&Options{}).withDefaults())
}

func TestLinearizabilityCatchesBrokenStores(t *testing.T) {
	t.Parallel()
	for name, wrap := range map[string]func(*memstore.Store) idem.Store{
		"tokenBlind": func(s *memstore.Store) idem.Store { return tokenBlind{s} },
		"twoOwners":  func(s *memstore.Store) idem.Store { return twoOwners{s} },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := brokenEnv(t, wrap)
			for seed := range uint64(8) {
				if err := checkLinearizable(e, fmt.Sprintf("round-%d", seed), seed, t.TempDir()); err != nil {
					t.Logf("caught: %.200s", err)
					return
				}
			}
			t.Error("8 rounds found the broken store linearizable")
		})
	}
}

func TestLinearizabilityPassesMemstore(t *testing.T) {
	t.Parallel()
	e := brokenEnv(t, func(s *memstore.Store) idem.Store { return s })
	if err := checkLinearizable(e, "ok", 42, t.TempDir()); err != nil {
		t.Fatal(err)
	}
}

// failureTB is a rapid.TB that records a failure instead of failing the
// test it runs in.
type failureTB struct {
	mu     sync.Mutex
	name   string
	failed bool
	first  string
}

func (f *failureTB) Helper()                   {}
func (f *failureTB) Name() string              { return f.name }
func (f *failureTB) Logf(string, ...any)       {}
func (f *failureTB) Log(...any)                {}
func (f *failureTB) Skipf(string, ...any)      { runtime.Goexit() }
func (f *failureTB) Skip(...any)               { runtime.Goexit() }
func (f *failureTB) SkipNow()                  { runtime.Goexit() }
func (f *failureTB) Errorf(s string, a ...any) { f.fail(fmt.Sprintf(s, a...)) }
func (f *failureTB) Error(a ...any)            { f.fail(fmt.Sprint(a...)) }
func (f *failureTB) Fatalf(s string, a ...any) { f.fail(fmt.Sprintf(s, a...)); runtime.Goexit() }
func (f *failureTB) Fatal(a ...any)            { f.fail(fmt.Sprint(a...)); runtime.Goexit() }
func (f *failureTB) FailNow()                  { f.fail(""); runtime.Goexit() }
func (f *failureTB) Fail()                     { f.fail("") }
func (f *failureTB) Failed() bool              { f.mu.Lock(); defer f.mu.Unlock(); return f.failed }

func (f *failureTB) fail(msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed = true
	if f.first == "" {
		f.first = msg
	}
}

func TestStateMachineCatchesBrokenStores(t *testing.T) {
	// No t.Parallel: the rapid flags below are process-wide.
	for _, kv := range [][2]string{{"rapid.nofailfile", "true"}, {"rapid.shrinktime", "1s"}} {
		old := flag.Lookup(kv[0]).Value.String()
		if err := flag.Set(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { flag.Set(kv[0], old) })
	}
	for name, wrap := range map[string]func(*memstore.Store) idem.Store{
		"tokenBlind":   func(s *memstore.Store) idem.Store { return tokenBlind{s} },
		"twoOwners":    func(s *memstore.Store) idem.Store { return twoOwners{s} },
		"metaLoser":    func(s *memstore.Store) idem.Store { return metaLoser{s} },
		"eagerSweeper": func(s *memstore.Store) idem.Store { return eagerSweeper{s, &sync.Map{}} },
	} {
		t.Run(name, func(t *testing.T) {
			e := brokenEnv(t, wrap)
			tb := &failureTB{name: t.Name()}
			done := make(chan struct{})
			go func() {
				defer close(done)
				checkStateMachine(tb, e)
			}()
			<-done
			if !tb.Failed() {
				t.Fatal("the state machine passed a broken store")
			}
			msg, _, _ := strings.Cut(tb.first, "\n")
			t.Logf("caught: %.200s", msg)
		})
	}
}

// FuzzMemstoreStateMachine lets the fuzzer drive the state machine on
// memstore with a ManualClock: go test -fuzz FuzzMemstoreStateMachine.
func FuzzMemstoreStateMachine(f *testing.F) {
	clock := idem.NewManualClock(start)
	s := memstore.New(&memstore.Config{Clock: clock})
	f.Cleanup(func() { s.Close() })
	e := &env{ctx: context.Background(), store: s, opts: (&Options{}).withDefaults(), manual: clock, unit: time.Second}
	f.Fuzz(rapid.MakeFuzz(stateMachine(e)))
}
