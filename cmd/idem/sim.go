package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/idemkit/idem/sim"
)

const simUsage = `Usage: idem sim --scenario NAME [--seeds N] [--seed S] [--mutant NAME] [--json] [--trace]
       idem sim --list

Runs idem's deterministic simulator: the real ledger, Ledger.Do and the
HTTP middleware in seeded worlds where processes crash and restart, owners
pause past their leases, the network drops, duplicates and reorders
messages, and the store fails before and after committing. After every
run it checks that effects were applied at most once per key and at least
once per acknowledged request, that every duplicate got the original
outcome, that no acknowledged outcome was lost, that every key ended
completed or free, and that fencing tokens only grew. One seed reproduces
one run exactly.

Flags:
  --scenario NAME  the world to run (see --list), or "all"
  --seeds N        how many seeds to run, from --seed (default 1000)
  --seed S         the first seed (default 1)
  --mutant NAME    run a deliberately broken ledger instead of idem's: the
                   simulator should catch it (and exit 1)
  --json           print one JSON object per scenario
  --trace          on a failure, print the failing run's whole trace
  --list           print the scenarios and mutants, one per line

Exit status: 0 every invariant held, 1 one broke (printed with the seed
that reproduces it and the steps that led to it), 2 usage error.

Examples:
  idem sim --scenario payments --seeds 100000
  idem sim --scenario pauses --mutant ignore-token
  idem sim --scenario payments --seed 839 --seeds 1 --trace
`

func runSim(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("idem sim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	scenario := fs.String("scenario", "", "")
	seeds := fs.Int("seeds", 1000, "")
	seed := fs.Uint64("seed", 1, "")
	mutantName := fs.String("mutant", "", "")
	asJSON := fs.Bool("json", false, "")
	trace := fs.Bool("trace", false, "")
	list := fs.Bool("list", false, "")
	err := fs.Parse(args)
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "idem sim: "+format+"\n\n%s", append(a, simUsage)...)
		return 2
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		_, _ = io.WriteString(stdout, simUsage)
		return 0
	case err != nil:
		return usageErr("%v", err)
	case fs.NArg() > 0:
		return usageErr("unexpected argument %q", fs.Arg(0))
	case *list:
		for _, sc := range sim.Scenarios {
			fmt.Fprintf(stdout, "scenario %s\n", sc.Name)
		}
		for _, m := range sim.Mutants {
			fmt.Fprintf(stdout, "mutant %s\n", m.Name)
		}
		return 0
	case *scenario == "":
		return usageErr("--scenario is required (or --list)")
	case *seeds <= 0:
		return usageErr("--seeds must be positive, got %d", *seeds)
	}
	var scenarios []*sim.Scenario
	if *scenario == "all" {
		scenarios = sim.Scenarios
	} else {
		sc, ok := sim.ScenarioNamed(*scenario)
		if !ok {
			return usageErr("no scenario %q (idem sim --list names them)", *scenario)
		}
		scenarios = []*sim.Scenario{sc}
	}
	var mutant *sim.Mutant
	if *mutantName != "" {
		m, ok := sim.MutantNamed(*mutantName)
		if !ok {
			return usageErr("no mutant %q (idem sim --list names them)", *mutantName)
		}
		mutant = &m
	}

	code := 0
	for _, sc := range scenarios {
		sum := sim.RunSeeds(sc, *seed, *seeds, mutant)
		if !sum.OK() {
			code = 1
		}
		if *asJSON {
			writeSimJSON(stdout, sum)
			continue
		}
		writeSimText(stdout, sum, *trace)
	}
	return code
}

func writeSimText(w io.Writer, sum *sim.Summary, trace bool) {
	what := "scenario " + sum.Scenario
	if sum.Mutant != "" {
		what += " with mutant " + sum.Mutant
	}
	if sum.OK() {
		fmt.Fprintf(w, "%s: every invariant held over %d seeds from %d (%.0f seeds/s)\n", what, sum.Seeds, sum.First, sum.SeedsPerSecond())
		return
	}
	fmt.Fprintf(w, "%s: an invariant broke after %d seeds\n%s", what, sum.Seeds, sum.Failed)
	if trace {
		fmt.Fprintf(w, "whole trace of seed %d:\n", sum.Failed.Seed)
		for _, s := range sum.Failed.Trace().Steps() {
			fmt.Fprintf(w, "  %s\n", s)
		}
	}
}

type simJSON struct {
	Scenario       string          `json:"scenario"`
	Mutant         string          `json:"mutant,omitempty"`
	FirstSeed      uint64          `json:"first_seed"`
	Seeds          int             `json:"seeds"`
	OK             bool            `json:"ok"`
	SeedsPerSecond float64         `json:"seeds_per_second"`
	Failure        *simFailureJSON `json:"failure,omitempty"`
}

type simFailureJSON struct {
	Seed       uint64          `json:"seed"`
	Violations []sim.Violation `json:"violations"`
	Story      []string        `json:"story"`
	Reproduce  string          `json:"reproduce"`
}

func writeSimJSON(w io.Writer, sum *sim.Summary) {
	out := simJSON{Scenario: sum.Scenario, Mutant: sum.Mutant, FirstSeed: sum.First, Seeds: sum.Seeds,
		OK: sum.OK(), SeedsPerSecond: sum.SeedsPerSecond()}
	if r := sum.Failed; r != nil {
		f := &simFailureJSON{Seed: r.Seed, Violations: r.Violations}
		for _, s := range r.Story(24) {
			f.Story = append(f.Story, s.String())
		}
		f.Reproduce = fmt.Sprintf("idem sim --scenario %s --seed %d --seeds 1", r.Scenario, r.Seed)
		if r.Mutant != "" {
			f.Reproduce += " --mutant " + r.Mutant
		}
		out.Failure = f
	}
	b, _ := json.Marshal(out)
	fmt.Fprintf(w, "%s\n", b)
}
