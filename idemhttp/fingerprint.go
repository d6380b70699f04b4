package idemhttp

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net/http"
)

// Fingerprint is the default Config.Fingerprint: the hex SHA-256 of the
// method, path, raw query, the named request headers (every value, in
// order) and the body. Each part is length-prefixed, so no two different
// requests share the digested bytes.
func Fingerprint(r *http.Request, headers []string, body []byte) string {
	h := sha256.New()
	writeFingerprint(h, r, headers, body)
	return hex.EncodeToString(h.Sum(nil))
}

func writeFingerprint(w io.Writer, r *http.Request, headers []string, body []byte) {
	writeFramed(w, r.Method)
	writeFramed(w, r.URL.Path)
	writeFramed(w, r.URL.RawQuery)
	writeCount(w, len(headers))
	for _, name := range headers {
		values := r.Header.Values(name)
		writeFramed(w, http.CanonicalHeaderKey(name))
		writeCount(w, len(values))
		for _, v := range values {
			writeFramed(w, v)
		}
	}
	writeCount(w, len(body))
	w.Write(body)
}

func writeCount(w io.Writer, n int) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	w.Write(b[:])
}

func writeFramed(w io.Writer, s string) {
	writeCount(w, len(s))
	io.WriteString(w, s)
}
