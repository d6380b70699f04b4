package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestSimList(t *testing.T) {
	t.Parallel()
	out, _, code := runCLI(t, "sim", "--list")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	want := "scenario payments\nscenario messages\nscenario pauses\nmutant check-then-set\nmutant record-before-run\nmutant ignore-token\nmutant replay-mismatch\nmutant release-completed\n"
	if out != want {
		t.Fatalf("--list printed\n%s\nwant\n%s", out, want)
	}
}

func TestSimPassesOnIdemAndCatchesAMutant(t *testing.T) {
	t.Parallel()
	out, errOut, code := runCLI(t, "sim", "--scenario", "pauses", "--seeds", "50")
	if code != 0 || !strings.Contains(out, "scenario pauses: every invariant held over 50 seeds from 1") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}

	out, _, code = runCLI(t, "sim", "--scenario", "pauses", "--mutant", "ignore-token", "--seeds", "10000")
	if code != 1 {
		t.Fatalf("a caught mutant exits %d, want 1\n%s", code, out)
	}
	for _, want := range []string{"fenced broken on key", "reproduce: idem sim --scenario pauses --seed ", "--mutant ignore-token", "VIOLATION"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestSimJSON(t *testing.T) {
	t.Parallel()
	out, _, code := runCLI(t, "sim", "--scenario", "messages", "--mutant", "release-completed", "--json")
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	var got struct {
		Scenario, Mutant string
		Seeds            int
		OK               bool
		Failure          struct {
			Seed       uint64
			Violations []struct{ Invariant, Key, Detail string }
			Story      []string
			Reproduce  string
		}
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got.Scenario != "messages" || got.Mutant != "release-completed" || got.OK || got.Seeds < 1 ||
		len(got.Failure.Violations) == 0 || len(got.Failure.Story) == 0 ||
		!strings.HasPrefix(got.Failure.Reproduce, "idem sim --scenario messages --seed ") {
		t.Fatalf("JSON report: %+v", got)
	}
	// The reproduce line does what it says.
	args := strings.Fields(strings.TrimPrefix(got.Failure.Reproduce, "idem "))
	again, _, code := runCLI(t, args...)
	if code != 1 || !strings.Contains(again, got.Failure.Violations[0].Detail) {
		t.Fatalf("%v exited %d:\n%s", args, code, again)
	}
}

func TestSimUsageErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"sim"},
		{"sim", "--scenario", "nope"},
		{"sim", "--scenario", "payments", "--mutant", "nope"},
		{"sim", "--scenario", "payments", "--seeds", "0"},
		{"sim", "--scenario", "payments", "extra"},
		{"sim", "--bogus"},
	} {
		_, errOut, code := runCLI(t, args...)
		if code != 2 || !strings.Contains(errOut, "Usage: idem sim") {
			t.Errorf("%v: exit %d, stderr %q", args, code, errOut)
		}
	}
	out, _, code := runCLI(t, "sim", "--help")
	if code != 0 || !strings.Contains(out, "Exit status: 0 every invariant held, 1 one broke") {
		t.Fatalf("--help: exit %d\n%s", code, out)
	}
}
