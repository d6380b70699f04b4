package redisstore

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/idemkit/idem"
)

// A record is one Redis string, so a script reads it with one GET and
// writes it, with its expiry, with one SET … PXAT. Format version 1, every
// integer little-endian (Lua: struct.pack('<Bc1Bi8i8i8i8i8i8i8i8i8')):
//
//	offset  size  field
//	0       1     format version, 1
//	1       1     state: 'p' pending, 'c' completed, 'r' released
//	2       1     flags: bit 0 set when a checkpoint is stored
//	3       8     token
//	11      8     attempts
//	19      8     lease until, µs since the epoch (0: none)
//	27      8     created, µs
//	35      8     completed, µs
//	43      8     expires, µs
//	51      8     retain until, µs (also the key's Redis expiry, in ms rounded up)
//	59      8     window, µs
//	67      8     retention, µs
//	75            five sections, each a uint32 length and that many bytes:
//	              fingerprint, checkpoint point, checkpoint data, outcome
//	              data, outcome meta (encodeMeta)
//
// The header has a fixed size, so a script unpacks only the numbers it
// judges, compares the fingerprint section as bytes, and keeps the sections
// it does not change as one substring.
const (
	recordVersion  = 1
	headerLen      = 75
	flagCheckpoint = 1
	// minRecordLen is a header and five empty sections.
	minRecordLen = headerLen + 5*4
)

// micros turns a positive duration into whole microseconds, rounding up so
// that a lease is never shorter than asked.
func micros(d time.Duration) int64 {
	return int64((d + time.Microsecond - 1) / time.Microsecond)
}

// appendSection appends a length-prefixed section.
func appendSection(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// section is one length-prefixed section, as a script argument.
func section(s string) []byte { return appendSection(make([]byte, 0, 4+len(s)), s) }

// tokenBytes is a token as the record holds it, for the scripts to compare
// bytes instead of numbers.
func tokenBytes(token int64) []byte {
	return binary.LittleEndian.AppendUint64(make([]byte, 0, 8), uint64(token))
}

// encodeMeta writes meta as (uvarint length, bytes) pairs for each key and
// value, keys sorted, so equal maps encode equally.
func encodeMeta(meta map[string]string) string { return string(appendMeta(nil, meta)) }

func appendMeta(b []byte, meta map[string]string) []byte {
	pair := func(k, v string) {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	if len(meta) == 1 {
		for k, v := range meta {
			pair(k, v)
		}
		return b
	}
	for _, k := range slices.Sorted(maps.Keys(meta)) {
		pair(k, meta[k])
	}
	return b
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

// outcomeSections are the sections Complete appends after the fingerprint:
// no checkpoint, then the outcome.
func outcomeSections(o *idem.Outcome) []byte {
	b := make([]byte, 12, 16+len(o.Data)+64)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(o.Data)))
	b = append(b, o.Data...)
	b = append(b, 0, 0, 0, 0)
	at := len(b)
	b = appendMeta(b, o.Meta)
	binary.LittleEndian.PutUint32(b[at-4:], uint32(len(b)-at))
	return b
}

// checkpointSections are the sections Checkpoint puts after the
// fingerprint: the checkpoint, then no outcome.
func checkpointSections(point string, data []byte) []byte {
	b := make([]byte, 0, 16+len(point)+len(data))
	b = appendSection(b, point)
	b = appendSection(b, string(data))
	return append(b, 0, 0, 0, 0, 0, 0, 0, 0)
}

// emptySections are the four sections after the fingerprint of a record
// that has neither a checkpoint nor an outcome.
const emptySections = "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// encodeRecord writes r in the format above. The scripts write records
// themselves; Go encodes them only for tests.
func encodeRecord(r *idem.Record) string {
	var st byte
	switch r.State {
	case idem.StatePending:
		st = 'p'
	case idem.StateCompleted:
		st = 'c'
	case idem.StateReleased:
		st = 'r'
	}
	var flags byte
	if r.Checkpoint != nil {
		flags |= flagCheckpoint
	}
	b := []byte{recordVersion, st, flags}
	us := func(t time.Time) int64 {
		if t.IsZero() {
			return 0
		}
		return t.UnixMicro()
	}
	for _, n := range []int64{r.Token, int64(r.Attempts), us(r.LeaseUntil), us(r.Created), us(r.Completed), us(r.Expires),
		us(r.RetainUntil), int64(r.Window / time.Microsecond), int64(r.Retention / time.Microsecond)} {
		b = binary.LittleEndian.AppendUint64(b, uint64(n))
	}
	b = appendSection(b, r.Fingerprint)
	var cp idem.Checkpoint
	if r.Checkpoint != nil {
		cp = *r.Checkpoint
	}
	b = appendSection(b, cp.Point)
	b = appendSection(b, string(cp.Data))
	var out idem.Outcome
	if r.Outcome != nil {
		out = *r.Outcome
	}
	b = appendSection(b, string(out.Data))
	return string(appendSection(b, encodeMeta(out.Meta)))
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: redisstore: stored record: "+format, append([]any{idem.ErrInvalid}, args...)...)
}

// recordReader reads a record's bytes, failing on anything the format does
// not allow.
type recordReader struct {
	b   string
	err error
}

func (r *recordReader) int64() int64 {
	if r.err != nil || len(r.b) < 8 {
		r.fail("truncated header")
		return 0
	}
	n := int64(binary.LittleEndian.Uint64([]byte(r.b[:8])))
	r.b = r.b[8:]
	return n
}

func (r *recordReader) section(name string) string {
	if r.err != nil {
		return ""
	}
	if len(r.b) < 4 {
		r.fail("no %s section", name)
		return ""
	}
	n := binary.LittleEndian.Uint32([]byte(r.b[:4]))
	if uint64(n) > uint64(len(r.b)-4) {
		r.fail("%s section of %d bytes, %d left", name, n, len(r.b)-4)
		return ""
	}
	s := r.b[4 : 4+n]
	r.b = r.b[4+n:]
	return s
}

func (r *recordReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = corrupt(format, args...)
	}
}

