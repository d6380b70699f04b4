package pgstore

import (
	"cmp"
	"context"
	"errors"
	"slices"

	"github.com/idemkit/idem/internal/batch"
	"github.com/jackc/pgx/v5"
)

// Appends on the pool are batched (internal/batch), as Completes are: an
// Append that finds no batch on its way runs alone, at once; while one is
// on its way, the Appends of other instances queue, and go together as
// one pgx batch: one round trip, one implicit transaction, one commit: group commit on the engine's side, which
// the issue's durability allows ("commits of concurrent instances may
// share a round trip"). Each Append is judged on its own instance and Seq
// and gets its own answer: a refused compare-and-set matches no row and
// fails no other. A batch the server refuses (an error, not a refused
// compare-and-set) is rolled back and each Append runs again alone, so
// that one that cannot be stored fails no other. Appends in a caller's
// transaction (InTx) are never batched.
const (
	maxAppendBatch     = 32
	maxAppendsInFlight = 3
	maxBatchedAppend   = 64 << 10
)

// appendOp is one Append on the pool, with its answer: the new seq, or
// matched false when the instance is not at the Seq it names.
type appendOp struct {
	id      string
	args    []any
	size    int
	seq     int64
	matched bool
	err     error
}

func (j *Journal) appender() *batch.Batcher[*appendOp] {
	j.batchOnce.Do(func() {
		conns := int(j.s.pool.Config().MaxConns)
		j.batcher = &batch.Batcher[*appendOp]{Run: j.runAppends, MaxBatch: maxAppendBatch,
			MaxInFlight: min(maxAppendsInFlight, max(1, conns/2))}
	})
	return j.batcher
}

// appendOnPool runs o alone or in a batch.
func (j *Journal) appendOnPool(ctx context.Context, o *appendOp) error {
	if o.size > maxBatchedAppend {
		j.runAppends(ctx, []*appendOp{o})
		return nil
	}
	return j.appender().Do(ctx, o)
}

// runAppends runs a batch of Appends: alone with the statement, or
// together in one transaction, in the order of their ids so that two
// batches lock rows in the same order.
func (j *Journal) runAppends(ctx context.Context, ops []*appendOp) {
	if len(ops) == 1 {
		o := ops[0]
		o.err = j.s.pool.QueryRow(ctx, j.q.replace, o.args...).Scan(&o.seq)
		o.matched = o.err == nil
		if errors.Is(o.err, pgx.ErrNoRows) {
			o.err = nil
		}
		return
	}
	slices.SortFunc(ops, func(a, b *appendOp) int { return cmp.Compare(a.id, b.id) })
	if err := j.appendTogether(ctx, ops); err != nil {
		// The server refused the batch: each goes alone, so that one
		// that cannot be stored fails no other.
		for _, o := range ops {
			j.runAppends(ctx, []*appendOp{o})
		}
	}
}

// appendTogether sends the statements as one pgx batch: one round trip,
// and one implicit transaction (the extended protocol's, up to the
// batch's one Sync), so they commit together or not at all.
func (j *Journal) appendTogether(ctx context.Context, ops []*appendOp) error {
	b := &pgx.Batch{}
	for _, o := range ops {
		b.Queue(j.q.replace, o.args...)
	}
	br := j.s.pool.SendBatch(ctx, b)
	for _, o := range ops {
		err := br.QueryRow().Scan(&o.seq)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			o.matched = false
		case err != nil:
			br.Close()
			return err
		default:
			o.matched = true
		}
	}
	if err := br.Close(); err != nil {
		return err
	}
	j.appendBatches.Add(1)
	j.batchedAppends.Add(int64(len(ops)))
	return nil
}
