package redisstore

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/bench"
)

var benchCallers = []int{1, 16, 64}

// BenchmarkCycles: Begin+Complete cycles on fresh keys, each cycle two
// scripts (two round trips). It also reports the CPU per cycle of this
// process (cpu-µs/op) and of the Redis server (redis-µs/cycle), steadier
// than cycles/s on a shared machine.
func BenchmarkCycles(b *testing.B) {
	for _, callers := range benchCallers {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			s := setup(b, nil)
			m := startCPUMeter(b, s)
			bench.Cycles(b, s.store, callers)
			m.report(b)
		})
	}
}

// BenchmarkUnbatched is BenchmarkCycles with every Begin and Complete in a
// script of its own, as before batching. (Its name does not contain
// "Cycles", so the usual -bench '(Cycles|RawSetNX)/…' leaves it out.)
func BenchmarkUnbatched(b *testing.B) {
	for _, callers := range benchCallers {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			s := setup(b, nil)
			s.store.noBatch = true
			m := startCPUMeter(b, s)
			bench.Cycles(b, s.store, callers)
			m.report(b)
		})
	}
}

// cpuMeter measures the CPU time the Redis server (INFO cpu, used_cpu_user
// + used_cpu_sys) spends over a benchmark, per cycle. The figure includes
// every other client's work: it means something only when nothing else
// uses the server.
type cpuMeter struct {
	s     *bundle
	redis time.Duration
}

func startCPUMeter(b *testing.B, s *bundle) *cpuMeter {
	b.Helper()
	return &cpuMeter{s: s, redis: redisCPU(b, s)}
}

func (m *cpuMeter) report(b *testing.B) {
	b.Helper()
	b.ReportMetric(float64(redisCPU(b, m.s)-m.redis)/float64(time.Microsecond)/float64(b.N), "redis-µs/cycle")
}

// redisCPU is the CPU time the Redis server has used, from INFO cpu.
func redisCPU(b *testing.B, s *bundle) time.Duration {
	b.Helper()
	info, err := s.client.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for _, line := range strings.Split(info, "\r\n") {
		k, v, _ := strings.Cut(line, ":")
		if k == "used_cpu_user" || k == "used_cpu_sys" {
			sec, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("INFO cpu: %s: %v", line, err)
			}
			total += time.Duration(sec * float64(time.Second))
		}
	}
	return total
}

// rawOp is the baseline, on the same kind of client and pool: a bare SET
// NX of a pending-sized value, then a SET of a completed-sized value, on a
// fresh key: two round trips, as a cycle.
func rawOp(s *bundle) func() error {
	const pending = "p:f:1:1:1764205407000000:1764205407000000"
	const completed = `c:{"status":"ok"}:status=200`
	ctx := context.Background()
	var next atomic.Int64
	round := time.Now().UnixNano()
	return func() error {
		key := fmt.Sprintf("%s:raw:%d:%d", s.prefix, round, next.Add(1))
		ok, err := s.client.SetNX(ctx, key, pending, time.Hour).Result()
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("SET NX %s: key exists", key)
		}
		return s.client.Set(ctx, key, completed, time.Hour).Err()
	}
}

// BenchmarkRawSetNX is the baseline of BenchmarkCycles (rawOp).
func BenchmarkRawSetNX(b *testing.B) {
	for _, callers := range benchCallers {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			s := setup(b, nil)
			m := startCPUMeter(b, s)
			bench.ParallelN(b, callers, rawOp(s))
			m.report(b)
		})
	}
}

// BenchmarkVsRaw is the store against its baseline (rawOp) measured by
// turns (bench.Paired): 9 rounds of 1 s each side. Run it with
// -benchtime 1x; "ratio" is the median of the rounds' ratios.
func BenchmarkVsRaw(b *testing.B) {
	for _, callers := range benchCallers {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			s := setup(b, nil)
			bench.Paired(b, "cycles/s", 9,
				bench.Timed("base", callers, time.Second, rawOp(s)),
				bench.Timed("", callers, time.Second, bench.CycleOp(s.store)))
		})
	}
}

