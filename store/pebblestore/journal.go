package pebblestore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
)

// Journal key layout, beside the store's (see keys.go):
//
//	w/i/ <id>                          -> <entries 8 bytes BE> <JSON instance, without history>
//	w/h/ <uvarint len(id)> <id> <seq 8 bytes BE> -> JSON entry
//	w/w/ <wake-at 12 bytes> <id>       -> empty (the WakeAt index)
//
// Instances are in id order, which List walks. An instance's history is
// contiguous and in Seq order (the uvarint length is self-delimiting, so id
// "a" never matches the prefix of id "ab"). The entry count kept before the
// instance numbers the next entry without reading the history. The WakeAt
// index holds one key per instance whose WakeAt is set, so List with Due
// (every Step of every engine) reads the due instances only.
const (
	prefixJournalInstance = "w/i/"
	prefixJournalHistory  = "w/h/"
	prefixJournalWake     = "w/w/"
	journalStripes        = 256
)

// Journal is the durable workflow.Journal of a Store: instances and their
// histories live in the store's Pebble database, beside its records, and
// every Create, Append and Delete is one batch committed with pebble.Sync
// before it returns. Get it with Store.Journal; it is safe for concurrent
// use and usable until the store is closed (then its methods fail with
// idem.ErrClosed).
type Journal struct {
	s     *Store
	seed  maphash.Seed
	locks [journalStripes]sync.Mutex // per-id locks, striped by hash
}

var _ workflow.Journal = (*Journal)(nil)

// Journal returns the store's workflow journal. Every call returns the
// same one: its per-instance locks make Append a compare-and-set, so there
// is exactly one per store.
func (s *Store) Journal() *Journal {
	s.journalOnce.Do(func() { s.journal = &Journal{s: s, seed: maphash.MakeSeed()} })
	return s.journal
}

func (j *Journal) lock(id string) *sync.Mutex {
	return &j.locks[maphash.String(j.seed, id)%journalStripes]
}

func instanceKey(id string) []byte {
	return append([]byte(prefixJournalInstance), id...)
}

func historyPrefix(id string) []byte {
	b := binary.AppendUvarint([]byte(prefixJournalHistory), uint64(len(id)))
	return append(b, id...)
}

func historyKey(id string, seq int64) []byte {
	return binary.BigEndian.AppendUint64(historyPrefix(id), uint64(seq))
}

func wakeKey(at time.Time, id string) []byte {
	b := appendTime([]byte(prefixJournalWake), at)
	return append(b, id...)
}

// stored is an instance as the journal keeps it.
type stored struct {
	in      *workflow.Instance
	entries int64 // the length of its history
}

func encodeInstance(in *workflow.Instance, entries int64) ([]byte, error) {
	c := *in
	c.History = nil
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: journal: encode instance %q: %w", in.ID, err)
	}
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(b)), uint64(entries)), b...), nil
}

func decodeInstance(v []byte) (*stored, error) {
	if len(v) < 8 {
		return nil, fmt.Errorf("%w: journal instance of %d bytes", errCorrupt, len(v))
	}
	in := new(workflow.Instance)
	if err := json.Unmarshal(v[8:], in); err != nil {
		return nil, fmt.Errorf("%w: journal instance: %v", errCorrupt, err)
	}
	return &stored{in: in, entries: int64(binary.BigEndian.Uint64(v))}, nil
}

// read returns the stored instance id, nil if there is none.
func read(g pebble.Reader, id string) (*stored, error) {
	v, closer, err := g.Get(instanceKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return decodeInstance(v)
}

// write adds to b the instance in (replacing old, nil if none) and entries
// numbered after old's, and returns the new stored instance.
func write(b *pebble.Batch, old *stored, in *workflow.Instance, entries []workflow.Entry) error {
	var n int64
	if old != nil {
		n = old.entries
		if !old.in.WakeAt.IsZero() && !old.in.WakeAt.Equal(in.WakeAt) {
			if err := b.Delete(wakeKey(old.in.WakeAt, old.in.ID), nil); err != nil {
				return err
			}
		}
	}
	for _, e := range entries {
		n++
		e.Seq = n
		v, err := json.Marshal(&e)
		if err != nil {
			return fmt.Errorf("pebblestore: journal: encode entry of %q: %w", in.ID, err)
		}
		if err := b.Set(historyKey(in.ID, n), v, nil); err != nil {
			return err
		}
	}
	v, err := encodeInstance(in, n)
	if err != nil {
		return err
	}
	if err := b.Set(instanceKey(in.ID), v, nil); err != nil {
		return err
	}
	if !in.WakeAt.IsZero() {
		return b.Set(wakeKey(in.WakeAt, in.ID), nil, nil)
	}
	return nil
}

// history reads the history of id.
func history(r pebble.Reader, id string) ([]workflow.Entry, error) {
	prefix := historyPrefix(id)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upperBound(prefix)})
	if err != nil {
		return nil, err
	}
	var out []workflow.Entry
	for it.First(); it.Valid(); it.Next() {
		var e workflow.Entry
		if err := json.Unmarshal(it.Value(), &e); err != nil {
			it.Close()
			return nil, fmt.Errorf("%w: journal entry of %q: %v", errCorrupt, id, err)
		}
		out = append(out, e)
	}
	return out, it.Close()
}

