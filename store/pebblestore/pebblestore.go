package pebblestore

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/transition"
)

// ErrLocked: the directory is held by another process (a running idem
// serve).
var ErrLocked = errors.New("pebblestore: directory is in use by another process")

// DefaultSweepInterval is how often the background sweeper runs when
// Config.SweepInterval is zero.
const DefaultSweepInterval = time.Minute

const (
	// tokenBlock is how many tokens one synced write of the high-water mark
	// reserves. Begins wait while it is synced (under the token lock and
	// their key locks), so it is large: at 65536, a store handing out 60000
	// tokens a second waits for one sync a second; tokens skip at most a
	// block at each restart.
	tokenBlock = 1 << 16
	// stripes is the number of per-key locks; keys share one by hash.
	stripes = 1024
	// sweepChunk bounds the records one Sweep batch removes (and the key
	// locks it holds at once).
	sweepChunk = 128
)

// DefaultCacheSize is the block cache of a Store whose Config says none.
const DefaultCacheSize = 64 << 20

// Config configures a Store. A nil *Config means defaults.
type Config struct {
	// Clock judges leases and windows, and paces the background sweeper.
	// Default: idem.SystemClock.
	Clock idem.Clock
	// SweepInterval is how often the background sweeper removes expired
	// records. Zero means DefaultSweepInterval; a negative value disables
	// the sweeper (call Sweep yourself).
	SweepInterval time.Duration
	// Logger receives failures of the background sweeper and Pebble's own
	// messages (informational ones at debug level). Pebble's messages may
	// quote stored keys, so pass a logger only where keys may be seen.
	// Default: nothing is logged.
	Logger *slog.Logger
	// CacheSize is the size in bytes of Pebble's block cache, which keeps
	// the index and filter blocks that every Begin of a fresh key reads.
	// Zero or less means DefaultCacheSize (Pebble's own default, 8 MiB,
	// makes the store read them from disk again at a few hundred thousand
	// keys).
	CacheSize int64

	fs         vfs.FS // tests count syncs and cut the power through it
	tokenBlock int64  // tests cross blocks with fewer tokens; zero means tokenBlock
	noSync     bool   // the power-cut test's mutant: commit without syncing
}

// Store is the embedded, durable idem.Store, idem.Lister, idem.Sizer and
// idem.StateSizer.
// It is safe for concurrent use; only one Store (in one process) may have a
// directory open at a time.
type Store struct {
	db     *pebble.DB
	lock   *pebble.Lock
	dir    string
	clock  idem.Clock
	logger *slog.Logger
	seed   maphash.Seed

	stripes [stripes]stripe // per-key locks and pending records

	recordReads atomic.Int64 // records read from Pebble, for tests

	// closeMu is held shared by every operation and exclusively by Close,
	// so Pebble is never used after it is closed.
	closeMu sync.RWMutex
	closed  bool

	tokenMu    sync.Mutex
	token      int64 // the last token handed out
	tokenMark  int64 // the persisted high-water mark: no token above it was handed out
	tokenBlock int64 // how many tokens one mark reserves

	// commit is how every write is committed: pebble.Sync (only the
	// power-cut test's mutant uses pebble.NoSync).
	commit *pebble.WriteOptions

	size    atomic.Int64
	byState [len(codeStates)]atomic.Int64 // records by state code, kept as size is

	sweepMu      sync.Mutex
	sweepVisited atomic.Int64 // index entries Sweep looked at, for tests

	journalOnce sync.Once
	journal     *Journal

	stopOnce    sync.Once
	stop        chan struct{}
	stopSweep   context.CancelFunc // cuts a running background sweep short
	sweeperDone chan struct{}
}

var (
	_ idem.Store  = (*Store)(nil)
	_ idem.Lister = (*Store)(nil)
	_ idem.Sizer  = (*Store)(nil)

	_ idem.StateSizer = (*Store)(nil)
	_ idem.Describer  = (*Store)(nil)
)

