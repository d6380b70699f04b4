package pgstore

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/jackc/pgx/v5/pgxpool"
)

// backendCPU reads the CPU time the server process pid has run, from
// /proc (the scheduler's count, in nanoseconds): the server must run on
// this machine.
func backendCPU(b *testing.B, pid uint32) time.Duration {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
	if err != nil {
		b.Skipf("the PostgreSQL backend's CPU time is not readable here (%v): the server must run on this machine", err)
	}
	ns, err := strconv.ParseInt(strings.Fields(string(stat))[0], 10, 64)
	if err != nil {
		b.Fatalf("/proc/%d/schedstat: %v", pid, err)
	}
	return time.Duration(ns)
}

// BenchmarkServerCost reports the CPU time the PostgreSQL backend spends
// per Begin (of a fresh key), per Complete and per replaying Begin, beside
// the baseline's INSERT … ON CONFLICT DO NOTHING and UPDATE … WHERE token,
// each measured over b.N statements on one connection of its own (with
// synchronous_commit off for that session, so no run waits for the disk),
// the steps by turns of serverCostTurn statements; cycle/raw is
// Begin+Complete over the baseline's two statements. Unlike cycles/s it
// holds still on a busy machine (still, run it several times, -count 5,
// and compare medians): compare statement shapes with it.
func BenchmarkServerCost(b *testing.B) {
	url := servicetest.Postgres.Need(b)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns, cfg.MinConns = 1, 1
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	ctx := context.Background()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	s, err := New(pool, &Config{Schema: freshSchema(b, sharedPool(b)), Migrate: true})
	if err != nil {
		b.Fatal(err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	pid := conn.Conn().PgConn().PID()
	conn.Release()
	outcome := idem.Outcome{Data: []byte(`{"status":"ok"}`), Meta: map[string]string{"status": "200"}}
	key := func(i int) string { return fmt.Sprintf("cost-%d-%d", b.N, i) }
	tokens := make([]int64, b.N)
	insert, update := rawStatements(s)
	steps := []struct {
		name string
		op   func(i int) error
	}{
		{"begin", func(i int) error {
			res, err := s.Begin(ctx, &idem.BeginParams{Scope: "bench", Key: key(i), Fingerprint: "f", Lease: idem.DefaultLease, Window: idem.DefaultWindow})
			if err == nil && res.Decision != idem.Acquired {
				err = fmt.Errorf("decision %s", res.Decision)
			}
			if err == nil {
				tokens[i] = res.Record.Token
			}
			return err
		}},
		{"complete", func(i int) error {
			_, err := s.Complete(ctx, &idem.CompleteParams{Scope: "bench", Key: key(i), Token: tokens[i], Outcome: outcome})
			return err
		}},
		{"replay", func(i int) error {
			res, err := s.Begin(ctx, &idem.BeginParams{Scope: "bench", Key: key(i), Fingerprint: "f", Lease: idem.DefaultLease, Window: idem.DefaultWindow})
			if err == nil && res.Decision != idem.Replay {
				err = fmt.Errorf("decision %s", res.Decision)
			}
			return err
		}},
		{"raw-insert", func(i int) error {
			_, err := pool.Exec(ctx, insert, "raw-"+key(i), int64(i+1))
			return err
		}},
		{"raw-update", func(i int) error {
			tag, err := pool.Exec(ctx, update, "raw-"+key(i), int64(i+1), []byte(`{"status":"ok"}`), []byte(`{"status":"200"}`))
			if err == nil && tag.RowsAffected() != 1 {
				err = fmt.Errorf("%d rows", tag.RowsAffected())
			}
			return err
		}},
	}
	// By turns of serverCostTurn statements, so that what else the
	// machine runs weighs on every step alike.
	spent := make([]time.Duration, len(steps))
	b.ResetTimer()
	for from := 0; from < b.N; from += serverCostTurn {
		to := min(from+serverCostTurn, b.N)
		for j, st := range steps {
			start := backendCPU(b, pid)
			for i := from; i < to; i++ {
				if err := st.op(i); err != nil {
					b.Fatalf("%s %d: %v", st.name, i, err)
				}
			}
			spent[j] += backendCPU(b, pid) - start
		}
	}
	for j, st := range steps {
		b.ReportMetric(float64(spent[j].Nanoseconds())/1e3/float64(b.N), st.name+"-µs")
	}
	b.ReportMetric(float64(spent[0]+spent[1])/float64(spent[3]+spent[4]), "cycle/raw")
}

// serverCostTurn is how many statements of one step BenchmarkServerCost
// runs before it turns to the next.
const serverCostTurn = 100
