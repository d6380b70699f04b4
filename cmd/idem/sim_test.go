package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/sim"
)

func TestSimList(t *testing.T) {
	t.Parallel()
	out, _, code := runCLI(t, "sim", "--list")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	// Scripts read the first two fields; a description follows each.
	want := []string{"scenario payments", "scenario messages", "scenario pauses", "scenario workflows", "mutant check-then-set",
		"mutant record-before-run", "mutant ignore-token", "mutant replay-mismatch", "mutant release-completed",
		"mutant commit-before-action", "mutant compensate-twice", "mutant keep-token", "mutant forget-step-key",
		"mutant record-before-handler", "mutant ack-before-commit", "mutant mark-before-publish",
		"mutant new-id-per-attempt", "mutant publish-past-failure"}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("--list printed %d lines, want %d:\n%s", len(lines), len(want), out)
	}
	for i, line := range lines {
		f := strings.Fields(line)
		if len(f) < 4 || f[0]+" "+f[1] != want[i] || !strings.HasPrefix(line, want[i]+" ") {
			t.Errorf("line %d %q: want %q, then a description", i+1, line, want[i])
		}
	}
	if !strings.Contains(out, "mutant ignore-token           Complete, Release, Extend and Checkpoint ignore the fencing token\n") {
		t.Errorf("the descriptions are not aligned after the names:\n%s", out)
	}
}

// TestSimProgress draws the progress line at injected times into a fake
// terminal.
func TestSimProgress(t *testing.T) {
	t.Parallel()
	var term bytes.Buffer
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := func() time.Time { return now }
	count := newSeedProgress(clock, "scenario pauses", 1000)
	p := newProgress(&term, progressTerminal, "idem sim: ", count.line)
	p.now = clock
	p.draw()
	count.set(250)
	count.set(100) // a slower goroutine reporting late does not move it back
	p.advanced()   // no plain lines on a terminal
	now = now.Add(2 * time.Second)
	p.draw()
	count.set(1000)
	now = now.Add(6 * time.Second)
	p.draw()
	want := "\r\x1b[Kscenario pauses: 0/1000 seeds (0%), ETA unknown" +
		"\r\x1b[Kscenario pauses: 250/1000 seeds (25%), 125 seeds/s, ETA 6s" +
		"\r\x1b[Kscenario pauses: 1000/1000 seeds (100%), 125 seeds/s, ETA 0s"
	if term.String() != want {
		t.Fatalf("the terminal got\n%q\nwant\n%q", term.String(), want)
	}

	// start draws at once; stop erases the line (no sleeps: the ticker's
	// period is far longer than the test).
	term.Reset()
	p.start(time.Hour)
	p.stop()
	p.stop() // erases once
	if want := "\r\x1b[Kscenario pauses: 1000/1000 seeds (100%), 125 seeds/s, ETA 0s\r\x1b[K"; term.String() != want {
		t.Fatalf("start/stop wrote %q, want %q", term.String(), want)
	}
}

// TestSimProgressLines: off a terminal the progress is plain lines, at
// most one per progressEvery of the injected clock, and never a
// carriage return or an escape sequence.
func TestSimProgressLines(t *testing.T) {
	t.Parallel()
	var log bytes.Buffer
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := func() time.Time { return now }
	count := newSeedProgress(clock, "scenario payments", 400)
	p := newProgress(&log, progressLines, "idem sim: ", count.line)
	p.now = clock
	p.start(time.Hour) // no goroutine: plain lines come with the seeds
	for i := 1; i <= 400; i++ {
		now = now.Add(100 * time.Millisecond)
		count.set(i)
		p.advanced()
	}
	p.draw() // nothing: not a terminal
	p.stop()
	want := "idem sim: scenario payments: 100/400 seeds (25%), 10 seeds/s, ETA 30s\n" +
		"idem sim: scenario payments: 200/400 seeds (50%), 10 seeds/s, ETA 20s\n" +
		"idem sim: scenario payments: 300/400 seeds (75%), 10 seeds/s, ETA 10s\n" +
		"idem sim: scenario payments: 400/400 seeds (100%), 10 seeds/s, ETA 0s\n"
	if log.String() != want {
		t.Fatalf("the log got\n%q\nwant\n%q", log.String(), want)
	}

	// --quiet: nothing at all.
	log.Reset()
	q := newProgress(&log, progressModeFor(&log, true), "idem sim: ", count.line)
	q.now = clock
	q.start(time.Hour)
	now = now.Add(time.Hour)
	q.advanced()
	q.event()
	q.stop()
	if log.Len() != 0 {
		t.Fatalf("--quiet wrote %q", log.String())
	}
}

