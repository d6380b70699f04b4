package wait

import (
	"runtime"
	"sync/atomic"
	"testing"
)

// TestFor: For returns once another goroutine makes cond hold, having
// polled it until then.
func TestFor(t *testing.T) {
	var polls, set atomic.Int64
	go func() {
		for polls.Load() < 3 {
			runtime.Gosched()
		}
		set.Store(1)
	}()
	For(t, "the flag", func() bool {
		polls.Add(1)
		return set.Load() == 1
	})
	if n := polls.Load(); n < 4 {
		t.Errorf("cond polled %d times, want at least 4", n)
	}
}
