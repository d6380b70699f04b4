package pgstore

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/bench"
)

// Both sides of each ratio run on the shared pool (16 connections), driven
// by bench.ParallelN.
var benchCallers = []int{1, 16, 64}

// rawOp returns the baseline: the bare two statements a cycle cannot do
// without, through pgx on the same pool and the same table: INSERT … ON
// CONFLICT DO NOTHING of a pending row, then UPDATE … WHERE token = …
// storing the outcome.
func rawOp(s *Store, prefix string) func() error {
	ctx := context.Background()
	insert, update := rawStatements(s)
	var token atomic.Int64
	return func() error {
		tok := token.Add(1)
		key := fmt.Sprintf("%s-%d", prefix, tok)
		if _, err := s.Pool().Exec(ctx, insert, key, tok); err != nil {
			return err
		}
		tag, err := s.Pool().Exec(ctx, update, key, tok, []byte(`{"status":"ok"}`), []byte(`{"status":"200"}`))
		if err == nil && tag.RowsAffected() != 1 {
			err = fmt.Errorf("update %s: %d rows", key, tag.RowsAffected())
		}
		return err
	}
}

// BenchmarkCycles: Begin+Complete on fresh keys, two round trips.
func BenchmarkCycles(b *testing.B) {
	s := newStore(b)
	for _, callers := range benchCallers {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			bench.Cycles(b, s, callers)
		})
	}
}

// BenchmarkRawStatements is the baseline of BenchmarkCycles (rawOp).
func BenchmarkRawStatements(b *testing.B) {
	s := newStore(b)
	for _, callers := range benchCallers {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			bench.ParallelN(b, callers, rawOp(s, fmt.Sprintf("raw-%d-%d", callers, time.Now().UnixNano())))
		})
	}
}

// BenchmarkVsRaw is the store against its baseline (rawOp) measured by
// turns (bench.Paired): 9 rounds of 1 s each side. Run it with
// -benchtime 1x; "ratio" is the median of the rounds' ratios.
func BenchmarkVsRaw(b *testing.B) {
	s := newStore(b)
	for _, callers := range benchCallers {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			bench.Paired(b, "cycles/s", 9,
				bench.Timed("base", callers, time.Second, rawOp(s, fmt.Sprintf("raw-%d-%d", callers, time.Now().UnixNano()))),
				bench.Timed("", callers, time.Second, bench.CycleOp(s)))
		})
	}
}

// rawStatements are the baseline's two statements on s's table: the
// insert takes the key and the token, the update the key, the token, the
// outcome and its metadata.
func rawStatements(s *Store) (insert, update string) {
	insert = `INSERT INTO ` + s.q.schema + `.records (scope, key, fingerprint, state, token, attempts, lease_until,
		created, retain_until, window_us, retention_us)
	VALUES ('bench', $1, 'f', 'pending', $2, 1, now() + interval '30 seconds', now(), now() + interval '24 hours 30 seconds', 86400000000, 0)
	ON CONFLICT DO NOTHING`
	update = `UPDATE ` + s.q.schema + `.records SET state = 'completed', outcome_data = $3, outcome_meta = $4, completed = now(),
		expires = now() + interval '24 hours', retain_until = now() + interval '24 hours'
	WHERE scope = 'bench' AND key = $1 AND token = $2`
	return insert, update
}

// BenchmarkReplay: Begin of a completed key, one read-only round trip.
// wal-B/op is the cluster's WAL growth over the run per replay: 0 unless
// something else writes to the cluster meanwhile.
func BenchmarkReplay(b *testing.B) {
	s := newStore(b)
	ctx := context.Background()
	p := &idem.BeginParams{Scope: "bench", Key: "done", Fingerprint: "f", Lease: time.Minute, Window: time.Hour}
	res, err := s.Begin(ctx, p)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Complete(ctx, &idem.CompleteParams{Scope: "bench", Key: "done", Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte("x")}}); err != nil {
		b.Fatal(err)
	}
	for _, callers := range []int{1, 16} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			var walBefore, walAfter int64
			lsn := `SELECT pg_current_wal_lsn() - '0/0'::pg_lsn`
			if err := s.Pool().QueryRow(ctx, lsn).Scan(&walBefore); err != nil {
				b.Fatal(err)
			}
			bench.ParallelN(b, callers, func() error {
				res, err := s.Begin(ctx, p)
				if err == nil && res.Decision != idem.Replay {
					err = fmt.Errorf("begin: %s, want replay", res.Decision)
				}
				return err
			})
			if err := s.Pool().QueryRow(ctx, lsn).Scan(&walAfter); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(walAfter-walBefore)/float64(b.N), "wal-B/op")
		})
	}
}
