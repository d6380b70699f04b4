// Package wait lets a test wait for a condition another goroutine or
// process brings about, without sleeping a guessed time.
package wait

import (
	"testing"
	"time"
)

// Timeout is how long For waits before it fails the test: long enough for
// a loaded machine, short enough that a broken test fails before the
// binary's timeout.
const Timeout = 10 * time.Second

// For polls cond every millisecond until it holds, and fails the test
// naming what it waited for when Timeout passes first.
func For(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", Timeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}
