package idemhttp

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"sync"
	"time"
)

// uuidv7State keeps keys made in the same millisecond in order: RFC 9562
// §6.2 method 1, a 12-bit counter in rand_a seeded at a random value below
// 2048 each millisecond, so at least 2048 keys fit in one millisecond before
// the generator borrows the next one.
var uuidv7State struct {
	sync.Mutex
	ms  uint64 // last millisecond used (may run ahead of the clock)
	seq uint16 // last counter used in ms
}

// NewUUIDv7 returns a fresh UUIDv7 (RFC 9562) in its canonical 36-character
// form: 48 bits of Unix milliseconds, a 12-bit counter that keeps keys made
// by this process strictly increasing, and 62 random bits. Keys sort by
// creation time, which keeps ledger indexes local. Safe for concurrent use.
func NewUUIDv7() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand crashes the program instead)

	now := uint64(time.Now().UnixMilli())
	seed := binary.BigEndian.Uint16(b[6:8]) & 0x07FF
	uuidv7State.Lock()
	ms, seq := uuidv7State.ms, uuidv7State.seq
	switch {
	case now > ms:
		ms, seq = now, seed
	case seq < 0x0FFF:
		// Same millisecond, or the clock went back: count on from the last.
		seq++
	default:
		ms, seq = ms+1, seed
	}
	uuidv7State.ms, uuidv7State.seq = ms, seq
	uuidv7State.Unlock()

	b[0], b[1], b[2] = byte(ms>>40), byte(ms>>32), byte(ms>>24)
	b[3], b[4], b[5] = byte(ms>>16), byte(ms>>8), byte(ms)
	b[6] = 0x70 | byte(seq>>8) // version 7
	b[7] = byte(seq)
	b[8] = 0x80 | b[8]&0x3F // variant 10

	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], b[10:16])
	return string(s[:])
}