// Open opens (creating if needed) the store in dir. It fails with an error
// wrapping ErrLocked when another process has the directory open.
func Open(dir string, cfg *Config) (*Store, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Clock == nil {
		c.Clock = idem.SystemClock{}
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = DefaultSweepInterval
	}
	if dir == "" {
		return nil, fmt.Errorf("%w: pebblestore: the directory is empty; name one, like ./idem-data", idem.ErrInvalid)
	}
	fsys := vfs.Default
	if c.fs != nil {
		fsys = c.fs
	}
	if err := createDir(fsys, dir); err != nil {
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	lock, err := pebble.LockDirectory(dir, fsys)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) { // the lock file could not be created
			return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrLocked, dir, err)
	}
	s := &Store{
		lock:        lock,
		dir:         dir,
		clock:       c.Clock,
		logger:      c.Logger,
		seed:        maphash.MakeSeed(),
		stop:        make(chan struct{}),
		sweeperDone: make(chan struct{}),
		tokenBlock:  tokenBlock,
		commit:      pebble.Sync,
	}
	if c.noSync {
		s.commit = pebble.NoSync
	}
	if c.tokenBlock > 0 {
		s.tokenBlock = c.tokenBlock
	}
	opts := pebbleOptions(c.Logger, c.CacheSize)
	opts.Lock = lock
	opts.FS = fsys
	s.db, err = pebble.Open(dir, opts)
	if err != nil {
		_ = lock.Close()
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	if err := s.load(); err != nil {
		_ = s.db.Close()
		_ = lock.Close()
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	if c.SweepInterval > 0 {
		var ctx context.Context
		ctx, s.stopSweep = context.WithCancel(context.Background())
		go s.sweeper(ctx, c.SweepInterval)
	} else {
		close(s.sweeperDone)
	}
	return s, nil
}

// createDir creates dir and its missing parents, and syncs the parent of
// each directory it creates. Pebble syncs the parent of the directory it
// opens, but a directory above that one, new too, would otherwise hold its
// new entry in the page cache only: a power cut could take the whole store
// away after its writes were acknowledged.
func createDir(fsys vfs.FS, dir string) error {
	var created []string // from dir up, the directories that do not exist
	for d := dir; ; {
		_, err := fsys.Stat(d)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		created = append(created, d)
		parent := fsys.PathDir(d)
		if parent == d {
			break
		}
		d = parent
	}
	if len(created) == 0 {
		return nil
	}
	if err := fsys.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, d := range created {
		parent, err := fsys.OpenDir(fsys.PathDir(d))
		if err != nil {
			return err
		}
		err = parent.Sync()
		if cerr := parent.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("sync the directory of %s: %w", d, err)
		}
	}
	return nil
}

// pebbleOptions are the Pebble settings of every store (and of the raw
// baseline the benchmarks measure it against): the block cache is
// cacheSize, or DefaultCacheSize when that is not positive. Bloom filters let
// the Get of a fresh key (the first Begin of every operation) skip the
// tables that cannot hold it instead of reading their index blocks.
func pebbleOptions(logger *slog.Logger, cacheSize int64) *pebble.Options {
	if cacheSize <= 0 {
		cacheSize = DefaultCacheSize
	}
	opts := &pebble.Options{Logger: pebbleLogger{logger}, MemTableSize: 32 << 20, CacheSize: cacheSize}
	opts.Levels[0].FilterPolicy = bloom.FilterPolicy(10) // later levels inherit it
	return opts
}

// load reads the token high-water mark and counts the records.
func (s *Store) load() error {
	v, closer, err := s.db.Get([]byte(keyTokenMark))
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return err
	default:
		if len(v) != 8 {
			closer.Close()
			return fmt.Errorf("%w: token mark of %d bytes", errCorrupt, len(v))
		}
		s.token = int64(binary.BigEndian.Uint64(v))
		s.tokenMark = s.token
		closer.Close()
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixRecord), UpperBound: upperBound([]byte(prefixRecord))})
	if err != nil {
		return err
	}
	var n int64
	var byState [len(codeStates)]int64
	for it.First(); it.Valid(); it.Next() {
		n++
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		// A corrupt record counts in no state: Open does not check records.
		if code, err := decodeState(v); err == nil {
			byState[code]++
		}
	}
	if err := it.Close(); err != nil {
		return err
	}
	s.size.Store(n)
	for code, n := range byState {
		s.byState[code].Store(n)
	}
	return nil
}

// upperBound returns the smallest key greater than every key with prefix.
func upperBound(prefix []byte) []byte {
	b := append([]byte{}, prefix...)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] != 0xff {
			b[i]++
			return b[:i+1]
		}
	}
	return nil // no bound: the prefix is all 0xff
}

