package storetest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// BenchCycles measures Begin+Complete cycles on fresh keys with callers
// goroutines, reporting cycles/s. Each benchmark run uses its own keys, so
// it can share a store with other runs.
func BenchCycles(b *testing.B, s idem.Store, callers int) {
	b.Helper()
	ctx := context.Background()
	prefix := fmt.Sprintf("bench-%d-%d", callers, time.Now().UnixNano())
	var next atomic.Int64
	outcome := idem.Outcome{Data: []byte(`{"status":"ok"}`), Meta: map[string]string{"status": "200"}}
	ParallelN(b, callers, func() error {
		key := fmt.Sprintf("%s-%d", prefix, next.Add(1))
		res, err := s.Begin(ctx, &idem.BeginParams{Scope: "bench", Key: key, Fingerprint: "f",
			Lease: idem.DefaultLease, Window: idem.DefaultWindow})
		if err != nil {
			return err
		}
		if res.Decision != idem.Acquired {
			return fmt.Errorf("begin %s: %s, want acquired", key, res.Decision)
		}
		_, err = s.Complete(ctx, &idem.CompleteParams{Scope: "bench", Key: key, Token: res.Record.Token, Outcome: outcome})
		return err
	})
}

// ParallelN runs op b.N times in total from exactly callers goroutines and
// reports the rate as cycles/s. Unlike b.RunParallel the number of
// goroutines does not depend on GOMAXPROCS, so figures at 1, 8 and 64
// callers mean what they say. Baselines use it too, so both sides of a
// ratio are measured the same way.
func ParallelN(b *testing.B, callers int, op func() error) {
	b.Helper()
	var left atomic.Int64
	left.Store(int64(b.N))
	errs := make(chan error, callers)
	b.ResetTimer()
	start := time.Now()
	for range callers {
		go func() {
			for left.Add(-1) >= 0 {
				if err := op(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range callers {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "cycles/s")
}
