package pgstore

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/idemkit/idem/internal/batch"
	"github.com/jackc/pgx/v5"
)

// Completes on the pool are batched (internal/batch) when more Begins and
// Completes are on the pool than it has connections: then a Complete would
// wait for a connection anyway, and the queue goes as one UPDATE of all
// its keys (completeBatchSQL): one round trip, one statement and one
// commit for the lot, as River's job completer does. Each Complete is
// judged on its own key and token and gets its own answer; a batch commits
// as a whole. While the pool has a connection for each, a Complete runs
// its own statement at once: then waiting for a batch costs more than the
// batch saves, while with more callers than connections batches win
// (docs/performance.md). A Complete that finds no batch on its way runs
// alone too.
//
// Begins are not batched: a Begin may wait for another transaction that
// holds its key (a caller's BeginTx), and in a batch every key would wait
// with it. A Complete waits only for a row its token owns.

// maxCompleteBatch bounds the Completes of one statement;
// maxBatchedOutcome is the largest outcome a batch takes: bigger ones run
// alone, so a batch's statement stays small whatever the outcomes.
// maxCompletesInFlight bounds the statements of Completes on their way at
// a time, and so does half the pool's connections, which leaves the other
// half to Begins. Against unbatched Completes at 64 callers on a
// 16-connection pool, 3 statements on their way did as well as 8.
const (
	maxCompleteBatch     = 64
	maxCompletesInFlight = 3
	maxBatchedOutcome    = 64 << 10
)

// completeOp is one Complete on the pool, with its answer: the record, or
// found false when the token does not own the key.
type completeOp struct {
	scope, key string
	token      int64
	data, meta []byte
	r          row
	found      bool
	err        error
}

// setupBatching sets up the Completes' batcher for s's pool, and the
// demand above which Completes use it.
func (s *Store) setupBatching() {
	conns := int(s.pool.Config().MaxConns)
	s.batchAbove = int64(conns)
	s.completer = &batch.Batcher[*completeOp]{Run: s.runCompletes, MaxBatch: maxCompleteBatch,
		MaxInFlight: min(maxCompletesInFlight, max(1, conns/2))}
}

// complete runs o in a batch, or alone when its outcome is big or the pool
// has a connection for every Begin and Complete on it (this one
// included).
func (s *Store) complete(ctx context.Context, o *completeOp) error {
	onPool := s.onPool.Add(1)
	defer s.onPool.Add(-1)
	if len(o.data)+len(o.meta) > maxBatchedOutcome || onPool <= s.batchAbove {
		s.runCompletes(ctx, []*completeOp{o})
		return nil
	}
	return s.completer.Do(ctx, o)
}

// completeOne runs o alone, with complete's statement, on db.
func (s *Store) completeOne(ctx context.Context, db querier, o *completeOp) {
	o.found, o.err = queryRow(ctx, db, s.q.complete, []any{o.scope, o.key, o.token, o.data, o.meta}, o.read)
}

// read reads the record o's Complete stored from c's next columns
// (completedRow): the columns o does not know.
func (o *completeOp) read(c *columnReader) {
	r := &o.r
	r.scope, r.key, r.token, r.state = o.scope, o.key, o.token, "completed"
	r.fingerprint, r.attempts, r.leaseUntil, r.created = c.text(), c.int4(), c.time(), c.time()
	r.completed, r.expires, r.retain = c.timeOrNil(), c.timeOrNil(), c.time()
	r.window, r.retention = c.int8(), c.int8()
}

// runCompletes runs a batch of Completes: alone with complete's statement,
// or together, in the order of their keys so that two batches lock rows in
// the same order. When the server refuses the batch's statement (refused:
// not a lost connection or a server going away), each Complete runs again
// alone, so that one that cannot be stored fails no other.
func (s *Store) runCompletes(ctx context.Context, ops []*completeOp) {
	if len(ops) == 1 {
		s.completeOne(ctx, s.pool, ops[0])
		return
	}
	ops = slices.Clone(ops)
	slices.SortFunc(ops, func(a, b *completeOp) int {
		return cmp.Or(strings.Compare(a.scope, b.scope), strings.Compare(a.key, b.key), cmp.Compare(a.token, b.token))
	})
	scopes, keys := make([]string, len(ops)), make([]string, len(ops))
	tokens := make([]int64, len(ops))
	data, meta := make([][]byte, len(ops)), make([][]byte, len(ops))
	for i, o := range ops {
		scopes[i], keys[i], tokens[i], data[i], meta[i] = o.scope, o.key, o.token, o.data, o.meta
	}
	err := s.completeBatch(ctx, ops, scopes, keys, tokens, data, meta)
	switch {
	case refused(err):
		for _, o := range ops {
			s.runCompletes(ctx, []*completeOp{o})
		}
	case err != nil:
		for _, o := range ops {
			o.found, o.err = false, err
		}
	}
}

// completeBatch runs completeBatchSQL and hands each row to the Complete
// it answers. The statement is planned at each run (pgx's
// QueryExecModeCacheDescribe), not prepared once: a plan cached while the
// table was small joins the batch to the table with a sequential scan, and
// a connection kept it as the table grew (throughput fell to a third
// within seconds). Planned each time, it probes the primary key for each
// Complete.
func (s *Store) completeBatch(ctx context.Context, ops []*completeOp, args ...any) error {
	rows, err := s.pool.Query(ctx, s.q.completeBatch, append([]any{pgx.QueryExecModeCacheDescribe, binaryResults}, args...)...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		c := columnReader{vals: rows.RawValues()}
		i := c.int8()
		if c.err == nil && (i < 1 || int(i) > len(ops)) {
			c.err = errors.New("pgstore: complete: a batch's row answers no Complete of it")
		}
		if c.err != nil {
			return c.err
		}
		o := ops[i-1]
		if o.read(&c); c.err != nil {
			return c.err
		}
		o.found = true
	}
	return rows.Err()
}