// decodeHead reads the header and fingerprint of a record (what the
// Complete script returns), leaving the reader at the checkpoint section.
func decodeHead(scope, key, b string) (*idem.Record, *recordReader, error) {
	if len(b) < headerLen+4 {
		return nil, nil, corrupt("%d bytes, shorter than a header", len(b))
	}
	if b[0] != recordVersion {
		return nil, nil, corrupt("format version %d, want %d", b[0], recordVersion)
	}
	rec := &idem.Record{Scope: scope, Key: key}
	switch b[1] {
	case 'p':
		rec.State = idem.StatePending
	case 'c':
		rec.State = idem.StateCompleted
	case 'r':
		rec.State = idem.StateReleased
	default:
		return nil, nil, corrupt("state %q", b[1])
	}
	flags := b[2]
	if flags&^flagCheckpoint != 0 {
		return nil, nil, corrupt("flags %#x", flags)
	}
	r := &recordReader{b: b[3:]}
	at := func() time.Time {
		if n := r.int64(); n != 0 {
			return time.UnixMicro(n).UTC()
		}
		return time.Time{}
	}
	rec.Token = r.int64()
	attempts := r.int64()
	rec.LeaseUntil = at()
	rec.Created = at()
	rec.Completed = at()
	rec.Expires = at()
	rec.RetainUntil = at()
	window, retention := r.int64(), r.int64()
	rec.Fingerprint = r.section("fingerprint")
	switch {
	case r.err != nil:
		return nil, nil, r.err
	case rec.Token <= 0:
		return nil, nil, corrupt("token %d", rec.Token)
	case attempts < 0 || attempts > 1<<31:
		return nil, nil, corrupt("attempts %d", attempts)
	case window < 0 || window > int64(1<<63-1)/1000 || retention < 0 || retention > int64(1<<63-1)/1000:
		return nil, nil, corrupt("window %d µs, retention %d µs", window, retention)
	}
	rec.Attempts = int(attempts)
	rec.Window = time.Duration(window) * time.Microsecond
	rec.Retention = time.Duration(retention) * time.Microsecond
	if flags&flagCheckpoint != 0 {
		rec.Checkpoint = &idem.Checkpoint{}
	}
	return rec, r, nil
}

// decodeRecord reads a whole stored record.
func decodeRecord(scope, key, b string) (*idem.Record, error) {
	rec, r, err := decodeHead(scope, key, b)
	if err != nil {
		return nil, err
	}
	point, cpData := r.section("checkpoint point"), r.section("checkpoint data")
	data, meta := r.section("outcome data"), r.section("outcome meta")
	switch {
	case r.err != nil:
		return nil, r.err
	case r.b != "":
		return nil, corrupt("%d bytes after the last section", len(r.b))
	case rec.Checkpoint == nil && (point != "" || cpData != ""):
		return nil, corrupt("checkpoint without its flag")
	case rec.State != idem.StateCompleted && (data != "" || meta != ""):
		return nil, corrupt("outcome in a %s record", rec.State)
	}
	if rec.Checkpoint != nil {
		rec.Checkpoint.Point, rec.Checkpoint.Data = point, []byte(cpData)
	}
	if rec.State == idem.StateCompleted {
		rec.Outcome = &idem.Outcome{Data: []byte(data)}
		if rec.Outcome.Meta, err = decodeMeta(meta); err != nil {
			return nil, err
		}
	}
	return rec, nil
}
