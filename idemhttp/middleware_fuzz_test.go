package idemhttp

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"testing"

	"github.com/idemkit/idem"
)

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{`"abc"`, "abc", `"a\"b\\c"`, "", `""`, `"a", "b"`, `"unclosed`, "01J9-uuid", " \t\"x\" ", `"a\n"`, "a;b=c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		key, present, err := ParseKey(http.Header{HeaderKey: {v}})
		if !present {
			t.Fatal("a header line read as absent")
		}
		if err != nil {
			if !errors.Is(err, idem.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if key == "" || len(key) > idem.MaxKeyLen {
			t.Fatalf("accepted key of %d bytes", len(key))
		}
		for i := 0; i < len(key); i++ {
			if key[i] < 0x20 || key[i] > 0x7e {
				t.Fatalf("accepted byte %#x", key[i])
			}
		}
		// Quoting round-trips: what a client sends as an sf-string comes back.
		again, _, err := ParseKey(http.Header{HeaderKey: {QuoteKey(key)}})
		if err != nil || again != key {
			t.Fatalf("QuoteKey(%q) parsed as %q, %v", key, again, err)
		}
	})
}

// fingerprintInput is what the default fingerprint covers.
type fingerprintInput struct {
	method, path, query string
	header              []string
	body                []byte
}

func (in fingerprintInput) framing() []byte {
	r := &http.Request{Method: in.method, URL: &url.URL{Path: in.path, RawQuery: in.query}, Header: http.Header{}}
	if in.header != nil {
		r.Header["Content-Type"] = in.header
	}
	return append(appendFraming(nil, r, []string{"Content-Type"}, len(in.body)), in.body...)
}

func FuzzFingerprint(f *testing.F) {
	f.Add("POST", "/a", "x=1", "application/json", "", []byte("{}"), "POST", "/a", "x=1", "application/json", "", []byte("{ }"))
	f.Add("POST", "/a", "", "ab", "c", []byte(""), "POST", "/a", "", "a", "bc", []byte(""))
	f.Add("POST", "/ab", "", "", "", []byte("c"), "POST", "/a", "b", "", "", []byte("c"))
	f.Fuzz(func(t *testing.T, m1, p1, q1, h1a, h1b string, b1 []byte, m2, p2, q2, h2a, h2b string, b2 []byte) {
		headers := func(a, b string) []string {
			switch {
			case a == "" && b == "":
				return nil
			case b == "":
				return []string{a}
			}
			return []string{a, b}
		}
		x := fingerprintInput{m1, p1, q1, headers(h1a, h1b), b1}
		y := fingerprintInput{m2, p2, q2, headers(h2a, h2b), b2}
		same := x.method == y.method && x.path == y.path && x.query == y.query &&
			equalStrings(x.header, y.header) && bytes.Equal(x.body, y.body)
		if got := bytes.Equal(x.framing(), y.framing()); got != same {
			t.Fatalf("inputs equal=%v but framings equal=%v: %+v %+v", same, got, x, y)
		}
		r := &http.Request{Method: m1, URL: &url.URL{Path: p1, RawQuery: q1}, Header: http.Header{"Content-Type": x.header}}
		sum := sha256.Sum256(x.framing())
		if fp := Fingerprint(r, []string{"content-type"}, b1); fp != hex.EncodeToString(sum[:]) {
			t.Fatalf("fingerprint %q is not the digest of the framing", fp)
		}
	})
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestFingerprintStable pins the default fingerprint: records stored by
// earlier versions must keep matching their retries.
func TestFingerprintStable(t *testing.T) {
	t.Parallel()
	r := &http.Request{Method: "POST", URL: &url.URL{Path: "/orders", RawQuery: "a=1"},
		Header: http.Header{"Content-Type": {"application/json"}, "X-Tenant": {"a", "b"}}}
	for _, c := range []struct {
		headers []string
		body    []byte
		want    string
	}{
		{[]string{"content-type", "X-Tenant", "Accept"}, []byte(`{"amount":100}`), "78ef7c719344ee527670d5d4cbb76bfbb2f5fbc0af5fc68d27ef8c5bd0da68e7"},
		{nil, nil, "d713b41f208c379a1431dc1df1207d7d7f05c90973671ab6c02100626d307aa0"},
	} {
		if got := Fingerprint(r, c.headers, c.body); got != c.want {
			t.Errorf("Fingerprint(%v, %q) = %s, want %s", c.headers, c.body, got, c.want)
		}
	}
}

// FuzzStoredHead: parsing a stored response never reads past its bytes,
// and what it reads, written again, reads the same.
func FuzzStoredHead(f *testing.F) {
	f.Add(appendStoredHead(nil, 201, []string{"Content-Type", "Link", "Etag"},
		http.Header{"Content-Type": {"application/json"}, "Link": {"</a>", "</b>"}, "Etag": {""}}))
	f.Add([]byte("\x01\x00\xc8\x00body"))
	f.Add([]byte("\x01\x00\xc8\x04Link\x01\xff"))
	f.Add([]byte("\x01\x00\xc8\x80\x00")) // a length in more bytes than it needs
	read := func(t *testing.T, data []byte) (storedHead, []string, http.Header) {
		head, err := parseStoredHead(data)
		if err != nil {
			return head, nil, nil
		}
		var names []string
		header := http.Header{}
		it := storedHeaders{string(data[3:head.end])}
		lines := 0
		for name, count, ok := it.next(); ok; name, count, ok = it.next() {
			if _, dup := header[name]; !dup {
				names = append(names, name)
			}
			for range count {
				header[name] = append(header[name], it.take())
			}
			lines += count
		}
		if lines != head.lines {
			t.Fatalf("counted %d values, walked %d", head.lines, lines)
		}
		return head, names, header
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		head, names, header := read(t, data)
		if header == nil {
			return
		}
		again := appendStoredHead(nil, head.status, names, header)
		head2, _, header2 := read(t, again)
		for name, v := range header {
			if len(v) == 0 {
				delete(header, name) // appendStoredHead leaves a header without values out
			}
		}
		if header2 == nil || head2.status != head.status || !reflect.DeepEqual(header, header2) {
			t.Fatalf("head %q written again as %q", data[:head.end+1], again)
		}
	})
}
