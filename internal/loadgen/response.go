package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// readResponse reads one HTTP/1.1 response from r and returns its status
// and its Idempotent-Replayed header ("" when absent), appending its body
// to *keep when keep is not nil (a client that needs the answer, like the
// ledger API's decision and token) and skipping it otherwise.
// It reads only what the load generator checks, without allocating: a
// client that parsed and kept every header (http.ReadResponse allocates
// for each) would spend on a response's headers CPU the server then lacks
// on a machine of few cores, and count it against the responses with more
// headers.
// A body is framed by Content-Length or chunked; anything else is an
// error.
func readResponse(r *bufio.Reader, keep *[]byte) (status int, replayed string, err error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return 0, "", err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, "", fmt.Errorf("loadgen: not an HTTP/1.1 status line: %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, "", fmt.Errorf("loadgen: status line %q: %v", line, err)
	}
	length, chunked := -1, false
	for {
		line, err = r.ReadSlice('\n')
		if err != nil {
			return 0, "", err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, "", fmt.Errorf("loadgen: header line %q", line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
				return 0, "", fmt.Errorf("loadgen: Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Idempotent-Replayed")):
			switch string(value) { // no allocation: a comparison
			case "true":
				replayed = "true"
			case "false":
				replayed = "false"
			default:
				replayed = string(value)
			}
		}
	}
	switch {
	case chunked:
		err = skipChunks(r, keep)
	case length >= 0 && keep != nil:
		err = readN(r, keep, length)
	case length >= 0:
		_, err = r.Discard(length)
	default:
		err = errors.New("loadgen: a response with neither Content-Length nor chunked encoding")
	}
	return status, replayed, err
}

// maxKept bounds the body readResponse keeps.
const maxKept = 16 << 20

// readN appends the next n bytes of r to *keep.
func readN(r *bufio.Reader, keep *[]byte, n int) error {
	if len(*keep)+n > maxKept {
		return fmt.Errorf("loadgen: a body of over %d bytes", maxKept)
	}
	start := len(*keep)
	*keep = append(*keep, make([]byte, n)...)
	_, err := io.ReadFull(r, (*keep)[start:])
	return err
}

// skipChunks skips a chunked body and its trailer, appending the chunks to
// *keep when keep is not nil.
func skipChunks(r *bufio.Reader, keep *[]byte) error {
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return err
		}
		size, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
		n, err := strconv.ParseInt(string(size), 16, 32)
		if err != nil || n < 0 {
			return fmt.Errorf("loadgen: chunk size %q", line)
		}
		if n == 0 {
			for { // the trailer, up to its empty line
				line, err := r.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(bytes.TrimRight(line, "\r\n")) == 0 {
					return nil
				}
			}
		}
		if keep != nil {
			if err := readN(r, keep, int(n)); err != nil {
				return err
			}
			n = 0
		}
		if _, err := r.Discard(int(n) + 2); err != nil { // the chunk and its CRLF
			return err
		}
	}
}
