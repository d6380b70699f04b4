package pebblestore

import (
	"bytes"
	"hash/maphash"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

const (
	// pendingPerStripe bounds the pending records one stripe keeps in
	// memory. Beyond it an arbitrary entry makes room: a miss only costs a
	// Pebble read.
	pendingPerStripe = 16
	// pendingMaxValue is the largest record (encoded) kept in memory (a big
	// checkpoint is read from Pebble instead), so the cache holds about
	// stripes x pendingPerStripe x pendingMaxValue bytes at most.
	pendingMaxValue = 1 << 10
)

// stripe is one of the per-key locks, with the pending records of its keys
// that this process wrote. Only this process writes the directory (it holds
// Pebble's lock) and every write of a record happens under its stripe's
// lock, so an entry, when present, is exactly the record in Pebble, already
// decoded: the operations that follow Begin (Complete, Release, Extend,
// Checkpoint) use it instead of reading and decoding Pebble's value. Only
// records that are synced enter, and every write of a record first removes
// its entry.
//
// A stripe holds few keys at a time (a handful of owners share it), so the
// entries are a short slice searched in order: cheaper than a map, and the
// ref needs no copy.
type stripe struct {
	mu      sync.Mutex
	pending []pendingRecord // guarded by mu
}

// pendingRecord is the record stored under ref, as synced, and the time of
// its index entry. The ref and the record belong to the stripe: nobody
// changes the record, and what leaves the store is a copy of it.
type pendingRecord struct {
	ref []byte
	rec *idem.Record
	at  time.Time
}

// find returns the index of ref's entry, or -1.
func (st *stripe) find(ref []byte) int {
	for i := range st.pending {
		if bytes.Equal(st.pending[i].ref, ref) {
			return i
		}
	}
	return -1
}

// stripeOf returns the stripe that serialises the operations on the record
// named by ref.
func (s *Store) stripeOf(ref []byte) *stripe {
	return &s.stripes[maphash.Bytes(s.seed, ref)%stripes]
}

// load reads the record stored under rkey (a recordKey) and the time of its
// index entry: from the stripe's pending records when it is there, else
// from Pebble. The caller holds st.mu, and reads the record only: it may be
// the stripe's (the transitions never change the record they are given;
// Get copies it).
func (st *stripe) load(s *Store, rkey []byte) (*idem.Record, time.Time, error) {
	if i := st.find(rkey[len(prefixRecord):]); i >= 0 {
		return st.pending[i].rec, st.pending[i].at, nil
	}
	return s.read(rkey)
}

// forget drops the entry of ref, before its record is written or deleted.
// The caller holds st.mu.
func (st *stripe) forget(ref []byte) {
	if i := st.find(ref); i >= 0 {
		last := len(st.pending) - 1
		st.pending[i] = st.pending[last]
		st.pending[last] = pendingRecord{}
		st.pending = st.pending[:last]
	}
}

// remember keeps rec, just synced under ref with its index entry at at, when
// rec is pending and its encoding (of size n) is small; ref has no entry
// (put forgot it). The caller holds st.mu and hands over ref and rec, which
// nobody changes afterwards; rec's times are in UTC without monotonic
// readings, as decodeRecord returns them.
func (st *stripe) remember(ref []byte, rec *idem.Record, at time.Time, n int) {
	if rec.State != idem.StatePending || n > pendingMaxValue {
		return
	}
	e := pendingRecord{ref: ref, rec: rec, at: at}
	if len(st.pending) >= pendingPerStripe {
		st.pending[0] = e // full: an arbitrary entry makes room
		return
	}
	st.pending = append(st.pending, e)
}
