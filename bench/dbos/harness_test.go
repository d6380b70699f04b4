package dbosbench

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/idemkit/idem/internal/bench"
)

// stepsPerInstance is the number of steps of the benchmark's workflow.
const stepsPerInstance = 3

// system is one contender: open starts it for a turn (a pool, an engine or
// a DBOS context of its own), running says how to drive it.
type system struct {
	name string
	// db is the database whose pg_stat_database counts the system's
	// commits; "" when it does not use PostgreSQL.
	db   string
	open func(ctx context.Context) (running, error)
}

// running is a system opened for a turn.
type running interface {
	// run starts the workflow with id and waits for its result, which it
	// checks.
	run(ctx context.Context, id string) error
	// steps lists the names of the steps recorded for id.
	steps(id string) ([]string, error)
	// writes is the number of journal commits so far (every Create and
	// Append), or -1 if the system has no journal to count.
	writes() int64
	// reads is the number of journal reads so far (Get, List), or -1.
	reads() int64
	// conns is the number of connections the system opened to its
	// database (each commits one transaction as it logs in).
	conns() int64
	close() error
}

// turn is what one turn of a system measured.
type turn struct {
	bench.Round
	warm int // untimed warm-up instances, beside the Round's Ops
	// pgCommits is the database's commits over the turn less one per
	// connection opened (its login); -1 if the system uses no database.
	pgCommits int64
	writes    int64 // journal commits; -1 if not counted
	reads     int64 // journal reads; -1 if not counted
}

var instanceSeq atomic.Int64

// runTurn opens sys, runs warm instances one after the other (untimed),
// then starts instances from starters goroutines while more says so (each
// waits for its instance's result before the next), closes sys and counts
// the commits of the turn.
//
// A warm-up instance keeps what a system does once after it opens (first
// connections, prepared statements, DBOS's launch) out of the timed
// rates; its commits count, and it counts as an instance in the
// per-instance figures.
func runTurn(tb testing.TB, pg *pgServer, sys *system, starters, warm int, more func() bool) turn {
	tb.Helper()
	ctx := context.Background()
	var before int64
	if sys.db != "" {
		before = pg.commits(tb, sys.db)
	}
	r, err := sys.open(ctx)
	if err != nil {
		tb.Fatalf("%s: open: %v", sys.name, err)
	}
	writes0, reads0 := r.writes(), r.reads()
	for range warm {
		if err := r.run(ctx, sys.name+"-warm-"+strconv.FormatInt(instanceSeq.Add(1), 10)); err != nil {
			r.close()
			tb.Fatalf("%s: warm-up: %v", sys.name, err)
		}
	}
	round, err := bench.Drive(starters, more, func() error {
		return r.run(ctx, sys.name+"-"+strconv.FormatInt(instanceSeq.Add(1), 10))
	})
	t := turn{Round: round, warm: warm, pgCommits: -1, writes: -1, reads: -1}
	if w := r.writes(); w >= 0 {
		t.writes = w - writes0
	}
	if n := r.reads(); n >= 0 {
		t.reads = n - reads0
	}
	if cerr := r.close(); cerr != nil && err == nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	if err != nil {
		tb.Fatalf("%s: %v", sys.name, err)
	}
	if sys.db != "" {
		t.pgCommits = pg.commits(tb, sys.db) - before - r.conns()
	}
	return t
}

// timed is a more for runTurn: true until d has passed since its first
// call (after the warm-up).
func timed(d time.Duration) func() bool {
	var once sync.Once
	var deadline time.Time
	return func() bool {
		once.Do(func() { deadline = time.Now().Add(d) })
		return time.Now().Before(deadline)
	}
}

// count is a more for runTurn: true n times in all.
func count(n int) func() bool {
	var left atomic.Int64
	left.Store(int64(n))
	return func() bool { return left.Add(-1) >= 0 }
}

// figure is one system's medians over the rounds at a number of starters.
type figure struct {
	system   string
	starters int
	rate     float64   // instances/s
	ratio    float64   // rate over the first system's in the same round; 0 for the first
	ratios   []float64 // each round's ratio, in round order; nil for the first
	// pgPer is the database's commits per instance, less those of the
	// connections' logins and of an idle turn; -1 if the system does not
	// use PostgreSQL.
	pgPer float64
	// idle is what an idle turn (open and close, no instance) counts in
	// the database, logins aside; -1 if none.
	idle       int64
	journalPer float64 // journal commits per instance; -1 if not counted
	readsPer   float64 // journal reads per instance; -1 if not counted
	p50, p99   time.Duration
}

