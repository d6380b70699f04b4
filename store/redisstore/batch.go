package redisstore

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Begin and Complete of one shard are batched: while scripts of the shard
// are on their way to Redis, the Begins and Completes other callers start
// on it queue up, and the queue goes to Redis as one script (batchScript)
// led by the caller of its first operation: one round trip and one script
// call for the lot. The queue goes when a script comes back, or as soon as
// it holds more than two operations per script on its way (ready), with
// at most maxInFlight scripts on their way. A caller that finds nothing on
// its way runs its own script at once, so batching adds no wait; under load
// it saves the per-request cost (system calls on both sides, the script
// call) that dominates these small operations. Each operation keeps its
// own rules and its own reply; a batch is atomic as a whole, in queue
// order, at one server time. The keys of a batch share the shard's hash
// tag, so it runs on a cluster too.

// maxBatch bounds the operations one script runs; maxInFlight the batches
// of one shard on their way at a time, so Redis works on one while the
// callers of another read their replies and queue their next operations.
// With one shard busy on the test machine, 3 did as well as or better than
// 1, 2, 4 and 8 at 16 and 64 callers; the differences were within the
// machine's noise except for 1 (no overlap: fewer cycles/s at 16 callers).
// With ready's rule, 4 did no better than 3.
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
	// wake receives, once, the batch its caller is to run (o first), or
	// nil when o ran in another's batch and reply, waitErr and err are set.
	wake    chan []*pendingOp
	reply   any
	waitErr error
	err     error
}

// batcher is the queue of one shard. An operation that finds no batch on
// its way runs at once; any other queues. A caller whose batch is done
// takes the next batch off the queue, when it is ready, and hands it to
// the caller of its first operation to run; so does a caller whose
// operation makes the queue long enough to go while others are on their
// way.
type batcher struct {
	mu     sync.Mutex
	queue  []*pendingOp
	active int // batches on their way
}

// ready says whether the queue is to go as a batch now, as far as the
// batches on their way allow (the caller checks their limit). With nothing
// on its way, anything queued goes. Otherwise it waits until it holds more
// than two operations per batch on its way: a batch of one or two, sent the
// moment another comes back, would pay a script call of its own for little
// (at 16 callers nearly half the scripts ran one operation), while the
// batches on their way keep Redis busy and their callers' next operations
// are about to join the queue. At 16 callers on one shard this made
// cycles/s 15-25% higher than sending at each return; two per batch did
// better than one or three.
func (b *batcher) ready() bool { return len(b.queue) > 2*b.active }

// send takes the next batch off the queue and hands it to the caller of its
// first operation to run.
func (b *batcher) send() {
	b.active++
	n := min(len(b.queue), maxBatch)
	batch := slices.Clone(b.queue[:n])
	b.queue = slices.Delete(b.queue, 0, n)
	batch[0].wake <- batch
}

// exec runs o through the batcher of shard and returns its script's reply.
func (s *Store) exec(ctx context.Context, shard int, o *pendingOp) (reply any, waitErr, err error) {
	if s.noBatch {
		return s.run(ctx, o.script, o.keys, o.args...)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	b := &s.batch[shard]
	b.mu.Lock()
	if b.active == 0 {
		// Nothing is queued while nothing is on its way: run o alone, with
		// no channel to make since nobody waits for it.
		b.active++
		b.mu.Unlock()
		reply, waitErr, err = s.run(ctx, o.script, o.keys, o.args...)
		b.next()
		return reply, waitErr, err
	}
	o.wake = make(chan []*pendingOp, 1)
	b.queue = append(b.queue, o)
	if b.active < s.inFlight && b.ready() {
		b.send()
	}
	b.mu.Unlock()
	var batch []*pendingOp
	select {
	case batch = <-o.wake:
	case <-ctx.Done():
		if b.remove(o) {
			return nil, nil, ctx.Err()
		}
		// Its batch is on its way, or was handed to it: see it through.
		batch = <-o.wake
	}
	if batch != nil {
		s.lead(ctx, b, batch)
	}
	return o.reply, o.waitErr, o.err
}

// lead runs batch (which holds the caller's own operation), then hands the
// next batch on. A batch of other callers' operations too runs to its end
// even if ctx is cancelled.
func (s *Store) lead(ctx context.Context, b *batcher, batch []*pendingOp) {
	if len(batch) > 1 {
		ctx = context.WithoutCancel(ctx)
	}
	s.runBatch(ctx, batch)
	b.next()
}

// next frees the slot of the batch just done and sends the queue when it
// is ready (with one batch fewer on its way, below the limit).
func (b *batcher) next() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.active--
	if b.ready() {
		b.send()
	}
}

// remove takes o out of the queue if it is still there: its caller gave up
// before any batch took it.
func (b *batcher) remove(o *pendingOp) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := slices.Index(b.queue, o)
	if i < 0 {
		return false
	}
	b.queue = slices.Delete(b.queue, i, i+1)
	return true
}

// runBatch runs batch, alone with its own script when it is one operation,
// and gives each operation its reply, waking the callers of all but the
// first (the leader's own, whose caller runs this).
func (s *Store) runBatch(ctx context.Context, batch []*pendingOp) {
	defer func() {
		for _, o := range batch[1:] {
			o.wake <- nil
		}
	}()
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
