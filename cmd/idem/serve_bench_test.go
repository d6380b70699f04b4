package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/internal/bench"
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
		h, err := idemapi.NewServer(store, &idemapi.Config{Tokens: map[string][]string{"bench-token": {"bench"}}})
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
		c := newUncheckedClient(ln.Addr().String(), "bench-token")
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

// runCycles runs b.N cycles, each on a key of its own, from clients
// goroutines (bench.ParallelN): cycles/s, p50-µs, p99-µs, cpu-µs/op.
func runCycles(b *testing.B, clients int, cycle func(key string) error) {
	b.Helper()
	var next atomic.Int64
	bench.ParallelN(b, clients, func() error { return cycle(fmt.Sprintf("k%d", next.Add(1))) })
}

// BenchmarkServePaired measures idem serve on the embedded store against
// the same server on memstore, by turns (bench.Paired, 7 rounds of 1 s a
// side), at 1, 16 and 64 clients over loopback HTTP/JSON.
func BenchmarkServePaired(b *testing.B) {
	payload := make([]byte, 100)
	serveOn := func(store idem.Store) func() error {
		h, err := idemapi.NewServer(store, &idemapi.Config{Tokens: map[string][]string{"bench-token": {"bench"}}})
		if err != nil {
			b.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		b.Cleanup(func() { _ = srv.Close() })
		c := newUncheckedClient(ln.Addr().String(), "bench-token")
		b.Cleanup(c.http.CloseIdleConnections)
		var next atomic.Int64
		prefix := fmt.Sprintf("p%d-", time.Now().UnixNano())
		return func() error {
			status, err := c.cycle("bench", fmt.Sprintf("%s%d", prefix, next.Add(1)), payload)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("cycle: status %d", status)
			}
			return err
		}
	}
	mem, err := idem.OpenStore(context.Background(), "mem:", nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = mem.Close() })
	memOp, fileOp := serveOn(mem), serveOn(openBenchStore(b))
	for _, clients := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			bench.Paired(b, "cycles/s", 7,
				bench.Timed("mem", clients, time.Second, memOp),
				bench.Timed("file", clients, time.Second, fileOp))
		})
	}
}
