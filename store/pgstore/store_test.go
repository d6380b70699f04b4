package pgstore

import (
	"context"
	"errors"
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

func TestOpenBadURL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, err := Open(ctx, "postgres://user:secret@host:notaport/db", nil)
	if !errors.Is(err, idem.ErrInvalid) || strings.Contains(err.Error(), "secret") {
		t.Errorf("Open of an unparsable URL: %v, want ErrInvalid without the password", err)
	}
	// A port nobody listens on: refused at once.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = Open(ctx, "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=5", nil)
	if !errors.Is(err, ErrUnavailable) || !strings.HasPrefix(err.Error(), "pgstore: database unavailable: ") {
		t.Errorf("Open of a dead address: %v, want \"pgstore: database unavailable: ...\"", err)
	}
}

// A URL's pool_max_conns sizes the pool Open makes.
func TestOpenPoolSize(t *testing.T) {
	t.Parallel()
	url := servicetest.Postgres.Need(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	s, err := Open(context.Background(), url+sep+"pool_max_conns=3", &Config{Schema: freshSchema(t, sharedPool(t)), Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.Pool().Config().MaxConns; got != 3 {
		t.Errorf("pool_max_conns=3: the pool has %d connections", got)
	}
}

func TestOpenOwnsItsPool(t *testing.T) {
	t.Parallel()
	url := servicetest.Postgres.Need(t)
	pool := sharedPool(t)
	schema := freshSchema(t, pool)
	ctx := context.Background()
	s, err := Open(ctx, url, &Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Minute, Window: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if got := s.Pool().Config().MaxConns; got != DefaultMaxConns {
		t.Errorf("pool of a URL without pool_max_conns: %d connections, want %d", got, DefaultMaxConns)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Pool().Ping(ctx); err == nil {
		t.Error("the pool Open made still answers after Close")
	}
	// New on a caller's pool leaves it open.
	s2, err := New(pool, &Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
	if err := pool.Ping(ctx); err != nil {
		t.Errorf("the caller's pool after Close: %v", err)
	}
}

func TestNULIsInvalid(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	_, err := s.Begin(context.Background(), &idem.BeginParams{Scope: "s", Key: "a\x00b", Fingerprint: "f", Lease: time.Minute, Window: time.Hour})
	wantErr(t, "Begin with a NUL in the key", err, idem.ErrInvalid)
}

// insertExpired adds n completed records whose retention ended an hour
// ago, in one statement.
func insertExpired(t testing.TB, s *Store, scope string, n int) {
	t.Helper()
	_, err := s.Pool().Exec(context.Background(), fmt.Sprintf(`INSERT INTO %s.records
	(scope, key, fingerprint, state, token, attempts, lease_until, outcome_data, created, completed, expires, retain_until, window_us, retention_us)
	SELECT $1, 'k' || i, 'f', 'completed', nextval('%[1]s.tokens'), 1, now() - interval '2 hours', '\x7b7d', now() - interval '2 hours',
		now() - interval '2 hours', now() - interval '1 hour', now() - interval '1 hour', 3600000000, 0
	FROM generate_series(1, $2::int) AS i`, s.q.schema), scope, n)
	if err != nil {
		t.Fatal(err)
	}
}

func TestSweepBatches(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	insertExpired(t, s, "old", 2*sweepBatch+5)
	// A pending row whose retain_until passed but whose lease is live (a
	// hand-made row: the store never writes one) is kept anyway.
	if _, err := s.Pool().Exec(ctx, `INSERT INTO `+s.q.schema+`.records
	(scope, key, fingerprint, state, token, attempts, lease_until, created, retain_until, window_us, retention_us)
	VALUES ('live', 'k', 'f', 'pending', nextval('`+s.q.schema+`.tokens'), 1, now() + interval '1 hour', now(), now() - interval '1 hour', 1, 0)`); err != nil {
		t.Fatal(err)
	}
	res, err := s.Sweep(ctx, &idem.SweepParams{Limit: 7})
	if err != nil || res.Deleted != 7 {
		t.Fatalf("Sweep(7): %+v %v, want 7", res, err)
	}
	res, err = s.Sweep(ctx, &idem.SweepParams{})
	if err != nil || res.Deleted != 2*sweepBatch+5-7 {
		t.Fatalf("Sweep(0): %+v %v, want the other %d in batches", res, err, 2*sweepBatch+5-7)
	}
	if n, err := s.Size(ctx); err != nil || n != 1 {
		t.Errorf("Size after Sweep: %d %v, want 1 (the live pending row)", n, err)
	}
}

// TestSweepLarge measures Sweep of IDEM_PG_SWEEP_ROWS expired records
// (e.g. 1000000) beside 10% live ones; it is skipped without the variable.
func TestSweepLarge(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("IDEM_PG_SWEEP_ROWS"))
	if n <= 0 {
		t.Skip("set IDEM_PG_SWEEP_ROWS=1000000 to measure Sweep of that many expired records")
	}
	s := newStore(t)
	ctx := context.Background()
	start := time.Now()
	insertExpired(t, s, "old", n)
	live := n / 10
	if _, err := s.Pool().Exec(ctx, `INSERT INTO `+s.q.schema+`.records
	(scope, key, fingerprint, state, token, attempts, lease_until, outcome_data, created, completed, expires, retain_until, window_us, retention_us)
	SELECT 'live', 'k' || i, 'f', 'completed', nextval('`+s.q.schema+`.tokens'), 1, now(), '\x7b7d', now(), now(),
		now() + interval '1 day', now() + interval '1 day', 86400000000, 0
	FROM generate_series(1, $1::int) AS i`, live); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pool().Exec(ctx, `VACUUM ANALYZE `+s.q.schema+`.records`); err != nil {
		t.Fatal(err)
	}
	t.Logf("inserted %d expired and %d live records in %s", n, live, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	res, err := s.Sweep(ctx, &idem.SweepParams{})
	took := time.Since(start)
	if err != nil || res.Deleted != n {
		t.Fatalf("Sweep: %+v %v, want %d deleted", res, err, n)
	}
	t.Logf("Sweep deleted %d records in %s (%.0f records/s, batches of %d)", n, took.Round(time.Millisecond), float64(n)/took.Seconds(), sweepBatch)
	start = time.Now()
	res, err = s.Sweep(ctx, &idem.SweepParams{})
	if err != nil || res.Deleted != 0 {
		t.Fatalf("second Sweep: %+v %v", res, err)
	}
	t.Logf("a Sweep with nothing due took %s", time.Since(start).Round(time.Microsecond))
}

// Delete leaves a tombstone no reader sees, so that a Begin that drew its
// token before the delete conflicts with it and draws a greater one; Sweep
// removes it after the grace period without counting it as a record.
func TestDeleteTombstone(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	p := &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Minute, Window: time.Hour}
	first, err := s.Begin(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, &idem.KeyParams{Scope: "s", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "second Delete", s.Delete(ctx, &idem.KeyParams{Scope: "s", Key: "k"}), idem.ErrNotFound)
	_, err = s.Get(ctx, &idem.KeyParams{Scope: "s", Key: "k"})
	wantErr(t, "Get of a deleted key", err, idem.ErrNotFound)
	if n, err := s.Size(ctx); err != nil || n != 0 {
		t.Errorf("Size after Delete: %d %v, want 0", n, err)
	}
	if by, err := s.SizeByState(ctx); err != nil || len(by) != 3 || by[idem.StatePending] != 0 || by[idem.StateCompleted] != 0 || by[idem.StateReleased] != 0 {
		t.Errorf("SizeByState after Delete: %v %v, want 0 in each of the 3 states (the tombstone is no record)", by, err)
	}
	if l, err := s.List(ctx, &idem.ListParams{Scope: "s"}); err != nil || len(l.Records) != 0 {
		t.Errorf("List after Delete: %+v %v, want nothing", l, err)
	}
	var state string
	if err := s.Pool().QueryRow(ctx, `SELECT state FROM `+s.q.schema+`.records`).Scan(&state); err != nil || state != "deleted" {
		t.Fatalf("the stored row: %q %v, want a tombstone", state, err)
	}
	if res, err := s.Sweep(ctx, &idem.SweepParams{}); err != nil || res.Deleted != 0 {
		t.Errorf("Sweep within the grace period: %+v %v, want nothing", res, err)
	}
	if _, err := s.Pool().Exec(ctx, `UPDATE `+s.q.schema+`.records SET retain_until = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Sweep(ctx, &idem.SweepParams{}); err != nil || res.Deleted != 0 {
		t.Errorf("Sweep of an old tombstone: %+v %v, want 0 records counted", res, err)
	}
	var rows int
	if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM `+s.q.schema+`.records`).Scan(&rows); err != nil || rows != 0 {
		t.Errorf("rows after the tombstone's Sweep: %d %v, want 0", rows, err)
	}
	again, err := s.Begin(ctx, p)
	if err != nil || again.Decision != idem.Acquired || again.Record.Token <= first.Record.Token || again.Record.Attempts != 1 {
		t.Errorf("Begin after Delete: %+v %v, want acquired with a greater token, attempt 1", again, err)
	}
}

func TestCallerClosedPool(t *testing.T) {
	t.Parallel()
	url := servicetest.Postgres.Need(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	schema := freshSchema(t, sharedPool(t))
	s, err := New(pool, &Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()
	_, err = s.Get(ctx, &idem.KeyParams{Scope: "s", Key: "k"})
	wantErr(t, "Get on a pool the caller closed", err, idem.ErrClosed)
}

// TestAnswersAreTheStoredRecord: the record a fresh key's Begin returns
// (filled in by the store from the token and the statement's time), the
// one a takeover returns and the one Complete returns (its columns) are
// the record as stored, field by field.
func TestAnswersAreTheStoredRecord(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	p := &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: 30*time.Second + 1500*time.Nanosecond,
		Window: time.Hour, Retention: 2 * time.Hour}
	same := func(what string, got *idem.Record) {
		t.Helper()
		stored, err := s.Get(ctx, &idem.KeyParams{Scope: "s", Key: "k"})
		if err != nil {
			t.Fatalf("%s: get: %v", what, err)
		}
		// The outcome Complete returns is the caller's; Get reads it back.
		got, stored = clone(got), clone(stored)
		got.Outcome, stored.Outcome = nil, nil
		if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", stored) {
			t.Errorf("%s returned\n%+v\nstored\n%+v", what, got, stored)
		}
	}
	res, err := s.Begin(ctx, p)
	if err != nil || res.Decision != idem.Acquired || res.Takeover {
		t.Fatalf("begin: %+v, %v; want acquired", res, err)
	}
	same("fresh begin", res.Record)
	if err := s.Release(ctx, &idem.ReleaseParams{Scope: "s", Key: "k", Token: res.Record.Token}); err != nil {
		t.Fatal(err)
	}
	again, err := s.Begin(ctx, p)
	if err != nil || again.Decision != idem.Acquired || again.Record.Token <= res.Record.Token {
		t.Fatalf("begin after release: %+v, %v; want acquired with a token above %d", again, err, res.Record.Token)
	}
	same("begin after release", again.Record)
	done, err := s.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: again.Record.Token,
		Outcome: idem.Outcome{Data: []byte("x"), Meta: map[string]string{"a": "b"}}})
	if err != nil {
		t.Fatal(err)
	}
	same("complete", done)
	if done.State != idem.StateCompleted || !done.Expires.Equal(done.Completed.Add(p.Window)) ||
		!done.RetainUntil.Equal(done.Completed.Add(p.Retention)) {
		t.Errorf("complete: %+v", done)
	}
}

func clone(r *idem.Record) *idem.Record {
	c := *r
	return &c
}
