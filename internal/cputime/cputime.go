// Package cputime reads the CPU time the process has used, for benchmarks
// that report CPU per operation beside throughput: on a shared machine it
// holds still where rates do not.
package cputime

import "time"

// Meter is the process's CPU time from when Start made it.
type Meter struct {
	start time.Duration
	ok    bool
}

// Start begins a measurement.
func Start() Meter {
	t, ok := Process()
	return Meter{t, ok}
}

// PerOp is the CPU time used since Start divided by n operations, and
// whether it is known (false where Process is not, or for n <= 0).
func (m Meter) PerOp(n int) (time.Duration, bool) {
	t, ok := Process()
	if !ok || !m.ok || n <= 0 {
		return 0, false
	}
	return (t - m.start) / time.Duration(n), true
}
