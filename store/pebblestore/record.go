package pebblestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/idemkit/idem"
)

// recordVersion is the first byte of every stored record. A store refuses
// records of a version it does not know instead of misreading them.
const recordVersion = 1

// errCorrupt wraps every decoding failure.
var errCorrupt = errors.New("pebblestore: corrupt record")

const (
	stateCodePending   = 1
	stateCodeCompleted = 2
	stateCodeReleased  = 3
)

// codeStates are the states by code: codeStates[stateCodePending] is
// idem.StatePending; index 0 is no state.
var codeStates = [...]idem.State{stateCodePending: idem.StatePending, stateCodeCompleted: idem.StateCompleted, stateCodeReleased: idem.StateReleased}

// stateCode returns the code of st (0 for no state).
func stateCode(st idem.State) byte {
	switch st {
	case idem.StatePending:
		return stateCodePending
	case idem.StateCompleted:
		return stateCodeCompleted
	case idem.StateReleased:
		return stateCodeReleased
	}
	return 0
}

// decodeState returns the state code of an encoded record, reading its
// first two bytes only, with the same checks as decodeRecord.
func decodeState(b []byte) (byte, error) {
	if len(b) < 2 {
		return 0, fmt.Errorf("%w: %d bytes", errCorrupt, len(b))
	}
	if b[0] != recordVersion {
		return 0, fmt.Errorf("%w: unknown version %d", errCorrupt, b[0])
	}
	if b[1] == 0 || int(b[1]) >= len(codeStates) {
		return 0, fmt.Errorf("%w: unknown state %d", errCorrupt, b[1])
	}
	return b[1], nil
}

const (
	flagCheckpoint = 1 << iota
	flagOutcome
	flagLeaseUntil
	flagCreated
	flagCompleted
	flagExpires
	flagRetainUntil
	flagIndexAt
	flagsKnown = 1<<iota - 1
)

// encodeRecord appends the binary encoding of r to dst. indexAt is the time
// of the record's expiry-index entry (see put), kept with the record so the
// entry can be found again; it is not part of idem.Record.
//
//	version(1) state(1) flags(uvarint)
//	scope key fingerprint              (uvarint length + bytes each)
//	token(varint) attempts(uvarint) window(varint ns) retention(varint ns)
//	for each non-zero time, in flag order (lease-until, created, completed,
//	expires, retain-until, index-at): seconds(varint) nanos(uvarint)
//	checkpoint: point, data            (when flagCheckpoint)
//	outcome: data, n(uvarint), n x (k, v) sorted by k   (when flagOutcome)
func encodeRecord(dst []byte, r *idem.Record, indexAt time.Time) []byte {
	state := stateCode(r.State)
	times := [...]time.Time{r.LeaseUntil, r.Created, r.Completed, r.Expires, r.RetainUntil, indexAt}
	var flags uint64
	if r.Checkpoint != nil {
		flags |= flagCheckpoint
	}
	if r.Outcome != nil {
		flags |= flagOutcome
	}
	for i, t := range times {
		if !t.IsZero() {
			flags |= flagLeaseUntil << i
		}
	}
	if dst == nil {
		n := 64 + len(r.Scope) + len(r.Key) + len(r.Fingerprint)
		if r.Checkpoint != nil {
			n += len(r.Checkpoint.Point) + len(r.Checkpoint.Data)
		}
		if r.Outcome != nil {
			n += len(r.Outcome.Data) + 16*len(r.Outcome.Meta)
		}
		dst = make([]byte, 0, n)
	}
	dst = append(dst, recordVersion, state)
	dst = binary.AppendUvarint(dst, flags)
	dst = appendString(dst, r.Scope)
	dst = appendString(dst, r.Key)
	dst = appendString(dst, r.Fingerprint)
	dst = binary.AppendVarint(dst, r.Token)
	dst = binary.AppendUvarint(dst, uint64(r.Attempts))
	dst = binary.AppendVarint(dst, int64(r.Window))
	dst = binary.AppendVarint(dst, int64(r.Retention))
	for _, t := range times {
		if !t.IsZero() {
			dst = binary.AppendVarint(dst, t.Unix())
			dst = binary.AppendUvarint(dst, uint64(t.Nanosecond()))
		}
	}
	if r.Checkpoint != nil {
		dst = appendString(dst, r.Checkpoint.Point)
		dst = appendString(dst, string(r.Checkpoint.Data))
	}
	if r.Outcome != nil {
		dst = appendString(dst, string(r.Outcome.Data))
		dst = binary.AppendUvarint(dst, uint64(len(r.Outcome.Meta)))
		if len(r.Outcome.Meta) == 1 { // the common case needs no sorting
			for k, v := range r.Outcome.Meta {
				dst = appendString(appendString(dst, k), v)
			}
			return dst
		}
		keys := make([]string, 0, len(r.Outcome.Meta))
		for k := range r.Outcome.Meta {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			dst = appendString(dst, k)
			dst = appendString(dst, r.Outcome.Meta[k])
		}
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// decoder reads the fields of an encoded record; the first failure sticks,
// so decodeRecord checks it once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: bad %s", errCorrupt, what)
	}
	d.b = nil
}

