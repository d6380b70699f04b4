package cputime

import "testing"

func TestProcessGrowsWithWork(t *testing.T) {
	before, ok := Process()
	if !ok {
		t.Skip("the process's CPU time is not at hand on this platform")
	}
	x := 0
	for after := before; after <= before; after, _ = Process() {
		for i := range 1_000_000 {
			x += i
		}
	}
	if x == 0 {
		t.Fatal("no work done")
	}
}