func (s *Store) sweeper(ctx context.Context, interval time.Duration) {
	defer close(s.sweeperDone)
	for {
		select {
		case <-s.stop:
			return
		case <-s.clock.After(interval):
		}
		if _, err := s.Sweep(ctx, &idem.SweepParams{}); err != nil && ctx.Err() == nil {
			if s.logger != nil {
				s.logger.Error("pebblestore: background sweep failed", "dir", s.dir, "error", err)
			}
		}
	}
}

// Close stops the background sweeper, waits for running operations and
// closes Pebble; the directory can then be opened again without recovery.
// Later calls of any method fail with idem.ErrClosed.
func (s *Store) Close() error {
	s.stopOnce.Do(func() {
		close(s.stop)
		if s.stopSweep != nil {
			s.stopSweep()
		}
	})
	<-s.sweeperDone
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	for i := range s.stripes { // no operation runs: closeMu is held
		s.stripes[i].pending = nil
	}
	err := s.db.Close()
	if lerr := s.lock.Close(); err == nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("pebblestore: close %s: %w", s.dir, err)
	}
	return nil
}

// enter starts an operation: it fails once the store is closed or ctx is
// done. The caller must call s.closeMu.RUnlock when it returns nil.
func (s *Store) enter(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return idem.ErrClosed
	}
	return nil
}

// nextToken hands out a token greater than after and than every token
// handed out before, also before a restart: when the reserved block runs
// out it first syncs a new high-water mark.
func (s *Store) nextToken(after int64) (int64, error) {
	s.tokenMu.Lock()
	defer s.tokenMu.Unlock()
	t := max(s.token, after) + 1
	if t > s.tokenMark {
		mark := t + s.tokenBlock - 1
		if err := s.db.Set([]byte(keyTokenMark), binary.BigEndian.AppendUint64(nil, uint64(mark)), s.commit); err != nil {
			return 0, fmt.Errorf("pebblestore: reserve tokens: %w", err)
		}
		s.tokenMark = mark
	}
	s.token = t
	return t, nil
}

// get reads the record stored under ref and the time of its index entry
// (nil when there is none).
func (s *Store) get(ref []byte) (*idem.Record, time.Time, error) {
	return s.read(append([]byte(prefixRecord), ref...))
}

// read is get by the record's Pebble key.
func (s *Store) read(rkey []byte) (*idem.Record, time.Time, error) {
	s.recordReads.Add(1)
	v, closer, err := s.db.Get(rkey)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, time.Time{}, nil
	}
	if err != nil {
		return nil, time.Time{}, err
	}
	defer closer.Close()
	return decodeRecord(v)
}

// put writes next over cur (nil when new) in one synced batch. Every record
// has one expiry-index entry, at a time no later than its RetainUntil: a
// lower bound, so the entry need not move each time RetainUntil does. When
// a Begin hands out a new lease with window w at now, every RetainUntil
// that ownership can reach (by Extend, Complete or Release) is at least
// now + w, so the entry goes there (or stays where it is when that is
// earlier) and the other transitions leave it alone; Complete writes the
// record only. Sweep moves an entry that comes due before its record.
//
// The caller holds st.mu. Once the batch is synced, a pending next is kept
// in st, so the owner's next operation need not read Pebble: put takes next
// over, and the caller hands out copies of it only.
func (s *Store) put(st *stripe, rkey []byte, cur *idem.Record, curAt time.Time, next *idem.Record, nextAt time.Time) error {
	if next.RetainUntil.Before(nextAt) { // never later than RetainUntil
		nextAt = next.RetainUntil
	}
	ref := rkey[len(prefixRecord):]
	st.forget(ref) // also when the commit fails: what Pebble holds is then unknown
	b := s.db.NewBatch()
	defer b.Close()
	buf := encodeBuffers.Get().(*[]byte)
	v := encodeRecord((*buf)[:0], next, nextAt)
	err := b.Set(rkey, v, nil) // the batch copies v
	if cap(v) <= maxPooledBuffer {
		*buf = v
		encodeBuffers.Put(buf)
	}
	if err != nil {
		return err
	}
	if cur == nil || !curAt.Equal(nextAt) {
		if cur != nil {
			if err := b.Delete(indexKey(curAt, ref), nil); err != nil {
				return err
			}
		}
		op := b.SetDeferred(len(prefixIndex)+timeLen+len(ref), 0)
		putIndexKey(op.Key, nextAt, ref)
		if err := op.Finish(); err != nil {
			return err
		}
	}
	if err := b.Commit(s.commit); err != nil {
		return err
	}
	if cur == nil || cur.State != next.State {
		if cur != nil {
			s.byState[stateCode(cur.State)].Add(-1)
		}
		s.byState[stateCode(next.State)].Add(1)
	}
	st.remember(ref, utc(next), nextAt.UTC(), len(v))
	return nil
}

