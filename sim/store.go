package sim

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/transition"
)

// Failpoints are the faults a Store injects, each with a probability per
// mutating call (Begin, Complete, Release, Extend, Checkpoint).
type Failpoints struct {
	// BeforeCommit: the call fails before it reaches the store; nothing
	// happened ("store/before-commit").
	BeforeCommit float64
	// AfterCommit: the call reached the store and took effect, then its
	// answer was lost; the caller sees an error (the ambiguous case,
	// "store/after-commit").
	AfterCommit float64
	// Latency: each call takes a random time up to this ("store/latency").
	Latency time.Duration
}

// Store is the durable ledger store of a world: it wraps a real idem.Store
// (memstore, or a deliberately broken one) with failpoints, applies the
// effects a task staged when the task's Complete commits, and checks the
// ledger's own invariants against what really committed:
//   - tokens of a key strictly increase;
//   - a stale owner's Complete, Release, Extend or Checkpoint never succeeds;
//   - a completed key is never acquired again, nor its outcome replaced;
//   - a replay is of a completed key with the same fingerprint, and is its
//     outcome byte for byte;
//   - a successor that takes over gets its predecessor's checkpoint.
//
// Every call is a yield point: another task may run before it.
type Store struct {
	w     *World
	inner idem.Store
	fp    Failpoints
	keys  map[string]*truth
	// scopes maps a key to the scope it was used in; the scenarios use
	// each key in one scope.
	scopes map[string]string
}

var _ idem.Store = (*Store)(nil)

// truth is what really committed for one key.
type truth struct {
	token       int64
	fingerprint string
	completed   bool
	outcome     idem.Outcome
	checkpoint  *idem.Checkpoint
}

// NewStore returns the world's durable store over inner.
func (w *World) NewStore(inner idem.Store, fp Failpoints) *Store {
	return &Store{w: w, inner: inner, fp: fp, keys: make(map[string]*truth), scopes: make(map[string]string)}
}

// Inner returns the wrapped store.
func (s *Store) Inner() idem.Store { return s.inner }

func (s *Store) truth(scope, key string) *truth {
	id := scope + "\x00" + key
	t := s.keys[id]
	if t == nil {
		t = &truth{}
		s.keys[id] = t
		s.scopes[key] = scope
	}
	return t
}

// call runs op as one step of the running task: a yield, the latency, the
// before-commit failpoint, op itself, the after-commit failpoint.
func (s *Store) call(name, key string, op func() error) error {
	w := s.w
	if w.cur != nil {
		if !w.running() {
			return fmt.Errorf("%s: %w", name, ErrCrashed)
		}
		if err := w.Yield(); err != nil {
			return err
		}
		if s.fp.Latency > 0 {
			if err := w.Sleep(w.Between(0, s.fp.Latency)); err != nil {
				return err
			}
		}
	}
	if w.Chance(s.fp.BeforeCommit) {
		w.Log(name, key, "failpoint store/before-commit")
		return fmt.Errorf("sim: %s failed before commit: %w", name, idem.ErrUnavailable)
	}
	if err := op(); err != nil {
		return err
	}
	if w.Chance(s.fp.AfterCommit) {
		w.Log(name, key, "failpoint store/after-commit")
		return fmt.Errorf("sim: %s committed, then its answer was lost: %w", name, idem.ErrUnavailable)
	}
	return nil
}

func (s *Store) violate(invariant, key, detail string) {
	s.w.Violate(invariant, key, detail)
}

// Begin implements idem.Store.
func (s *Store) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	if s.w.cur != nil {
		s.w.cur.staged = s.w.cur.staged[:0] // a new operation: what an earlier one staged is gone
	}
	var res *idem.BeginResult
	err := s.call("begin", p.Key, func() error {
		var err error
		res, err = s.inner.Begin(ctx, p)
		if err != nil {
			s.w.Log("begin", p.Key, "error "+err.Error())
			return err
		}
		s.checkBegin(p, res)
		return nil
	})
	return res, err
}

