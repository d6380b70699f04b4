// Package bench holds the benchmark tools of every module: a fixed number
// of concurrent callers (ParallelN), a store's Begin+Complete cycle
// (CycleOp, Cycles), and Paired, which measures a candidate against its
// baseline by turns in one process. The HTTP load of the middleware and
// proxy benchmarks comes from internal/loadgen, whose Closed is a Side of
// Paired like Timed. `idem bench` (cmd/idem) runs the same machinery outside
// testing: Load (errors counted by kind, a live count of operations), For
// (a timed turn) and Rounds (sides by turns).
//
// # Measuring against a baseline
//
// On a shared machine the load changes between two benchmarks run one
// after the other, and that drift moves a ratio of two separate runs by
// more than the differences it is meant to show. Paired runs every side
// once per round, in an order that rotates from round to round, takes each
// round's ratio of a side to the first side (the baseline), and reports
// the median over the rounds:
//
//	bench.Paired(b, "cycles/s", 9,
//		bench.Timed("base", 16, time.Second, rawOp),
//		bench.Timed("", 16, time.Second, bench.CycleOp(store)))
//
// reports cycles/s, base-cycles/s, ratio (candidate over baseline),
// p50-µs, p99-µs, their base- counterparts, p99-ratio and the CPU per
// operation. Run a Paired benchmark with -benchtime 1x (it ignores b.N),
// several times, and quote the median.
package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/cputime"
)

// Round is what one run of a side measured.
type Round struct {
	Ops     int             // operations completed
	Elapsed time.Duration   // wall time of the run
	CPU     time.Duration   // the process's CPU time per operation; 0 if unknown
	Lat     []time.Duration // each operation's latency, sorted
	// Errors counts the failed operations by kind (Load.Kind); nil when
	// none failed.
	Errors map[string]int
}

