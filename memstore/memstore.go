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
	"time"

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
	records map[recordKey]*entry
	scopes  map[string]string // interned scopes: a scope's records share one string
	token   int64             // store-wide: tokens never repeat, even after a delete
	closed  bool
}

// maxScopes bounds the interned scopes; past it the table starts over,
// which costs sharing, nothing else.
const maxScopes = 1024

type recordKey struct{ scope, key string }

// entry is one stored record. Its outcome is kept beside it, with the
// Data in one string after the fingerprint and Meta as key/value pairs
// rather than a map: a completed record is three objects for the garbage
// collector to mark (the entry, that string and the key), not eight.
// Entries change in place under the lock; whatever leaves the store is a
// copy made under the lock.
type entry struct {
	rec     idem.Record // rec.Outcome is always nil: the outcome is below
	blob    string      // when completed: rec.Fingerprint, then the outcome's Data
	meta    []string    // the outcome's Meta as key, value pairs; in metaBuf when small
	metaBuf [4]string
	metaNil bool // the stored Meta was nil, not empty
}

// current is the stored record, nil for no entry, as the transitions take it.
func (e *entry) current() *idem.Record {
	if e == nil {
		return nil
	}
	return &e.rec
}

// completed reports whether e holds an outcome (in blob and meta): only a
// completed record has one.
func (e *entry) completed() bool { return e.rec.State == idem.StateCompleted }

var (
	_ idem.Store  = (*Store)(nil)
	_ idem.Lister = (*Store)(nil)
	_ idem.Sizer  = (*Store)(nil)
)

// New returns an empty Store.
func New(cfg *Config) *Store {
	s := &Store{clock: idem.SystemClock{}, records: map[recordKey]*entry{}, scopes: map[string]string{}}
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

// setOutcome stores a copy of out in e, completed: the bytes are copied
// (beside the fingerprint, which moves there), the Meta strings
// (immutable) are shared.
func (e *entry) setOutcome(out *idem.Outcome) {
	fp := e.rec.Fingerprint
	var b strings.Builder
	b.Grow(len(fp) + len(out.Data))
	b.WriteString(fp)
	b.Write(out.Data)
	e.blob = b.String()
	e.rec.Fingerprint = e.blob[:len(fp)]
	e.metaNil = out.Meta == nil
	e.meta = e.metaBuf[:0]
	if 2*len(out.Meta) > len(e.metaBuf) {
		e.meta = make([]string, 0, 2*len(out.Meta))
	}
	for k, v := range out.Meta {
		e.meta = append(e.meta, k, v)
	}
}

// clearOutcome forgets e's outcome (a record that is no longer completed).
func (e *entry) clearOutcome() {
	e.blob, e.meta, e.metaNil = "", nil, false
	e.metaBuf = [4]string{}
}

// recordCopy is a record handed out and its outcome, in one allocation.
type recordCopy struct {
	rec idem.Record
	out idem.Outcome
}

// copyTo writes a deep copy of e's record, with its outcome, to c.
func (e *entry) copyTo(c *recordCopy) *idem.Record {
	c.rec = e.rec
	c.rec.Checkpoint = transition.CloneCheckpoint(e.rec.Checkpoint)
	if e.completed() {
		c.out.Data = append([]byte{}, e.blob[len(e.rec.Fingerprint):]...)
		if !e.metaNil {
			c.out.Meta = make(map[string]string, len(e.meta)/2)
			for i := 0; i < len(e.meta); i += 2 {
				c.out.Meta[e.meta[i]] = e.meta[i+1]
			}
		}
		c.rec.Outcome = &c.out
	}
	return &c.rec
}

// record returns a deep copy of e's record.
func (e *entry) record() *idem.Record { return e.copyTo(new(recordCopy)) }

// beginResult is a BeginResult and its record, in one allocation.
type beginResult struct {
	res idem.BeginResult
	rec recordCopy
}

// ownedResult is beginResult without an outcome, for a pending record.
type ownedResult struct {
	res idem.BeginResult
	rec idem.Record
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
	e := s.records[k]
	cur := e.current()
	now := s.clock.Now()
	d, takeover, retryAfter := transition.Decide(cur, p, now)
	if d == idem.Mismatch {
		return &idem.BeginResult{Decision: idem.Mismatch}, nil
	}
	if d == idem.Acquired {
		next := transition.Acquire(cur, takeover, p, now, s.nextToken)
		if e == nil {
			k.scope = s.intern(p.Scope)
			e = &entry{}
			s.records[k] = e
		} else {
			k = recordKey{e.rec.Scope, e.rec.Key} // the map's strings, not the caller's
		}
		next.Scope, next.Key = k.scope, k.key
		if e.completed() {
			e.clearOutcome() // an expired outcome
		}
		e.rec = next
	}
	res := idem.BeginResult{Decision: d, Takeover: takeover, RetryAfter: retryAfter}
	if e.completed() {
		r := &beginResult{res: res}
		r.res.Record = e.copyTo(&r.rec)
		return &r.res, nil
	}
	r := &ownedResult{res: res, rec: e.rec}
	r.rec.Checkpoint = transition.CloneCheckpoint(e.rec.Checkpoint)
	r.res.Record = &r.rec
	return &r.res, nil
}

// intern returns the store's copy of scope, making one if needed.
func (s *Store) intern(scope string) string {
	if v, ok := s.scopes[scope]; ok {
		return v
	}
	if len(s.scopes) >= maxScopes {
		clear(s.scopes)
	}
	v := strings.Clone(scope)
	s.scopes[v] = v
	return v
}

// owned runs a transition of one owned record under the lock: f returns
// the record that replaces the stored one.
func (s *Store) owned(ctx context.Context, scope, key string, f func(cur *idem.Record, now time.Time) (*idem.Record, error)) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	e := s.records[recordKey{scope, key}]
	next, err := f(e.current(), s.clock.Now())
	if err != nil {
		return err
	}
	e.rec = *next // owned and pending before: no outcome to forget
	return nil
}

