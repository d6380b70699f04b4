// Package memstore is the in-memory idem.Store: the reference model the
// conformance suite and the simulator check other stores against, and the
// store for tests of code built on the ledger. Nothing survives the process.
package memstore

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/transition"
)

// Config configures a Store. A nil *Config means defaults.
type Config struct {
	// Clock judges leases and windows. Default: idem.SystemClock.
	Clock idem.Clock
}

// Store is an in-memory idem.Store and idem.Lister. The zero value is not
// usable; call New.
type Store struct {
	clock idem.Clock

	mu      sync.Mutex
	records map[recordKey]*idem.Record // replaced by transitions, never changed in place
	token   int64                      // store-wide: tokens never repeat, even after a delete
	closed  bool
}

type recordKey struct{ scope, key string }

var (
	_ idem.Store  = (*Store)(nil)
	_ idem.Lister = (*Store)(nil)
	_ idem.Sizer  = (*Store)(nil)
)

// New returns an empty Store.
func New(cfg *Config) *Store {
	s := &Store{clock: idem.SystemClock{}, records: map[recordKey]*idem.Record{}}
	if cfg != nil && cfg.Clock != nil {
		s.clock = cfg.Clock
	}
	return s
}

// lock takes the store lock, failing once the store is closed or ctx is
// done.
func (s *Store) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return idem.ErrClosed
	}
	return nil
}

func (s *Store) nextToken(after int64) int64 {
	s.token = max(s.token, after) + 1
	return s.token
}

// Begin implements idem.Store.
func (s *Store) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	k := recordKey{p.Scope, p.Key}
	res, next := transition.Begin(s.records[k], p, s.clock.Now(), s.nextToken)
	if next != nil {
		s.records[k] = next
	}
	return res, nil
}

// update applies a transition of one owned record under the lock and
// returns the stored record, which nobody may change: stored records are
// only ever replaced, so callers copy what they hand out after the lock is
// let go.
func (s *Store) update(ctx context.Context, scope, key string, f func(cur *idem.Record) (*idem.Record, error)) (*idem.Record, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	k := recordKey{scope, key}
	next, err := f(s.records[k])
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	s.records[k] = next
	s.mu.Unlock()
	return next, nil
}

// completed is a record Complete returns and its outcome, in one
// allocation.
type completed struct {
	rec idem.Record
	out idem.Outcome
}

// Complete implements idem.Store. The record it returns carries the
// caller's own outcome (p.Outcome's slices and map), not a copy of the
// stored one: copying the outcome back was most of Complete's cost.
func (s *Store) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	next, err := s.update(ctx, p.Scope, p.Key, func(cur *idem.Record) (*idem.Record, error) {
		return transition.Complete(cur, p, s.clock.Now())
	})
	if err != nil {
		return nil, err
	}
	c := &completed{rec: *next, out: p.Outcome} // a completed record has no checkpoint
	c.rec.Outcome = &c.out
	return &c.rec, nil
}

// Release implements idem.Store.
func (s *Store) Release(ctx context.Context, p *idem.ReleaseParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	_, err := s.update(ctx, p.Scope, p.Key, func(cur *idem.Record) (*idem.Record, error) {
		return transition.Release(cur, p, s.clock.Now())
	})
	return err
}

// Extend implements idem.Store.
func (s *Store) Extend(ctx context.Context, p *idem.ExtendParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	next, err := s.update(ctx, p.Scope, p.Key, func(cur *idem.Record) (*idem.Record, error) {
		return transition.Extend(cur, p, s.clock.Now())
	})
	if err != nil {
		return nil, err
	}
	return transition.Clone(next), nil
}

// Checkpoint implements idem.Store.
func (s *Store) Checkpoint(ctx context.Context, p *idem.CheckpointParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	_, err := s.update(ctx, p.Scope, p.Key, func(cur *idem.Record) (*idem.Record, error) {
		return transition.Checkpoint(cur, p, s.clock.Now())
	})
	return err
}

// Get implements idem.Store.
func (s *Store) Get(ctx context.Context, p *idem.KeyParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	rec, ok := s.records[recordKey{p.Scope, p.Key}]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: scope %q", idem.ErrNotFound, p.Scope)
	}
	return transition.Clone(rec), nil // stored records are replaced, never changed
}

// Delete implements idem.Store.
func (s *Store) Delete(ctx context.Context, p *idem.KeyParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	k := recordKey{p.Scope, p.Key}
	if _, ok := s.records[k]; !ok {
		return fmt.Errorf("%w: scope %q", idem.ErrNotFound, p.Scope)
	}
	delete(s.records, k)
	return nil
}

// Sweep implements idem.Store. It scans every record: memstore is for tests.
func (s *Store) Sweep(ctx context.Context, p *idem.SweepParams) (*idem.SweepResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	now := s.clock.Now()
	n := 0
	for k, rec := range s.records {
		if p.Limit > 0 && n == p.Limit {
			break
		}
		if transition.Sweepable(rec, now) {
			delete(s.records, k)
			n++
		}
	}
	return &idem.SweepResult{Deleted: n}, nil
}

// List implements idem.Lister. The cursor is the last key of the previous
// page.
func (s *Store) List(ctx context.Context, p *idem.ListParams) (*idem.ListResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var keys []string
	for k, rec := range s.records {
		if k.scope == p.Scope && k.key > p.Cursor && (p.State == "" || rec.State == p.State) {
			keys = append(keys, k.key)
		}
	}
	slices.SortFunc(keys, strings.Compare)
	res := &idem.ListResult{}
	for _, k := range keys {
		if len(res.Records) == p.Limit {
			res.NextCursor = res.Records[len(res.Records)-1].Key
			break
		}
		res.Records = append(res.Records, transition.Clone(s.records[recordKey{p.Scope, k}]))
	}
	return res, nil
}

// Size implements idem.Sizer.
func (s *Store) Size(ctx context.Context) (int64, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	return int64(len(s.records)), nil
}

// Close implements idem.Store. Later calls fail with idem.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}
