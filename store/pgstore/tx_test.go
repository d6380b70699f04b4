package pgstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/jackc/pgx/v5"
)

// pay is a service's handler: it records the business write (a payment
// row) and the outcome in one transaction, and commits only when commit.
func pay(t *testing.T, s *Store, key string, commit bool) *idem.BeginResult {
	t.Helper()
	ctx := context.Background()
	tx, err := s.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	res, err := s.BeginTx(ctx, tx, &idem.BeginParams{Scope: "payments", Key: key, Fingerprint: "amount=500", Lease: time.Minute, Window: time.Hour})
	if err != nil {
		t.Fatalf("BeginTx: %v", err)
	}
	if res.Decision != idem.Acquired {
		return res
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+pgx.Identifier{s.Schema(), "payments"}.Sanitize()+` (key, amount) VALUES ($1, 500)`, key); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompleteTx(ctx, tx, &idem.CompleteParams{Scope: "payments", Key: key, Token: res.Record.Token,
		Outcome: idem.Outcome{Data: []byte(`{"paid":500}`)}}); err != nil {
		t.Fatalf("CompleteTx: %v", err)
	}
	if commit {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return res
}

func TestTransactional(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	payments := pgx.Identifier{s.Schema(), "payments"}.Sanitize()
	if _, err := s.Pool().Exec(ctx, `CREATE TABLE `+payments+` (key text, amount int)`); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		t.Helper()
		var n int
		if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM `+payments+` WHERE key = 'order-1'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	if res := pay(t, s, "order-1", false); res.Decision != idem.Acquired {
		t.Fatalf("first attempt: %s, want acquired", res.Decision)
	}
	_, err := s.Get(ctx, &idem.KeyParams{Scope: "payments", Key: "order-1"})
	wantErr(t, "Get after a rolled-back transaction", err, idem.ErrNotFound)
	if n := count(); n != 0 {
		t.Fatalf("rolled back: %d payment rows, want 0", n)
	}

	first := pay(t, s, "order-1", true)
	if first.Decision != idem.Acquired || first.Record.Attempts != 1 {
		t.Fatalf("after the rollback: %s attempts %d, want acquired as a fresh key", first.Decision, first.Record.Attempts)
	}
	for i := range 3 {
		res := pay(t, s, "order-1", true)
		if res.Decision != idem.Replay || string(res.Record.Outcome.Data) != `{"paid":500}` || res.Record.Token != first.Record.Token {
			t.Fatalf("duplicate %d: %s %+v, want the replay of the committed outcome", i, res.Decision, res.Record)
		}
	}
	if n := count(); n != 1 {
		t.Errorf("%d payment rows after a commit and 3 duplicates, want exactly 1", n)
	}
}

// A Begin waits for a transaction that holds the key, then sees what it
// committed.
func TestTransactionalConcurrentDuplicate(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	tx, err := s.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	p := &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Minute, Window: time.Hour}
	res, err := s.BeginTx(ctx, tx, p)
	if err != nil || res.Decision != idem.Acquired {
		t.Fatalf("BeginTx: %v %v", res, err)
	}
	dup := make(chan *idem.BeginResult, 1)
	go func() {
		r, err := s.Begin(ctx, p)
		if err != nil {
			t.Error(err)
		}
		dup <- r
	}()
	// The duplicate blocks on the uncommitted row until the commit.
	if _, err := s.CompleteTx(ctx, tx, &idem.CompleteParams{Scope: "s", Key: "k", Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte("done")}}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if r := <-dup; r == nil || r.Decision != idem.Replay || string(r.Record.Outcome.Data) != "done" {
		t.Errorf("concurrent duplicate: %+v, want the replay", r)
	}
}

