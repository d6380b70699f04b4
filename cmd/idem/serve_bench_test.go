package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/cmd/idem/internal/server"
)

// BenchmarkServeCycles measures a Begin+Complete cycle on fresh keys at 64
// concurrent clients on the embedded store (file:): "store" calls the store
// directly, "http" goes through the server over loopback HTTP/JSON. Read
// the ratio of the two, measured in the same run.
func BenchmarkServeCycles(b *testing.B) {
	const clients = 64
	payload := make([]byte, 100)
	b.Run("store", func(b *testing.B) {
		store := openBenchStore(b)
		ctx := context.Background()
		runCycles(b, clients, func(key string) error {
			res, err := store.Begin(ctx, &idem.BeginParams{Scope: "bench", Key: key, Fingerprint: "f", Lease: idem.DefaultLease, Window: idem.DefaultWindow})
			if err != nil {
				return err
			}
			if res.Decision != idem.Acquired {
				return fmt.Errorf("begin %s: %s", key, res.Decision)
			}
			_, err = store.Complete(ctx, &idem.CompleteParams{Scope: "bench", Key: key, Token: res.Record.Token, Outcome: idem.Outcome{Data: payload}})
			return err
		})
	})
	b.Run("http", func(b *testing.B) {
		store := openBenchStore(b)
		h, err := server.New(store, &server.Config{Tokens: map[string][]string{"bench-token": {"bench"}}})
		if err != nil {
			b.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		served := make(chan struct{})
		go func() {
			defer close(served)
			_ = srv.Serve(ln)
		}()
		b.Cleanup(func() {
			_ = srv.Close()
			<-served
		})
		c := newClient(ln.Addr().String(), "bench-token")
		b.Cleanup(c.http.CloseIdleConnections)
		runCycles(b, clients, func(key string) error {
			status, err := c.cycle("bench", key, payload)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("cycle %s: status %d", key, status)
			}
			return err
		})
	})
}

func openBenchStore(b *testing.B) idem.Store {
	b.Helper()
	store, err := idem.OpenStore(context.Background(), "file:"+b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = store.Close() })
	return store
}

// runCycles runs b.N cycles spread over clients goroutines and reports
// cycles/s and the median and 99th percentile latency of one cycle.
func runCycles(b *testing.B, clients int, cycle func(key string) error) {
	b.Helper()
	var next atomic.Int64
	lat := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				t0 := time.Now()
				if err := cycle(fmt.Sprintf("k%d", i)); err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lat...)
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	ms := func(q float64) float64 {
		return float64(all[min(len(all)-1, int(q*float64(len(all))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "cycles/s")
	b.ReportMetric(ms(0.50), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
}