// sweepRecords is IDEM_REDIS_SWEEP_RECORDS, 100000 when unset.
func sweepRecords(b *testing.B) int {
	v := os.Getenv("IDEM_REDIS_SWEEP_RECORDS")
	if v == "" {
		return 100000
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("IDEM_REDIS_SWEEP_RECORDS=%q: want a positive count", v)
	}
	return n
}

// BenchmarkSweep loads IDEM_REDIS_SWEEP_RECORDS (default 100000) records
// that come due 2ms later (Begin with a 1ms lease and window, in pipelines
// of 1000), waits until all are due, and times one Sweep of all of them.
// Redis expires many of the hashes by itself meanwhile; Sweep then trims
// their index entries. present reports how many hashes were still there.
func BenchmarkSweep(b *testing.B) {
	n := sweepRecords(b)
	b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
		s := setup(b, nil)
		ctx := context.Background()
		var swept, present, elapsed float64
		for i := range b.N {
			b.StopTimer()
			loadDue(b, s, fmt.Sprintf("round-%d", i), n)
			present += float64(s.keyCount())
			b.StartTimer()
			begin := time.Now()
			res, err := s.store.Sweep(ctx, &idem.SweepParams{})
			elapsed += time.Since(begin).Seconds()
			if err != nil {
				b.Fatal(err)
			}
			if res.Deleted != n {
				b.Fatalf("Sweep removed %d records, want %d", res.Deleted, n)
			}
			swept += float64(res.Deleted)
		}
		b.ReportMetric(swept/elapsed, "records/s")
		b.ReportMetric(elapsed/float64(b.N), "s/sweep")
		b.ReportMetric(present/float64(b.N), "present")
	})
}

// BenchmarkSweepLive loads IDEM_REDIS_SWEEP_RECORDS (default 100000)
// pending records with an hour's lease and times one Sweep, which removes
// none: what a Sweep costs on a store whose records are all live.
func BenchmarkSweepLive(b *testing.B) {
	n := sweepRecords(b)
	b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
		s := setup(b, nil)
		ctx := context.Background()
		load(b, s, "live", n, time.Hour)
		var elapsed float64
		b.ResetTimer()
		for range b.N {
			begin := time.Now()
			res, err := s.store.Sweep(ctx, &idem.SweepParams{})
			elapsed += time.Since(begin).Seconds()
			if err != nil {
				b.Fatal(err)
			}
			if res.Deleted != 0 {
				b.Fatalf("Sweep removed %d live records", res.Deleted)
			}
		}
		b.ReportMetric(elapsed/float64(b.N), "s/sweep")
	})
}

// load writes n pending records over 1000 scopes with lease and window
// lease, through the Begin script in pipelines.
func load(b *testing.B, s *bundle, round string, n int, lease time.Duration) {
	b.Helper()
	ctx := context.Background()
	const batch = 1000
	for lo := 0; lo < n; lo += batch {
		pipe := s.client.Pipeline()
		for i := lo; i < min(lo+batch, n); i++ {
			scope := fmt.Sprintf("%s-scope-%d", round, i%1000)
			key := fmt.Sprintf("key-%d", i)
			k := keysOf(s.prefix, scope, key)
			beginScript.EvalSha(ctx, pipe, []string{k.record, k.index, k.token},
				beginArgs(k, &idem.BeginParams{Key: key, Fingerprint: "f", Lease: lease, Window: lease})...)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			if err := beginScript.Load(ctx, s.client).Err(); err != nil {
				b.Fatal(err)
			}
			lo -= batch // the server lost the script; send the batch again
			continue
		}
	}
}

// loadDue writes n pending records over 1000 scopes with a 1ms lease and
// window, and waits until Redis has expired them all: they are due 2ms
// after the server's time now, and Redis expires each at its RetainUntil
// rounded up to the millisecond.
func loadDue(b *testing.B, s *bundle, round string, n int) {
	b.Helper()
	load(b, s, round, n, time.Millisecond)
	ctx := context.Background()
	loaded, err := s.client.Time(ctx).Result()
	if err != nil {
		b.Fatal(err)
	}
	for {
		now, err := s.client.Time(ctx).Result()
		if err != nil {
			b.Fatal(err)
		}
		if now.Sub(loaded) > 5*time.Millisecond {
			return
		}
		<-time.After(time.Millisecond)
	}
}