// ErrorCount is the number of failed operations.
func (r *Round) ErrorCount() int {
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// Rate is operations per second.
func (r *Round) Rate() float64 { return float64(r.Ops) / r.Elapsed.Seconds() }

// Quantile is the latency below which a fraction q of the operations
// finished (0 if none was timed).
func (r *Round) Quantile(q float64) time.Duration { return quantile(r.Lat, q) }

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*q)]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Report reports r as the metrics unit (the rate, such as "cycles/s" or
// "req/s"), p50-µs, p99-µs and cpu-µs/op, each name preceded by prefix.
func (r *Round) Report(b *testing.B, prefix, unit string) {
	b.ReportMetric(r.Rate(), prefix+unit)
	if len(r.Lat) > 0 {
		b.ReportMetric(micros(r.Quantile(0.5)), prefix+"p50-µs")
		b.ReportMetric(micros(r.Quantile(0.99)), prefix+"p99-µs")
	}
	if r.CPU > 0 {
		// The process's CPU time per operation, both ends of the load
		// together: steadier than the rate on a shared machine, and what
		// bounds the rate when the cores are saturated.
		b.ReportMetric(micros(r.CPU), prefix+"cpu-µs/op")
	}
}

// Drive runs op from exactly callers goroutines, each calling it again
// while more (called before every operation, from every goroutine)
// returns true, and measures the run. The first error op returns ends the
// run and is returned.
func Drive(callers int, more func() bool, op func() error) (Round, error) {
	return Load{Callers: callers, More: more, Op: func(int) error { return op() }}.Drive()
}

// Load is a closed-loop run for Drive with more choices: the caller's
// index passed to each operation, errors counted by kind instead of ending
// the run, and a live count of finished operations.
type Load struct {
	// Callers is the number of goroutines.
	Callers int
	// More is called before every operation, from every goroutine; the
	// goroutine stops when it returns false.
	More func() bool
	// Op is one operation, given the index of its goroutine (0 to
	// Callers-1), so that a caller can keep a connection of its own.
	Op func(caller int) error
	// Kind, when set, names an error of Op (like "http_409"): the error
	// is counted in Round.Errors under that name and the run goes on.
	// Without it the first error ends the run and Drive returns it.
	Kind func(error) string
	// Done, when set, is incremented after every operation, failed or
	// not: a progress display reads it while the run goes on.
	Done *atomic.Int64
}

// Drive runs the load and measures it. Only successful operations are
// timed and counted in Ops; with Kind, the failed ones are in Errors.
func (l Load) Drive() (Round, error) {
	lats := make([][]time.Duration, l.Callers)
	kinds := make([]map[string]int, l.Callers)
	errs := make(chan error, l.Callers)
	cpu := cputime.Start()
	start := time.Now()
	for i := range l.Callers {
		go func() {
			var err error
			var lat []time.Duration
			for err == nil && l.More() {
				t := time.Now()
				err = l.Op(i)
				if err == nil {
					lat = append(lat, time.Since(t))
				} else if l.Kind != nil {
					if kinds[i] == nil {
						kinds[i] = map[string]int{}
					}
					kinds[i][l.Kind(err)]++
					err = nil
				}
				if l.Done != nil {
					l.Done.Add(1)
				}
			}
			lats[i] = lat
			errs <- err
		}()
	}
	var err error
	for range l.Callers {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	r := Round{Elapsed: time.Since(start), Lat: slices.Concat(lats...)}
	r.Ops = len(r.Lat)
	for _, k := range kinds {
		for name, n := range k {
			if r.Errors == nil {
				r.Errors = map[string]int{}
			}
			r.Errors[name] += n
		}
	}
	r.CPU, _ = cpu.PerOp(r.Ops + r.ErrorCount())
	slices.Sort(r.Lat)
	return r, err
}

// ParallelN runs op b.N times in total from exactly callers goroutines and
// reports the rate as cycles/s, with p50-µs, p99-µs and cpu-µs/op. Unlike
// b.RunParallel the number of goroutines does not depend on GOMAXPROCS, so
// figures at 1, 8 and 64 callers mean what they say. Baselines use it too,
// so both sides of a ratio are measured the same way.
func ParallelN(b *testing.B, callers int, op func() error) {
	b.Helper()
	var left atomic.Int64
	left.Store(int64(b.N))
	b.ResetTimer()
	r, err := Drive(callers, func() bool { return left.Add(-1) >= 0 }, op)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	r.Report(b, "", "cycles/s")
}

// Cycles measures Begin+Complete cycles on fresh keys (CycleOp) with
// callers goroutines (ParallelN). Each benchmark run uses its own keys, so
// it can share a store with other runs.
func Cycles(b *testing.B, s idem.Store, callers int) {
	b.Helper()
	ParallelN(b, callers, CycleOp(s))
}

// CycleOp returns one Begin+Complete cycle on s, each call on a fresh key
// of its own (keys of two CycleOps never meet): the unit Cycles and the
// stores' paired benchmarks measure.
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

// Side is one contender of a Paired comparison.
type Side struct {
	// Name precedes the side's metrics (name-req/s, name-ratio); the
	// empty name gives the bare metric names (req/s, ratio).
	Name string
	// Run runs the side once, a round's turn, and says what it measured.
	Run func() (Round, error)
}

func (s Side) prefix() string {
	if s.Name == "" {
		return ""
	}
	return s.Name + "-"
}

// Timed is a side that runs op from callers goroutines for the duration
// turn in each round.
func Timed(name string, callers int, turn time.Duration, op func() error) Side {
	return Side{Name: name, Run: func() (Round, error) {
		return Drive(callers, For(context.Background(), turn), op)
	}}
}

// For is a More of Load (and the more of Drive): true for d from its
// first call, which is after the run's clock started, so that a run
// lasts at least d; false from then on, or once ctx is done.
func For(ctx context.Context, d time.Duration) func() bool {
	base := time.Now()
	var deadline atomic.Int64 // since base, on the monotonic clock; 0 before the first call
	return func() bool {
		now := int64(time.Since(base)) + 1
		if deadline.Load() == 0 {
			deadline.CompareAndSwap(0, now+int64(d))
		}
		return now < deadline.Load() && ctx.Err() == nil
	}
}

// Paired measures sides by turns: rounds rounds, each running every side
// once, in an order that rotates from round to round, so that within a
// round the sides see the same machine. The first side is the baseline.
// For each side it reports the median rate over the rounds (unit, such as
// "cycles/s"), its median CPU per operation, and p50 and p99 latency over
// all its rounds; for every side but the first also the median over the
// rounds of its rate over the baseline's in the same round (ratio) and the
// ratio of its p99 to the baseline's (p99-ratio). Each metric's name is
// preceded by the side's name and a dash. It ignores b.N: run it with
// -benchtime 1x.
func Paired(b *testing.B, unit string, rounds int, sides ...Side) {
	b.Helper()
	if rounds < 1 || len(sides) < 2 {
		b.Fatalf("bench.Paired: %d rounds of %d sides, want at least 1 round of 2 sides", rounds, len(sides))
	}
	type tally struct {
		rates, cpus []float64
		lat         []time.Duration
	}
	tallies := make([]tally, len(sides))
	b.ResetTimer()
	err := Rounds(rounds, sides, func(_, j int, res Round) {
		t := &tallies[j]
		t.rates = append(t.rates, res.Rate())
		t.cpus = append(t.cpus, micros(res.CPU))
		t.lat = append(t.lat, res.Lat...)
	})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	base := &tallies[0] // sorted by the first turn of the loop
	for j, s := range sides {
		t := &tallies[j]
		slices.Sort(t.lat)
		p := s.prefix()
		b.ReportMetric(Median(t.rates), p+unit)
		if c := Median(t.cpus); c > 0 {
			b.ReportMetric(c, p+"cpu-µs/op")
		}
		if len(t.lat) > 0 {
			b.ReportMetric(micros(quantile(t.lat, 0.5)), p+"p50-µs")
			b.ReportMetric(micros(quantile(t.lat, 0.99)), p+"p99-µs")
		}
		if j == 0 {
			continue
		}
		ratios := make([]float64, rounds)
		for r := range rounds {
			ratios[r] = t.rates[r] / base.rates[r]
		}
		b.ReportMetric(Median(ratios), p+"ratio")
		if len(t.lat) > 0 && len(base.lat) > 0 {
			b.ReportMetric(float64(quantile(t.lat, 0.99))/float64(quantile(base.lat, 0.99)), p+"p99-ratio")
		}
	}
}

// Rounds runs sides by turns, as Paired does: rounds rounds, each running
// every side once, in an order that rotates from round to round (round r
// starts with side r mod len(sides)). It calls done after each turn with
// the round, the side's index and what the turn measured. The first error
// of a side ends the run and is returned, naming the side.
func Rounds(rounds int, sides []Side, done func(round, side int, r Round)) error {
	for r := range rounds {
		for i := range sides {
			j := (i + r) % len(sides)
			res, err := sides[j].Run()
			if err != nil {
				if sides[j].Name == "" {
					return err
				}
				return fmt.Errorf("%s: %w", sides[j].Name, err)
			}
			done(r, j, res)
		}
	}
	return nil
}

// Median is the middle of xs (the upper middle of an even count; 0 for
// none).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// Rotated runs sides by turns, as Paired does, outside a testing.B: rounds
// rounds, each calling run once for every side index 0..sides-1, in an
// order that rotates from round to round (round r starts with side r mod
// sides). run returns what the side measured in that turn (a rate). The
// result holds, per side, its value in each round, in round order. The
// first error run returns ends the rounds and is returned.
func Rotated(rounds, sides int, run func(side int) (float64, error)) ([][]float64, error) {
	got := make([][]float64, sides)
	ss := make([]Side, sides)
	for k := range ss {
		got[k] = make([]float64, 0, rounds)
		ss[k].Run = func() (Round, error) { // once a round, in round order
			v, err := run(k)
			if err == nil {
				got[k] = append(got[k], v)
			}
			return Round{}, err
		}
	}
	err := Rounds(rounds, ss, func(int, int, Round) {})
	for k := range got {
		got[k] = got[k][:rounds] // the rounds an error cut short hold 0
	}
	return got, err
}

// Ratios is xs over base, element by element: the ratios of two sides'
// values in the same rounds.
func Ratios(xs, base []float64) []float64 {
	out := make([]float64, len(xs))
	for i := range xs {
		out[i] = xs[i] / base[i]
	}
	return out
}

// LoadAvg is the machine's /proc/loadavg line ("?" where there is none),
// for a figures test to log before and after it measured.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// EnvInt is the positive integer in the environment variable name, or def
// when it is unset or not a positive integer: a figures test's knob.
func EnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
