package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var _ workflow.TxJournal = (*Journal)(nil)

// stepTxKey is the context key of an InTx transaction.
type stepTxKey struct{}

// stepTx is an InTx transaction and the journal that began it.
type stepTx struct {
	j  *Journal
	tx pgx.Tx
}

// StepTx returns the transaction in which the engine runs an action
// marked InTx (workflow.Action.InTx) on a pgstore journal, from the
// action's context; nil outside one. The action does its writes on it:
//
//	Run: func(ctx context.Context, s *workflow.Step) ([]byte, error) {
//		_, err := pgstore.StepTx(ctx).Exec(ctx, `INSERT INTO shipments (order_id) VALUES ($1)`, s.InstanceID)
//		return nil, err
//	},
//
// They commit with the journal write that records the step, or roll back
// with it: the action runs again, in a fresh transaction, if that write
// conflicts (an event came in meanwhile) or the process dies before it.
// A failed attempt's writes roll back too. Use the transaction from the
// action's goroutine only (a pgx.Tx is one connection) and leave its
// Commit and Rollback to the engine.
func StepTx(ctx context.Context) pgx.Tx {
	if st, ok := ctx.Value(stepTxKey{}).(*stepTx); ok {
		return st.tx
	}
	return nil
}

// db is what the journal's statements run on for ctx: the transaction of
// this journal's InTx that ctx carries, else the pool.
func (j *Journal) db(ctx context.Context) querier {
	if st, ok := ctx.Value(stepTxKey{}).(*stepTx); ok && st.j == j {
		return st.tx
	}
	return j.s.pool
}

// InTx implements workflow.TxJournal: it begins a transaction on the
// store's pool (READ COMMITTED, the database's default), calls fn with a
// context that carries it (StepTx), and commits it if fn returns nil;
// otherwise it rolls it back and returns fn's error. Every method of the
// journal called with that context (Append, Get, ...) runs in the
// transaction. Called with a context that carries one already, InTx runs
// fn in a savepoint of it.
//
// A failure to begin or commit wraps ErrUnavailable when the database went
// away or the transaction lost a serialization conflict or a deadlock
// (SQLSTATE 40001, 40P01): in every such case nothing of fn's was
// committed, and the engine does the unit again later.
func (j *Journal) InTx(ctx context.Context, fn func(ctx context.Context) error) error {
	if fn == nil {
		return fmt.Errorf("%w: InTx: nil function", idem.ErrInvalid)
	}
	if err := j.enter(ctx); err != nil {
		return err
	}
	var tx pgx.Tx
	var err error
	if outer, ok := ctx.Value(stepTxKey{}).(*stepTx); ok && outer.j == j {
		tx, err = outer.tx.Begin(ctx) // a savepoint
	} else {
		tx, err = j.s.pool.Begin(ctx)
	}
	if err != nil {
		return wrapTxErr("journal: begin", err)
	}
	if err := fn(context.WithValue(ctx, stepTxKey{}, &stepTx{j: j, tx: tx})); err != nil {
		// The connection goes back to the pool only once rolled back,
		// whatever became of ctx.
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return wrapTxErr("journal: commit", err)
	}
	return nil
}

// wrapTxErr is wrapErr for a statement of an InTx transaction, where a
// serialization failure or a deadlock rolls the whole transaction back:
// unavailable, as a dropped connection is, since nothing of it committed.
func wrapTxErr(op string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01") {
		return fmt.Errorf("%w: %s: the transaction was rolled back (%s): %w", ErrUnavailable, op, pgErr.Code, err)
	}
	return wrapErr(op, err)
}

// wrap maps an error of a journal statement run on ctx's querier.
func (j *Journal) wrap(ctx context.Context, op string, err error) error {
	if _, ok := j.db(ctx).(pgx.Tx); ok {
		return wrapTxErr(op, err)
	}
	return wrapErr(op, err)
}
