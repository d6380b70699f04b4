//go:build !unix

package pebblestore

import "time"

func processCPU() (time.Duration, bool) { return 0, false }
