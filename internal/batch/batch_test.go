package batch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/idemkit/idem/internal/wait"
)

// op is a test operation: its value, and the batch it ran in.
type op struct {
	v     int
	batch []int
}

// recorder is a Batcher whose Run records each batch and sets each op's
// batch; when gate is set, Run first waits for a value on it.
type recorder struct {
	b       Batcher[*op]
	mu      sync.Mutex
	batches [][]int
	gate    chan struct{}
}

func newRecorder(maxBatch, maxInFlight int) *recorder {
	r := &recorder{}
	r.b = Batcher[*op]{MaxBatch: maxBatch, MaxInFlight: maxInFlight, Run: func(_ context.Context, ops []*op) {
		if r.gate != nil {
			<-r.gate
		}
		vs := make([]int, len(ops))
		for i, o := range ops {
			vs[i] = o.v
		}
		for _, o := range ops {
			o.batch = vs
		}
		r.mu.Lock()
		r.batches = append(r.batches, vs)
		r.mu.Unlock()
	}}
	return r
}

// waitQueued waits until n operations wait in b's queue.
func waitQueued[T any](t *testing.T, b *Batcher[T], n int) {
	t.Helper()
	wait.For(t, fmt.Sprintf("%d operations queued", n), func() bool { return b.Queued() == n })
}

// do runs v through r's batcher on a goroutine of its own and sends the
// finished op.
func (r *recorder) do(ctx context.Context, v int, done chan<- *op) {
	go func() {
		o := &op{v: v}
		if err := r.b.Do(ctx, o); err != nil {
			o.batch = nil
		}
		done <- o
	}()
}

// queueHeld queues operations 0 to n-1, in order, behind a batch on its
// way, lets that batch come back, and returns the channel their ops come
// back on.
func (r *recorder) queueHeld(t *testing.T, n int) chan *op {
	release := r.b.Hold()
	done := make(chan *op, n)
	for v := range n {
		r.do(context.Background(), v, done)
		waitQueued(t, &r.b, v+1)
	}
	release()
	return done
}

// TestAlone: with nothing on its way, an operation runs at once, alone, on
// its caller's goroutine, and leaves nothing on its way.
func TestAlone(t *testing.T) {
	r := newRecorder(8, 2)
	for v := range 3 {
		o := &op{v: v}
		if err := r.b.Do(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(o.batch, []int{v}) {
			t.Errorf("op %d ran in %v, want alone", v, o.batch)
		}
	}
	if n := r.b.InFlight(); n != 0 {
		t.Errorf("%d batches on their way after the calls returned, want 0", n)
	}
}

// TestQueueGoesWhenABatchReturns: operations that start while the only
// allowed batch is on its way queue, and go as one batch, in their order,
// when it comes back.
func TestQueueGoesWhenABatchReturns(t *testing.T) {
	r := newRecorder(8, 1)
	done := r.queueHeld(t, 4)
	for range 4 {
		if o := <-done; !slices.Equal(o.batch, []int{0, 1, 2, 3}) {
			t.Errorf("op %d ran in %v, want [0 1 2 3]", o.v, o.batch)
		}
	}
	if n := r.b.InFlight(); n != 0 {
		t.Errorf("%d batches on their way at the end, want 0", n)
	}
}

// TestReady: with one batch on its way and room for another, two queued
// operations wait; the third makes the queue go before the first batch
// comes back (more than two per batch on its way).
func TestReady(t *testing.T) {
	r := newRecorder(8, 2)
	release := r.b.Hold() // never comes back during the test
	done := make(chan *op, 3)
	r.do(context.Background(), 0, done)
	r.do(context.Background(), 1, done)
	waitQueued(t, &r.b, 2)
	r.do(context.Background(), 2, done)
	for range 3 {
		if o := <-done; len(o.batch) != 3 {
			t.Errorf("op %d ran in %v, want a batch of the three", o.v, o.batch)
		}
	}
	if n, q := r.b.InFlight(), r.b.Queued(); n != 1 || q != 0 {
		t.Errorf("%d on their way, %d queued; want 1 (the held one) and 0", n, q)
	}
	release()
}

// TestMaxBatch: a queue longer than MaxBatch goes in batches of at most
// MaxBatch, in order, and every operation runs once.
func TestMaxBatch(t *testing.T) {
	r := newRecorder(3, 1)
	done := r.queueHeld(t, 7)
	for range 7 {
		<-done
	}
	want := [][]int{{0, 1, 2}, {3, 4, 5}, {6}}
	if !slices.EqualFunc(r.batches, want, slices.Equal) {
		t.Errorf("batches %v, want %v", r.batches, want)
	}
}

// TestCancelWhileQueued: a caller whose context ends while its operation
// waits in the queue gets the context's error, and the operation never
// runs; the others still do.
func TestCancelWhileQueued(t *testing.T) {
	r := newRecorder(8, 1)
	release := r.b.Hold()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *op, 2)
	r.do(ctx, 0, done)
	waitQueued(t, &r.b, 1)
	r.do(context.Background(), 1, done)
	waitQueued(t, &r.b, 2)
	cancel()
	if o := <-done; o.v != 0 || o.batch != nil {
		t.Fatalf("cancelled op %d ran in %v, want it not run", o.v, o.batch)
	}
	waitQueued(t, &r.b, 1)
	release()
	if o := <-done; !slices.Equal(o.batch, []int{1}) {
		t.Errorf("op %d ran in %v, want [1]", o.v, o.batch)
	}
	if err := r.b.Do(ctx, &op{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Do with an ended context: %v, want context.Canceled", err)
	}
	if len(r.batches) != 1 {
		t.Errorf("batches %v, want only [[1]]", r.batches)
	}
}

// TestCancelWhileHandedOver: a caller whose context ends at the moment a
// batch is handed to it (both ready when it looks) still leads that batch:
// every operation in it runs once and Do returns nil. Each round hands the
// batch over with the context already ended, so select picks either.
func TestCancelWhileHandedOver(t *testing.T) {
	for round := range 50 {
		r := newRecorder(8, 1)
		r.b.Hold()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan *op, 2)
		errs := make(chan error, 1)
		o0 := &op{v: 0}
		go func() { errs <- r.b.Do(ctx, o0) }()
		waitQueued(t, &r.b, 1)
		r.do(context.Background(), 1, done)
		waitQueued(t, &r.b, 2)
		// Cancel and hand over under the lock, so the caller of op 0 cannot
		// take itself out of the queue in between.
		r.b.mu.Lock()
		cancel()
		r.b.send()
		r.b.mu.Unlock()
		r.b.next() // the held batch comes back
		if err := <-errs; err != nil {
			t.Fatalf("round %d: Do of the op handed its batch: %v, want nil", round, err)
		}
		if o1 := <-done; !slices.Equal(o0.batch, []int{0, 1}) || !slices.Equal(o1.batch, []int{0, 1}) {
			t.Fatalf("round %d: ops ran in %v and %v, want both in [0 1]", round, o0.batch, o1.batch)
		}
		if len(r.batches) != 1 || r.b.InFlight() != 0 || r.b.Queued() != 0 {
			t.Fatalf("round %d: batches %v, %d in flight, %d queued; want one batch and nothing left", round, r.batches, r.b.InFlight(), r.b.Queued())
		}
	}
}

