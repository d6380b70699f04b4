package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem/sim"
)

const simUsage = `Usage: idem sim --scenario NAME [--seeds N] [--seed S] [--mutant NAME] [--json] [--trace]
       idem sim --list

Runs idem's deterministic simulator: the real ledger, Ledger.Do, the HTTP
middleware, the message consumer and outbox relay (package messaging) and
the workflow engine in seeded worlds where processes crash and restart,
owners pause past their leases, the network drops, duplicates and
reorders messages, and the store fails before and after committing. After
every run it checks that effects were applied at most once per key and at
least once per acknowledged request, that every duplicate got the
original outcome, that no acknowledged outcome was lost, that every key
ended completed or free, that fencing tokens only grew, and that every
outbox row reached the downstream once, in its entity's order. One seed
reproduces one run exactly.

Flags:
  --scenario NAME  the world to run (see --list), or "all"
  --seeds N        how many seeds to run, from --seed (default 1000)
  --seed S         the first seed (default 1)
  --mutant NAME    run a deliberately broken ledger, message consumer,
                   outbox relay or workflow engine instead of idem's: the
                   simulator should catch it (and exit 1)
  --json           print one JSON object per scenario, one per line:
                   {"scenario","mutant" (with --mutant),"first_seed",
                   "seeds" (how many ran),"ok" (every invariant held),
                   "caught" (with --mutant: the simulator caught it, the
                   opposite of ok),"interrupted" (only when true),
                   "seeds_per_second",
                   "failure" (when one broke: {"seed","violations":
                   [{"invariant","key","detail"}],"story":[...],
                   "reproduce"})}
  --trace          on a failure, print the failing run's whole trace
  --quiet          no progress on standard error
  --list           print the scenarios and mutants, one per line: the kind
                   ("scenario" or "mutant"), the name, then what it does
                   (with --json: {"kind","name","doc"} per line)

Progress goes to standard error, never to standard output: on a terminal
one line shows the seeds done, the rate and the time left, redrawn in
place and erased at the end; otherwise a plain line "idem sim: ..." with
the same figures is written at most every 10 seconds. Ctrl-C (SIGINT) stops the run: the seeds already running finish and
the summary of the seeds that ran is printed ("interrupted after N seeds").

Exit status: 0 every invariant held, 1 one broke (printed with the seed
that reproduces it and the steps that led to it), 2 usage error, 130
interrupted by Ctrl-C before every seed ran, with no invariant broken in
the seeds that ran (a break found before the interrupt still exits 1).
With --mutant the codes mean the same, so for a mutant the expected result
is 1: the simulator caught it. 0 with --mutant means the mutant survived
all --seeds seeds (of every scenario, with "all"): the simulator missed
it. With --scenario all the code is 1 if any scenario broke (caught the
mutant); an interrupt skips the scenarios not yet run.

Examples:
  idem sim --scenario payments --seeds 100000
  idem sim --scenario pauses --mutant ignore-token
  idem sim --scenario payments --seed 839 --seeds 1 --trace
`

// exitInterrupted is the exit code of a run stopped by Ctrl-C, as shells
// report a command killed by SIGINT (128+2).
const exitInterrupted = 130

func runSim(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return simCommand(ctx, args, stdout, stderr)
}

// simCommand is idem sim; ctx ending (Ctrl-C) stops the run.
func simCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("idem sim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	scenario := fs.String("scenario", "", "")
	seeds := fs.Int("seeds", 1000, "")
	seed := fs.Uint64("seed", 1, "")
	mutantName := fs.String("mutant", "", "")
	asJSON := fs.Bool("json", false, "")
	trace := fs.Bool("trace", false, "")
	list := fs.Bool("list", false, "")
	quiet := fs.Bool("quiet", false, "")
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
	case *list && *asJSON:
		return writeSimListJSON(stdout, stderr)
	case *list:
		writeSimList(stdout)
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

	mode := progressModeFor(stderr, *quiet)
	code := 0
	for _, sc := range scenarios {
		opts := &sim.SeedOptions{}
		var bar *progress
		if mode != progressOff {
			count := newSeedProgress(time.Now, "scenario "+sc.Name, *seeds)
			bar = newProgress(stderr, mode, "idem sim: ", count.line)
			opts.Progress = func(done int) {
				count.set(done)
				bar.advanced()
			}
			bar.start(progressPeriod)
		}
		sum := sim.RunSeedsContext(ctx, sc, *seed, *seeds, mutant, opts)
		if bar != nil {
			bar.stop()
		}
		switch {
		case !sum.OK():
			code = 1
		case sum.Interrupted && code == 0:
			code = exitInterrupted
		}
		if *asJSON {
			writeSimJSON(stdout, sum)
		} else {
			writeSimText(stdout, sum, *trace)
		}
		if sum.Interrupted {
			break
		}
	}
	return code
}

