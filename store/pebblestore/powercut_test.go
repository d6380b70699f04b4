package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
)

// The power-cut test. SIGKILL (crash_test.go) cannot catch a missing sync:
// the kernel keeps the page cache. Here the store runs on Pebble's
// crashable in-memory filesystem, whose CrashClone keeps exactly what was
// synced (and, when asked, a random part of what was not): the state of
// the disk after the power went at that instant.
const (
	powercutCutsEnv   = "IDEM_POWERCUT_CUTS" // how many cuts; default powercutCuts
	powercutSeedEnv   = "IDEM_POWERCUT_SEED" // reproduce a run
	powercutCuts      = 1000
	powercutShortCuts = 200
	powercutWorkers   = 4
	powercutKeys      = 8  // keys per worker
	powercutMaxOps    = 24 // a cut comes after 0 to this many acknowledged operations
	powercutHistory   = 24 // an instance with this many entries is deleted
	powercutScope     = "pc"
	powercutProbe     = "probe"
	powercutLease     = 30 * time.Second
	powercutBlock     = 5 // tokens per high-water mark: cuts cross blocks often
	// powercutDir is the store's directory, on the in-memory filesystem:
	// Open creates all three levels, so the first cut checks that it syncs
	// their parents.
	powercutDir = "/srv/idem/data"
)

// TestPowerCut runs concurrent Begin, Complete, Release, Extend,
// Checkpoint, Delete and journal Create, Append and Delete on a store on a crashable
// in-memory filesystem, cuts the power at a random moment, reopens the
// store on what was synced, and checks that every acknowledged operation
// is there, that tokens still strictly increase, and that the store opens
// and works without repair; IDEM_POWERCUT_CUTS times (1000 by default),
// on one filesystem, each cut on what the previous ones left.
func TestPowerCut(t *testing.T) {
	cuts := powercutCuts
	if testing.Short() {
		cuts = powercutShortCuts
	}
	if v := os.Getenv(powercutCutsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive count", powercutCutsEnv, v)
		}
		cuts = n
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(powercutSeedEnv); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want a number", powercutSeedEnv, v)
		}
		seed = n
	}
	t.Logf("%d cuts, seed %d (%s=%d reproduces the choices; the schedule of the workers varies)", cuts, seed, powercutSeedEnv, seed)
	start := time.Now()
	h := newPowercut(powercutDir, seed, false)
	if err := h.run(cuts); err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	t.Logf("%d cuts in %s: %d operations acknowledged, %d unacknowledged at a cut (%d of them found durable)",
		h.cuts, time.Since(start).Round(time.Millisecond), h.acked, h.maybes, h.maybesLanded)
	if h.cuts >= 100 && h.maybes == 0 {
		t.Errorf("no operation was in flight at any cut: the cuts do not hit running operations")
	}
}

// TestPowerCutCatchesNoSync proves that the power-cut test can fail: a
// store that commits with pebble.NoSync loses acknowledged operations at
// the first cut that finds any, and the test must notice.
func TestPowerCutCatchesNoSync(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	h := newPowercut(powercutDir, seed, true)
	err := h.run(50)
	if err == nil {
		t.Fatalf("seed %d: a store that never syncs passed %d cuts", seed, h.cuts)
	}
	t.Logf("seed %d: caught after %d cuts: %v", seed, h.cuts, err)
}

// powercut is the harness: the filesystem, the clock, and what every
// worker knows was acknowledged.
type powercut struct {
	dir    string
	fs     *vfs.MemFS
	reuse  *sync.Mutex // held by the cut and by WAL recycling (see cutFS)
	clock  *idem.ManualClock
	rng    *rand.Rand
	noSync bool

	workers  [powercutWorkers]*pcWorker
	maxToken int64 // the highest token acknowledged or found durable

	cuts, acked, maybes, maybesLanded int
}

// pcWorker is one worker's model: exactly what was acknowledged for its
// own keys and instances (no other worker touches them).
type pcWorker struct {
	id      int
	keys    [powercutKeys]*idem.Record // nil: absent
	journal map[string]pcInstance      // acknowledged instances
	nextID  int

	// The operation that was running when the power went: it may or may
	// not have become durable.
	maybe pcMaybe

	// per run
	rng    *rand.Rand
	claims [powercutKeys]*idem.Claim
	acked  int
	max    int64
}

