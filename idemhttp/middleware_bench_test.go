package idemhttp_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/internal/bench"
	"github.com/idemkit/idem/internal/loadgen"
	"github.com/idemkit/idem/memstore"
)

// BenchmarkMiddleware drives a small JSON handler through a loopback
// server with 64 concurrent keep-alive clients: bare, first executions
// (a fresh key per request) and replays (one stored key), on memstore.
func BenchmarkMiddleware(b *testing.B) {
	eachMode(b, loadgen.Run)
}

// BenchmarkMiddlewarePaired is BenchmarkMiddleware by turns
// (bench.Paired): 9 rounds of 10 000 requests each to the bare handler,
// first executions and replays, reporting first-ratio and replay-ratio
// against bare. Run it with -benchtime 1x.
func BenchmarkMiddlewarePaired(b *testing.B) {
	ledger, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		b.Fatal(err)
	}
	bare := httptest.NewServer(http.HandlerFunc(loadgen.Handler))
	defer bare.Close()
	mw := httptest.NewServer(idemhttp.Middleware(ledger, nil)(http.HandlerFunc(loadgen.Handler)))
	defer mw.Close()
	addr := func(s *httptest.Server) string { return s.Listener.Addr().String() }
	bench.Paired(b, "req/s", 9,
		loadgen.Closed("bare", addr(bare), loadgen.Bare, 10000),
		loadgen.Closed("first", addr(mw), loadgen.First, 10000),
		loadgen.Closed("replay", addr(mw), loadgen.Replay, 10000))
}

// BenchmarkMiddlewareLatency measures the latency the middleware adds:
// bare, first executions and replays at one fixed arrival rate spread over
// 64 connections (an open loop), half of what the bare handler sustains in
// a closed loop in the same process (IDEM_BENCH_RATE overrides it), on
// memstore. The difference of p50s is the added latency.
func BenchmarkMiddlewareLatency(b *testing.B) {
	rate := loadgen.OpenRate(b, http.HandlerFunc(loadgen.Handler))
	eachMode(b, func(b *testing.B, h http.Handler, mode loadgen.Mode) {
		loadgen.Latency(b, h, mode, rate)
	})
}

// eachMode runs measure as a sub-benchmark per loadgen mode on
// loadgen.Handler: bare, or behind one middleware over memstore.
func eachMode(b *testing.B, measure func(b *testing.B, h http.Handler, mode loadgen.Mode)) {
	ledger, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		b.Fatal(err)
	}
	mw := idemhttp.Middleware(ledger, nil)
	for _, mode := range loadgen.Modes {
		b.Run(mode.String(), func(b *testing.B) {
			var h http.Handler = http.HandlerFunc(loadgen.Handler)
			if mode != loadgen.Bare {
				h = mw(h)
			}
			measure(b, h, mode)
		})
	}
}

// discardWriter is a ResponseWriter that keeps nothing but its header map,
// which a request clears: the middleware's own cost without net/http's.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(int)             {}
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkMiddlewareCost is the middleware's CPU and allocations per
// request in process, no network: what it adds to the handler.
func BenchmarkMiddlewareCost(b *testing.B) {
	const body = `{"amount":100,"currency":"eur"}`
	for _, mode := range loadgen.Modes {
		b.Run(mode.String(), func(b *testing.B) {
			ledger, err := idem.New(memstore.New(nil), nil)
			if err != nil {
				b.Fatal(err)
			}
			var h http.Handler = http.HandlerFunc(loadgen.Handler)
			if mode != loadgen.Bare {
				h = idemhttp.Middleware(ledger, nil)(h)
			}
			b.ReportAllocs()
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				w := &discardWriter{h: http.Header{}}
				body := strings.NewReader(body)
				r := httptest.NewRequest(http.MethodPost, "/orders", body)
				r.Header.Set("Content-Type", "application/json")
				key := []byte("cost-")
				for pb.Next() {
					switch mode {
					case loadgen.First:
						r.Header[idemhttp.HeaderKey] = []string{string(strconv.AppendInt(key[:5], n.Add(1), 10))}
					case loadgen.Replay:
						r.Header[idemhttp.HeaderKey] = []string{"cost-replay"}
					}
					body.Reset(`{"amount":100,"currency":"eur"}`)
					r.Body = io.NopCloser(body)
					clear(w.h)
					h.ServeHTTP(w, r)
				}
			})
		})
	}
}