// commit writes b, synced, and closes it.
func (j *Journal) commit(b *pebble.Batch) error {
	defer b.Close()
	return b.Commit(j.s.commit)
}

// Create implements workflow.Journal.
func (j *Journal) Create(ctx context.Context, p *workflow.CreateParams) (*workflow.CreateResult, error) {
	if p == nil || p.Instance == nil || p.Instance.ID == "" {
		return nil, fmt.Errorf("%w: create: instance with an id required", idem.ErrInvalid)
	}
	if err := j.s.enter(ctx); err != nil {
		return nil, err
	}
	defer j.s.closeMu.RUnlock()
	id := p.Instance.ID
	mu := j.lock(id)
	mu.Lock()
	defer mu.Unlock()
	old, err := read(j.s.db, id)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: journal: create %q: %w", id, err)
	}
	in := *p.Instance
	switch {
	case old != nil && p.Replace:
		if old.in.Seq != p.ReplaceSeq {
			return nil, fmt.Errorf("%w: create %q: seq is %d, not %d", workflow.ErrConflict, id, old.in.Seq, p.ReplaceSeq)
		}
		in.Seq = old.in.Seq + 1
	case old != nil:
		if old.in.Fingerprint != p.Instance.Fingerprint {
			return nil, fmt.Errorf("%w: instance %q was started with another type or input", idem.ErrFingerprintMismatch, id)
		}
		h, err := history(j.s.db, id)
		if err != nil {
			return nil, fmt.Errorf("pebblestore: journal: create %q: %w", id, err)
		}
		old.in.History = h
		return &workflow.CreateResult{Instance: old.in}, nil
	case p.Replace:
		return nil, fmt.Errorf("%w: create %q: nothing to replace", workflow.ErrConflict, id)
	default:
		in.Seq = 1
	}
	b := j.s.db.NewBatch()
	if err := write(b, old, &in, p.Entries); err != nil {
		b.Close()
		return nil, err
	}
	if err := j.commit(b); err != nil {
		return nil, fmt.Errorf("pebblestore: journal: create %q: %w", id, err)
	}
	// Read back what was written: a copy, with the history numbered.
	got, err := read(j.s.db, id)
	if err == nil && got == nil {
		err = fmt.Errorf("%w: instance vanished", errCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("pebblestore: journal: create %q: %w", id, err)
	}
	if got.in.History, err = history(j.s.db, id); err != nil {
		return nil, fmt.Errorf("pebblestore: journal: create %q: %w", id, err)
	}
	return &workflow.CreateResult{Instance: got.in, Created: true}, nil
}

// Get implements workflow.Journal. It reads a snapshot, so the instance
// and its history are of the same Seq.
func (j *Journal) Get(ctx context.Context, p *workflow.GetParams) (*workflow.GetResult, error) {
	if err := j.s.enter(ctx); err != nil {
		return nil, err
	}
	defer j.s.closeMu.RUnlock()
	snap := j.s.db.NewSnapshot()
	defer snap.Close()
	got, err := read(snap, p.ID)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: journal: get %q: %w", p.ID, err)
	}
	if got == nil {
		return nil, fmt.Errorf("%w: instance %q", idem.ErrNotFound, p.ID)
	}
	if got.in.History, err = history(snap, p.ID); err != nil {
		return nil, fmt.Errorf("pebblestore: journal: get %q: %w", p.ID, err)
	}
	return &workflow.GetResult{Instance: got.in}, nil
}

// Append implements workflow.Journal: the instance, its new entries and
// its WakeAt index entry are one synced batch.
func (j *Journal) Append(ctx context.Context, p *workflow.AppendParams) (*workflow.AppendResult, error) {
	if p == nil || p.Instance == nil {
		return nil, fmt.Errorf("%w: append: instance required", idem.ErrInvalid)
	}
	if err := j.s.enter(ctx); err != nil {
		return nil, err
	}
	defer j.s.closeMu.RUnlock()
	id := p.Instance.ID
	mu := j.lock(id)
	mu.Lock()
	defer mu.Unlock()
	old, err := read(j.s.db, id)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: journal: append %q: %w", id, err)
	}
	if old == nil {
		return nil, fmt.Errorf("%w: instance %q", idem.ErrNotFound, id)
	}
	if old.in.Seq != p.Instance.Seq {
		return nil, fmt.Errorf("%w: instance %q: seq is %d, not %d", workflow.ErrConflict, id, old.in.Seq, p.Instance.Seq)
	}
	in := *p.Instance
	in.Seq = old.in.Seq + 1
	b := j.s.db.NewBatch()
	if err := write(b, old, &in, p.Entries); err != nil {
		b.Close()
		return nil, err
	}
	if err := j.commit(b); err != nil {
		return nil, fmt.Errorf("pebblestore: journal: append %q: %w", id, err)
	}
	return &workflow.AppendResult{Seq: in.Seq}, nil
}

