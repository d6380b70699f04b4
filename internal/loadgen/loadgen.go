// Package loadgen drives an HTTP handler through a loopback server with
// concurrent keep-alive clients and reports throughput and latency, for
// the middleware benchmarks here and in cmd/idem.
package loadgen

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Clients is the number of concurrent clients.
const Clients = 64

// Mode says what a request's Idempotency-Key is.
type Mode int

const (
	Bare   Mode = iota // no middleware, no key
	First              // a fresh key per request: every request runs
	Replay             // one key for all: every request but the first replays
)

// Modes in reporting order.
var Modes = []Mode{Bare, First, Replay}

func (m Mode) String() string { return [...]string{"bare", "first", "replay"}[m] }

// Handler is the benchmarked handler: it reads the body and answers a
// small JSON document.
func Handler(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, `{"id":"ord_1","amount":100,"currency":"eur","status":"created"}`)
}

var run atomic.Int64 // keeps keys of repeated benchmark runs apart

const body = `{"amount":100,"currency":"eur"}`

// request returns a prebuilt HTTP/1.1 POST with key (none if empty).
func request(host, key string) []byte {
	var b strings.Builder
	b.WriteString("POST /orders HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\n")
	if key != "" {
		b.WriteString("Idempotency-Key: " + key + "\r\n")
	}
	b.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
	return []byte(b.String())
}

// Run serves h on a loopback server and sends b.N POSTs from Clients
// goroutines, each on one keep-alive connection writing prebuilt requests
// (a client light enough not to starve the server), reporting req/s,
// p50-µs and p99-µs.
func Run(b *testing.B, h http.Handler, mode Mode) {
	srv := httptest.NewServer(h)
	defer srv.Close()
	RunAddr(b, srv.Listener.Addr().String(), mode)
}

// RunAddr is Run against a server already listening at addr (host:port),
// such as a proxy in front of another server. In First and Replay modes
// every measured answer must carry Idempotent-Replayed false and true.
func RunAddr(b *testing.B, host string, mode Mode) {
	prefix := fmt.Sprintf("bench-%d-", run.Add(1))
	replay := request(host, prefix+"replay")

	type client struct {
		conn net.Conn
		r    *bufio.Reader
	}
	dial := func() (*client, error) {
		c, err := net.Dial("tcp", host)
		if err != nil {
			return nil, err
		}
		return &client{c, bufio.NewReader(c)}, nil
	}
	send := func(c *client, req []byte, replayed string) (time.Duration, error) {
		t0 := time.Now()
		if _, err := c.conn.Write(req); err != nil {
			return 0, err
		}
		res, err := http.ReadResponse(c.r, nil)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusCreated {
			return 0, fmt.Errorf("status %d", res.StatusCode)
		}
		if got := res.Header.Get("Idempotent-Replayed"); replayed != "" && got != replayed {
			return 0, fmt.Errorf("Idempotent-Replayed %q, want %q", got, replayed)
		}
		return time.Since(t0), nil
	}
	clients := make([]*client, Clients)
	for i := range clients {
		c, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		defer c.conn.Close()
		clients[i] = c
	}
	if mode == Replay { // store the outcome once
		if _, err := send(clients[0], replay, "false"); err != nil {
			b.Fatal(err)
		}
	}

	var next atomic.Int64
	lat := make([][]time.Duration, Clients)
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	cpu0 := cpuTime()
	t0 := time.Now()
	for i, c := range clients {
		wg.Go(func() {
			for {
				n := next.Add(1)
				if n > int64(b.N) {
					return
				}
				var req []byte
				var replayed string
				switch mode {
				case Bare:
					req = request(host, "")
				case First:
					req, replayed = request(host, prefix+strconv.FormatInt(n, 10)), "false"
				case Replay:
					req, replayed = replay, "true"
				}
				d, err := send(c, req, replayed)
				if err != nil {
					failed.Store(err)
					return
				}
				lat[i] = append(lat[i], d)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(t0)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	// The process's CPU time per request, server and clients together:
	// steadier than req/s on a shared machine, and what bounds req/s when
	// the cores are saturated.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
}

