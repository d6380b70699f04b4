package pebblestore

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Key layout. Every Pebble key starts with a prefix naming what it holds:
//
//	r/ <len(scope) 1 byte> <scope> <key>          -> encoded record
//	x/ <retain-until 12 bytes> <len(scope)> <scope> <key> -> empty (expiry index)
//	m/token                                       -> token high-water mark (8 bytes BE)
//
// The scope's length prefix keeps the records of one scope contiguous and
// in key order, and keeps scope "a" from matching the prefix of scope "ab".
// The retain-until time is the Unix second with its sign bit flipped
// (big-endian, so negative times sort first) followed by the nanosecond
// (big-endian uint32): byte order is time order, for every time.Time.
const (
	prefixRecord = "r/"
	prefixIndex  = "x/"
	keyTokenMark = "m/token"
	timeLen      = 12
)

// recordRef is the part of a record key after "r/": the scope's length,
// the scope, the key. It is also the tail of the record's index entries.
func recordRef(scope, key string) []byte {
	b := make([]byte, 0, 1+len(scope)+len(key))
	b = append(b, byte(len(scope)))
	b = append(b, scope...)
	return append(b, key...)
}

// recordKey is the Pebble key of the record of (scope, key); its ref is
// what follows prefixRecord.
func recordKey(scope, key string) []byte {
	b := make([]byte, 0, len(prefixRecord)+1+len(scope)+len(key))
	b = append(b, prefixRecord...)
	b = append(b, byte(len(scope)))
	b = append(b, scope...)
	return append(b, key...)
}

// scopePrefix is the common prefix of the record keys of scope.
func scopePrefix(scope string) []byte {
	b := append([]byte(prefixRecord), byte(len(scope)))
	return append(b, scope...)
}

func appendTime(dst []byte, t time.Time) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(t.Unix())^(1<<63))
	return binary.BigEndian.AppendUint32(dst, uint32(t.Nanosecond()))
}

// putIndexKey fills dst, of len(prefixIndex)+timeLen+len(ref) bytes, with
// indexKey(retainUntil, ref), for a batch's deferred Set.
func putIndexKey(dst []byte, retainUntil time.Time, ref []byte) {
	n := copy(dst, prefixIndex)
	binary.BigEndian.PutUint64(dst[n:], uint64(retainUntil.Unix())^(1<<63))
	binary.BigEndian.PutUint32(dst[n+8:], uint32(retainUntil.Nanosecond()))
	copy(dst[n+timeLen:], ref)
}

// indexKey is the expiry-index entry of the record named by ref that may be
// swept from retainUntil on.
func indexKey(retainUntil time.Time, ref []byte) []byte {
	b := make([]byte, 0, len(prefixIndex)+timeLen+len(ref))
	b = append(b, prefixIndex...)
	b = appendTime(b, retainUntil)
	return append(b, ref...)
}

// parseIndexKey splits an index entry into its time and record reference.
func parseIndexKey(k []byte) (time.Time, []byte, error) {
	if len(k) < len(prefixIndex)+timeLen+1 || string(k[:len(prefixIndex)]) != prefixIndex {
		return time.Time{}, nil, fmt.Errorf("%w: bad index key of %d bytes", errCorrupt, len(k))
	}
	b := k[len(prefixIndex):]
	sec := int64(binary.BigEndian.Uint64(b) ^ (1 << 63))
	nsec := int64(binary.BigEndian.Uint32(b[8:]))
	ref := b[timeLen:]
	if int(ref[0])+1 > len(ref) || nsec >= int64(time.Second) {
		return time.Time{}, nil, fmt.Errorf("%w: bad index key of %d bytes", errCorrupt, len(k))
	}
	return time.Unix(sec, nsec).UTC(), append([]byte{}, ref...), nil
}

// parseRef splits a record reference into scope and key.
func parseRef(ref []byte) (scope, key string) {
	n := int(ref[0])
	return string(ref[1 : 1+n]), string(ref[1+n:])
}
