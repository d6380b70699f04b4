// Package loadgen drives an HTTP handler through a loopback server with
// concurrent keep-alive clients and reports throughput and latency, for
// the middleware benchmarks here and in cmd/idem.
package loadgen

import (
	"fmt"
	"io"
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

// Run serves h on a loopback server and sends b.N POSTs from Clients
// goroutines, reporting req/s, p50-µs and p99-µs.
func Run(b *testing.B, h http.Handler, mode Mode) {
	srv := httptest.NewServer(h)
	defer srv.Close()
	tr := &http.Transport{MaxIdleConns: Clients, MaxIdleConnsPerHost: Clients, MaxConnsPerHost: Clients}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	prefix := fmt.Sprintf("bench-%d-", run.Add(1))
	body := `{"amount":100,"currency":"eur"}`
	send := func(key string) (time.Duration, error) {
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/orders", strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		t0 := time.Now()
		res, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		d := time.Since(t0)
		if res.StatusCode != http.StatusCreated {
			return 0, fmt.Errorf("status %d", res.StatusCode)
		}
		return d, nil
	}
	if mode == Replay { // store the outcome once
		if _, err := send(prefix + "replay"); err != nil {
			b.Fatal(err)
		}
	}

	var next atomic.Int64
	lat := make([][]time.Duration, Clients)
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	t0 := time.Now()
	for c := range Clients {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				key := ""
				switch mode {
				case First:
					key = prefix + strconv.FormatInt(i, 10)
				case Replay:
					key = prefix + "replay"
				}
				d, err := send(key)
				if err != nil {
					failed.Store(err)
					return
				}
				lat[c] = append(lat[c], d)
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