// A replay, an in-flight answer and a mismatch write nothing: the Begin
// statement assigns no transaction id, so it writes no WAL and needs no
// commit.
func TestAnswersAssignNoTransactionID(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	p := &idem.BeginParams{Scope: "s", Key: "done", Fingerprint: "f", Lease: time.Minute, Window: time.Hour}
	res, err := s.Begin(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "done", Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	held := &idem.BeginParams{Scope: "s", Key: "held", Fingerprint: "f", Lease: time.Minute, Window: time.Hour}
	if _, err := s.Begin(ctx, held); err != nil {
		t.Fatal(err)
	}
	other := *p
	other.Fingerprint = "g"
	for _, c := range []struct {
		p    *idem.BeginParams
		want idem.Decision
	}{{p, idem.Replay}, {held, idem.InFlight}, {&other, idem.Mismatch}} {
		tx, err := s.Pool().Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.BeginTx(ctx, tx, c.p)
		if err != nil || res.Decision != c.want {
			t.Fatalf("Begin %s: %v %v, want %s", c.p.Key, res, err, c.want)
		}
		var xid *int64
		if err := tx.QueryRow(ctx, `SELECT txid_current_if_assigned()`).Scan(&xid); err != nil {
			t.Fatal(err)
		}
		if xid != nil {
			t.Errorf("%s: the Begin statement assigned transaction id %d: it wrote", c.want, *xid)
		}
		tx.Rollback(ctx)
	}
	// The acquiring Begin does write, so the check above can fail.
	tx, err := s.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := s.BeginTx(ctx, tx, &idem.BeginParams{Scope: "s", Key: "new", Fingerprint: "f", Lease: time.Minute, Window: time.Hour}); err != nil {
		t.Fatal(err)
	}
	var xid *int64
	if err := tx.QueryRow(ctx, `SELECT txid_current_if_assigned()`).Scan(&xid); err != nil || xid == nil {
		t.Errorf("an acquiring Begin assigned no transaction id (%v): the check proves nothing", err)
	}
}

func TestRolledBackTransactionWritesNothingEvenReleasing(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	p := &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Minute, Window: time.Hour}
	res, err := s.Begin(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := s.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseTx(ctx, tx, &idem.ReleaseParams{Scope: "s", Key: "k", Token: res.Record.Token}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, &idem.KeyParams{Scope: "s", Key: "k"}); err != nil || got.State != idem.StatePending {
		t.Errorf("after a rolled-back ReleaseTx: %+v %v, want still pending", got, err)
	}
	err = s.ReleaseTx(ctx, nil, &idem.ReleaseParams{Scope: "s", Key: "k", Token: res.Record.Token + 1})
	if !errors.Is(err, idem.ErrLeaseLost) {
		t.Errorf("ReleaseTx with a wrong token: %v, want ErrLeaseLost", err)
	}
}

// Each statement in a caller's transaction reads its own time, not the
// transaction's start: a Complete after work in the transaction is later
// than the Begin, and its lease and expiry are counted from then.
func TestTransactionStatementsReadTheirOwnTime(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	tx, err := s.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	res, err := s.BeginTx(ctx, tx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Minute, Window: time.Hour})
	if err != nil || res.Decision != idem.Acquired {
		t.Fatalf("BeginTx: %v %+v", err, res)
	}
	// The business work of the transaction: 20 ms of the server's time.
	if _, err := tx.Exec(ctx, `SELECT pg_sleep(0.02)`); err != nil {
		t.Fatal(err)
	}
	rec, err := s.CompleteTx(ctx, tx, &idem.CompleteParams{Scope: "s", Key: "k", Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte("x")}})
	if err != nil {
		t.Fatal(err)
	}
	if took := rec.Completed.Sub(res.Record.Created); took < 20*time.Millisecond {
		t.Errorf("Completed - Created = %s inside one transaction, want at least the 20ms the transaction worked", took)
	}
	if got := rec.Expires.Sub(rec.Completed); got != time.Hour {
		t.Errorf("Expires - Completed = %s, want the 1h window", got)
	}
}
