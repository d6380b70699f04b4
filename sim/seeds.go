package sim

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Summary is the result of running many seeds of one scenario.
type Summary struct {
	Scenario string
	Mutant   string `json:",omitempty"`
	First    uint64 // the first seed
	Seeds    int    // how many seeds ran
	// Failed is the report of the lowest failing seed, nil if every seed
	// passed.
	Failed  *Report `json:",omitempty"`
	Elapsed time.Duration
	// Interrupted is set when the context of RunSeedsContext ended before
	// every seed ran. Seeds then counts the seeds that did run: all of
	// First .. First+Seeds-1, none after.
	Interrupted bool `json:",omitempty"`
}

// OK reports whether every seed passed.
func (s *Summary) OK() bool { return s.Failed == nil }

// SeedsPerSecond is the rate the seeds ran at.
func (s *Summary) SeedsPerSecond() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Seeds) / s.Elapsed.Seconds()
}

// SeedOptions tunes RunSeedsContext; nil or the zero value runs as
// RunSeeds does.
type SeedOptions struct {
	// Progress, when set, is called after every finished seed with how
	// many have finished so far. It is called from the goroutines that run
	// the seeds, concurrently and in no particular order, so it should only
	// record the count (a display reads it on its own schedule).
	Progress func(done int)
}

// RunSeeds runs seeds first, first+1, ... first+n-1 of sc on every CPU and
// stops at the lowest seed that breaks an invariant: Seeds then says how
// many seeds it took to find it.
func RunSeeds(sc *Scenario, first uint64, n int, mutant *Mutant) *Summary {
	return RunSeedsContext(context.Background(), sc, first, n, mutant, nil)
}

// RunSeedsContext is RunSeeds that also stops when ctx ends (for Ctrl-C):
// the seeds already running finish, no other starts, and the Summary is
// Interrupted and covers the seeds that ran. Seeds are handed out in
// order, so those are always a prefix of the range.
func RunSeedsContext(ctx context.Context, sc *Scenario, first uint64, n int, mutant *Mutant, opts *SeedOptions) *Summary {
	if opts == nil {
		opts = &SeedOptions{}
	}
	start := time.Now()
	var (
		next     atomic.Uint64 // offset of the next seed to run
		done     atomic.Int64
		mu       sync.Mutex
		failed   *Report
		lowest   = uint64(n) // offset of the lowest failing seed so far
		wg       sync.WaitGroup
		limitNow = func() uint64 { mu.Lock(); defer mu.Unlock(); return lowest }
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				// Every offset handed out below the limit runs to its end,
				// so the seeds that ran are 0 .. min(next, lowest)-1.
				off := next.Add(1) - 1
				if off >= limitNow() {
					return
				}
				r := Run(sc, first+off, mutant)
				if opts.Progress != nil {
					opts.Progress(int(done.Add(1)))
				}
				if r.OK() {
					continue
				}
				mu.Lock()
				if off < lowest {
					lowest, failed = off, r
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	ran := min(next.Load(), lowest)
	s := &Summary{Scenario: sc.Name, First: first, Seeds: int(ran), Failed: failed, Elapsed: time.Since(start)}
	if failed != nil {
		s.Seeds++ // the failing seed ran too
	} else if ran < uint64(n) {
		s.Interrupted = true
	}
	if mutant != nil {
		s.Mutant = mutant.Name
	}
	return s
}