// List implements workflow.Journal. With Due it reads the WakeAt index up
// to Due and then the instances it names; without, it walks the instances
// in id order from After, decoding each to apply the filters: a List by
// Type, State, Status or FinishedBefore costs a scan of the journal's
// instances from After (a purge keeps that bounded).
func (j *Journal) List(ctx context.Context, p *workflow.ListParams) (*workflow.ListResult, error) {
	if err := j.s.enter(ctx); err != nil {
		return nil, err
	}
	defer j.s.closeMu.RUnlock()
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	snap := j.s.db.NewSnapshot()
	defer snap.Close()
	res := &workflow.ListResult{}
	keep := func(in *workflow.Instance) bool {
		if p.Type != "" && in.Type != p.Type || p.State != "" && in.State != p.State || p.Status != "" && in.Status != p.Status {
			return false
		}
		if !p.Due.IsZero() && (in.WakeAt.IsZero() || in.WakeAt.After(p.Due)) {
			return false
		}
		return p.FinishedBefore.IsZero() || in.Status.Finished() && in.Finished.Before(p.FinishedBefore)
	}
	// add appends in if it matches; it reports false when the page is full
	// (and sets Next).
	add := func(in *workflow.Instance) bool {
		if !keep(in) {
			return true
		}
		if len(res.Instances) == limit {
			res.Next = res.Instances[limit-1].ID
			return false
		}
		res.Instances = append(res.Instances, in)
		return true
	}
	if !p.Due.IsZero() {
		ids, err := dueIDs(snap, p.Due, p.After)
		if err != nil {
			return nil, fmt.Errorf("pebblestore: journal: list: %w", err)
		}
		for _, id := range ids {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			got, err := read(snap, id)
			if err != nil {
				return nil, fmt.Errorf("pebblestore: journal: list: %w", err)
			}
			if got != nil && !add(got.in) {
				break
			}
		}
		return res, nil
	}
	lower := instanceKey(p.After)
	if p.After != "" {
		lower = append(lower, 0) // the first id after After
	}
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upperBound([]byte(prefixJournalInstance))})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: journal: list: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		got, err := decodeInstance(it.Value())
		if err != nil {
			return nil, fmt.Errorf("pebblestore: journal: list: %w", err)
		}
		if !add(got.in) {
			break
		}
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("pebblestore: journal: list: %w", err)
	}
	return res, nil
}

// dueIDs returns, sorted, the ids after after whose WakeAt is not after
// due.
func dueIDs(r pebble.Reader, due time.Time, after string) ([]string, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixJournalWake), UpperBound: appendTime([]byte(prefixJournalWake), due.Add(time.Nanosecond))})
	if err != nil {
		return nil, err
	}
	var ids []string
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) < len(prefixJournalWake)+timeLen {
			it.Close()
			return nil, fmt.Errorf("%w: wake index key of %d bytes", errCorrupt, len(k))
		}
		if id := string(k[len(prefixJournalWake)+timeLen:]); id > after {
			ids = append(ids, id)
		}
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// Delete implements workflow.Journal: the instance, its history and its
// index entry go in one synced batch.
func (j *Journal) Delete(ctx context.Context, p *workflow.DeleteParams) (*workflow.DeleteResult, error) {
	if err := j.s.enter(ctx); err != nil {
		return nil, err
	}
	defer j.s.closeMu.RUnlock()
	mu := j.lock(p.ID)
	mu.Lock()
	defer mu.Unlock()
	old, err := read(j.s.db, p.ID)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: journal: delete %q: %w", p.ID, err)
	}
	if old == nil {
		return nil, fmt.Errorf("%w: instance %q", idem.ErrNotFound, p.ID)
	}
	if old.in.Seq != p.Seq {
		return nil, fmt.Errorf("%w: instance %q: seq is %d, not %d", workflow.ErrConflict, p.ID, old.in.Seq, p.Seq)
	}
	b := j.s.db.NewBatch()
	prefix := historyPrefix(p.ID)
	err = errors.Join(b.Delete(instanceKey(p.ID), nil), b.DeleteRange(prefix, upperBound(prefix), nil))
	if !old.in.WakeAt.IsZero() {
		err = errors.Join(err, b.Delete(wakeKey(old.in.WakeAt, p.ID), nil))
	}
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("pebblestore: journal: delete %q: %w", p.ID, err)
	}
	if err := j.commit(b); err != nil {
		return nil, fmt.Errorf("pebblestore: journal: delete %q: %w", p.ID, err)
	}
	return &workflow.DeleteResult{}, nil
}