// pcInstance is a journal instance as acknowledged: its Seq and the
// length of its history; entry n's Reason is "<id>#n", and the instance's
// State the length of its history.
type pcInstance struct {
	seq, entries int64
}

type pcMaybe struct {
	set      bool
	key      int          // or -1
	rec      *idem.Record // the key's record if it landed
	id       string       // the instance, when a journal operation
	inst     pcInstance
	instGone bool // the operation deleted the instance
}

// cutFS serialises Pebble's WAL recycling with the cut: MemFS.ReuseForWrite
// read-locks the filesystem twice (directly and through Rename), which
// deadlocks if CrashClone's write lock arrives in between.
type cutFS struct {
	*vfs.MemFS
	reuse *sync.Mutex
}

func (f cutFS) ReuseForWrite(oldname, newname string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f.reuse.Lock()
	defer f.reuse.Unlock()
	return f.MemFS.ReuseForWrite(oldname, newname, cat)
}

func newPowercut(dir string, seed uint64, noSync bool) *powercut {
	h := &powercut{
		dir:    dir,
		fs:     vfs.NewCrashableMem(),
		reuse:  new(sync.Mutex),
		clock:  idem.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		rng:    rand.New(rand.NewPCG(seed, 0x70c)),
		noSync: noSync,
	}
	for i := range h.workers {
		h.workers[i] = &pcWorker{id: i, journal: map[string]pcInstance{}, maybe: pcMaybe{key: -1}}
	}
	return h
}

func (h *powercut) open() (*Store, error) {
	return Open(h.dir, &Config{Clock: h.clock, SweepInterval: -1, CacheSize: 1 << 20,
		fs: cutFS{MemFS: h.fs, reuse: h.reuse}, tokenBlock: powercutBlock, noSync: h.noSync})
}

// run cuts the power n times, then checks the store once more: its
// records, its size, and that a sweep after everything expired empties
// it (every record kept its expiry-index entry).
func (h *powercut) run(n int) error {
	ctx := context.Background()
	for h.cuts < n {
		s, err := h.open()
		if err != nil {
			return fmt.Errorf("cut %d: the store does not open after the cut: %w", h.cuts, err)
		}
		if h.rng.IntN(4) == 0 {
			err = h.settle(s)
		}
		if err == nil {
			err = h.check(s)
		}
		if err == nil {
			err = h.round(s)
		}
		if err != nil {
			s.Close()
			return fmt.Errorf("cut %d: %w", h.cuts, err)
		}
		h.clock.Advance(time.Duration(h.rng.Int64N(int64(powercutLease * 3 / 2))))
	}
	s, err := h.open()
	if err != nil {
		return fmt.Errorf("after cut %d: the store does not open: %w", h.cuts, err)
	}
	defer s.Close()
	if err := h.check(s); err != nil {
		return fmt.Errorf("after cut %d: %w", h.cuts, err)
	}
	var records int64
	for _, w := range h.workers {
		for _, rec := range w.keys {
			if rec != nil {
				records++
			}
		}
	}
	list, err := s.List(ctx, &idem.ListParams{Scope: powercutScope, Limit: idem.MaxListSize})
	if err != nil {
		return err
	}
	size, err := s.Size(ctx)
	if err != nil {
		return err
	}
	if int64(len(list.Records)) != records || size != records {
		return fmt.Errorf("after cut %d: List has %d records and Size says %d; %d expected", h.cuts, len(list.Records), size, records)
	}
	h.clock.Advance(1000 * time.Hour)
	swept, err := s.Sweep(ctx, &idem.SweepParams{})
	if err != nil {
		return fmt.Errorf("after cut %d: sweep: %w", h.cuts, err)
	}
	if size, err = s.Size(ctx); err != nil || int64(swept.Deleted) != records || size != 0 {
		return fmt.Errorf("after cut %d: a sweep after everything expired removed %d of %d records, Size %d (%v)", h.cuts, swept.Deleted, records, size, err)
	}
	if by, err := s.SizeByState(ctx); err != nil || len(by) != 3 || by[idem.StatePending]+by[idem.StateCompleted]+by[idem.StateReleased] != 0 {
		return fmt.Errorf("after cut %d: SizeByState after the sweep: %v, %v; want 0 in each state", h.cuts, by, err)
	}
	return nil
}

