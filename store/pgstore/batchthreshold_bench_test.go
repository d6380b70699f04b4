package pgstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/bench"
)

// BenchmarkBatchThreshold weighs where Completes start to batch at 16
// callers on the shared 16-connection pool: the store as it is (batching
// above the pool's connections, so never at 16 callers) against the same
// store batching above half of them, and above none (every Complete that
// meets others on the pool batches), by turns (bench.Paired, 9 rounds of
// 1 s each side). Run it with -benchtime 1x.
func BenchmarkBatchThreshold(b *testing.B) {
	pool := sharedPool(b)
	for _, above := range []int64{8, 1} {
		b.Run(fmt.Sprintf("above=%d", above), func(b *testing.B) {
			base, s := newStore(b), newStore(b)
			s.batchAbove = above
			if base.batchAbove != int64(pool.Config().MaxConns) {
				b.Fatalf("the default store batches above %d", base.batchAbove)
			}
			bench.Paired(b, "cycles/s", 9,
				bench.Timed("base", 16, time.Second, bench.CycleOp(base)),
				bench.Timed("", 16, time.Second, bench.CycleOp(s)))
		})
	}
}
