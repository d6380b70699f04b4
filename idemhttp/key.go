package idemhttp

import (
	"fmt"
	"net/http"

	"github.com/idemkit/idem"
)

// ParseKey reads the Idempotency-Key header of h. The value is a
// structured-field string (RFC 8941: "..." with \" and \\ as the only
// escapes, printable ASCII) or, as Stripe clients send it, a bare token.
// present is false when there is no header. Several header lines, a list,
// an empty key or one over 255 bytes are errors wrapping idem.ErrInvalid.
func ParseKey(h http.Header) (key string, present bool, err error) {
	values := h[HeaderKey] // HeaderKey is canonical: no need to canonicalise it per call
	switch len(values) {
	case 0:
		return "", false, nil
	case 1:
	default:
		return "", true, fmt.Errorf("%w: %d %s header lines; send exactly one", idem.ErrInvalid, len(values), HeaderKey)
	}
	key, err = parseKeyValue(values[0])
	return key, true, err
}

func parseKeyValue(v string) (string, error) {
	v = trimOWS(v)
	if v == "" {
		return "", fmt.Errorf("%w: the %s header is empty", idem.ErrInvalid, HeaderKey)
	}
	var key string
	if v[0] == '"' {
		buf := make([]byte, 0, len(v))
		i := 1
		closed := false
		for ; i < len(v); i++ {
			c := v[i]
			if c == '\\' {
				i++
				if i == len(v) || (v[i] != '"' && v[i] != '\\') {
					return "", fmt.Errorf("%w: the %s string has a bad escape (only \\\" and \\\\ are allowed)", idem.ErrInvalid, HeaderKey)
				}
				buf = append(buf, v[i])
				continue
			}
			if c == '"' {
				closed = true
				i++
				break
			}
			if c < 0x20 || c > 0x7e {
				return "", fmt.Errorf("%w: the %s string holds a byte that is not printable ASCII", idem.ErrInvalid, HeaderKey)
			}
			buf = append(buf, c)
		}
		if !closed {
			return "", fmt.Errorf("%w: the %s string is not closed", idem.ErrInvalid, HeaderKey)
		}
		if i != len(v) {
			return "", fmt.Errorf("%w: the %s header holds more than one string (a list or parameters)", idem.ErrInvalid, HeaderKey)
		}
		key = string(buf)
	} else {
		for i := 0; i < len(v); i++ {
			if !isTokenChar(v[i]) {
				return "", fmt.Errorf("%w: the %s header is neither a quoted string nor a token (byte %d)", idem.ErrInvalid, HeaderKey, i)
			}
		}
		key = v
	}
	switch {
	case key == "":
		return "", fmt.Errorf("%w: the %s is empty", idem.ErrInvalid, HeaderKey)
	case len(key) > idem.MaxKeyLen:
		return "", fmt.Errorf("%w: the %s is %d bytes, over the limit of %d", idem.ErrInvalid, HeaderKey, len(key), idem.MaxKeyLen)
	}
	return key, nil
}

func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// isTokenChar reports the bytes of an RFC 8941 token (tchar, ":" and "/").
// A bare key may start with any of them: Stripe clients send UUIDs, which
// may start with a digit.
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~', ':', '/':
		return true
	}
	return false
}

// QuoteKey returns key as an RFC 8941 string, the form Transport sends.
func QuoteKey(key string) string {
	buf := make([]byte, 0, len(key)+2)
	buf = append(buf, '"')
	for i := 0; i < len(key); i++ {
		if key[i] == '"' || key[i] == '\\' {
			buf = append(buf, '\\')
		}
		buf = append(buf, key[i])
	}
	return string(append(buf, '"'))
}