// checkSizeByState compares the reopened store's SizeByState, which Open
// counted, with the models' records by state (check made the models what
// the store holds).
func (h *powercut) checkSizeByState(s *Store) error {
	want := map[idem.State]int64{idem.StatePending: 0, idem.StateCompleted: 0, idem.StateReleased: 0}
	for _, w := range h.workers {
		for _, rec := range w.keys {
			if rec != nil {
				want[rec.State]++
			}
		}
	}
	got, err := s.SizeByState(context.Background())
	if err != nil {
		return fmt.Errorf("SizeByState: %w", err)
	}
	if !maps.Equal(got, want) {
		return fmt.Errorf("SizeByState %v; the records by state: %v", got, want)
	}
	return nil
}

// settle waits until Pebble has deleted the files it found obsolete when
// it opened, and syncs the directory, as a filesystem does on its own
// soon enough. Pebble does not sync the directory after deleting files,
// so without it every cut brings back what was deleted since its last
// directory sync, and the directory grows by a few files at every cut.
func (h *powercut) settle(s *Store) error {
	s.db.TestOnlyWaitForCleaning()
	d, err := h.fs.OpenDir(h.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// check compares the reopened store with what was acknowledged: each key
// holds its acknowledged record, or what the operation in flight at the
// cut wrote; the same for each journal instance. The models then take
// what the store holds, and maxToken every token in it.
func (h *powercut) check(s *Store) error {
	ctx := context.Background()
	// One List reads every record (a Get each costs more under -race,
	// where Pebble checks its invariants).
	list, err := s.List(ctx, &idem.ListParams{Scope: powercutScope, Limit: idem.MaxListSize})
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	records := map[string]*idem.Record{}
	for _, rec := range list.Records {
		records[rec.Key] = rec
	}
	instances, err := pcReadJournal(ctx, s)
	if err != nil {
		return err
	}
	for _, w := range h.workers {
		m := w.maybe
		w.maybe = pcMaybe{key: -1}
		for k := range w.keys {
			key := pcKey(w.id, k)
			got := records[key]
			delete(records, key)
			switch {
			case pcSameRecord(got, w.keys[k]):
			case m.set && m.key == k && pcSameRecord(got, m.rec):
				h.maybesLanded++
			default:
				return fmt.Errorf("key %s: the store holds %s; acknowledged: %s%s", key, pcShow(got), pcShow(w.keys[k]), m.orKey(k))
			}
			w.keys[k] = got
			if got != nil {
				h.maxToken = max(h.maxToken, got.Token)
			}
		}
		ids := slices.Collect(maps.Keys(w.journal))
		if m.id != "" && !slices.Contains(ids, m.id) {
			ids = append(ids, m.id)
		}
		for _, id := range ids {
			got, ok := instances[id]
			delete(instances, id)
			want, acked := w.journal[id]
			switch {
			case ok == acked && got == want:
			case m.id == id && (m.instGone && !ok || !m.instGone && ok && got == m.inst):
				h.maybesLanded++
			default:
				return fmt.Errorf("instance %s: the store holds %v (present %t); acknowledged: %v (present %t)%s", id, got, ok, want, acked, m.orInstance(id))
			}
			if ok {
				w.journal[id] = got
			} else {
				delete(w.journal, id)
			}
		}
	}
	if len(instances) != 0 {
		return fmt.Errorf("%d instances no worker wrote, like %v", len(instances), slices.Collect(maps.Keys(instances))[0])
	}
	if len(records) != 0 {
		return fmt.Errorf("%d records no worker wrote, like %s", len(records), pcShow(slices.Collect(maps.Values(records))[0]))
	}
	if err := h.checkSizeByState(s); err != nil {
		return err
	}
	// The next Begin draws a token above every one acknowledged before.
	probe, err := s.Begin(ctx, &idem.BeginParams{Scope: powercutProbe, Key: "k", Fingerprint: "f", Lease: time.Minute, Window: time.Hour})
	if err != nil {
		return fmt.Errorf("probe begin: %w", err)
	}
	if probe.Decision != idem.Acquired || probe.Record.Token <= h.maxToken {
		return fmt.Errorf("probe begin: %s with token %d; want acquired above %d, the highest token acknowledged or stored", probe.Decision, probe.Record.Token, h.maxToken)
	}
	h.maxToken = probe.Record.Token
	if err := s.Delete(ctx, &idem.KeyParams{Scope: powercutProbe, Key: "k"}); err != nil {
		return fmt.Errorf("probe delete: %w", err)
	}
	return nil
}

// round runs the workers on s until the power goes, after a random number
// of acknowledged operations, and closes s.
func (h *powercut) round(s *Store) error {
	ledger, err := idem.New(s, &idem.Config{Clock: h.clock, Lease: powercutLease, Window: 24 * time.Hour})
	if err != nil {
		return err
	}
	r := &pcRound{s: s, ledger: ledger, journal: s.Journal(), now: h.clock.Now(), floor: h.maxToken,
		target: int64(h.rng.IntN(powercutMaxOps + 1)), trigger: make(chan struct{}), tokens: map[int64]string{}}
	if r.target == 0 {
		close(r.trigger)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(h.workers))
	for i, w := range h.workers {
		w.rng = rand.New(rand.NewPCG(h.rng.Uint64(), uint64(i)))
		w.claims = [powercutKeys]*idem.Claim{}
		w.acked, w.max = 0, 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.run(r)
			if errs[i] != nil {
				r.fail()
			}
		}()
	}
	<-r.trigger
	// The power goes: what is acknowledged from now on does not count (it
	// is an operation in flight), then the disk keeps what was synced.
	r.cut.Store(true)
	cfg := vfs.CrashCloneCfg{}
	if h.rng.IntN(2) == 0 { // and some of what was not, in 4 KiB blocks
		cfg = vfs.CrashCloneCfg{UnsyncedDataPercent: 1 + h.rng.IntN(50), RNG: rand.New(rand.NewPCG(h.rng.Uint64(), 1))}
	}
	h.reuse.Lock()
	crashed := h.fs.CrashClone(cfg)
	h.reuse.Unlock()
	wg.Wait()
	s.Close() // on the filesystem as it was before the cut, which is dropped
	h.fs = crashed
	h.cuts++
	for _, w := range h.workers {
		h.acked += w.acked
		h.maxToken = max(h.maxToken, w.max)
		if w.maybe.set {
			h.maybes++
		}
	}
	return errors.Join(errs...)
}

// pcRound is what the workers of one round share.
type pcRound struct {
	s       *Store
	ledger  *idem.Ledger
	journal *Journal
	now     time.Time // the clock stands still during a round
	floor   int64     // every token handed out must be above it

	cut     atomic.Bool
	ops     atomic.Int64 // acknowledged operations
	target  int64
	trigger chan struct{} // closed at target acknowledged operations, or at a failure
	once    sync.Once

	mu     sync.Mutex
	tokens map[int64]string // tokens handed out in this round, by key
}

func (r *pcRound) fail() { r.once.Do(func() { close(r.trigger) }) }

// token checks a token a Begin handed out: above the floor, and never
// handed out twice.
func (r *pcRound) token(key string, t int64) error {
	if t <= r.floor {
		return fmt.Errorf("key %s acquired with token %d, not above %d, the highest token acknowledged or stored before", key, t, r.floor)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if other, dup := r.tokens[t]; dup {
		return fmt.Errorf("token %d handed out to %s and %s", t, other, key)
	}
	r.tokens[t] = key
	return nil
}

func pcKey(w, k int) string { return fmt.Sprintf("w%d-k%d", w, k) }

// run does random operations until the cut. An operation that returns
// after the cut is the one in flight: it goes to w.maybe, and run returns.
func (w *pcWorker) run(r *pcRound) error {
	ctx := context.Background()
	for !r.cut.Load() {
		var (
			err error
			m   = pcMaybe{set: true, key: -1}
		)
		if w.rng.IntN(4) == 0 {
			err = w.journalOp(ctx, r, &m)
		} else {
			k := w.rng.IntN(powercutKeys)
			m.key = k
			err = w.keyOp(ctx, r, k, &m)
		}
		if err != nil {
			return fmt.Errorf("worker %d: %w", w.id, err)
		}
		if !m.set { // nothing was written (a replay, a key in flight)
			continue
		}
		if r.cut.Load() {
			w.maybe = m
			return nil
		}
		w.acked++
		if m.key >= 0 {
			w.keys[m.key] = m.rec
			if m.rec != nil {
				w.max = max(w.max, m.rec.Token)
			}
		} else if m.instGone {
			delete(w.journal, m.id)
		} else {
			w.journal[m.id] = m.inst
		}
		if r.ops.Add(1) == r.target {
			r.fail()
		}
	}
	return nil
}

// keyOp does one operation on key k and leaves in m the record it wrote
// (m.set false when it wrote nothing). Every answer is checked against
// the model, which is exact: only this worker touches the key.
func (w *pcWorker) keyOp(ctx context.Context, r *pcRound, k int, m *pcMaybe) error {
	key := pcKey(w.id, k)
	cur := w.keys[k]
	if c := w.claims[k]; c != nil {
		next := pcClone(cur)
		switch op := w.rng.IntN(12); {
		case op < 4:
			out := idem.Outcome{Data: pcBytes(w.rng, 300), Meta: map[string]string{"key": key, "n": strconv.Itoa(w.rng.IntN(1000))}}
			if err := c.Complete(ctx, out); err != nil {
				return fmt.Errorf("complete %s: %w", key, err)
			}
			next.State, next.Outcome, next.Checkpoint = idem.StateCompleted, &out, nil
			w.claims[k] = nil
		case op < 7:
			cp := idem.Checkpoint{Point: "p" + strconv.Itoa(w.rng.IntN(100)), Data: pcBytes(w.rng, 200)}
			if err := c.SetCheckpoint(ctx, cp.Point, cp.Data); err != nil {
				return fmt.Errorf("checkpoint %s: %w", key, err)
			}
			next.Checkpoint = &cp
		case op < 8:
			d := time.Duration(1+w.rng.IntN(60)) * time.Second
			if err := c.Extend(ctx, d); err != nil {
				return fmt.Errorf("extend %s: %w", key, err)
			}
			next.LeaseUntil = r.now.Add(d)
		case op < 10:
			if err := c.Release(ctx); err != nil {
				return fmt.Errorf("release %s: %w", key, err)
			}
			next = &idem.Record{State: idem.StateReleased, Token: cur.Token, Attempts: cur.Attempts}
			w.claims[k] = nil
		default: // the owner goes away; its lease runs out later
			w.claims[k] = nil
			m.set = false
			return nil
		}
		m.rec = next
		return nil
	}
	if cur != nil && w.rng.IntN(8) == 0 {
		if err := r.s.Delete(ctx, &idem.KeyParams{Scope: powercutScope, Key: key}); err != nil {
			return fmt.Errorf("delete %s: %w", key, err)
		}
		m.rec = nil
		return nil
	}
	c, err := r.ledger.Begin(ctx, powercutScope, key, "f")
	live := cur != nil && cur.State == idem.StatePending && r.now.Before(cur.LeaseUntil)
	var inFlight *idem.InFlightError
	switch {
	case errors.As(err, &inFlight):
		if !live {
			return fmt.Errorf("begin %s: in flight, but the record is %s", key, pcShow(cur))
		}
		m.set = false
		return nil
	case err != nil:
		return fmt.Errorf("begin %s: %w", key, err)
	case c.Replayed():
		if cur == nil || cur.State != idem.StateCompleted || !pcSameOutcome(c.Outcome(), cur.Outcome) {
			return fmt.Errorf("begin %s: replayed %v, but the record is %s", key, c.Outcome(), pcShow(cur))
		}
		m.set = false
		return nil
	}
	got := c.Record()
	if err := r.token(key, got.Token); err != nil {
		return err
	}
	if live || cur != nil && got.Token <= cur.Token {
		return fmt.Errorf("begin %s: acquired with token %d, but the record is %s", key, got.Token, pcShow(cur))
	}
	takeover := cur != nil && cur.State == idem.StatePending
	switch {
	case takeover && (!pcSameCheckpoint(got.Checkpoint, cur.Checkpoint) || got.Attempts != cur.Attempts+1):
		return fmt.Errorf("begin %s: took over with checkpoint %v, attempt %d; the record was %s", key, got.Checkpoint, got.Attempts, pcShow(cur))
	case cur != nil && cur.State == idem.StateReleased && got.Attempts != cur.Attempts+1:
		return fmt.Errorf("begin %s: attempt %d after a release; the record was %s", key, got.Attempts, pcShow(cur))
	}
	w.claims[k] = c
	m.rec = &got
	return nil
}

// journalOp creates an instance, appends to one, or deletes one with a
// long history.
func (w *pcWorker) journalOp(ctx context.Context, r *pcRound, m *pcMaybe) error {
	ids := slices.Sorted(maps.Keys(w.journal))
	if len(ids) == 0 || len(ids) < 3 && w.rng.IntN(3) == 0 {
		id := fmt.Sprintf("w%d-i%d", w.id, w.nextID)
		w.nextID++
		n := int64(1 + w.rng.IntN(3))
		res, err := r.journal.Create(ctx, &workflow.CreateParams{
			Instance: &workflow.Instance{ID: id, Type: "pc", Fingerprint: "f", State: strconv.FormatInt(n, 10), Status: workflow.Running},
			Entries:  pcEntries(id, 0, n),
		})
		if err != nil {
			return fmt.Errorf("create %s: %w", id, err)
		}
		if !res.Created || res.Instance.Seq != 1 || int64(len(res.Instance.History)) != n {
			return fmt.Errorf("create %s: created %t, seq %d, %d entries; want a new instance with %d", id, res.Created, res.Instance.Seq, len(res.Instance.History), n)
		}
		m.id, m.inst = id, pcInstance{seq: 1, entries: n}
		return nil
	}
	id := ids[w.rng.IntN(len(ids))]
	cur := w.journal[id]
	m.id = id
	if cur.entries >= powercutHistory {
		if _, err := r.journal.Delete(ctx, &workflow.DeleteParams{ID: id, Seq: cur.seq}); err != nil {
			return fmt.Errorf("delete %s: %w", id, err)
		}
		m.instGone = true
		return nil
	}
	n := int64(1 + w.rng.IntN(3))
	res, err := r.journal.Append(ctx, &workflow.AppendParams{
		Instance: &workflow.Instance{ID: id, Type: "pc", Fingerprint: "f", State: strconv.FormatInt(cur.entries+n, 10), Status: workflow.Running, Seq: cur.seq},
		Entries:  pcEntries(id, cur.entries, n),
	})
	if err != nil {
		return fmt.Errorf("append to %s: %w", id, err)
	}
	if res.Seq != cur.seq+1 {
		return fmt.Errorf("append to %s at seq %d: seq %d", id, cur.seq, res.Seq)
	}
	m.inst = pcInstance{seq: res.Seq, entries: cur.entries + n}
	return nil
}

// pcEntries are entries from+1 to from+n of instance id.
func pcEntries(id string, from, n int64) []workflow.Entry {
	out := make([]workflow.Entry, n)
	for i := range out {
		out[i] = workflow.Entry{Kind: workflow.EntryTransition, Reason: fmt.Sprintf("%s#%d", id, from+int64(i)+1)}
	}
	return out
}

// pcReadJournal reads every instance with one List, and every history
// entry with one iterator, and checks that each history is whole: as long
// as its instance's State says, each entry in place, none without its
// instance.
func pcReadJournal(ctx context.Context, s *Store) (map[string]pcInstance, error) {
	list, err := s.Journal().List(ctx, &workflow.ListParams{Limit: 1000})
	if err != nil {
		return nil, fmt.Errorf("journal list: %w", err)
	}
	if list.Next != "" {
		return nil, fmt.Errorf("journal list: more than a page of instances")
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixJournalHistory), UpperBound: upperBound([]byte(prefixJournalHistory))})
	if err != nil {
		return nil, err
	}
	history := map[string][]workflow.Entry{}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[len(prefixJournalHistory):]
		n, l := binary.Uvarint(k)
		var e workflow.Entry
		if l <= 0 || uint64(len(k)-l) != n+8 || json.Unmarshal(it.Value(), &e) != nil {
			it.Close()
			return nil, fmt.Errorf("history entry %q: %q", it.Key(), it.Value())
		}
		id := string(k[l : l+int(n)])
		history[id] = append(history[id], e)
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	out := map[string]pcInstance{}
	for _, in := range list.Instances {
		n, err := strconv.ParseInt(in.State, 10, 64)
		h := history[in.ID]
		delete(history, in.ID)
		if err != nil || int64(len(h)) != n {
			return nil, fmt.Errorf("instance %s at seq %d: state %q but %d entries", in.ID, in.Seq, in.State, len(h))
		}
		for i, e := range h {
			if e.Seq != int64(i)+1 || e.Reason != fmt.Sprintf("%s#%d", in.ID, i+1) {
				return nil, fmt.Errorf("instance %s: entry %d is %d %q", in.ID, i+1, e.Seq, e.Reason)
			}
		}
		out[in.ID] = pcInstance{seq: in.Seq, entries: n}
	}
	for id := range history {
		return nil, fmt.Errorf("history of %s without its instance", id)
	}
	return out, nil
}

