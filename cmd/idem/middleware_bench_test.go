package main

// A copy of idemhttp/internal/loadgen (an internal package this module
// cannot import), so that the embedded-store figures come from the same
// load as idemhttp's BenchmarkMiddleware.

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
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

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/store/pebblestore"
)

// BenchmarkMiddleware measures idemhttp.Middleware against the bare
// handler on memstore and on the embedded store (pebblestore, fsync per
// commit), 64 keep-alive clients over loopback:
//
//	go test -run '^$' -bench BenchmarkMiddleware -benchtime 20000x -count 5
func BenchmarkMiddleware(b *testing.B) {
	b.Run("bare", func(b *testing.B) { mwLoad(b, http.HandlerFunc(mwBenchHandler), mwBare) })
	stores := []struct {
		name string
		open func(b *testing.B) idem.Store
	}{
		{"mem", func(*testing.B) idem.Store { return memstore.New(nil) }},
		{"pebble", func(b *testing.B) idem.Store {
			s, err := pebblestore.Open(b.TempDir(), nil)
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
	}
	for _, st := range stores {
		for _, mode := range []mwMode{mwFirst, mwReplay} {
			b.Run(st.name+"/"+mode.String(), func(b *testing.B) {
				ledger, err := idem.New(st.open(b), nil)
				if err != nil {
					b.Fatal(err)
				}
				defer ledger.Close()
				mw := idemhttp.Middleware(ledger, &idemhttp.Config{Logger: slog.New(slog.DiscardHandler)})
				mwLoad(b, mw(http.HandlerFunc(mwBenchHandler)), mode)
			})
		}
	}
}

// mwBenchClients is the number of concurrent clients.
const mwBenchClients = 64

// mwMode says what a request's Idempotency-Key is.
type mwMode int

const (
	mwBare   mwMode = iota // no middleware, no key
	mwFirst                // a fresh key per request: every request runs
	mwReplay               // one key for all: every request but the first replays
)

func (m mwMode) String() string { return [...]string{"bare", "first", "replay"}[m] }

// mwBenchHandler is the benchmarked handler: it reads the body and answers a
// small JSON document.
func mwBenchHandler(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, `{"id":"ord_1","amount":100,"currency":"eur","status":"created"}`)
}

var mwRun atomic.Int64 // keeps keys of repeated benchmark runs apart

const mwBody = `{"amount":100,"currency":"eur"}`

// mwRequest returns a prebuilt HTTP/1.1 POST with key (none if empty).
func mwRequest(host, key string) []byte {
	var b strings.Builder
	b.WriteString("POST /orders HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\n")
	if key != "" {
		b.WriteString("Idempotency-Key: " + key + "\r\n")
	}
	b.WriteString("Content-Length: " + strconv.Itoa(len(mwBody)) + "\r\n\r\n" + mwBody)
	return []byte(b.String())
}

// mwLoad serves h on a loopback server and sends b.N POSTs from mwBenchClients
// goroutines, each on one keep-alive connection writing prebuilt requests
// (a client light enough not to starve the server), reporting req/s,
// p50-µs and p99-µs.
func mwLoad(b *testing.B, h http.Handler, mode mwMode) {
	srv := httptest.NewServer(h)
	defer srv.Close()
	host := srv.Listener.Addr().String()
	prefix := fmt.Sprintf("bench-%d-", mwRun.Add(1))
	replay := mwRequest(host, prefix+"replay")

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
	send := func(c *client, req []byte) (time.Duration, error) {
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
		return time.Since(t0), nil
	}
	clients := make([]*client, mwBenchClients)
	for i := range clients {
		c, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		defer c.conn.Close()
		clients[i] = c
	}
	if mode == mwReplay { // store the outcome once
		if _, err := send(clients[0], replay); err != nil {
			b.Fatal(err)
		}
	}

	var next atomic.Int64
	lat := make([][]time.Duration, mwBenchClients)
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	t0 := time.Now()
	for i, c := range clients {
		wg.Go(func() {
			for {
				n := next.Add(1)
				if n > int64(b.N) {
					return
				}
				var req []byte
				switch mode {
				case mwBare:
					req = mwRequest(host, "")
				case mwFirst:
					req = mwRequest(host, prefix+strconv.FormatInt(n, 10))
				case mwReplay:
					req = replay
				}
				d, err := send(c, req)
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
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
}