// encodeBuffers hold the encodings of records on their way into a batch,
// which copies them.
var encodeBuffers = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBuffer bounds the buffers encodeBuffers keeps: a large outcome's
// is left to the garbage collector.
const maxPooledBuffer = 16 << 10

// utc returns r with its times in UTC and without monotonic readings, as
// records read back from disk have them.
func utc(r *idem.Record) *idem.Record {
	if r == nil {
		return nil
	}
	for _, t := range []*time.Time{&r.LeaseUntil, &r.Created, &r.Completed, &r.Expires, &r.RetainUntil} {
		*t = t.UTC()
	}
	return r
}

// Begin implements idem.Store. A replay or in-flight answer reads only;
// an acquisition writes the record in one synced batch.
func (s *Store) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	rkey := recordKey(p.Scope, p.Key)
	ref := rkey[len(prefixRecord):]
	st := s.stripeOf(ref)
	st.mu.Lock()
	defer st.mu.Unlock()
	cur, curAt, err := st.load(s, rkey)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: begin: %w", err)
	}
	now := s.clock.Now()
	var tokenErr error
	res, next := transition.Begin(cur, p, now, func(after int64) int64 {
		t, err := s.nextToken(after)
		if err != nil {
			tokenErr = err
		}
		return t
	})
	if tokenErr != nil {
		return nil, tokenErr
	}
	if next != nil {
		at := now.Add(p.Window) // no RetainUntil of this ownership is earlier
		if cur != nil && curAt.Before(at) {
			at = curAt
		}
		if err := s.put(st, rkey, cur, curAt, next, at); err != nil {
			return nil, fmt.Errorf("pebblestore: begin: %w", err)
		}
		if cur == nil {
			s.size.Add(1)
		}
	}
	utc(res.Record)
	return res, nil
}

// update applies a transition to one owned record under its key lock.
func (s *Store) update(ctx context.Context, op, scope, key string, f func(cur *idem.Record, now time.Time) (*idem.Record, error)) (*idem.Record, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	rkey := recordKey(scope, key)
	st := s.stripeOf(rkey[len(prefixRecord):])
	st.mu.Lock()
	defer st.mu.Unlock()
	cur, curAt, err := st.load(s, rkey)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: %s: %w", op, err)
	}
	next, err := f(cur, s.clock.Now())
	if err != nil {
		return nil, err
	}
	if err := s.put(st, rkey, cur, curAt, next, curAt); err != nil {
		return nil, fmt.Errorf("pebblestore: %s: %w", op, err)
	}
	if next.State == idem.StatePending { // the stripe keeps next
		return utc(transition.Clone(next)), nil
	}
	return utc(next), nil // next is the transition's own copy
}

// Complete implements idem.Store.
func (s *Store) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return s.update(ctx, "complete", p.Scope, p.Key, func(cur *idem.Record, now time.Time) (*idem.Record, error) {
		return transition.Complete(cur, p, now)
	})
}

// Release implements idem.Store.
func (s *Store) Release(ctx context.Context, p *idem.ReleaseParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	_, err := s.update(ctx, "release", p.Scope, p.Key, func(cur *idem.Record, now time.Time) (*idem.Record, error) {
		return transition.Release(cur, p, now)
	})
	return err
}

// Extend implements idem.Store.
func (s *Store) Extend(ctx context.Context, p *idem.ExtendParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return s.update(ctx, "extend", p.Scope, p.Key, func(cur *idem.Record, now time.Time) (*idem.Record, error) {
		return transition.Extend(cur, p, now)
	})
}

// Checkpoint implements idem.Store.
func (s *Store) Checkpoint(ctx context.Context, p *idem.CheckpointParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	_, err := s.update(ctx, "checkpoint", p.Scope, p.Key, func(cur *idem.Record, now time.Time) (*idem.Record, error) {
		return transition.Checkpoint(cur, p, now)
	})
	return err
}

