package idemhttp

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"net/http"
	"sync"
)

// Fingerprint is the default Config.Fingerprint: the hex SHA-256 of the
// method, path, raw query, the named request headers (every value, in
// order) and the body. Each part is length-prefixed, so no two different
// requests share the digested bytes.
func Fingerprint(r *http.Request, headers []string, body []byte) string {
	canonical := make([]string, len(headers))
	for i, name := range headers {
		canonical[i] = http.CanonicalHeaderKey(name)
	}
	return fingerprintCanonical(r, canonical, body)
}

// digester is a reusable SHA-256 state and framing buffer.
type digester struct {
	h   hash.Hash
	sum [sha256.Size]byte
	buf []byte
}

var digesters = sync.Pool{New: func() any { return &digester{h: sha256.New(), buf: make([]byte, 0, 512)} }}

// fingerprintCanonical is Fingerprint with the header names already in
// canonical form: the middleware computes them once per configuration.
func fingerprintCanonical(r *http.Request, canonical []string, body []byte) string {
	d := digesters.Get().(*digester)
	b := appendFraming(d.buf[:0], r, canonical, len(body))
	d.h.Reset()
	d.h.Write(b)
	d.h.Write(body)
	var hexSum [2 * sha256.Size]byte
	hex.Encode(hexSum[:], d.h.Sum(d.sum[:0]))
	if cap(b) <= 64<<10 { // keep the pool's buffers small
		d.buf = b[:0]
		digesters.Put(d)
	}
	return string(hexSum[:])
}

// appendFraming appends the length-prefixed method, path, query and
// headers, then the body's length: the digest covers these bytes followed
// by the body.
func appendFraming(b []byte, r *http.Request, canonical []string, bodyLen int) []byte {
	b = appendFramed(b, r.Method)
	b = appendFramed(b, r.URL.Path)
	b = appendFramed(b, r.URL.RawQuery)
	b = appendCount(b, len(canonical))
	for _, name := range canonical {
		values := r.Header[name]
		b = appendFramed(b, name)
		b = appendCount(b, len(values))
		for _, v := range values {
			b = appendFramed(b, v)
		}
	}
	return appendCount(b, bodyLen)
}

func appendCount(b []byte, n int) []byte {
	return binary.BigEndian.AppendUint64(b, uint64(n))
}

func appendFramed(b []byte, s string) []byte {
	return append(appendCount(b, len(s)), s...)
}
