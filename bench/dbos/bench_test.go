package dbosbench

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// systems are the contenders, DBOS first (the baseline of the ratios),
// each in a fresh schema dropped when tb ends.
func systems(tb testing.TB, pg *pgServer) []*system {
	schema := freshSchema("dbosbench")
	pg.dropSchemaAtEnd(tb, dbosDatabase, schema)
	return append([]*system{dbosSystem(pg, schema)}, idemSystems(tb, pg)...)
}

// TestIdleCountsNothing: a pool that opens a connection and closes
// commits one transaction in a benchmark database, the connection's login
// (which runTurn subtracts), and nothing else; so the commit counts of the
// turns are the systems' own.
func TestIdleCountsNothing(t *testing.T) {
	pg := newPGServer(t)
	ctx := context.Background()
	for _, db := range []string{dbosDatabase, idemDatabase} {
		before := pg.commits(t, db)
		pool, err := pg.pool(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conn.Release()
		pool.Close()
		logins := pool.Stat().NewConnsCount()
		if n := pg.commits(t, db) - before; logins != 1 || n != logins {
			t.Errorf("%s: an idle pool counted %d commits for %d connections, want 1 for 1", db, n, logins)
		}
	}
}

// TestOneInstanceEach: one instance of every system completes its three
// steps, and the commit counters (the database's, idem's journal's) move.
func TestOneInstanceEach(t *testing.T) {
	pg := newPGServer(t)
	ctx := context.Background()
	for _, sys := range systems(t, pg) {
		t.Run(sys.name, func(t *testing.T) {
			runTurn(t, pg, sys, 1, 0, count(0)) // migrates, outside the count
			var before int64
			if sys.db != "" {
				before = pg.commits(t, sys.db)
			}
			r, err := sys.open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			id := sys.name + "-one-" + time.Now().Format("150405.000000000")
			runErr := r.run(ctx, id)
			steps, stepsErr := r.steps(id)
			writes := r.writes()
			if err := r.close(); err != nil {
				t.Errorf("close: %v", err)
			}
			if runErr != nil || stepsErr != nil {
				t.Fatalf("run: %v; steps: %v", runErr, stepsErr)
			}
			if want := []string{"a1", "a2", "a3"}; !slices.Equal(steps, want) {
				t.Errorf("steps %v, want %v", steps, want)
			}
			if strings.HasPrefix(sys.name, "idem") && writes < 1+stepsPerInstance {
				t.Errorf("journal commits %d, want at least %d (the Create, a commit per step)", writes, 1+stepsPerInstance)
			}
			if sys.db != "" {
				// Less the connections' logins; the opening's own commits
				// stay in.
				if n := pg.commits(t, sys.db) - before - r.conns(); n < 2 {
					t.Errorf("%s counted %d commits for one instance, want at least 2", sys.db, n)
				} else {
					t.Logf("%s: %d commits in the database for a turn of one instance; %d journal commits", sys.name, n, writes)
				}
			}
		})
	}
}

// TestFigures prints the paired figures at 1 and 16 starters when
// IDEM_BENCH_FIGURES=1 (IDEM_BENCH_ROUNDS rounds, default 5, of turns of
// IDEM_BENCH_TURN, default 2s); it skips otherwise.
func TestFigures(t *testing.T) {
	if os.Getenv("IDEM_BENCH_FIGURES") != "1" {
		t.Skip("set IDEM_BENCH_FIGURES=1 to measure")
	}
	rounds := envInt(t, "IDEM_BENCH_ROUNDS", 5)
	d := envDuration(t, "IDEM_BENCH_TURN", 2*time.Second)
	pg := newPGServer(t)
	syss := systems(t, pg)
	idle := idleTurns(t, pg, syss)
	var figs []figure
	for _, starters := range []int{1, 16} {
		figs = append(figs, measure(t, pg, syss, idle, starters, rounds, d)...)
	}
	var b strings.Builder
	printTable(&b, figs)
	t.Logf("%d rounds of %s turns, medians:\n%s", rounds, d, b.String())
}

// BenchmarkWorkflows measures the systems by turns at 1 and 16 starters
// (IDEM_BENCH_ROUNDS rounds, default 3, of turns of IDEM_BENCH_TURN,
// default 1s) and reports each system's median instances/s, steps/s,
// commits per instance (the database's, less an idle turn's; the
// journal's for idem) and ratio to DBOS. It ignores b.N: run it with
// -benchtime 1x.
func BenchmarkWorkflows(b *testing.B) {
	pg := newPGServer(b)
	syss := systems(b, pg)
	idle := idleTurns(b, pg, syss)
	rounds := envInt(b, "IDEM_BENCH_ROUNDS", 3)
	d := envDuration(b, "IDEM_BENCH_TURN", time.Second)
	for _, starters := range []int{1, 16} {
		b.Run("starters="+strconv.Itoa(starters), func(b *testing.B) {
			for _, f := range measure(b, pg, syss, idle, starters, rounds, d) {
				p := f.system + "-"
				b.ReportMetric(f.rate, p+"instances/s")
				b.ReportMetric(stepsPerInstance*f.rate, p+"steps/s")
				if f.pgPer >= 0 {
					b.ReportMetric(f.pgPer, p+"pg-commits/instance")
				}
				if f.journalPer >= 0 {
					b.ReportMetric(f.journalPer, p+"commits/instance")
				}
				if f.ratio > 0 {
					b.ReportMetric(f.ratio, p+"ratio")
				}
			}
		})
	}
}