// Get implements idem.Store. It reads under the key lock, so it never sees
// a write that is applied but not yet synced.
func (s *Store) Get(ctx context.Context, p *idem.KeyParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	rkey := recordKey(p.Scope, p.Key)
	st := s.stripeOf(rkey[len(prefixRecord):])
	st.mu.Lock()
	defer st.mu.Unlock()
	rec, _, err := st.load(s, rkey)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: get: %w", err)
	}
	if rec == nil {
		return nil, fmt.Errorf("%w: scope %q", idem.ErrNotFound, p.Scope)
	}
	return transition.Clone(rec), nil // rec may be the stripe's
}

// Delete implements idem.Store. Tokens of the key keep increasing after a
// delete: they are store-wide.
func (s *Store) Delete(ctx context.Context, p *idem.KeyParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.closeMu.RUnlock()
	rkey := recordKey(p.Scope, p.Key)
	ref := rkey[len(prefixRecord):]
	st := s.stripeOf(ref)
	st.mu.Lock()
	defer st.mu.Unlock()
	cur, curAt, err := st.load(s, rkey)
	if err != nil {
		return fmt.Errorf("pebblestore: delete: %w", err)
	}
	if cur == nil {
		return fmt.Errorf("%w: scope %q", idem.ErrNotFound, p.Scope)
	}
	st.forget(ref)
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.Delete(rkey, nil); err != nil {
		return fmt.Errorf("pebblestore: delete: %w", err)
	}
	if err := b.Delete(indexKey(curAt, ref), nil); err != nil {
		return fmt.Errorf("pebblestore: delete: %w", err)
	}
	if err := b.Commit(s.commit); err != nil {
		return fmt.Errorf("pebblestore: delete: %w", err)
	}
	s.size.Add(-1)
	s.byState[stateCode(cur.State)].Add(-1)
	return nil
}

