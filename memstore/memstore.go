// Package memstore is the in-memory idem.Store: the reference model the
// conformance suite and the simulator check other stores against, and the
// store for tests of code built on the ledger. Nothing survives the process.
// Importing it registers the URL scheme mem: with idem.OpenStore; each
// open of "mem:" is a new, empty store.
//
// Records come back with their times in UTC and without a monotonic clock
// reading, as from the other stores: compare them with time.Time.Equal.
// Each stored record is one pointer-free string, so that a store holding
// many costs the garbage collector little.
package memstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
//
// Records are spread over shards by a hash of their scope and key, each
// shard with its own lock, so that callers on other keys seldom wait for
// each other; a call builds its answer after letting the lock go, so that
// callers of one key wait for no one's allocations.
type Store struct {
	clock idem.Clock
	seed  maphash.Seed
	// collide makes the hash of a key the length of its map key
	// (entry.key) modulo 3, for tests of the collided maps.
	collide bool

	token  atomic.Int64 // store-wide: tokens never repeat, even after a delete
	closed atomic.Bool
	shards [1 << shardBits]shard
}

// shardBits is log2 of the number of shards.
const shardBits = 4

// shard holds the records whose hash (Store.hash) starts with its index.
type shard struct {
	mu sync.Mutex
	// records holds the entries by the hash of their scope and key:
	// growing a map rehashes its keys, and a string key costs a visit to
	// the entry's string where a number is in the map's own slot. An
	// entry whose hash another entry holds is in collided, by its names.
	records  map[uint64]entry
	collided map[[2]string]entry
	_        [64 - 24]byte // one cache line per shard: the locks do not share one
}

// entry is one stored record in a form the garbage collector marks
// cheaply, since a store may keep many: a small value in the map (not an
// object of its own) holding one pointer-free string and, while a pending
// record holds one, the checkpoint. Entries are replaced, never changed;
// whatever leaves the store is a copy made under the lock. newEntry and
// entry.record are the conversion from and to idem.Record.
type entry struct {
	// s is the record's numbers (at the offsets below), then its map key
	// (the scope and the key, each after its length in one byte:
	// ValidateKey bounds both to 255 bytes), the fingerprint and, when
	// completed, the outcome's Data and its Meta as key, value pairs each
	// ended by metaEnd.
	s          string
	checkpoint *idem.Checkpoint // shared, never changed: replaced by a new one
}

// Where entry.s holds the record's numbers, little-endian. The numbers are
// in the string rather than fields of the entry to keep map slots small:
// the map copies every slot as it grows.
const (
	atToken     = 0              // int64
	atAttempts  = 8              // int64
	atWindow    = 16             // time.Duration
	atRetention = 24             // time.Duration
	atTimes     = 32             // recordTimes, each Unix seconds (8 bytes) and nanoseconds (4 bytes)
	atFPEnd     = atTimes + 5*12 // uint32: where the fingerprint ends in s, Data starts
	atDataEnd   = atFPEnd + 4    // uint64: where Data ends, Meta starts
	atState     = atDataEnd + 8  // one byte: the index in states
	atMetaNil   = atState + 1    // one byte: 1 when the stored Meta was nil, not empty
	atKey       = atMetaNil + 1  // the map key
)

// metaEnd ends each Meta key and value in entry.s: a byte that valid UTF-8,
// which CompleteParams.Validate demands of Meta, never holds.
const metaEnd = "\xff"

// states are the record states by their number in an entry.
var states = [...]idem.State{idem.StatePending, idem.StateCompleted, idem.StateReleased}

// recordTimes are r's times in the order of entry.s.
func recordTimes(r *idem.Record) [5]*time.Time {
	return [...]*time.Time{&r.LeaseUntil, &r.Created, &r.Completed, &r.Expires, &r.RetainUntil}
}

// appendKey appends the map key of (scope, key) to b.
func appendKey(b []byte, scope, key string) []byte {
	b = append(b, byte(len(scope)))
	b = append(b, scope...)
	b = append(b, byte(len(key)))
	return append(b, key...)
}

