package redisstore

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/idemkit/idem"
)

// Record hash fields (see recordFields):
//
//	s   state: p pending, c completed, r released
//	f   fingerprint
//	t   token
//	a   attempts
//	lu  lease until, µs since the epoch
//	cr  created, µs
//	co  completed, µs
//	ex  expires, µs
//	ru  retain until, µs (also the record's Redis expiry, in ms rounded up)
//	w   window, µs
//	re  retention, µs
//	cp  checkpoint point (absent: no checkpoint)
//	cd  checkpoint data
//	od  outcome data
//	om  outcome meta (encodeMeta; absent: none)

// micros turns a positive duration into whole microseconds, rounding up so
// that a lease is never shorter than asked.
func micros(d time.Duration) int64 {
	return int64((d + time.Microsecond - 1) / time.Microsecond)
}

// encodeMeta writes meta as (uvarint length, bytes) pairs for each key and
// value, keys sorted, so equal maps encode equally.
func encodeMeta(meta map[string]string) string {
	if len(meta) == 0 {
		return ""
	}
	var b []byte
	for _, k := range slices.Sorted(maps.Keys(meta)) {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(meta[k])))
		b = append(b, meta[k]...)
	}
	return string(b)
}

// decodeMeta reads what encodeMeta wrote.
func decodeMeta(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	meta := map[string]string{}
	b := []byte(s)
	next := func() (string, error) {
		n, w := binary.Uvarint(b)
		if w <= 0 || n > uint64(len(b)-w) {
			return "", fmt.Errorf("%w: redisstore: outcome meta is corrupt", idem.ErrInvalid)
		}
		v := string(b[w : w+int(n)])
		b = b[w+int(n):]
		return v, nil
	}
	for len(b) > 0 {
		k, err := next()
		if err != nil {
			return nil, err
		}
		v, err := next()
		if err != nil {
			return nil, err
		}
		meta[k] = v
	}
	return meta, nil
}

// decodeRecord builds a record from the values of recordFields (a prefix of
// them: the outcome fields may be left out, as Complete and Begin do when
// the caller has no use for them). A nil state means no record.
func decodeRecord(scope, key string, vals []any) (*idem.Record, error) {
	if len(vals) < 13 || len(vals) > len(recordFields) {
		return nil, fmt.Errorf("%w: redisstore: record reply has %d fields", idem.ErrInvalid, len(vals))
	}
	str := func(i int) (string, bool) {
		s, ok := vals[i].(string)
		return s, ok
	}
	var err error
	num := func(i int) int64 {
		s, ok := str(i)
		if !ok || err != nil {
			return 0
		}
		n, perr := strconv.ParseInt(s, 10, 64)
		if perr != nil {
			err = fmt.Errorf("%w: redisstore: record field %s is %q, not an integer", idem.ErrInvalid, recordFields[i], s)
		}
		return n
	}
	at := func(i int) time.Time {
		if n := num(i); n != 0 {
			return time.UnixMicro(n).UTC()
		}
		return time.Time{}
	}
	st, ok := str(0)
	if !ok {
		return nil, nil
	}
	r := &idem.Record{Scope: scope, Key: key}
	switch st {
	case "p":
		r.State = idem.StatePending
	case "c":
		r.State = idem.StateCompleted
	case "r":
		r.State = idem.StateReleased
	default:
		return nil, fmt.Errorf("%w: redisstore: record state %q", idem.ErrInvalid, st)
	}
	r.Fingerprint, _ = str(1)
	r.Token = num(2)
	r.Attempts = int(num(3))
	r.LeaseUntil = at(4)
	r.Created = at(5)
	r.Completed = at(6)
	r.Expires = at(7)
	r.RetainUntil = at(8)
	r.Window = time.Duration(num(9)) * time.Microsecond
	r.Retention = time.Duration(num(10)) * time.Microsecond
	if p, ok := str(11); ok {
		d, _ := str(12)
		r.Checkpoint = &idem.Checkpoint{Point: p, Data: []byte(d)}
	}
	if r.State == idem.StateCompleted && len(vals) == len(recordFields) {
		d, _ := str(13)
		r.Outcome = &idem.Outcome{Data: []byte(d)}
		if m, ok := str(14); ok {
			if r.Outcome.Meta, err = decodeMeta(m); err != nil {
				return nil, err
			}
		}
	}
	if err != nil {
		return nil, err
	}
	if r.Token <= 0 {
		return nil, fmt.Errorf("%w: redisstore: record token %d", idem.ErrInvalid, r.Token)
	}
	return r, nil
}
