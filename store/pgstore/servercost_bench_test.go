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

// backendCPU reads the CPU time (user + system) the server process pid has
// used, from /proc: the server must run on this machine.
func backendCPU(b *testing.B, pid uint32) time.Duration {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Skipf("the PostgreSQL backend's CPU time is not readable here (%v): the server must run on this machine", err)
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// BenchmarkServerCost reports the CPU time the PostgreSQL backend spends
// per Begin (of a fresh key), per Complete and per replaying Begin, beside
// the baseline's INSERT … ON CONFLICT DO NOTHING and UPDATE … WHERE token,
// each measured over b.N statements on one connection of its own (with
// synchronous_commit off for that session, so no run waits for the disk).
// Unlike cycles/s it holds still on a busy machine: compare statement
// shapes with it.
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
	step := func(name string, op func(i int) error) {
		start := backendCPU(b, pid)
		for i := range b.N {
			if err := op(i); err != nil {
				b.Fatalf("%s %d: %v", name, i, err)
			}
		}
		b.ReportMetric(float64((backendCPU(b, pid)-start).Microseconds())/float64(b.N), name+"-µs")
	}
	b.ResetTimer()
	step("begin", func(i int) error {
		res, err := s.Begin(ctx, &idem.BeginParams{Scope: "bench", Key: key(i), Fingerprint: "f", Lease: idem.DefaultLease, Window: idem.DefaultWindow})
		if err == nil && res.Decision != idem.Acquired {
			err = fmt.Errorf("decision %s", res.Decision)
		}
		if err == nil {
			tokens[i] = res.Record.Token
		}
		return err
	})
	step("complete", func(i int) error {
		_, err := s.Complete(ctx, &idem.CompleteParams{Scope: "bench", Key: key(i), Token: tokens[i], Outcome: outcome})
		return err
	})
	step("replay", func(i int) error {
		res, err := s.Begin(ctx, &idem.BeginParams{Scope: "bench", Key: key(i), Fingerprint: "f", Lease: idem.DefaultLease, Window: idem.DefaultWindow})
		if err == nil && res.Decision != idem.Replay {
			err = fmt.Errorf("decision %s", res.Decision)
		}
		return err
	})
	insert, update := rawStatements(s)
	step("raw-insert", func(i int) error {
		_, err := pool.Exec(ctx, insert, "raw-"+key(i), int64(i+1))
		return err
	})
	step("raw-update", func(i int) error {
		tag, err := pool.Exec(ctx, update, "raw-"+key(i), int64(i+1), []byte(`{"status":"ok"}`), []byte(`{"status":"200"}`))
		if err == nil && tag.RowsAffected() != 1 {
			err = fmt.Errorf("%d rows", tag.RowsAffected())
		}
		return err
	})
}