func (s *Store) checkBegin(p *idem.BeginParams, res *idem.BeginResult) {
	t := s.truth(p.Scope, p.Key)
	switch res.Decision {
	case idem.Acquired:
		rec := res.Record
		note := "acquired token=" + strconv.FormatInt(rec.Token, 10)
		if res.Takeover {
			note += " takeover"
		}
		s.w.Log("begin", p.Key, note)
		if rec.Token <= t.token {
			s.violate("tokens-monotone", p.Key, fmt.Sprintf("acquired with token %d after token %d", rec.Token, t.token))
		}
		if t.completed {
			s.violate("completed-stays", p.Key, fmt.Sprintf("a completed key was acquired again (token %d)", rec.Token))
		}
		if res.Takeover && t.checkpoint != nil && !sameCheckpoint(t.checkpoint, rec.Checkpoint) {
			s.violate("checkpoint-handed-on", p.Key, fmt.Sprintf("the successor got checkpoint %v, its predecessor saved %q", rec.Checkpoint, t.checkpoint.Point))
		}
		t.token, t.fingerprint = rec.Token, p.Fingerprint
	case idem.Replay:
		s.w.Log("begin", p.Key, "replay")
		rec := res.Record
		switch {
		case !t.completed:
			s.violate("completed-stays", p.Key, "replayed an outcome that was never completed")
		case rec.Fingerprint != p.Fingerprint:
			s.violate("no-mismatch-replay", p.Key, "replayed the outcome of another request (fingerprint mismatch)")
		case rec.Outcome == nil || !sameOutcome(t.outcome, *rec.Outcome):
			s.violate("same-outcome", p.Key, "the replayed outcome differs from the stored one")
		}
	default:
		s.w.Log("begin", p.Key, string(res.Decision))
	}
}

// owned runs an owner's write (Complete, Release, Extend, Checkpoint) as
// one step: when the store accepts it, the owner must be the key's current
// one (fenced), and then updates what is true of the key.
func (s *Store) owned(op, scope, key string, token int64, write func() error, then func(t *truth)) error {
	return s.call(op, key, func() error {
		if err := write(); err != nil {
			s.w.Log(op, key, "refused "+err.Error())
			return err
		}
		s.w.Log(op, key, "token="+strconv.FormatInt(token, 10))
		t := s.truth(scope, key)
		if token != t.token {
			s.violate("fenced", key, fmt.Sprintf("%s succeeded with stale token %d (current %d)", op, token, t.token))
		}
		then(t)
		return nil
	})
}

// Complete implements idem.Store: on commit it applies the effects the
// calling task staged.
func (s *Store) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	var rec *idem.Record
	err := s.owned("complete", p.Scope, p.Key, p.Token, func() (err error) {
		rec, err = s.inner.Complete(ctx, p)
		return err
	}, func(t *truth) {
		if t.completed {
			s.violate("completed-stays", p.Key, "a completed outcome was overwritten")
		}
		t.completed, t.outcome, t.checkpoint = true, *transition.CloneOutcome(&p.Outcome), nil
		s.w.commitStaged()
	})
	return rec, err
}

// Release implements idem.Store.
func (s *Store) Release(ctx context.Context, p *idem.ReleaseParams) error {
	return s.owned("release", p.Scope, p.Key, p.Token, func() error { return s.inner.Release(ctx, p) },
		func(t *truth) { t.checkpoint = nil })
}

// Extend implements idem.Store.
func (s *Store) Extend(ctx context.Context, p *idem.ExtendParams) (*idem.Record, error) {
	var rec *idem.Record
	err := s.owned("extend", p.Scope, p.Key, p.Token, func() (err error) {
		rec, err = s.inner.Extend(ctx, p)
		return err
	}, func(*truth) {})
	return rec, err
}

// Checkpoint implements idem.Store.
func (s *Store) Checkpoint(ctx context.Context, p *idem.CheckpointParams) error {
	return s.owned("checkpoint", p.Scope, p.Key, p.Token, func() error { return s.inner.Checkpoint(ctx, p) },
		func(t *truth) { t.checkpoint = &idem.Checkpoint{Point: p.Point, Data: bytes.Clone(p.Data)} })
}