// newEntry is rec in an entry, with out, rec's outcome when completed (nil
// otherwise). It copies out.Data and shares nothing with rec and out but
// rec's checkpoint. It walks out.Meta once: a map's iteration costs more
// than the copying, and a response's Meta has a few pairs, which it keeps
// on the stack while it sizes the string.
func newEntry(rec *idem.Record, out *idem.Outcome) entry {
	keyLen := 2 + len(rec.Scope) + len(rec.Key)
	fpEnd := atKey + keyLen + len(rec.Fingerprint)
	dataEnd, size := fpEnd, fpEnd
	var pairsBuf [8][2]string
	pairs := pairsBuf[:0]
	if out != nil {
		dataEnd += len(out.Data)
		size = dataEnd
		for k, v := range out.Meta {
			pairs = append(pairs, [2]string{k, v})
			size += len(k) + len(v) + 2*len(metaEnd)
		}
	}

	var n [atKey]byte
	le := binary.LittleEndian
	le.PutUint64(n[atToken:], uint64(rec.Token))
	le.PutUint64(n[atAttempts:], uint64(rec.Attempts))
	le.PutUint64(n[atWindow:], uint64(rec.Window))
	le.PutUint64(n[atRetention:], uint64(rec.Retention))
	for i, t := range recordTimes(rec) {
		le.PutUint64(n[atTimes+12*i:], uint64(t.Unix()))
		le.PutUint32(n[atTimes+12*i+8:], uint32(t.Nanosecond()))
	}
	le.PutUint32(n[atFPEnd:], uint32(fpEnd))
	le.PutUint64(n[atDataEnd:], uint64(dataEnd))
	n[atState] = byte(slices.Index(states[:], rec.State))
	if out != nil && out.Meta == nil {
		n[atMetaNil] = 1
	}

	var b strings.Builder
	b.Grow(size)
	b.Write(n[:])
	// The map key, as appendKey writes it.
	b.WriteByte(byte(len(rec.Scope)))
	b.WriteString(rec.Scope)
	b.WriteByte(byte(len(rec.Key)))
	b.WriteString(rec.Key)
	b.WriteString(rec.Fingerprint)
	if out != nil {
		b.Write(out.Data)
		for _, kv := range pairs {
			b.WriteString(kv[0])
			b.WriteString(metaEnd)
			b.WriteString(kv[1])
			b.WriteString(metaEnd)
		}
	}
	return entry{s: b.String(), checkpoint: rec.Checkpoint}
}

// u64 and u32 read the number at offset at of e.s.
func (e *entry) u64(at int) uint64 { return binary.LittleEndian.Uint64([]byte(e.s[at : at+8])) }
func (e *entry) u32(at int) uint32 { return binary.LittleEndian.Uint32([]byte(e.s[at : at+4])) }

// state is e's record state.
func (e *entry) state() idem.State { return states[e.s[atState]] }

// key is e's map key.
func (e *entry) key() string {
	n := atKey + 1 + int(e.s[atKey])
	return e.s[atKey : n+1+int(e.s[n])]
}

// names are e's scope and key, from its map key.
func (e *entry) names() (scope, key string) {
	k := e.key()
	n := 1 + int(k[0])
	return k[1:n], k[n+1:]
}

// record is e's record without its outcome, sharing e's checkpoint: what
// the transitions read. Its times are UTC, without a monotonic reading.
func (e *entry) record() idem.Record {
	scope, key := e.names()
	rec := idem.Record{
		Scope:       scope,
		Key:         key,
		Fingerprint: e.s[atKey+2+len(scope)+len(key) : e.u32(atFPEnd)],
		State:       e.state(),
		Token:       int64(e.u64(atToken)),
		Attempts:    int(e.u64(atAttempts)),
		Checkpoint:  e.checkpoint,
		Window:      time.Duration(e.u64(atWindow)),
		Retention:   time.Duration(e.u64(atRetention)),
	}
	for i, t := range recordTimes(&rec) {
		*t = time.Unix(int64(e.u64(atTimes+12*i)), int64(e.u32(atTimes+12*i+8))).UTC()
	}
	return rec
}

