//go:build !unix

package loadgen

import "time"

// cpuTime is 0 where the process's CPU time is not at hand: cpu-µs/op
// then reads 0.
func cpuTime() time.Duration { return 0 }
