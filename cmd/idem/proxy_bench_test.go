package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/internal/bench"
	"github.com/idemkit/idem/internal/loadgen"
)

// BenchmarkProxy measures idem proxy against the bare upstream handler and
// against a plain httputil.ReverseProxy in front of it, over loopback
// listeners, with the load of internal/loadgen (64 clients each on one
// keep-alive connection writing prebuilt HTTP/1.1 requests). first: every request a new key; replay: every
// request a key already stored. Reported: req/s, p50 and p99 latency.
//
//	go test -run '^$' -bench BenchmarkProxy -benchtime 2s -count 5
func BenchmarkProxy(b *testing.B) {
	logger := slog.New(slog.DiscardHandler)
	upstreamAddr := serveBench(b, http.HandlerFunc(loadgen.Handler))
	upURL := &url.URL{Scheme: "http", Host: upstreamAddr}

	b.Run("bare", func(b *testing.B) { loadgen.RunAddr(b, upstreamAddr, loadgen.Bare) })
	b.Run("reverseproxy", func(b *testing.B) { loadgen.RunAddr(b, serveBench(b, plainProxy(upURL)), loadgen.Bare) })
	for _, store := range []string{"mem", "file"} {
		for _, replay := range []bool{false, true} {
			name := "idem/" + store + "/first"
			if replay {
				name = "idem/" + store + "/replay"
			}
			b.Run(name, func(b *testing.B) {
				raw := "mem:"
				if store == "file" {
					raw = "file:" + filepath.Join(b.TempDir(), "data")
				}
				mode := loadgen.First
				if replay {
					mode = loadgen.Replay
				}
				loadgen.RunAddr(b, serveProxy(b, raw, upURL, logger), mode)
			})
		}
	}
}

// BenchmarkProxyPaired measures idem proxy against its baselines by turns
// (bench.Paired, 9 rounds of 10 000 requests a side), on memstore:
// first executions through idem proxy against a plain ReverseProxy in
// front of the same upstream (first-ratio), and replays, which never
// reach the upstream, against the bare upstream (replay-ratio). Run it
// with -benchtime 1x.
func BenchmarkProxyPaired(b *testing.B) {
	logger := slog.New(slog.DiscardHandler)
	upstreamAddr := serveBench(b, http.HandlerFunc(loadgen.Handler))
	upURL := &url.URL{Scheme: "http", Host: upstreamAddr}
	proxy := serveProxy(b, "mem:", upURL, logger)
	b.Run("first", func(b *testing.B) {
		bench.Paired(b, "req/s", 9,
			loadgen.Closed("reverseproxy", serveBench(b, plainProxy(upURL)), loadgen.Bare, 10000),
			loadgen.Closed("first", proxy, loadgen.First, 10000))
	})
	b.Run("replay", func(b *testing.B) {
		bench.Paired(b, "req/s", 9,
			loadgen.Closed("bare", upstreamAddr, loadgen.Bare, 10000),
			loadgen.Closed("replay", proxy, loadgen.Replay, 10000))
	})
}

// serveProxy serves idem proxy's handler to upstream on the store raw
// until the benchmark ends and returns its address.
func serveProxy(b *testing.B, raw string, upstream *url.URL, logger *slog.Logger) string {
	b.Helper()
	st, err := idem.OpenStore(context.Background(), raw, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	metrics := idemapi.NewMetrics([]string{proxyRoute})
	o := &proxyOptions{upstream: upstream, methods: []string{http.MethodPost, http.MethodPatch},
		maxBody: 1 << 20, lease: idem.DefaultLease, window: idem.DefaultWindow}
	ledger, err := idem.New(st, &idem.Config{Lease: o.lease, Window: o.window, Observer: metrics})
	if err != nil {
		b.Fatal(err)
	}
	return serveBench(b, newProxyHandler(ledger, o, logger, metrics, nil))
}

// serveBench serves h on a loopback port until the benchmark ends.
func serveBench(b *testing.B, h http.Handler) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}