// recordCopy is a record handed out and its outcome, in one allocation.
type recordCopy struct {
	rec idem.Record
	out idem.Outcome
}

// copyTo writes to c a copy of rec, e's record as e.record returned it,
// with a checkpoint and outcome the caller owns: the Data is copied, the
// Meta strings (immutable) are substrings of e.s.
func (e *entry) copyTo(c *recordCopy, rec *idem.Record) *idem.Record {
	c.rec = *rec
	c.rec.Checkpoint = transition.CloneCheckpoint(rec.Checkpoint)
	if c.rec.State != idem.StateCompleted {
		return &c.rec
	}
	dataEnd := e.u64(atDataEnd)
	c.out.Data = append([]byte{}, e.s[e.u32(atFPEnd):dataEnd]...)
	c.out.Meta = nil
	if e.s[atMetaNil] == 0 {
		pairs := e.s[dataEnd:]
		c.out.Meta = make(map[string]string, strings.Count(pairs, metaEnd)/2)
		for pairs != "" {
			var k, v string
			k, pairs, _ = strings.Cut(pairs, metaEnd)
			v, pairs, _ = strings.Cut(pairs, metaEnd)
			c.out.Meta[k] = v
		}
	}
	c.rec.Outcome = &c.out
	return &c.rec
}

var (
	_ idem.Store  = (*Store)(nil)
	_ idem.Lister = (*Store)(nil)
	_ idem.Sizer  = (*Store)(nil)

	_ idem.StateSizer = (*Store)(nil)
	_ idem.Describer  = (*Store)(nil)
)

// New returns an empty Store.
func New(cfg *Config) *Store {
	s := &Store{clock: idem.SystemClock{}, seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].records = map[uint64]entry{}
		s.shards[i].collided = map[[2]string]entry{}
	}
	if cfg != nil && cfg.Clock != nil {
		s.clock = cfg.Clock
	}
	return s
}

// lock takes the lock of the shard of (scope, key) and returns the shard
// and the key's hash, failing once the store is closed or ctx is done.
func (s *Store) lock(ctx context.Context, scope, key string) (*shard, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	h := s.hash(scope, key)
	sh := &s.shards[h>>(64-shardBits)]
	sh.mu.Lock()
	if s.closed.Load() {
		sh.mu.Unlock()
		return nil, 0, idem.ErrClosed
	}
	return sh, h, nil
}

// hash is the records' map key of (scope, key).
func (s *Store) hash(scope, key string) uint64 {
	if s.collide {
		return uint64((2 + len(scope) + len(key)) % 3)
	}
	return maphash.String(s.seed, scope)*0x9e3779b97f4a7c15 ^ maphash.String(s.seed, key)
}

// nextToken returns a token greater than after and than every token
// handed out before.
func (s *Store) nextToken(after int64) int64 {
	for {
		last := s.token.Load()
		next := max(last, after) + 1
		if s.token.CompareAndSwap(last, next) {
			return next
		}
	}
}

// find returns the entry of (scope, key), hashed h, and its record,
// written to rec, for the transitions; the record is nil when there is no
// entry.
func (sh *shard) find(scope, key string, h uint64, rec *idem.Record) (entry, *idem.Record) {
	e, ok := sh.get(scope, key, h)
	if !ok {
		return entry{}, nil
	}
	*rec = e.record()
	return e, rec
}

// A map key prefixes scope and key with their lengths in one byte each.
const _, _ = uint8(idem.MaxScopeLen), uint8(idem.MaxKeyLen)

// now is the clock's time in UTC without a monotonic reading, as every
// record the store returns carries its times.
func (s *Store) now() time.Time { return s.clock.Now().UTC() }

// get returns the entry of (scope, key), hashed h.
func (sh *shard) get(scope, key string, h uint64) (entry, bool) {
	if e, ok := sh.records[h]; ok {
		if sc, k := e.names(); sc == scope && k == key {
			return e, true
		}
	}
	if len(sh.collided) > 0 {
		e, ok := sh.collided[[2]string{scope, key}]
		return e, ok
	}
	return entry{}, false
}

