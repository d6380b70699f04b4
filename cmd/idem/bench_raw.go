package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/loadgen"
)

// rawAPIDriver drives an idem serve's ledger API (--client raw): POST
// /v1/begin and /v1/complete over one HTTP/1.1 keep-alive connection per
// client, each request written in one write from bytes built once, each
// answer read for its status, decision and token only. Lighter than
// idemclient (net/http and encoding/json) on the CPU the server shares
// on a machine of few cores: it measures the server's capacity rather
// than what a Go caller sees. A connection that fails is dialled again on
// its client's next operation.
type rawAPIDriver struct {
	host    string
	head    string // request line's end, Host and Authorization lines
	scope   []byte // JSON string
	prefix  string
	window  int64  // ms
	outcome []byte // ,"outcome":{"data":"…"}}
	timeout time.Duration
	conns   []*rawConn
	next    atomic.Int64
}

// rawConn is one client's connection and buffers.
type rawConn struct {
	loadgen.Conn
	req  []byte
	body []byte
}

func newRawAPIDriver(o *benchOptions, rawURL, runID string) (*rawAPIDriver, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	scope, _ := json.Marshal(o.scope)
	data := make([]byte, o.payload)
	_, _ = rand.Read(data)
	return &rawAPIDriver{host: host, scope: scope, prefix: runID, window: o.window.Milliseconds(), timeout: o.timeout,
		head:    " HTTP/1.1\r\nHost: " + u.Host + "\r\nAuthorization: Bearer " + o.token + "\r\nContent-Type: application/json\r\n",
		outcome: []byte(`,"outcome":{"data":"` + base64.StdEncoding.EncodeToString(data) + `"}}`)}, nil
}

func (d *rawAPIDriver) level(n int) error {
	d.closeAll()
	for range n {
		c := &rawConn{Conn: loadgen.Conn{Host: d.host, Timeout: d.timeout}}
		if err := c.Dial(); err != nil {
			d.closeAll()
			return err
		}
		d.conns = append(d.conns, c)
	}
	return nil
}

func (d *rawAPIDriver) closeAll() {
	for _, c := range d.conns {
		c.Close()
	}
	d.conns = nil
}

func (d *rawAPIDriver) fresh(c int) error {
	return d.cycle(d.conns[c], d.prefix+"n"+strconv.FormatInt(d.next.Add(1), 10))
}

// replay begins completed key k; a negative k completes key -1-k first.
func (d *rawAPIDriver) replay(c, k int) error {
	if k < 0 {
		return d.cycle(d.conns[c], d.prefix+"r"+strconv.Itoa(-1-k))
	}
	decision, _, err := d.begin(d.conns[c], d.prefix+"r"+strconv.Itoa(k))
	if err == nil && decision != idem.Replay {
		err = decisionError(decision)
	}
	return err
}

func (d *rawAPIDriver) cycle(c *rawConn, key string) error {
	decision, token, err := d.begin(c, key)
	if err != nil {
		return err
	}
	if decision != idem.Acquired {
		return decisionError(decision)
	}
	c.body = append(append(append(c.body[:0], `{"scope":`...), d.scope...), `,"key":"`...)
	c.body = strconv.AppendInt(append(append(c.body, key...), `","token":`...), token, 10)
	c.body = append(c.body, d.outcome...)
	_, err = d.exchange(c, "/v1/complete", c.body)
	return err
}

// begin sends the Begin of key and returns the answer's decision and
// token.
func (d *rawAPIDriver) begin(c *rawConn, key string) (idem.Decision, int64, error) {
	c.body = append(append(append(c.body[:0], `{"scope":`...), d.scope...), `,"key":"`...)
	c.body = strconv.AppendInt(append(append(c.body, key...), `","fingerprint":"bench","lease_ms":30000,"window_ms":`...), d.window, 10)
	c.body = append(c.body, '}')
	answer, err := d.exchange(c, "/v1/begin", c.body)
	if err != nil {
		return "", 0, err
	}
	return parseBeginAnswer(answer)
}

// exchange posts body to path on c and returns the answer's body (valid
// until c's next exchange). An answer other than 200 is a
// loadgen.StatusError; a failed exchange closes c, dialled again next
// time.
func (d *rawAPIDriver) exchange(c *rawConn, path string, body []byte) ([]byte, error) {
	c.req = append(append(append(c.req[:0], "POST "...), path...), d.head...)
	c.req = strconv.AppendInt(append(c.req, "Content-Length: "...), int64(len(body)), 10)
	c.req = append(append(c.req, "\r\n\r\n"...), body...)
	c.body = c.body[:0]
	status, _, err := c.Exchange(c.req, &c.body)
	if err != nil {
		return nil, err
	}
	if status != 200 {
		return nil, loadgen.StatusError(status)
	}
	return c.body, nil
}

// errBeginAnswer is a 200 answer to a Begin without a decision, or an
// acquisition without a token.
var errBeginAnswer = errors.New("bench: a begin answer without its decision or token")

// parseBeginAnswer reads the decision and, for an acquisition, the token
// of a Begin's answer (docs/api.md): {"decision":"acquired","token":7,…}.
func parseBeginAnswer(b []byte) (idem.Decision, int64, error) {
	_, rest, ok := bytes.Cut(b, []byte(`"decision":"`))
	if !ok {
		return "", 0, errBeginAnswer
	}
	decision, _, ok := bytes.Cut(rest, []byte(`"`))
	if !ok {
		return "", 0, errBeginAnswer
	}
	d := idem.Decision(decision)
	if d != idem.Acquired {
		return d, 0, nil
	}
	_, rest, ok = bytes.Cut(b, []byte(`"token":`))
	if !ok {
		return "", 0, errBeginAnswer
	}
	end := bytes.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(rest)
	}
	token, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	if err != nil || token <= 0 {
		return "", 0, fmt.Errorf("%w: token %q", errBeginAnswer, rest[:end])
	}
	return d, token, nil
}
