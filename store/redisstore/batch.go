package redisstore

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Begin and Complete of one shard are batched (internal/batch): while
// scripts of the shard are on their way to Redis, the Begins and Completes
// other callers start on it queue up, and the queue goes to Redis as one
// script (batchScript) led by the caller of its first operation: one round
// trip and one script call for the lot. A caller that finds nothing on its
// way runs its own script at once, so a lone caller waits for nothing;
// under load it saves the per-request cost (system calls on both sides,
// the script call) that dominates these small operations. Each operation keeps its own
// rules and its own reply; a batch is atomic as a whole, in queue order,
// at one server time. The keys of a batch share the shard's hash tag, so
// it runs on a cluster too.

// maxBatch bounds the operations one script runs; maxInFlight the batches
// of one shard on their way at a time, so Redis works on one while the
// callers of another read their replies and queue their next operations.
// With one shard busy, 3 did as well as or better than 1, 2, 4 and 8 at 16
// and 64 callers; 1 (no overlap) did worse at 16.
const (
	maxBatch    = 64
	maxInFlight = 3
)

// pendingOp is one Begin or Complete waiting in a shard's queue.
type pendingOp struct {
	script *redis.Script // beginScript or completeScript, when it runs alone
	kind   byte          // 'b' or 'c', its name in batchScript
	keys   []string
	args   []any
	// the script's reply for o, set by runBatch
	reply   any
	waitErr error
	err     error
}

// exec runs o through the batcher of shard and returns its script's reply.
func (s *Store) exec(ctx context.Context, shard int, o *pendingOp) (reply any, waitErr, err error) {
	if s.noBatch {
		return s.run(ctx, o.script, o.keys, o.args...)
	}
	if err := s.batch[shard].Do(ctx, o); err != nil {
		return nil, nil, err
	}
	return o.reply, o.waitErr, o.err
}

// runBatch runs batch, alone with its own script when it is one operation,
// and gives each operation its reply.
func (s *Store) runBatch(ctx context.Context, batch []*pendingOp) {
	if len(batch) == 1 {
		o := batch[0]
		o.reply, o.waitErr, o.err = s.run(ctx, o.script, o.keys, o.args...)
		return
	}
	kinds := make([]byte, len(batch))
	nkeys, nargs := 0, 1
	for i, o := range batch {
		kinds[i] = o.kind
		nkeys += len(o.keys)
		nargs += len(o.args)
	}
	keys := make([]string, 0, nkeys)
	args := make([]any, 1, nargs)
	args[0] = kinds
	for _, o := range batch {
		keys = append(keys, o.keys...)
		args = append(args, o.args...)
	}
	reply, waitErr, err := s.run(ctx, batchScript, keys, args...)
	replies, ok := reply.([]any)
	if err == nil && (!ok || len(replies) != len(batch)) {
		err = fmt.Errorf("redisstore: batch of %d: unexpected script reply %T", len(batch), reply)
	}
	for i, o := range batch {
		if err != nil {
			o.err = err
			continue
		}
		o.reply, o.waitErr = replies[i], waitErr
	}
}