func (d *decoder) uvarint(what string) uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint(what string) int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(what string) []byte {
	n := d.uvarint(what)
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail(what)
		return nil
	}
	v := append([]byte{}, d.b[:n]...) // copy: Pebble's buffer is reused
	d.b = d.b[n:]
	return v
}

func (d *decoder) string(what string) string {
	n := d.uvarint(what)
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail(what)
		return ""
	}
	v := string(d.b[:n])
	d.b = d.b[n:]
	return v
}

func (d *decoder) time(what string) time.Time {
	sec := d.varint(what)
	nsec := d.uvarint(what)
	if d.err != nil || nsec >= uint64(time.Second) {
		d.fail(what)
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// decodeRecord parses what encodeRecord wrote: the record and the time of
// its index entry. Times come back in UTC without a monotonic reading.
// Corrupt input gives an error wrapping errCorrupt, never a panic.
func decodeRecord(b []byte) (*idem.Record, time.Time, error) {
	code, err := decodeState(b)
	if err != nil {
		return nil, time.Time{}, err
	}
	r := &idem.Record{State: codeStates[code]}
	d := &decoder{b: b[2:]}
	flags := d.uvarint("flags")
	if flags&^flagsKnown != 0 {
		d.fail("flags")
	}
	r.Scope = d.string("scope")
	r.Key = d.string("key")
	r.Fingerprint = d.string("fingerprint")
	r.Token = d.varint("token")
	attempts := d.uvarint("attempts")
	if attempts > 1<<31 {
		d.fail("attempts")
	}
	r.Attempts = int(attempts)
	r.Window = time.Duration(d.varint("window"))
	r.Retention = time.Duration(d.varint("retention"))
	var indexAt time.Time
	times := [...]*time.Time{&r.LeaseUntil, &r.Created, &r.Completed, &r.Expires, &r.RetainUntil, &indexAt}
	for i, t := range times {
		if flags&(flagLeaseUntil<<i) != 0 {
			*t = d.time("time")
		}
	}
	if flags&flagCheckpoint != 0 {
		r.Checkpoint = &idem.Checkpoint{Point: d.string("checkpoint point"), Data: d.bytes("checkpoint data")}
	}
	if flags&flagOutcome != 0 {
		r.Outcome = &idem.Outcome{Data: d.bytes("outcome data")}
		n := d.uvarint("outcome meta count")
		if n > uint64(len(d.b)) { // each entry takes at least two bytes
			d.fail("outcome meta count")
		}
		if n > 0 && d.err == nil {
			r.Outcome.Meta = make(map[string]string, n)
			for range n {
				k := d.string("outcome meta key")
				r.Outcome.Meta[k] = d.string("outcome meta value")
			}
		}
	}
	if d.err != nil {
		return nil, time.Time{}, d.err
	}
	if len(d.b) != 0 {
		return nil, time.Time{}, fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(d.b))
	}
	return r, indexAt, nil
}
