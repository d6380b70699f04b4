// Package batch groups operations that concurrent callers start into
// batches, so a store pays one round trip, one statement or script, and
// one commit for the lot: group commit on the application's side, as
// River's job completer does.
//
// An operation that finds no batch on its way runs at once, alone: a lone
// caller waits for nothing. Any other queues, also while a slot is free,
// until the rule below sends the queue. The queue goes as one
// batch when a batch comes back, or as soon as it holds more than two
// operations per batch on its way (with at most MaxInFlight batches on
// their way), led by the caller of its first operation: that caller's
// goroutine runs the batch, and the others wait for their results.
package batch

import (
	"context"
	"slices"
	"sync"
)

// Batcher batches operations of type T (a pointer the runner fills in
// with each operation's result). Set Run, MaxBatch and MaxInFlight before
// the first Do; the zero values of the limits mean 1.
type Batcher[T any] struct {
	// Run runs a batch of one or more operations and records each one's
	// result in it. It runs on the goroutine of the batch's first caller,
	// with that caller's context, which is not cancelled while the batch
	// holds other callers' operations too. It must not keep batch after
	// it returns.
	Run func(ctx context.Context, batch []T)
	// MaxBatch bounds the operations of one batch; MaxInFlight the batches
	// on their way at a time.
	MaxBatch, MaxInFlight int

	mu     sync.Mutex
	queue  []*waiter[T]
	active int // batches on their way
	// alone is the batch of an operation run alone, which happens only
	// when nothing is on its way, so one at a time: no allocation.
	alone [1]T
}

// waiter is a queued operation. wake receives, once, the batch its caller
// is to lead (with it first), or nil when the operation ran in another's.
type waiter[T any] struct {
	op   T
	wake chan []*waiter[T]
}

// Do runs op, in a batch or alone, and returns when its result is in op.
// It returns ctx's error, without running op, when ctx ends before any
// batch took op; once a batch holds op, Do waits for its end.
func (b *Batcher[T]) Do(ctx context.Context, op T) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	if b.active == 0 {
		// Nothing is queued while nothing is on its way: run op alone,
		// with no channel to make since nobody waits for it.
		b.active++
		b.mu.Unlock()
		defer b.next()
		b.alone[0] = op
		defer clear(b.alone[:])
		b.Run(ctx, b.alone[:])
		return nil
	}
	w := &waiter[T]{op: op, wake: make(chan []*waiter[T], 1)}
	b.queue = append(b.queue, w)
	if b.active < max(b.MaxInFlight, 1) && b.ready() {
		b.send()
	}
	b.mu.Unlock()
	var batch []*waiter[T]
	select {
	case batch = <-w.wake:
	case <-ctx.Done():
		if b.remove(w) {
			return ctx.Err()
		}
		// Its batch is on its way, or was handed to it: see it through.
		batch = <-w.wake
	}
	if batch != nil {
		b.lead(ctx, batch)
	}
	return nil
}

// ready says whether the queue is to go as a batch now, as far as the
// batches on their way allow (the caller checks their limit). With nothing
// on its way, anything queued goes. Otherwise it waits until it holds more
// than two operations per batch on its way: a batch of one or two, sent the
// moment another comes back, pays a round trip of its own for little,
// while the batches on their way keep the server busy and their callers'
// next operations are about to join the queue. (Two per batch did better
// than one or three on Redis: docs/performance.md.)
func (b *Batcher[T]) ready() bool { return len(b.queue) > 2*b.active }

// send takes the next batch off the queue and hands it to the caller of its
// first operation to lead.
func (b *Batcher[T]) send() {
	b.active++
	n := min(len(b.queue), max(b.MaxBatch, 1))
	batch := slices.Clone(b.queue[:n])
	b.queue = slices.Delete(b.queue, 0, n)
	batch[0].wake <- batch
}

// lead runs batch (whose first operation is the caller's own), wakes the
// callers of the others and hands the next batch on.
func (b *Batcher[T]) lead(ctx context.Context, batch []*waiter[T]) {
	defer b.next()
	defer func() {
		for _, w := range batch[1:] {
			w.wake <- nil
		}
	}()
	if len(batch) > 1 {
		ctx = context.WithoutCancel(ctx)
	}
	ops := make([]T, len(batch))
	for i, w := range batch {
		ops[i] = w.op
	}
	b.Run(ctx, ops)
}

// next frees the slot of the batch just done and sends the queue when it
// is ready (with one batch fewer on its way, below the limit).
func (b *Batcher[T]) next() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.active--
	if b.ready() {
		b.send()
	}
}

// remove takes w out of the queue if it is still there: its caller gave up
// before any batch took it.
func (b *Batcher[T]) remove(w *waiter[T]) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := slices.Index(b.queue, w)
	if i < 0 {
		return false
	}
	b.queue = slices.Delete(b.queue, i, i+1)
	return true
}

// Hold marks one batch as on its way until release is called, so that
// operations started meanwhile queue: for tests of a store's batches.
func (b *Batcher[T]) Hold() (release func()) {
	b.mu.Lock()
	b.active++
	b.mu.Unlock()
	return b.next
}

// Queued returns how many operations wait in the queue.
func (b *Batcher[T]) Queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

// InFlight returns how many batches are on their way.
func (b *Batcher[T]) InFlight() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.active
}
