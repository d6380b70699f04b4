package sim

import (
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

// RunSeeds runs seeds first, first+1, ... first+n-1 of sc on every CPU and
// stops at the lowest seed that breaks an invariant: Seeds then says how
// many seeds it took to find it.
func RunSeeds(sc *Scenario, first uint64, n int, mutant *Mutant) *Summary {
	start := time.Now()
	var (
		next     atomic.Uint64 // offset of the next seed to run
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
			for {
				off := next.Add(1) - 1
				if off >= limitNow() {
					return
				}
				r := Run(sc, first+off, mutant)
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
	s := &Summary{Scenario: sc.Name, First: first, Seeds: int(lowest), Failed: failed, Elapsed: time.Since(start)}
	if failed != nil {
		s.Seeds++ // the failing seed ran too
	}
	if mutant != nil {
		s.Mutant = mutant.Name
	}
	return s
}