func (m pcMaybe) orKey(k int) string {
	if !m.set || m.key != k {
		return " (no operation on it was in flight)"
	}
	return ", or from the operation in flight: " + pcShow(m.rec)
}

func (m pcMaybe) orInstance(id string) string {
	if m.id != id {
		return " (no operation on it was in flight)"
	}
	if m.instGone {
		return ", or absent (a delete was in flight)"
	}
	return fmt.Sprintf(", or %v (in flight)", m.inst)
}

func pcBytes(rng *rand.Rand, maxLen int) []byte {
	b := make([]byte, rng.IntN(maxLen+1))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func pcClone(r *idem.Record) *idem.Record {
	c := *r
	return &c
}

// pcSameRecord compares what the test asserts of a record: state, token,
// attempts, and by state the fingerprint, lease, checkpoint and outcome.
func pcSameRecord(got, want *idem.Record) bool {
	if got == nil || want == nil {
		return got == nil && want == nil
	}
	if got.State != want.State || got.Token != want.Token || got.Attempts != want.Attempts {
		return false
	}
	switch want.State {
	case idem.StatePending:
		return got.Fingerprint == want.Fingerprint && got.LeaseUntil.Equal(want.LeaseUntil) &&
			pcSameCheckpoint(got.Checkpoint, want.Checkpoint) && got.Outcome == nil
	case idem.StateCompleted:
		return got.Fingerprint == want.Fingerprint && got.Checkpoint == nil && pcSameOutcome(got.Outcome, want.Outcome)
	}
	return got.Checkpoint == nil && got.Outcome == nil
}

func pcSameCheckpoint(a, b *idem.Checkpoint) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Point == b.Point && bytes.Equal(a.Data, b.Data)
}

func pcSameOutcome(a, b *idem.Outcome) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return bytes.Equal(a.Data, b.Data) && maps.Equal(a.Meta, b.Meta)
}

func pcShow(r *idem.Record) string {
	if r == nil {
		return "nothing"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s token %d attempt %d", r.State, r.Token, r.Attempts)
	if r.State == idem.StatePending {
		fmt.Fprintf(&b, " lease until %s", r.LeaseUntil.Format(time.TimeOnly))
	}
	if r.Checkpoint != nil {
		fmt.Fprintf(&b, " checkpoint %s (%d bytes)", r.Checkpoint.Point, len(r.Checkpoint.Data))
	}
	if r.Outcome != nil {
		fmt.Fprintf(&b, " outcome of %d bytes", len(r.Outcome.Data))
	}
	return b.String()
}