// Get implements idem.Store; it injects no faults.
func (s *Store) Get(ctx context.Context, p *idem.KeyParams) (*idem.Record, error) {
	return s.inner.Get(ctx, p)
}

// Delete implements idem.Store: a deleted key starts over.
func (s *Store) Delete(ctx context.Context, p *idem.KeyParams) error {
	if err := s.inner.Delete(ctx, p); err != nil {
		return err
	}
	t := s.truth(p.Scope, p.Key)
	t.completed, t.checkpoint = false, nil
	return nil
}

// Sweep implements idem.Store.
func (s *Store) Sweep(ctx context.Context, p *idem.SweepParams) (*idem.SweepResult, error) {
	return s.inner.Sweep(ctx, p)
}

// Close implements idem.Store.
func (s *Store) Close() error { return s.inner.Close() }

// OutcomeOf returns the outcome that really committed for key.
func (s *Store) OutcomeOf(key string) (idem.Outcome, bool) {
	t := s.keys[s.scopes[key]+"\x00"+key]
	if t == nil || !t.completed {
		return idem.Outcome{}, false
	}
	return t.outcome, true
}

func sameOutcome(a, b idem.Outcome) bool {
	return bytes.Equal(a.Data, b.Data) && maps.Equal(a.Meta, b.Meta)
}

func sameCheckpoint(a, b *idem.Checkpoint) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Point == b.Point && bytes.Equal(a.Data, b.Data)
}

// ---- effects ----

// effect is a change a task made to the durable world, applied only when
// the task's Complete commits: an effect on key, or a write fn.
type effect struct {
	key, value string
	fn         func()
}

// Stage records a side effect of the running task on key. It takes effect
// when the task's next Complete commits, in the same step, as a business
// write in the same database transaction as the outcome would
// (pgstore.CompleteTx); a task that crashes, releases or loses its lease
// never applies it. Effects(key) says what was applied.
func (w *World) Stage(key, value string) {
	if w.cur == nil {
		panic("sim: Stage outside a task")
	}
	w.cur.staged = append(w.cur.staged, effect{key: key, value: value})
}

// OnCommit stages fn, a write to the durable world (an outbox row), to run
// when the running task's next Complete commits, as Stage's effects do.
func (w *World) OnCommit(fn func()) {
	if w.cur == nil {
		panic("sim: OnCommit outside a task")
	}
	w.cur.staged = append(w.cur.staged, effect{fn: fn})
}

func (w *World) commitStaged() {
	t := w.cur
	if t == nil {
		return
	}
	for _, e := range t.staged {
		if e.fn != nil {
			e.fn()
			continue
		}
		w.apply(e.key, e.value)
	}
	t.staged = t.staged[:0]
}

// apply applies an effect on key at once.
func (w *World) apply(key, value string) {
	if w.effects == nil {
		w.effects = make(map[string][]string)
	}
	w.effects[key] = append(w.effects[key], value)
	w.effectOrder = append(w.effectOrder, key)
	w.Log("effect", key, value)
}

// Effects returns the effects applied on key, in order.
func (w *World) Effects(key string) []string { return w.effects[key] }

// ---- violations ----

// Violation is an invariant that broke.
type Violation struct {
	Invariant string `json:"invariant"`
	Key       string `json:"key"`
	Detail    string `json:"detail"`
}

func (v Violation) String() string {
	return fmt.Sprintf("%s broken on key %q: %s", v.Invariant, v.Key, v.Detail)
}

// Violate records that an invariant broke.
func (w *World) Violate(invariant, key, detail string) {
	w.Log("VIOLATION", key, invariant+": "+detail)
	w.violations = append(w.violations, Violation{Invariant: invariant, Key: key, Detail: detail})
}

// Violations returns what broke so far.
func (w *World) Violations() []Violation { return w.violations }
