package bench

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestDrive: every operation more allowed runs once and is timed, from the
// given number of goroutines, and the latencies come back sorted.
func TestDrive(t *testing.T) {
	t.Parallel()
	var left, ran atomic.Int64
	left.Store(1000)
	var active, peak atomic.Int64
	gate := make(chan struct{})
	r, err := Drive(8, func() bool { return left.Add(-1) >= 0 }, func() error {
		n := active.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		if ran.Add(1) == 8 {
			close(gate) // the first eight calls wait until all eight run
		}
		<-gate
		active.Add(-1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops != 1000 || ran.Load() != 1000 || len(r.Lat) != 1000 {
		t.Fatalf("Ops %d, ran %d, %d latencies, want 1000 each", r.Ops, ran.Load(), len(r.Lat))
	}
	if peak.Load() != 8 {
		t.Errorf("%d goroutines at once, want 8", peak.Load())
	}
	if !slices.IsSorted(r.Lat) || r.Elapsed <= 0 || r.Rate() <= 0 {
		t.Errorf("latencies sorted %v, elapsed %v, rate %v", slices.IsSorted(r.Lat), r.Elapsed, r.Rate())
	}
}

// TestDriveError: an operation's error ends the run and is returned; the
// operations that succeeded are counted.
func TestDriveError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	var n atomic.Int64
	r, err := Drive(1, func() bool { return true }, func() error {
		if n.Add(1) == 5 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || r.Ops != 4 {
		t.Fatalf("Ops %d, err %v, want 4 and boom", r.Ops, err)
	}
}

// TestPaired: the sides run by turns in a rotating order, and the metrics
// are each side's median rate, the median of the rounds' ratios to the
// first side, and quantiles over all of a side's rounds.
func TestPaired(t *testing.T) {
	t.Parallel()
	var order []string
	// Round r: the baseline does 100 ops/s; the candidate 50, 200, 150
	// (ratios 0.5, 2, 1.5: median 1.5); its rate median is 150.
	baseRates := []int{100, 100, 100}
	candRates := []int{50, 200, 150}
	side := func(name string, rates []int, lat time.Duration) Side {
		round := 0
		return Side{Name: name, Run: func() (Round, error) {
			order = append(order, name)
			ops := rates[round]
			round++
			lats := make([]time.Duration, 100)
			for i := range lats {
				lats[i] = lat * time.Duration(i+1) // p50 = 50·lat, p99 = 99·lat
			}
			return Round{Ops: ops, Elapsed: time.Second, CPU: 3 * time.Microsecond, Lat: lats}, nil
		}}
	}
	// testing.Benchmark may call this more than once, with a growing b.N
	// that Paired ignores: each call starts afresh.
	res := testing.Benchmark(func(b *testing.B) {
		order = order[:0]
		Paired(b, "cycles/s", 3, side("base", baseRates, time.Microsecond), side("", candRates, 2*time.Microsecond))
	})
	if want := []string{"base", "", "", "base", "base", ""}; !slices.Equal(order, want) {
		t.Errorf("order %q, want %q", order, want)
	}
	want := map[string]float64{
		"base-cycles/s": 100, "cycles/s": 150, "ratio": 1.5,
		"base-p50-µs": 50, "p50-µs": 100, "base-p99-µs": 99, "p99-µs": 198, "p99-ratio": 2,
		"base-cpu-µs/op": 3, "cpu-µs/op": 3,
	}
	for name, v := range want {
		if got, ok := res.Extra[name]; !ok || got != v {
			t.Errorf("%s = %v (reported %v), want %v", name, got, ok, v)
		}
	}
	if _, ok := res.Extra["base-ratio"]; ok {
		t.Error("the baseline reports a ratio to itself")
	}
}

// TestTimed: a timed side runs for its turn.
func TestTimed(t *testing.T) {
	t.Parallel()
	s := Timed("x", 2, 20*time.Millisecond, func() error { return nil })
	r, err := s.Run()
	if err != nil {
		t.Fatal(err)
	}
	// The turn's deadline is set at the first call of more, after Drive
	// started its clock.
	if r.Elapsed < 20*time.Millisecond || r.Elapsed > 2*time.Second || r.Ops < 2 {
		t.Fatalf("elapsed %v, %d ops", r.Elapsed, r.Ops)
	}
}

// TestLoadKinds: with Kind, failed operations are counted by kind and the
// run goes on; Done counts every operation; each goroutine has its index.
func TestLoadKinds(t *testing.T) {
	t.Parallel()
	var left, done atomic.Int64
	left.Store(300)
	var seen [3]atomic.Int64
	r, err := Load{Callers: 3, More: func() bool { return left.Add(-1) >= 0 }, Done: &done,
		Op: func(c int) error {
			switch n := seen[c].Add(1); {
			case n%10 == 0:
				return errors.New("ten")
			case n%10 == 5:
				return errors.New("five")
			}
			return nil
		},
		Kind: func(err error) string { return err.Error() },
	}.Drive()
	if err != nil {
		t.Fatal(err)
	}
	total := seen[0].Load() + seen[1].Load() + seen[2].Load()
	fails := 0
	for i := range seen {
		fails += int(seen[i].Load()/10) + int((seen[i].Load()+5)/10)
	}
	if total != 300 || done.Load() != 300 || r.Ops+r.ErrorCount() != 300 || r.ErrorCount() != fails || len(r.Lat) != r.Ops {
		t.Fatalf("ran %d, done %d, ops %d, errors %v (want %d)", total, done.Load(), r.Ops, r.Errors, fails)
	}
	if len(r.Errors) != 2 || r.Errors["ten"] == 0 || r.Errors["five"] == 0 {
		t.Errorf("errors %v, want kinds ten and five", r.Errors)
	}
}

// TestRounds: every round runs each side once, starting with the next
// side each round; an error names its side and ends the run.
func TestRounds(t *testing.T) {
	t.Parallel()
	var order []string
	side := func(name string) Side {
		return Side{Name: name, Run: func() (Round, error) {
			order = append(order, name)
			return Round{Ops: len(order)}, nil
		}}
	}
	var got []int
	err := Rounds(3, []Side{side("a"), side("b"), side("c")}, func(round, s int, r Round) {
		got = append(got, round*10+s)
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "abcbcacab"; strings.Join(order, "") != want {
		t.Errorf("order %v, want %s", order, want)
	}
	if want := []int{0, 1, 2, 11, 12, 10, 22, 20, 21}; !slices.Equal(got, want) {
		t.Errorf("done calls %v, want %v", got, want)
	}
	boom := errors.New("boom")
	err = Rounds(2, []Side{side("a"), {Name: "bad", Run: func() (Round, error) { return Round{}, boom }}}, func(int, int, Round) {})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "bad: boom") {
		t.Errorf("err %v, want bad: boom", err)
	}
	if Median([]float64{3, 1, 2}) != 2 || Median([]float64{4, 1, 3, 2}) != 3 || Median(nil) != 0 {
		t.Error("Median")
	}
}

// TestFor: the deadline counts from the first call, and a done context
// ends it at once.
func TestFor(t *testing.T) {
	t.Parallel()
	more := For(context.Background(), time.Hour)
	if !more() || !more() {
		t.Error("For(1h) false at once")
	}
	if For(context.Background(), 0)() {
		t.Error("For(0) true")
	}
	ctx, cancel := context.WithCancel(context.Background())
	more = For(ctx, time.Hour)
	if !more() {
		t.Error("false before the cancel")
	}
	cancel()
	if more() {
		t.Error("true after the cancel")
	}
}

// TestRotated checks the turn order rotates from round to round and each
// side's values land in round order.
func TestRotated(t *testing.T) {
	var order []int
	calls := map[int]float64{}
	got, err := Rotated(3, 3, func(k int) (float64, error) {
		order = append(order, k)
		calls[k]++
		return float64(10*k) + calls[k], nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 1, 2, 1, 2, 0, 2, 0, 1}; !slices.Equal(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
	want := [][]float64{{1, 2, 3}, {11, 12, 13}, {21, 22, 23}}
	for k := range want {
		if !slices.Equal(got[k], want[k]) {
			t.Errorf("side %d: %v, want %v", k, got[k], want[k])
		}
	}
	if r := Ratios(got[1], got[0]); !slices.Equal(r, []float64{11, 6, 13.0 / 3}) {
		t.Errorf("ratios %v", r)
	}
	if m := Median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median %v, want 2", m)
	}
	if m := Median(nil); m != 0 {
		t.Errorf("median of none %v, want 0", m)
	}
	boom := errors.New("boom")
	if _, err := Rotated(2, 2, func(k int) (float64, error) { return 0, boom }); !errors.Is(err, boom) {
		t.Errorf("error %v, want boom", err)
	}
	t.Setenv("IDEM_TEST_ENVINT", "7")
	if v := EnvInt("IDEM_TEST_ENVINT", 3); v != 7 {
		t.Errorf("EnvInt %d, want 7", v)
	}
	t.Setenv("IDEM_TEST_ENVINT", "-1")
	if v := EnvInt("IDEM_TEST_ENVINT", 3); v != 3 {
		t.Errorf("EnvInt of -1: %d, want the default 3", v)
	}
}
