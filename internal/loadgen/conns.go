package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Request is the HTTP/1.1 request a Conns sends, apart from its
// Idempotency-Key.
type Request struct {
	// Method, like POST.
	Method string
	// Target is the request target: a path with an optional query, like
	// /orders.
	Target string
	// Header holds extra header lines, each "Name: value".
	Header []string
	// Body is sent with a Content-Length.
	Body []byte
}

// Conns is a set of keep-alive connections to one HTTP/1.1 server, each
// used by one caller at a time, sending a prebuilt request whose
// Idempotency-Key (when one is sent) ends in a number: a client light
// enough not to take the server's CPU on a machine of few cores (see
// readResponse). A connection that fails is dialled again on its next
// request.
type Conns struct {
	host       string
	head, tail []byte
	keyHead    []byte // head and the Idempotency-Key header up to its number
	timeout    time.Duration
	clients    []*client
}

// StatusError is an answer outside 2xx.
type StatusError int

func (e StatusError) Error() string { return "status " + strconv.Itoa(int(e)) }

// ErrReplayed is an answer whose Idempotent-Replayed header says the
// opposite of what the request expected.
var ErrReplayed = errors.New("loadgen: Idempotent-Replayed header says otherwise")

// DialConns opens n connections to host (host:port) for req, with keys
// "prefix<number>" and timeout for each exchange (0 for none). It fails
// if a connection cannot be opened.
func DialConns(host string, n int, req Request, keyPrefix string, timeout time.Duration) (*Conns, error) {
	var b strings.Builder
	b.WriteString(req.Method + " " + req.Target + " HTTP/1.1\r\nHost: " + host + "\r\n")
	for _, h := range req.Header {
		b.WriteString(h + "\r\n")
	}
	head := b.String()
	tail := "Content-Length: " + strconv.Itoa(len(req.Body)) + "\r\n\r\n" + string(req.Body)
	c := &Conns{host: host, head: []byte(head), tail: []byte(tail),
		keyHead: []byte(head + "Idempotency-Key: \"" + keyPrefix), timeout: timeout}
	for range n {
		cl := &client{Conn: Conn{Host: host, Timeout: timeout}}
		if err := cl.Dial(); err != nil {
			c.Close()
			return nil, err
		}
		c.clients = append(c.clients, cl)
	}
	return c, nil
}

// Close closes every connection.
func (c *Conns) Close() {
	for _, cl := range c.clients {
		cl.Close()
	}
}

// Send sends the request on connection i (one caller at a time per
// connection) with the Idempotency-Key numbered key, or none for key < 0,
// and reads the answer. It returns a StatusError for an answer outside
// 2xx, ErrReplayed when the answer's Idempotent-Replayed header is
// present and not replayed ("true" or "false"; "" checks nothing), and
// the network's error when the exchange failed, after which the next Send
// on i dials again.
func (c *Conns) Send(i int, key int64, replayed string) error {
	cl := c.clients[i]
	if key < 0 {
		cl.buf = append(append(cl.buf[:0], c.head...), c.tail...)
	} else {
		cl.buf = append(strconv.AppendInt(append(cl.buf[:0], c.keyHead...), key, 10), "\"\r\n"...)
		cl.buf = append(cl.buf, c.tail...)
	}
	status, got, err := cl.Exchange(cl.buf, nil)
	if err != nil {
		return err
	}
	switch {
	case status < 200 || status > 299:
		return StatusError(status)
	case replayed != "" && got != "" && got != replayed:
		return fmt.Errorf("%w: %q, want %q", ErrReplayed, got, replayed)
	}
	return nil
}

// Conn is one keep-alive HTTP/1.1 connection to Host, for one caller at
// a time. Exchange writes a prebuilt request and reads the answer without
// allocating (see readResponse); a failed exchange closes the connection
// and the next one dials again.
type Conn struct {
	Host    string        // host:port
	Timeout time.Duration // for each exchange; 0 for none

	conn net.Conn
	r    *bufio.Reader
}

// Dial opens the connection, closing the one open before.
func (c *Conn) Dial() error {
	c.Close()
	conn, err := net.DialTimeout("tcp", c.Host, 10*time.Second)
	if err != nil {
		return err
	}
	c.conn, c.r = conn, bufio.NewReaderSize(conn, 16<<10)
	return nil
}

// Close closes the connection, if open.
func (c *Conn) Close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// Exchange writes req, dialling first when the connection is closed, and
// reads the answer: its status and Idempotent-Replayed header ("" when
// absent), appending its body to *keep when keep is not nil. A failed
// exchange closes the connection.
func (c *Conn) Exchange(req []byte, keep *[]byte) (status int, replayed string, err error) {
	if c.conn == nil {
		if err := c.Dial(); err != nil {
			return 0, "", err
		}
	}
	if c.Timeout > 0 {
		_ = c.conn.SetDeadline(time.Now().Add(c.Timeout))
	}
	if _, err = c.conn.Write(req); err == nil {
		status, replayed, err = readResponse(c.r, keep)
	}
	if err != nil {
		c.Close()
	}
	return status, replayed, err
}
