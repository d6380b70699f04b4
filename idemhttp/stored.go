package idemhttp

import (
	"encoding/binary"
	"errors"
	"net/http"

	"github.com/idemkit/idem"
)

// A response the middleware stores is one Outcome.Data, without Meta:
//
//	byte    storedV1
//	uint16  status, big-endian
//	headers each as uvarint name length, name, uvarint value count, and
//	        each value as uvarint length, value; a zero name length ends them
//	body    the rest
//
// A replay decodes it without building a map.
const storedV1 = 1

var errStoredForm = errors.New("idemhttp: the stored response is not in a form this version reads")

// appendStoredHead appends the head of a stored response: the form's
// version, status and the headers of h among names (canonical), in the
// order of names.
func appendStoredHead(b []byte, status int, names []string, h http.Header) []byte {
	b = append(b, storedV1, byte(status>>8), byte(status))
	for _, name := range names {
		values := h[name]
		if len(values) == 0 {
			continue
		}
		b = binary.AppendUvarint(b, uint64(len(name)))
		b = append(b, name...)
		b = binary.AppendUvarint(b, uint64(len(values)))
		for _, v := range values {
			b = binary.AppendUvarint(b, uint64(len(v)))
			b = append(b, v...)
		}
	}
	return append(b, 0)
}

// storedHead is a stored response's head, parsed.
type storedHead struct {
	status int
	lines  int // header values
	end    int // where the headers end: Data[3:end] holds them
}

// parseStoredHead parses data's head (appendStoredHead), checking every
// length against data.
func parseStoredHead(data []byte) (storedHead, error) {
	if len(data) < 4 || data[0] != storedV1 {
		return storedHead{}, errStoredForm
	}
	h := storedHead{status: int(data[1])<<8 | int(data[2])}
	rest := data[3:]
	take := func() (int, bool) {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) {
			return 0, false
		}
		rest = rest[k:]
		return int(n), true
	}
	for {
		n, ok := take()
		if !ok {
			return storedHead{}, errStoredForm
		}
		if n == 0 {
			break
		}
		rest = rest[n:]
		values, ok := take()
		if !ok {
			return storedHead{}, errStoredForm
		}
		for range values {
			n, ok := take()
			if !ok {
				return storedHead{}, errStoredForm
			}
			rest = rest[n:]
		}
		h.lines += values
	}
	h.end = len(data) - len(rest) - 1
	return h, nil
}

// storedHeaders walks the headers of a parsed head, as a string (data[3:end]).
type storedHeaders struct{ s string }

// next returns the next header's name and its value count; values
// returns them one by one.
func (it *storedHeaders) next() (name string, count int, ok bool) {
	if it.s == "" {
		return "", 0, false
	}
	name = it.take()
	n, k := uvarint(it.s)
	it.s = it.s[k:]
	return name, int(n), true
}

// take returns the next length-prefixed string.
func (it *storedHeaders) take() string {
	n, k := uvarint(it.s)
	v := it.s[k : k+int(n)]
	it.s = it.s[k+int(n):]
	return v
}

// uvarint is binary.Uvarint of a string parseStoredHead checked.
func uvarint(s string) (uint64, int) {
	var x uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x80 {
			return x | uint64(c)<<(7*i), i + 1
		}
		x |= uint64(c&0x7f) << (7 * i)
	}
	return 0, len(s)
}

// StoredResponse returns the response the middleware stored as out: its
// status, the stored headers and the body (sharing out.Data), for tools
// that show a record. An outcome in another form is an error.
func StoredResponse(out *idem.Outcome) (status int, header http.Header, body []byte, err error) {
	header = http.Header{}
	head, err := parseStoredHead(out.Data)
	if err != nil {
		return 0, nil, nil, err
	}
	it := storedHeaders{string(out.Data[3:head.end])}
	for name, count, ok := it.next(); ok; name, count, ok = it.next() {
		values := make([]string, count)
		for i := range values {
			values[i] = it.take()
		}
		header[name] = values
	}
	return head.status, header, out.Data[head.end+1:], nil
}
