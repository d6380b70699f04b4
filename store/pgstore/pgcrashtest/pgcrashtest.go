// Package pgcrashtest is the PostgreSQL side of the real-process crash
// tests that several modules share (the process side is the root module's
// internal/crashtest): a fresh schema per test, a ledger store that
// commits a handler's business transaction with the key's outcome, and the
// outbox relay SIGKILL test that each broker adapter runs against its
// broker (RunRelay). It is test support, with no use in production.
//
// A broker's test package wires the relay test up in two places:
//
//	func TestMain(m *testing.M) {
//		if pgcrashtest.IsRelayChild() {
//			os.Exit(pgcrashtest.RelayChild(openPublisher)) // a relay process
//		}
//		os.Exit(m.Run())
//	}
//
//	res := pgcrashtest.RunRelay(t, &pgcrashtest.RelayTest{Broker: ..., Subject: ..., Consume: ..., Drained: ...})
package pgcrashtest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var schemaSeq atomic.Int64

// Schema returns a pool on the test PostgreSQL (servicetest.Postgres: the
// test skips without it), its URL and the name of a fresh schema, PREFIX
// followed by numbers, that t's cleanup drops (with CASCADE; the pool
// closes after). The schema is not created: pgstore.New with Migrate, or
// the caller, does.
func Schema(t testing.TB, prefix string) (pool *pgxpool.Pool, url, schema string) {
	t.Helper()
	url = servicetest.Postgres.Need(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close) // after the schema's drop
	schema = fmt.Sprintf("%s_%d_%d", prefix, time.Now().UnixNano()%1e9, schemaSeq.Add(1))
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return pool, url, schema
}

// TxSlot carries a delivery's business transaction from the handler to
// the ledger's Complete, so that the effect and the record commit
// together. Put one in the delivery's context with WithTxSlot; the handler
// sets Tx to the transaction it began and leaves open.
type TxSlot struct{ Tx pgx.Tx }

type slotKey struct{}

// WithTxSlot returns ctx carrying slot.
func WithTxSlot(ctx context.Context, slot *TxSlot) context.Context {
	return context.WithValue(ctx, slotKey{}, slot)
}

// TxSlotFrom returns the slot ctx carries, or nil.
func TxSlotFrom(ctx context.Context) *TxSlot {
	slot, _ := ctx.Value(slotKey{}).(*TxSlot)
	return slot
}

// RollbackOpen rolls back a transaction the handling left in slot (its
// lease was lost, so the ledger never completed it) and empties the slot.
func (slot *TxSlot) RollbackOpen(ctx context.Context) {
	if slot != nil && slot.Tx != nil {
		_ = slot.Tx.Rollback(ctx)
		slot.Tx = nil
	}
}

// TxStore is the pgstore ledger with one change: a Complete made while
// the context's TxSlot holds an open business transaction runs in it
// (CompleteTx) and commits it; a Release rolls it back first. So the
// handler's writes commit iff the key's outcome does: exactly once.
type TxStore struct{ *pgstore.Store }

// Complete records the outcome, in the slot's transaction if there is one,
// and commits it.
func (s TxStore) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	slot := TxSlotFrom(ctx)
	if slot == nil || slot.Tx == nil {
		return s.Store.Complete(ctx, p)
	}
	tx := slot.Tx
	slot.Tx = nil
	rec, err := s.Store.CompleteTx(ctx, tx, p)
	if err != nil {
		_ = tx.Rollback(ctx)
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	return rec, nil
}

// Release rolls back the slot's transaction, if any, and releases the key.
func (s TxStore) Release(ctx context.Context, p *idem.ReleaseParams) error {
	TxSlotFrom(ctx).RollbackOpen(ctx)
	return s.Store.Release(ctx, p)
}

// Pool opens a pool of at most maxConns connections on url, for a child
// process (which has no testing.T to fail).
func Pool(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = maxConns
	return pgxpool.NewWithConfig(ctx, cfg)
}

// CheckAppliedOnce checks a consumer crash test's outcome: the effects
// table (columns msg_id, one row per application) holds exactly one row
// for each of ids and none for any other id, and the ledger over s has
// each id's key in scope completed by messaging.Consumer ("handled").
func CheckAppliedOnce(t testing.TB, pool *pgxpool.Pool, effects string, s idem.Store, scope string, ids []string) {
	t.Helper()
	ctx := context.Background()
	rows := map[string]int{}
	rs, err := pool.Query(ctx, `SELECT msg_id, count(*) FROM `+effects+` GROUP BY msg_id`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var id string
		var n int
		if err := rs.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		rows[id] = n
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	ledger, err := idem.New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if rows[id] != 1 {
			t.Errorf("%s: %d rows, want exactly 1", id, rows[id])
		}
		rec, err := ledger.Get(ctx, scope, id)
		if err != nil || rec.State != idem.StateCompleted || rec.Outcome == nil || rec.Outcome.Meta["messaging"] != "handled" {
			t.Errorf("%s: ledger record %+v (%v), want completed as handled", id, rec, err)
		}
	}
	if len(rows) != len(ids) {
		t.Errorf("%d distinct ids in effects, want %d", len(rows), len(ids))
	}
}
