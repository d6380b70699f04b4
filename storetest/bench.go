package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
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
	ParallelN(b, callers, CycleOp(s))
}

// CycleOp returns one Begin+Complete cycle on s, each call on a fresh key
// of its own (keys of two CycleOps never meet): the unit BenchCycles and
// Paired measure.
func CycleOp(s idem.Store) func() error {
	ctx := context.Background()
	prefix := fmt.Sprintf("bench-%d-%d", cycleOps.Add(1), time.Now().UnixNano())
	var next atomic.Int64
	outcome := idem.Outcome{Data: []byte(`{"status":"ok"}`), Meta: map[string]string{"status": "200"}}
	return func() error {
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
	}
}

var cycleOps atomic.Int64

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

// Paired measures a candidate against its baseline by turns: pairs rounds,
// each running the candidate and then the baseline for the duration turn
// at callers concurrent callers (the order alternates from round to round).
// On a shared machine the load changes between two benchmarks run one
// after the other; taking both sides of each ratio within one round, and
// the median over the rounds, keeps that drift out of the ratio. It reports
// each side's median cycles/s, the median of the rounds' ratios
// (candidate/baseline, "ratio"), and each side's p50 and p99 latency over
// all its rounds with the ratio of the p99s ("p99-ratio"). It ignores b.N:
// run it with -benchtime 1x.
func Paired(b *testing.B, callers, pairs int, turn time.Duration, candidate, baseline func() error) {
	b.Helper()
	type side struct {
		rates []float64
		lat   []time.Duration
	}
	var cand, base side
	run := func(s *side, op func() error) {
		var mu sync.Mutex
		var n atomic.Int64
		errs := make(chan error, callers)
		start := time.Now()
		deadline := start.Add(turn)
		for range callers {
			go func() {
				var lat []time.Duration
				defer func() {
					mu.Lock()
					s.lat = append(s.lat, lat...)
					mu.Unlock()
				}()
				for time.Now().Before(deadline) {
					t := time.Now()
					if err := op(); err != nil {
						errs <- err
						return
					}
					lat = append(lat, time.Since(t))
					n.Add(1)
				}
				errs <- nil
			}()
		}
		for range callers {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		s.rates = append(s.rates, float64(n.Load())/time.Since(start).Seconds())
	}
	b.ResetTimer()
	ratios := make([]float64, 0, pairs)
	for i := range pairs {
		if i%2 == 0 {
			run(&cand, candidate)
			run(&base, baseline)
		} else {
			run(&base, baseline)
			run(&cand, candidate)
		}
		ratios = append(ratios, cand.rates[i]/base.rates[i])
	}
	b.StopTimer()
	median := func(xs []float64) float64 {
		xs = slices.Clone(xs)
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	quantile := func(ds []time.Duration, q float64) time.Duration {
		slices.Sort(ds)
		return ds[int(float64(len(ds)-1)*q)]
	}
	b.ReportMetric(median(cand.rates), "cycles/s")
	b.ReportMetric(median(base.rates), "base-cycles/s")
	b.ReportMetric(median(ratios), "ratio")
	b.ReportMetric(float64(quantile(cand.lat, 0.5).Microseconds()), "p50-µs")
	b.ReportMetric(float64(quantile(base.lat, 0.5).Microseconds()), "base-p50-µs")
	b.ReportMetric(float64(quantile(cand.lat, 0.99).Microseconds()), "p99-µs")
	b.ReportMetric(float64(quantile(base.lat, 0.99).Microseconds()), "base-p99-µs")
	b.ReportMetric(float64(quantile(cand.lat, 0.99))/float64(quantile(base.lat, 0.99)), "p99-ratio")
}
