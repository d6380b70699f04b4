package cputime

import (
	"testing"
	"time"
)

func TestProcessGrowsWithWork(t *testing.T) {
	before, ok := Process()
	if !ok {
		t.Skip("the process's CPU time is not at hand on this platform")
	}
	if after := work(); after <= before {
		t.Fatalf("CPU time %s after work, %s before", after, before)
	}
}

// work burns CPU until the process's CPU time has moved, and returns it.
func work() time.Duration {
	before, _ := Process()
	x := 0
	for {
		for i := range 1_000_000 {
			x += i ^ x
		}
		if after, _ := Process(); after > before || x == 1 {
			return after
		}
	}
}

func TestMeterPerOp(t *testing.T) {
	m := Start()
	if _, ok := Process(); !ok {
		if _, ok := m.PerOp(1); ok {
			t.Fatal("PerOp known where Process is not")
		}
		t.Skip("the process's CPU time is not at hand on this platform")
	}
	for total, _ := m.PerOp(1); total == 0; total, _ = m.PerOp(1) {
		work()
	}
	per, ok := m.PerOp(4) // read first: CPU time only grows
	all, _ := m.PerOp(1)
	if !ok || per <= 0 || per > all {
		t.Fatalf("PerOp(4) = %s %v after %s in all", per, ok, all)
	}
	if _, ok := m.PerOp(0); ok {
		t.Fatal("PerOp(0) claims to know a time per operation")
	}
}