// TestLeaderContext: a batch with other callers' operations runs to its
// end even when its leader's context ends while it runs, and its Run sees
// a context that is not cancelled.
func TestLeaderContext(t *testing.T) {
	r := newRecorder(8, 1)
	var seen []error
	run := r.b.Run
	r.b.Run = func(ctx context.Context, ops []*op) {
		run(ctx, ops) // waits at the gate, which opens after cancel
		seen = append(seen, ctx.Err())
	}
	release := r.b.Hold()
	ctx, cancel := context.WithCancel(context.Background())
	r.gate = make(chan struct{})
	done := make(chan *op, 2)
	r.do(ctx, 0, done)
	waitQueued(t, &r.b, 1)
	r.do(context.Background(), 1, done)
	waitQueued(t, &r.b, 2)
	release() // the batch of both is led by op 0's caller and waits at the gate
	waitQueued(t, &r.b, 0)
	cancel()
	close(r.gate)
	for range 2 {
		if o := <-done; !slices.Equal(o.batch, []int{0, 1}) {
			t.Errorf("op %d ran in %v, want [0 1]", o.v, o.batch)
		}
	}
	if len(seen) != 1 || seen[0] != nil {
		t.Errorf("Run saw context errors %v, want one nil", seen)
	}
}

// TestConcurrent: many callers; every operation runs exactly once, in
// batches no larger than MaxBatch, and nothing is left on its way.
func TestConcurrent(t *testing.T) {
	r := newRecorder(5, 2)
	const callers, each = 16, 200
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for i := range each {
				o := &op{v: c*each + i}
				if err := r.b.Do(context.Background(), o); err != nil || !slices.Contains(o.batch, o.v) {
					t.Errorf("op %d: %v, ran in %v", o.v, err, o.batch)
				}
			}
		})
	}
	wg.Wait()
	seen := make(map[int]int)
	for _, b := range r.batches {
		if len(b) > 5 {
			t.Errorf("batch of %d, want at most 5", len(b))
		}
		for _, v := range b {
			seen[v]++
		}
	}
	for v := range callers * each {
		if seen[v] != 1 {
			t.Errorf("op %d ran %d times, want once", v, seen[v])
		}
	}
	if n, q := r.b.InFlight(), r.b.Queued(); n != 0 || q != 0 {
		t.Errorf("%d on their way, %d queued at the end; want 0 and 0", n, q)
	}
}

// TestAloneAllocatesNothing: an operation that runs alone costs the
// batcher no allocation.
func TestAloneAllocatesNothing(t *testing.T) {
	b := Batcher[*op]{Run: func(context.Context, []*op) {}}
	o := &op{}
	if a := testing.AllocsPerRun(100, func() { _ = b.Do(context.Background(), o) }); a != 0 {
		t.Errorf("Do alone allocates %v times, want 0", a)
	}
}

// TestZeroLimits: a Batcher's zero MaxBatch and MaxInFlight mean 1.
func TestZeroLimits(t *testing.T) {
	r := newRecorder(0, 0)
	done := r.queueHeld(t, 2)
	for range 2 {
		<-done
	}
	want := [][]int{{0}, {1}}
	if !slices.EqualFunc(r.batches, want, slices.Equal) {
		t.Errorf("batches %v, want %v", r.batches, want)
	}
}