// Complete implements idem.Store. The record it returns carries the
// caller's own outcome (p.Outcome itself), not a copy of the stored one:
// copying the outcome back was most of Complete's cost.
func (s *Store) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	e := s.records[recordKey{p.Scope, p.Key}]
	next, err := transition.CompleteRecord(e.current(), p, s.clock.Now())
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	e.rec = next
	e.setOutcome(&p.Outcome)
	s.mu.Unlock()
	rec := &next // a completed record has no checkpoint
	rec.Outcome = &p.Outcome
	return rec, nil
}

// Release implements idem.Store.
func (s *Store) Release(ctx context.Context, p *idem.ReleaseParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	err := s.owned(ctx, p.Scope, p.Key, func(cur *idem.Record, now time.Time) (*idem.Record, error) {
		return transition.Release(cur, p, now)
	})
	return err
}

// Extend implements idem.Store.
func (s *Store) Extend(ctx context.Context, p *idem.ExtendParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	var rec *idem.Record
	err := s.owned(ctx, p.Scope, p.Key, func(cur *idem.Record, now time.Time) (*idem.Record, error) {
		next, err := transition.Extend(cur, p, now)
		if err == nil {
			rec = transition.Clone(next) // a pending record: no outcome
		}
		return next, err
	})
	if err != nil {
		return nil, err
	}
	return rec, nil
}

// Checkpoint implements idem.Store.
func (s *Store) Checkpoint(ctx context.Context, p *idem.CheckpointParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	err := s.owned(ctx, p.Scope, p.Key, func(cur *idem.Record, now time.Time) (*idem.Record, error) {
		return transition.Checkpoint(cur, p, now)
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
	defer s.mu.Unlock()
	e, ok := s.records[recordKey{p.Scope, p.Key}]
	if !ok {
		return nil, fmt.Errorf("%w: scope %q", idem.ErrNotFound, p.Scope)
	}
	return e.record(), nil
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
	for k, e := range s.records {
		if p.Limit > 0 && n == p.Limit {
			break
		}
		if transition.Sweepable(&e.rec, now) {
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
	for k, e := range s.records {
		if k.scope == p.Scope && k.key > p.Cursor && (p.State == "" || e.rec.State == p.State) {
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
		res.Records = append(res.Records, s.records[recordKey{p.Scope, k}].record())
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
