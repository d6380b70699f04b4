package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/cmd/idem/internal/server"
)

// proxyBenchClients is how many clients send at once.
const proxyBenchClients = 64

// BenchmarkProxy measures idem proxy against the bare upstream handler and
// against a plain httputil.ReverseProxy in front of it, over loopback
// listeners, with 64 clients each on one keep-alive connection writing
// prebuilt HTTP/1.1 requests. first: every request a new key; replay: every
// request a key already stored. Reported: req/s, p50 and p99 latency.
//
//	go test -run '^$' -bench BenchmarkProxy -benchtime 2s -count 5
func BenchmarkProxy(b *testing.B) {
	logger := slog.New(slog.DiscardHandler)
	upstreamAddr := serveBench(b, http.HandlerFunc(benchUpstream))
	upURL := &url.URL{Scheme: "http", Host: upstreamAddr}

	b.Run("bare", func(b *testing.B) { loadProxy(b, upstreamAddr, false, "") })
	b.Run("reverseproxy", func(b *testing.B) {
		// Plain: no error handler, no buffer pool; the same connection pool
		// as idem proxy's, since the default keeps 2 idle connections per
		// host and would measure connection setup instead.
		plain := &httputil.ReverseProxy{
			Rewrite: func(r *httputil.ProxyRequest) {
				r.SetURL(upURL)
				r.SetXForwarded()
			},
			Transport: upstreamTransport(),
		}
		addr := serveBench(b, plain)
		loadProxy(b, addr, false, "")
	})
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
				st, _, err := openStore(context.Background(), raw, serving)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = st.Close() })
				metrics := server.NewMetrics([]string{proxyRoute})
				o := &proxyOptions{upstream: upURL, methods: []string{http.MethodPost, http.MethodPatch},
					maxBody: 1 << 20, lease: idem.DefaultLease, window: idem.DefaultWindow}
				ledger, err := idem.New(st, &idem.Config{Lease: o.lease, Window: o.window, Observer: metrics})
				if err != nil {
					b.Fatal(err)
				}
				addr := serveBench(b, newProxyHandler(ledger, o, logger, metrics))
				want := "false"
				if replay {
					want = "true"
				}
				loadProxy(b, addr, replay, want)
			})
		}
	}
}

// benchUpstream is the service behind the proxy: a small JSON creation.
func benchUpstream(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/orders/42")
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, `{"id":42,"sku":"abc","state":"created"}`+"\n")
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

var benchKeys atomic.Int64

// loadProxy runs b.N POSTs from proxyBenchClients connections. replay: each
// client first stores its key, then repeats it. wantReplayed, when set, is
// the Idempotent-Replayed every measured answer must carry.
func loadProxy(b *testing.B, addr string, replay bool, wantReplayed string) {
	b.Helper()
	const body = `{"sku":"abc"}`
	request := func(key string) []byte {
		return fmt.Appendf(nil, "POST /orders HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
			"Idempotency-Key: \"%s\"\r\nContent-Length: %d\r\n\r\n%s", addr, key, len(body), body)
	}
	var (
		mu        sync.Mutex
		latencies []time.Duration
	)
	// RunParallel starts parallelism × GOMAXPROCS goroutines.
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((proxyBenchClients + procs - 1) / procs)
	b.ReportAllocs()
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		br := bufio.NewReaderSize(conn, 4096)
		do := func(req []byte, want string) bool {
			if _, err := conn.Write(req); err != nil {
				b.Error(err)
				return false
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				b.Error(err)
				return false
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusCreated || (want != "" && resp.Header.Get("Idempotent-Replayed") != want) {
				b.Errorf("status %d, Idempotent-Replayed %q; want 201 and %q", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), want)
				return false
			}
			return true
		}
		var fixed []byte
		if replay {
			fixed = request(fmt.Sprintf("replay-%d", benchKeys.Add(1)))
			if !do(fixed, "false") {
				return
			}
		}
		own := make([]time.Duration, 0, 1024)
		for pb.Next() {
			req := fixed
			if req == nil {
				req = request(fmt.Sprintf("first-%d", benchKeys.Add(1)))
			}
			t0 := time.Now()
			if !do(req, wantReplayed) {
				return
			}
			own = append(own, time.Since(t0))
		}
		mu.Lock()
		latencies = append(latencies, own...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if len(latencies) == 0 {
		return
	}
	slices.Sort(latencies)
	at := func(q float64) float64 {
		return float64(latencies[int(q*float64(len(latencies)-1))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(float64(len(latencies))/elapsed.Seconds(), "req/s")
	b.ReportMetric(at(0.50), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
}