// TestSimProgressOffATerminal: buffers, pipes and regular files are not
// terminals, so a run writes plain progress lines to stderr (none with
// --quiet) and its summary, unchanged, to stdout.
func TestSimProgressOffATerminal(t *testing.T) {
	t.Parallel()
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) || isTerminal(&bytes.Buffer{}) {
		t.Fatal("a regular file or a buffer taken for a terminal")
	}
	if progressModeFor(f, false) != progressLines || progressModeFor(f, true) != progressOff {
		t.Fatal("a regular file gets no plain lines, or --quiet does not stop them")
	}
	var out bytes.Buffer
	if code := run([]string{"sim", "--scenario", "messages", "--seeds", "20"}, &out, f); code != 0 {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	if !strings.HasPrefix(out.String(), "scenario messages: every invariant held over 20 seeds from 1 (") {
		t.Fatalf("stdout %q", out.String())
	}
	logged, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.SplitAfter(string(logged), "\n") {
		if line != "" && (!strings.HasPrefix(line, "idem sim: scenario messages: ") || strings.ContainsAny(line, "\r\x1b")) {
			t.Errorf("stderr line %q", line)
		}
	}
	if dev, err := os.Open(os.DevNull); err == nil {
		defer dev.Close()
		if !isTerminal(dev) {
			t.Errorf("%s, a character device, not taken for a terminal", os.DevNull)
		}
	}
}

// TestSimInterrupted: a run whose context ends (Ctrl-C) prints the summary
// of the seeds that ran and exits 130, with or without --mutant.
func TestSimInterrupted(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errOut bytes.Buffer
	code := simCommand(ctx, []string{"--scenario", "all", "--seeds", "1000000"}, &out, &errOut)
	if code != exitInterrupted || out.String() != "scenario payments: interrupted after 0 seeds from 1; every invariant held in them (0 seeds/s)\n" || errOut.Len() != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
	out.Reset()
	code = simCommand(ctx, []string{"--scenario", "pauses", "--mutant", "ignore-token", "--json"}, &out, &errOut)
	var got struct {
		Seeds       int
		OK          bool
		Interrupted bool
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || code != exitInterrupted || !got.OK || !got.Interrupted || got.Seeds != 0 {
		t.Fatalf("--mutant --json interrupted: exit %d, %v, %s", code, err, out.String())
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
		Caught           *bool
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
	if got.Scenario != "messages" || got.Mutant != "release-completed" || got.OK || got.Caught == nil || !*got.Caught || got.Seeds < 1 ||
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
	for _, want := range []string{"Exit status: 0 every invariant held, 1 one broke",
		"130\ninterrupted by Ctrl-C", "With --mutant the codes mean the same, so for a mutant the expected result\nis 1: the simulator caught it. 0 with --mutant means the mutant survived"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	if code != 0 {
		t.Fatalf("--help: exit %d\n%s", code, out)
	}
}

// TestSimJSONPasses: a run of idem's own code, in JSON: every field of the
// schema against the simulator's own summary of the same seeds.
func TestSimJSONPasses(t *testing.T) {
	t.Parallel()
	out, errOut, code := runCLI(t, "sim", "--scenario", "all", "--seeds", "30", "--seed", "7", "--json", "--quiet")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != len(sim.Scenarios) {
		t.Fatalf("%d lines for %d scenarios:\n%s", len(lines), len(sim.Scenarios), out)
	}
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		sum := sim.RunSeedsContext(context.Background(), sim.Scenarios[i], 7, 30, nil, nil)
		if m["scenario"] != sim.Scenarios[i].Name || m["first_seed"] != 7.0 || m["seeds"] != float64(sum.Seeds) || m["ok"] != sum.OK() ||
			m["seeds_per_second"] == nil || m["mutant"] != nil || m["caught"] != nil || m["failure"] != nil || m["interrupted"] != nil {
			t.Errorf("line %d: %v (the simulator: %d seeds, ok %v)", i, m, sum.Seeds, sum.OK())
		}
	}

	// --list --json: the same names as --list, with their descriptions.
	out, _, code = runCLI(t, "sim", "--list", "--json")
	var entries []simListEntry
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var e simListEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%v: %q", err, line)
		}
		entries = append(entries, e)
	}
	if code != 0 || len(entries) != len(sim.Scenarios)+len(sim.Mutants) || entries[0] != (simListEntry{"scenario", sim.Scenarios[0].Name, sim.Scenarios[0].Doc}) ||
		entries[len(entries)-1] != (simListEntry{"mutant", sim.Mutants[len(sim.Mutants)-1].Name, sim.Mutants[len(sim.Mutants)-1].Doc}) {
		t.Fatalf("--list --json: exit %d, %+v", code, entries)
	}
}