// put stores rec, with out when completed, in place of the record of its
// key, hashed h, as an entry that keeps no caller's memory.
func (sh *shard) put(h uint64, rec *idem.Record, out *idem.Outcome) entry {
	e := newEntry(rec, out)
	names := [2]string{}
	names[0], names[1] = e.names()
	if len(sh.collided) > 0 {
		if _, ok := sh.collided[names]; ok {
			sh.collided[names] = e
			return e
		}
	}
	if held, ok := sh.records[h]; ok {
		if sc, k := held.names(); sc != names[0] || k != names[1] {
			sh.collided[names] = e
			return e
		}
	}
	sh.records[h] = e
	return e
}

// remove deletes the entry of (scope, key), hashed h, which the shard
// holds.
func (sh *shard) remove(scope, key string, h uint64) {
	if len(sh.collided) > 0 {
		if _, ok := sh.collided[[2]string{scope, key}]; ok {
			delete(sh.collided, [2]string{scope, key})
			return
		}
	}
	delete(sh.records, h)
}

// each calls f with every entry of every shard and its hash, each under
// its shard's lock, until f returns false; f may remove the entry it is
// given. It fails once the store is closed or ctx is done.
func (s *Store) each(ctx context.Context, f func(sh *shard, h uint64, e entry) bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		if s.closed.Load() {
			sh.mu.Unlock()
			return idem.ErrClosed
		}
		more := true
		for h, e := range sh.records {
			if more = f(sh, h, e); !more {
				break
			}
		}
		for names, e := range sh.collided {
			if !more {
				break
			}
			more = f(sh, s.hash(names[0], names[1]), e)
		}
		sh.mu.Unlock()
		if !more {
			break
		}
	}
	return nil
}

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
	sh, h, err := s.lock(ctx, p.Scope, p.Key)
	if err != nil {
		return nil, err
	}
	var stored, next idem.Record
	e, cur := sh.find(p.Scope, p.Key, h, &stored)
	now := s.now()
	d, takeover, retryAfter := transition.Decide(cur, p, now)
	if d == idem.Acquired {
		next = transition.Acquire(cur, takeover, p, now, s.nextToken)
		e, cur = sh.put(h, &next, nil), &next
	}
	sh.mu.Unlock()
	// The answer is built without the lock: entries and checkpoints are
	// never changed, and cur is this call's copy. A replay of one key by
	// many callers waits for no one's allocations.
	if d == idem.Mismatch {
		return &idem.BeginResult{Decision: idem.Mismatch}, nil
	}
	res := idem.BeginResult{Decision: d, Takeover: takeover, RetryAfter: retryAfter}
	if d == idem.Replay {
		r := &beginResult{res: res}
		r.res.Record = e.copyTo(&r.rec, cur)
		return &r.res, nil
	}
	r := &ownedResult{res: res, rec: *cur}
	r.rec.Checkpoint = transition.CloneCheckpoint(cur.Checkpoint)
	r.res.Record = &r.rec
	return &r.res, nil
}

// owned runs a transition of one owned record under the lock: f returns
// the record that replaces the stored one.
func (s *Store) owned(ctx context.Context, scope, key string, f func(cur *idem.Record, now time.Time) (*idem.Record, error)) error {
	sh, h, err := s.lock(ctx, scope, key)
	if err != nil {
		return err
	}
	defer sh.mu.Unlock()
	var stored idem.Record
	_, cur := sh.find(scope, key, h, &stored)
	next, err := f(cur, s.now())
	if err != nil {
		return err
	}
	sh.put(h, next, nil) // pending or released: no outcome
	return nil
}