// idleTurns opens and closes every system once (which migrates a fresh
// schema, outside any measurement), then once more to count what an
// idle turn costs each PostgreSQL system.
func idleTurns(tb testing.TB, pg *pgServer, systems []*system) []int64 {
	tb.Helper()
	idle := make([]int64, len(systems))
	for i, s := range systems {
		runTurn(tb, pg, s, 1, 0, count(0))
		idle[i] = runTurn(tb, pg, s, 1, 0, count(0)).pgCommits
	}
	return idle
}

// measure runs rounds rounds of one turn of each system, in an order that
// rotates from round to round (as bench.Paired does), and returns each
// system's medians. The first system is the baseline of the ratios.
func measure(tb testing.TB, pg *pgServer, systems []*system, idle []int64, starters, rounds int, d time.Duration) []figure {
	tb.Helper()
	turns := make([][]turn, len(systems))
	for r := range rounds {
		for i := range systems {
			j := (i + r) % len(systems)
			turns[j] = append(turns[j], runTurn(tb, pg, systems[j], starters, 1, timed(d)))
		}
	}
	figs := make([]figure, len(systems))
	for j, s := range systems {
		f := figure{system: s.name, starters: starters, pgPer: -1, idle: idle[j], journalPer: -1, readsPer: -1}
		var rates, ratios, pgPer, journalPer, readsPer []float64
		var lat []time.Duration
		for r, t := range turns[j] {
			if t.Ops == 0 {
				tb.Fatalf("%s: no instance completed in a turn of %s", s.name, d)
			}
			rates = append(rates, t.Rate())
			ratios = append(ratios, t.Rate()/turns[0][r].Rate())
			n := float64(t.Ops + t.warm)
			if t.pgCommits >= 0 {
				pgPer = append(pgPer, float64(t.pgCommits-idle[j])/n)
			}
			if t.writes >= 0 {
				journalPer = append(journalPer, float64(t.writes)/n)
			}
			if t.reads >= 0 {
				readsPer = append(readsPer, float64(t.reads)/n)
			}
			lat = append(lat, t.Lat...)
		}
		slices.Sort(lat)
		f.rate = median(rates)
		if j > 0 {
			f.ratio, f.ratios = median(ratios), ratios
		}
		if len(pgPer) > 0 {
			f.pgPer = median(pgPer)
		}
		if len(journalPer) > 0 {
			f.journalPer = median(journalPer)
		}
		if len(readsPer) > 0 {
			f.readsPer = median(readsPer)
		}
		f.p50, f.p99 = lat[(len(lat)-1)/2], lat[(len(lat)-1)*99/100]
		figs[j] = f
	}
	return figs
}

// median is the middle of xs (the upper middle of an even count).
func median(xs []float64) float64 {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// printTable writes figs as a table.
func printTable(w io.Writer, figs []figure) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "starters\tsystem\tinstances/s\tsteps/s\tvs dbos\tpg commits/inst\tjournal commits/inst\tjournal reads/inst\tidle-turn commits\tp50 ms\tp99 ms\t")
	opt := func(v float64, format string) string {
		if v < 0 {
			return "-"
		}
		return fmt.Sprintf(format, v)
	}
	for _, f := range figs {
		ratio := "1"
		if f.ratio > 0 {
			ratio = fmt.Sprintf("%.2fx", f.ratio)
		}
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t\n", f.starters, f.system,
			f.rate, stepsPerInstance*f.rate, ratio, opt(f.pgPer, "%.2f"), opt(f.journalPer, "%.2f"), opt(f.readsPer, "%.2f"),
			opt(float64(f.idle), "%.0f"), ms(f.p50), ms(f.p99))
	}
	tw.Flush()
	for _, f := range figs {
		if f.ratios != nil {
			fmt.Fprintf(w, "%s at %d starters, ratio by round: %.2f\n", f.system, f.starters, f.ratios)
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// envInt is the integer in the environment variable name, or def.
func envInt(tb testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		tb.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// envDuration is the duration in the environment variable name, or def.
func envDuration(tb testing.TB, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		tb.Fatalf("%s=%q: want a positive duration", name, v)
	}
	return d
}