// writeSimList prints one line per scenario and mutant: the kind and the
// name, separated by one space as scripts read them (awk '{print $2}'),
// then the description after padding.
func writeSimList(w io.Writer) {
	width := 0
	for _, sc := range sim.Scenarios {
		width = max(width, len("scenario "+sc.Name))
	}
	for _, m := range sim.Mutants {
		width = max(width, len("mutant "+m.Name))
	}
	for _, sc := range sim.Scenarios {
		fmt.Fprintf(w, "%-*s  %s\n", width, "scenario "+sc.Name, sc.Doc)
	}
	for _, m := range sim.Mutants {
		fmt.Fprintf(w, "%-*s  %s\n", width, "mutant "+m.Name, m.Doc)
	}
}

// simListEntry is a line of idem sim --list --json.
type simListEntry struct {
	Kind string `json:"kind"` // scenario or mutant
	Name string `json:"name"`
	Doc  string `json:"doc"`
}

// writeSimListJSON prints the scenarios, then the mutants, one JSON
// object per line.
func writeSimListJSON(stdout, stderr io.Writer) int {
	enc := json.NewEncoder(stdout)
	var err error
	for _, sc := range sim.Scenarios {
		err = errors.Join(err, enc.Encode(simListEntry{"scenario", sc.Name, sc.Doc}))
	}
	for _, m := range sim.Mutants {
		err = errors.Join(err, enc.Encode(simListEntry{"mutant", m.Name, m.Doc}))
	}
	if err != nil {
		fmt.Fprintf(stderr, "idem sim: %v\n", err)
		return 1
	}
	return 0
}

// seedProgress counts the seeds done of one scenario and says how far
// the run is: "LABEL: DONE/TOTAL seeds (P%), R seeds/s, ETA D".
type seedProgress struct {
	now   func() time.Time
	label string
	total int
	begun time.Time
	done  atomic.Int64
}

func newSeedProgress(now func() time.Time, label string, total int) *seedProgress {
	return &seedProgress{now: now, label: label, total: total, begun: now()}
}

// set records how many seeds are done; the seeds' goroutines call it in
// any order, so it keeps the highest count.
func (c *seedProgress) set(done int) {
	for {
		old := c.done.Load()
		if int64(done) <= old || c.done.CompareAndSwap(old, int64(done)) {
			return
		}
	}
}

// line is the progress text at the current time.
func (c *seedProgress) line() string {
	done := int(c.done.Load())
	elapsed := c.now().Sub(c.begun)
	s := fmt.Sprintf("%s: %d/%d seeds (%d%%)", c.label, done, c.total, done*100/max(c.total, 1))
	if done == 0 || elapsed <= 0 {
		return s + ", ETA unknown"
	}
	rate := float64(done) / elapsed.Seconds()
	eta := time.Duration(float64(c.total-done) / rate * float64(time.Second))
	return fmt.Sprintf("%s, %.0f seeds/s, ETA %s", s, rate, eta.Round(time.Second))
}

func writeSimText(w io.Writer, sum *sim.Summary, trace bool) {
	what := "scenario " + sum.Scenario
	if sum.Mutant != "" {
		what += " with mutant " + sum.Mutant
	}
	if sum.OK() && sum.Interrupted {
		fmt.Fprintf(w, "%s: interrupted after %d seeds from %d; every invariant held in them (%.0f seeds/s)\n", what, sum.Seeds, sum.First, sum.SeedsPerSecond())
		return
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
	Caught         *bool           `json:"caught,omitempty"` // with a mutant: an invariant broke
	Interrupted    bool            `json:"interrupted,omitempty"`
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
		OK: sum.OK(), Interrupted: sum.Interrupted, SeedsPerSecond: sum.SeedsPerSecond()}
	if sum.Mutant != "" {
		caught := !sum.OK()
		out.Caught = &caught
	}
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