// Complete implements idem.Store. The record it returns carries the
// caller's own outcome (p.Outcome itself), not a copy of the stored one:
// copying the outcome back was most of Complete's cost.
func (s *Store) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	sh, h, err := s.lock(ctx, p.Scope, p.Key)
	if err != nil {
		return nil, err
	}
	var stored idem.Record
	_, cur := sh.find(p.Scope, p.Key, h, &stored)
	next, err := transition.CompleteRecord(cur, p, s.now())
	if err != nil {
		sh.mu.Unlock()
		return nil, err
	}
	sh.put(h, &next, &p.Outcome)
	sh.mu.Unlock()
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
	sh, h, err := s.lock(ctx, p.Scope, p.Key)
	if err != nil {
		return nil, err
	}
	defer sh.mu.Unlock()
	var stored idem.Record
	e, cur := sh.find(p.Scope, p.Key, h, &stored)
	if cur == nil {
		return nil, fmt.Errorf("%w: scope %q", idem.ErrNotFound, p.Scope)
	}
	return e.copyTo(new(recordCopy), cur), nil
}

// Delete implements idem.Store.
func (s *Store) Delete(ctx context.Context, p *idem.KeyParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	sh, h, err := s.lock(ctx, p.Scope, p.Key)
	if err != nil {
		return err
	}
	defer sh.mu.Unlock()
	if _, ok := sh.get(p.Scope, p.Key, h); !ok {
		return fmt.Errorf("%w: scope %q", idem.ErrNotFound, p.Scope)
	}
	sh.remove(p.Scope, p.Key, h)
	return nil
}

// Sweep implements idem.Store. It scans every record: memstore is for tests.
func (s *Store) Sweep(ctx context.Context, p *idem.SweepParams) (*idem.SweepResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	now := s.now()
	n := 0
	err := s.each(ctx, func(sh *shard, h uint64, e entry) bool {
		if p.Limit > 0 && n == p.Limit {
			return false
		}
		if rec := e.record(); transition.Sweepable(&rec, now) {
			scope, key := e.names()
			sh.remove(scope, key, h) // deleting while ranging is allowed
			n++
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	return &idem.SweepResult{Deleted: n}, nil
}

// List implements idem.Lister. The cursor is the last key of the previous
// page.
func (s *Store) List(ctx context.Context, p *idem.ListParams) (*idem.ListResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	var page []entry
	err := s.each(ctx, func(_ *shard, _ uint64, e entry) bool {
		scope, key := e.names()
		if scope == p.Scope && key > p.Cursor && (p.State == "" || e.state() == p.State) {
			page = append(page, e)
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(page, func(a, b entry) int {
		_, ka := a.names()
		_, kb := b.names()
		return strings.Compare(ka, kb) // not a.key(): the key's length comes first there
	})
	res := &idem.ListResult{}
	if len(page) > p.Limit {
		page = page[:p.Limit]
		_, res.NextCursor = page[p.Limit-1].names()
	}
	for _, e := range page {
		rec := e.record()
		res.Records = append(res.Records, e.copyTo(new(recordCopy), &rec))
	}
	return res, nil
}

// Size implements idem.Sizer.
func (s *Store) Size(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var n int64
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		closed := s.closed.Load()
		n += int64(len(sh.records) + len(sh.collided))
		sh.mu.Unlock()
		if closed {
			return 0, idem.ErrClosed
		}
	}
	return n, nil
}

// SizeByState implements idem.StateSizer. It reads the state byte of
// every entry, one shard at a time under its lock.
func (s *Store) SizeByState(ctx context.Context) (map[idem.State]int64, error) {
	var n [len(states)]int64
	err := s.each(ctx, func(_ *shard, _ uint64, e entry) bool {
		n[e.s[atState]]++
		return true
	})
	if err != nil {
		return nil, err
	}
	m := make(map[idem.State]int64, len(states))
	for i, st := range states {
		m[st] = n[i]
	}
	return m, nil
}

// Close implements idem.Store. Later calls fail with idem.ErrClosed; it
// returns once the calls in progress have.
func (s *Store) Close() error {
	for i := range s.shards {
		s.shards[i].mu.Lock()
	}
	s.closed.Store(true)
	for i := range s.shards {
		s.shards[i].mu.Unlock()
	}
	return nil
}
