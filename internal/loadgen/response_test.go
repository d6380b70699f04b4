package loadgen

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// serve returns the bytes net/http's server writes for one request to h,
// keep-alive, as the load generator's clients read them.
func serve(t *testing.T, h http.Handler) []byte {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	l, err := dial(host, Bare)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	c := l.clients[0]
	if _, err := c.conn.Write(l.bare); err != nil {
		t.Fatal(err)
	}
	// Two responses' worth: read until the first is complete, using
	// net/http's own reader to know where it ends.
	var raw bytes.Buffer
	res, err := http.ReadResponse(bufio.NewReader(io.TeeReader(c.r, &raw)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, res.Body); err != nil {
		t.Fatal(err)
	}
	return raw.Bytes()
}

// TestReadResponse: what net/http's server writes, with a Content-Length
// or chunked, reads as its status and Idempotent-Replayed header, and two
// responses in a row read one after the other without allocating.
func TestReadResponse(t *testing.T) {
	for name, h := range map[string]http.HandlerFunc{
		"length": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Idempotent-Replayed", "true")
			Handler(w, r)
		},
		"chunked": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("idempotent-replayed", "false")
			w.WriteHeader(http.StatusCreated)
			for range 3 {
				_, _ = io.WriteString(w, strings.Repeat("x", 100))
				w.(http.Flusher).Flush()
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			raw := serve(t, h)
			want := map[string]string{"length": "true", "chunked": "false"}[name]
			if name == "chunked" && !bytes.Contains(raw, []byte("Transfer-Encoding: chunked")) {
				t.Fatalf("the response is not chunked:\n%s", raw)
			}
			two := append(append([]byte{}, raw...), raw...)
			r := bufio.NewReader(bytes.NewReader(two))
			for i := range 2 {
				status, replayed, err := readResponse(r, nil)
				if err != nil || status != http.StatusCreated || replayed != want {
					t.Fatalf("response %d: %d, %q, %v; want 201, %q", i, status, replayed, err, want)
				}
			}
			if _, err := r.ReadByte(); err != io.EOF {
				t.Errorf("after two responses: %v, want io.EOF (each read exactly its own bytes)", err)
			}
			rd := bytes.NewReader(raw)
			br := bufio.NewReader(rd)
			if a := testing.AllocsPerRun(100, func() {
				rd.Reset(raw)
				br.Reset(rd)
				if _, _, err := readResponse(br, nil); err != nil {
					t.Fatal(err)
				}
			}); a != 0 {
				t.Errorf("readResponse allocates %v times, want 0", a)
			}
		})
	}
}

// TestReadResponseRefuses: what is not an HTTP/1.1 response with a framed
// body is an error.
func TestReadResponseRefuses(t *testing.T) {
	for _, in := range []string{
		"",
		"HTTP/1.0 200 OK\r\n\r\n",
		"HTTP/1.1 2x1 Created\r\n\r\n",
		"HTTP/1.1 201 Created\r\nNo-Colon\r\n\r\n",
		"HTTP/1.1 201 Created\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 201 Created\r\n\r\n", // no framing
		"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
	} {
		if _, _, err := readResponse(bufio.NewReader(strings.NewReader(in)), nil); err == nil {
			t.Errorf("readResponse(%q): no error", in)
		}
	}
}

// FuzzReadResponse: any bytes give an answer or an error, never a panic.
func FuzzReadResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 201 Created\r\nContent-Length: 2\r\nIdempotent-Replayed: true\r\n\r\n{}"))
	f.Add([]byte("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		_, _, _ = readResponse(bufio.NewReader(bytes.NewReader(in)), nil)
		var body []byte
		_, _, _ = readResponse(bufio.NewReader(bytes.NewReader(in)), &body)
	})
}

// readResponse keeps the body, framed either way, and reads the next
// response after it.
func TestReadResponseKeepsBody(t *testing.T) {
	in := "HTTP/1.1 200 OK\r\nContent-Length: 25\r\n\r\n{\"decision\":\"acquired\"}xx" +
		"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-T: y\r\n\r\n" +
		"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
	r := bufio.NewReader(strings.NewReader(in))
	buf := []byte("old")
	for _, want := range []struct {
		status int
		body   string
	}{{200, `{"decision":"acquired"}xx`}, {409, `{"a":1}`}, {204, ""}} {
		body := buf[:0]
		status, _, err := readResponse(r, &body)
		if err != nil || status != want.status || string(body) != want.body {
			t.Fatalf("readResponse = %d %q %v, want %d %q", status, body, err, want.status, want.body)
		}
		buf = body
	}
	var body []byte
	if _, _, err := readResponse(bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n")), &body); err == nil {
		t.Error("a body over the bound: no error")
	}
}
