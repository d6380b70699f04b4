// Package loadgen drives an HTTP server with concurrent keep-alive
// clients and reports throughput, latency and CPU per request, for the
// middleware and proxy benchmarks: Run and RunAddr in a closed loop,
// Latency and LatencyAddr at a fixed arrival rate, and Closed as a side of
// a paired comparison (internal/bench.Paired). Conns is the same client
// with a request of the caller's choosing, for `idem bench proxy`.
package loadgen

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/bench"
	"github.com/idemkit/idem/internal/cputime"
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

// request returns an HTTP/1.1 POST with key (none if empty).
func request(host, key string) []byte {
	head, tail := requestParts(host, key)
	return []byte(head + tail)
}

// requestParts returns a POST with key cut in two after the key, where a
// fresh key's number goes.
func requestParts(host, key string) (head, tail string) {
	head = "POST /orders HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\n"
	if key != "" {
		head += "Idempotency-Key: " + key
		tail = "\r\n"
	}
	return head, tail + "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// Run serves h on a loopback server and sends b.N POSTs from Clients
// goroutines, each on one keep-alive connection writing prebuilt requests
// (a client light enough not to starve the server), as fast as answers
// come (a closed loop), reporting req/s, p50-µs, p99-µs and cpu-µs/op.
// A closed loop measures throughput; its latencies on a saturated machine
// are mostly queueing (Little's law): see Latency for added latency.
func Run(b *testing.B, h http.Handler, mode Mode) {
	srv := httptest.NewServer(h)
	defer srv.Close()
	RunAddr(b, srv.Listener.Addr().String(), mode)
}

// RunAddr is Run against a server already listening at addr (host:port),
// such as a proxy in front of another server. In First and Replay modes
// every measured answer must carry Idempotent-Replayed false and true.
func RunAddr(b *testing.B, host string, mode Mode) {
	l, err := dial(host, mode)
	if err != nil {
		b.Fatal(err)
	}
	defer l.close()
	b.ResetTimer()
	res, err := l.closedLoop(b.N)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	res.Report(b, "", "req/s")
}

// Closed is a side of bench.Paired: each of its turns connects to the
// server at addr, sends n requests in mode in a closed loop, and closes
// (connecting and closing are not measured). Its rate is in requests per
// second: pair it with the unit "req/s".
func Closed(name, addr string, mode Mode, n int) bench.Side {
	return bench.Side{Name: name, Run: func() (bench.Round, error) {
		r, err := closedRun(addr, mode, n)
		if err != nil {
			return bench.Round{}, err
		}
		return *r, nil
	}}
}

// Latency serves h on a loopback server and sends b.N POSTs at a fixed
// arrival rate (req/s) spread over Clients keep-alive connections (an
// open loop), reporting p50-µs, p99-µs and cpu-µs/op. At a rate the
// server sustains with room to spare, latency is service time rather than
// queueing, so the difference of two handlers' p50 is what one adds.
// Latency is counted from when a request was due: a request that waits
// for its connection's previous answer counts that wait.
func Latency(b *testing.B, h http.Handler, mode Mode, rate float64) {
	srv := httptest.NewServer(h)
	defer srv.Close()
	LatencyAddr(b, srv.Listener.Addr().String(), mode, rate)
}

// LatencyAddr is Latency against a server listening at addr.
func LatencyAddr(b *testing.B, host string, mode Mode, rate float64) {
	l, err := dial(host, mode)
	if err != nil {
		b.Fatal(err)
	}
	defer l.close()
	b.ResetTimer()
	res, err := l.openLoop(b.N, rate)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	res.Report(b, "", "req/s")
	b.ReportMetric(rate, "offered-req/s")
}

// Calibrate runs n bare requests against h in a closed loop and returns
// the rate it sustained: a reference for Latency's arrival rate, measured
// in the same process as what it is compared with.
func Calibrate(h http.Handler, n int) (float64, error) {
	srv := httptest.NewServer(h)
	defer srv.Close()
	res, err := closedRun(srv.Listener.Addr().String(), Bare, n)
	if err != nil {
		return 0, err
	}
	return res.Rate(), nil
}

// closedRun connects to host and sends n requests in mode in a closed
// loop, connecting and closing outside what it measures.
func closedRun(host string, mode Mode, n int) (*bench.Round, error) {
	l, err := dial(host, mode)
	if err != nil {
		return nil, err
	}
	defer l.close()
	return l.closedLoop(n)
}

// load is Clients keep-alive connections to one server in one mode, and
// the requests it sends. Every mode's request costs
// the load generator the same: bare and replay send one request prebuilt
// at dial, first writes its fresh key's number into a client's buffer
// between prebuilt parts (no allocation), so what a mode costs more than
// bare is the server's.
type load struct {
	mode        Mode
	prefix      string
	bare        []byte
	replay      []byte
	first, rest string // a first execution's request around its key's number
	clients     []*client
}

type client struct {
	Conn
	lat []time.Duration
	buf []byte // the request being sent, when it is built per request
}

// newLoad returns a load with its requests to host built, its keys
// starting with prefix, and no connections yet.
func newLoad(host string, mode Mode, prefix string) *load {
	l := &load{mode: mode, prefix: prefix}
	l.bare, l.replay = request(host, ""), request(host, prefix+"replay")
	l.first, l.rest = requestParts(host, prefix)
	return l
}

// dial opens the connections; in Replay mode it stores the outcome once.
func dial(host string, mode Mode) (*load, error) {
	l := newLoad(host, mode, fmt.Sprintf("bench-%d-", run.Add(1)))
	for range Clients {
		c := &client{Conn: Conn{Host: host}}
		if err := c.Dial(); err != nil {
			l.close()
			return nil, err
		}
		l.clients = append(l.clients, c)
	}
	if mode == Replay {
		if err := l.send(l.clients[0], l.replay, "false"); err != nil {
			l.close()
			return nil, err
		}
	}
	return l, nil
}

func (l *load) close() {
	for _, c := range l.clients {
		c.Close()
	}
}

// request returns the n-th request of the run and the Idempotent-Replayed
// value its answer must carry ("" for any).
func (l *load) request(c *client, n int64) (req []byte, replayed string) {
	switch l.mode {
	case First:
		c.buf = append(strconv.AppendInt(append(c.buf[:0], l.first...), n, 10), l.rest...)
		return c.buf, "false"
	case Replay:
		return l.replay, "true"
	}
	return l.bare, ""
}

func (l *load) send(c *client, req []byte, replayed string) error {
	status, got, err := c.Exchange(req, nil)
	if err != nil {
		return err
	}
	if status != http.StatusCreated {
		return fmt.Errorf("status %d", status)
	}
	if replayed != "" && got != replayed {
		return fmt.Errorf("Idempotent-Replayed %q, want %q", got, replayed)
	}
	return nil
}

// closedLoop sends n requests, each client its next one as soon as its
// previous one is answered.
func (l *load) closedLoop(n int) (*bench.Round, error) {
	var next atomic.Int64
	return l.measure(n, func(_ int, c *client) error {
		for {
			i := next.Add(1)
			if i > int64(n) {
				return nil
			}
			req, replayed := l.request(c, i)
			t0 := time.Now()
			if err := l.send(c, req, replayed); err != nil {
				return err
			}
			c.lat = append(c.lat, time.Since(t0))
		}
	})
}

// openLoop sends n requests, the i-th due at i/rate seconds from the
// start, on client i mod Clients.
func (l *load) openLoop(n int, rate float64) (*bench.Round, error) {
	if rate <= 0 {
		return nil, fmt.Errorf("loadgen: arrival rate %v, want a positive rate", rate)
	}
	interval := time.Duration(float64(time.Second) / rate)
	var t0 time.Time
	ready := make(chan struct{})
	return l.measure(n, func(first int, c *client) error {
		<-ready
		for i := first; i < n; i += len(l.clients) {
			due := t0.Add(time.Duration(i) * interval)
			start := due
			if wait := time.Until(due); wait > 0 {
				// Pacing, not synchronisation: the client is idle until
				// the request is due, and a late wake-up is the load
				// generator's delay, not the server's, so it is not
				// counted.
				time.Sleep(wait)
				start = time.Now()
			}
			req, replayed := l.request(c, int64(i)+1)
			if err := l.send(c, req, replayed); err != nil {
				return err
			}
			c.lat = append(c.lat, time.Since(start))
		}
		return nil
	}, func() { t0 = time.Now(); close(ready) })
}

// measure runs work on every client (with the client's index) and gathers
// what they measured; begin, if given, runs once every client is started.
func (l *load) measure(n int, work func(int, *client) error, begin ...func()) (*bench.Round, error) {
	for _, c := range l.clients {
		c.lat = make([]time.Duration, 0, n/len(l.clients)+1)
	}
	var wg sync.WaitGroup
	var failed atomic.Value
	cpu := cputime.Start()
	t0 := time.Now()
	for i, c := range l.clients {
		wg.Go(func() {
			if err := work(i, c); err != nil {
				failed.Store(err)
			}
		})
	}
	for _, f := range begin {
		f()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	perOp, _ := cpu.PerOp(n)
	if err, _ := failed.Load().(error); err != nil {
		return nil, err
	}
	lat := make([]time.Duration, 0, n)
	for _, c := range l.clients {
		lat = append(lat, c.lat...)
	}
	slices.Sort(lat)
	return &bench.Round{Ops: n, Elapsed: elapsed, CPU: perOp, Lat: lat}, nil
}

// OpenRate is the arrival rate for Latency: IDEM_BENCH_RATE (req/s) when
// set, else half of what h (the bare handler) sustains in a closed loop of
// 20000 requests, measured now.
func OpenRate(b *testing.B, h http.Handler) float64 {
	b.Helper()
	if v := os.Getenv("IDEM_BENCH_RATE"); v != "" {
		rate, err := strconv.ParseFloat(v, 64)
		if err != nil || rate <= 0 {
			b.Fatalf("IDEM_BENCH_RATE=%q: want a positive number of requests per second", v)
		}
		return rate
	}
	closed, err := Calibrate(h, 20000)
	if err != nil {
		b.Fatal(err)
	}
	rate := math.Round(0.5 * closed)
	b.Logf("open-loop rate %.0f req/s: half the bare closed loop's %.0f", rate, closed)
	return rate
}