// Sweep implements idem.Store. It walks the expiry index from its start up
// to now, so its cost is proportional to what has expired (plus entries
// that came due before their record, each moved once to the record's
// RetainUntil), not to the size of the store; each record is checked again
// under its key lock before it is removed, together with its index entry,
// in synced batches.
func (s *Store) Sweep(ctx context.Context, p *idem.SweepParams) (*idem.SweepResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	s.sweepMu.Lock() // one sweep at a time: it holds several key locks at once
	defer s.sweepMu.Unlock()
	now := s.clock.Now()
	upper := append([]byte(prefixIndex), appendTime(nil, now.Add(time.Nanosecond))...)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixIndex), UpperBound: upper})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: sweep: %w", err)
	}
	defer it.Close()
	res := &idem.SweepResult{}
	var chunk [][]byte
	for ok := it.First(); ; {
		chunk = chunk[:0]
		want := sweepChunk
		if p.Limit > 0 {
			want = min(want, p.Limit-res.Deleted)
		}
		for ; ok && len(chunk) < want; ok = it.Next() {
			chunk = append(chunk, append([]byte{}, it.Key()...))
		}
		if len(chunk) == 0 {
			break
		}
		n, err := s.sweepChunk(chunk, now)
		res.Deleted += n
		if err != nil {
			return res, fmt.Errorf("pebblestore: sweep: %w", err)
		}
		if p.Limit > 0 && res.Deleted >= p.Limit {
			break
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
	if err := it.Error(); err != nil {
		return res, fmt.Errorf("pebblestore: sweep: %w", err)
	}
	return res, nil
}

// sweepChunk removes the sweepable records named by the index entries in
// one synced batch, holding their key locks until it is committed. An
// entry that came due before its record moves to the record's RetainUntil;
// one whose record is gone or points elsewhere is removed.
func (s *Store) sweepChunk(entries [][]byte, now time.Time) (int, error) {
	held := make(map[*stripe]bool, len(entries))
	defer func() {
		for st := range held {
			st.mu.Unlock()
		}
	}()
	b := s.db.NewBatch()
	defer b.Close()
	deleted := 0
	var byState [len(codeStates)]int64 // the deleted records by state code
	for _, k := range entries {
		s.sweepVisited.Add(1)
		at, ref, err := parseIndexKey(k)
		if err != nil {
			return 0, err
		}
		st := s.stripeOf(ref)
		if !held[st] {
			st.mu.Lock()
			held[st] = true
		}
		rkey := append([]byte(prefixRecord), ref...)
		rec, recAt, err := st.load(s, rkey)
		if err != nil {
			return 0, err
		}
		switch {
		case rec == nil || !recAt.Equal(at):
			if err := b.Delete(k, nil); err != nil {
				return 0, err
			}
		case transition.Sweepable(rec, now):
			st.forget(ref)
			if err := b.Delete(rkey, nil); err != nil {
				return 0, err
			}
			if err := b.Delete(k, nil); err != nil {
				return 0, err
			}
			deleted++
			byState[stateCode(rec.State)]++
		default: // due later (or a pending record whose lease is live)
			next := rec.RetainUntil
			if !next.After(now) { // only a live lease keeps it: look again when it ends
				next = rec.LeaseUntil
			}
			st.forget(ref)
			if err := b.Set(rkey, encodeRecord(nil, rec, next), nil); err != nil {
				return 0, err
			}
			if err := b.Delete(k, nil); err != nil {
				return 0, err
			}
			if err := b.Set(indexKey(next, ref), nil, nil); err != nil {
				return 0, err
			}
		}
	}
	if b.Empty() {
		return 0, nil
	}
	if err := b.Commit(s.commit); err != nil {
		return 0, err
	}
	s.size.Add(-int64(deleted))
	for code, n := range byState {
		if n > 0 {
			s.byState[code].Add(-n)
		}
	}
	return deleted, nil
}

// List implements idem.Lister: the records of one scope in key order. The
// cursor is opaque to callers (the last key of the page, base64url).
// Records are read without key locks, so a page may show a write that is
// still being synced.
func (s *Store) List(ctx context.Context, p *idem.ListParams) (*idem.ListResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	prefix := scopePrefix(p.Scope)
	lower := prefix
	if p.Cursor != "" {
		after, err := base64.RawURLEncoding.DecodeString(p.Cursor)
		if err != nil || len(after) == 0 || len(after) > idem.MaxKeyLen {
			return nil, fmt.Errorf("%w: cursor %q is not one this store returned", idem.ErrInvalid, p.Cursor)
		}
		lower = append(append(append([]byte{}, prefix...), after...), 0)
	}
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upperBound(prefix)})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: list: %w", err)
	}
	defer it.Close()
	res := &idem.ListResult{}
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("pebblestore: list: %w", err)
		}
		rec, _, err := decodeRecord(v)
		if err != nil {
			return nil, fmt.Errorf("pebblestore: list: %w", err)
		}
		if p.State != "" && rec.State != p.State {
			continue
		}
		if len(res.Records) == p.Limit {
			res.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(res.Records[len(res.Records)-1].Key))
			break
		}
		res.Records = append(res.Records, rec)
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("pebblestore: list: %w", err)
	}
	return res, nil
}

// Size implements idem.Sizer. The count is kept in memory: Open counts the
// records once, and every write that adds or removes one adjusts it.
func (s *Store) Size(ctx context.Context) (int64, error) {
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.closeMu.RUnlock()
	return s.size.Load(), nil
}

// SizeByState implements idem.StateSizer. The counts are kept in memory
// like Size's: Open reads the state of every record once (the first two
// bytes of its value), and every write that adds, removes or changes the
// state of one adjusts them. A record whose state cannot be decoded (a
// corrupt one, which no operation can change) is counted by Size only.
func (s *Store) SizeByState(ctx context.Context) (map[idem.State]int64, error) {
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.closeMu.RUnlock()
	m := make(map[idem.State]int64, len(codeStates)-1)
	for code, st := range codeStates {
		if st != "" {
			m[st] = s.byState[code].Load()
		}
	}
	return m, nil
}

// pebbleLogger passes Pebble's messages to a slog.Logger, or drops them.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.l != nil {
		p.l.Debug("pebble: " + fmt.Sprintf(format, args...))
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	if p.l != nil {
		p.l.Error("pebble: " + fmt.Sprintf(format, args...))
	}
}

// Fatalf must not return: Pebble calls it on unrecoverable corruption.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := "pebble: " + fmt.Sprintf(format, args...)
	if p.l != nil {
		p.l.Error(msg)
	}
	panic(msg)
}
