//go:build !unix

package cputime

import "time"

// Process reports the CPU time as unknown where it is not at hand.
func Process() (time.Duration, bool) { return 0, false }
