package pebblestore

import (
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
	// pendingMaxValue is the largest encoded record kept in memory (a big
	// checkpoint is read from Pebble instead), so the cache holds at most
	// stripes x pendingPerStripe x pendingMaxValue bytes.
	pendingMaxValue = 1 << 10
)

// stripe is one of the per-key locks, with the pending records of its keys
// that this process wrote. Only this process writes the directory (it holds
// Pebble's lock) and every write of a record happens under its stripe's
// lock, so an entry, when present, is exactly the value in Pebble: the
// operations that follow Begin (Complete, Release, Extend, Checkpoint)
// decode it instead of reading Pebble. Only values that are synced enter,
// and every write of a record first removes its entry.
type stripe struct {
	mu      sync.Mutex
	pending map[string][]byte // ref -> encoded record, as synced; guarded by mu
}

// stripeOf returns the stripe that serialises the operations on the record
// named by ref.
func (s *Store) stripeOf(ref []byte) *stripe {
	return &s.stripes[maphash.Bytes(s.seed, ref)%stripes]
}

// load reads the record stored under rkey (a recordKey) and the time of its
// index entry: from the stripe's pending records when it is there, else
// from Pebble. The caller holds st.mu.
func (st *stripe) load(s *Store, rkey []byte) (*idem.Record, time.Time, error) {
	if v, ok := st.pending[string(rkey[len(prefixRecord):])]; ok {
		return decodeRecord(v) // decodeRecord copies: the entry stays intact
	}
	return s.read(rkey)
}

// forget drops the entry of ref, before its record is written or deleted.
// The caller holds st.mu.
func (st *stripe) forget(ref []byte) {
	delete(st.pending, string(ref))
}

// remember keeps v, the encoding of rec just synced under ref, when rec is
// pending and v is small. The caller holds st.mu and owns v.
func (st *stripe) remember(ref []byte, rec *idem.Record, v []byte) {
	if rec.State != idem.StatePending || len(v) > pendingMaxValue {
		return
	}
	if st.pending == nil {
		st.pending = make(map[string][]byte, pendingPerStripe)
	}
	if len(st.pending) >= pendingPerStripe {
		for k := range st.pending {
			delete(st.pending, k)
			break
		}
	}
	st.pending[string(ref)] = v
}
