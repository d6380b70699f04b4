package sim_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
	"github.com/idemkit/idem/sim"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

// seeds is how many seeds each scenario runs here; .ci/run runs 100 000
// more of each through `idem sim`, without the race detector.
func seeds(t *testing.T) int {
	if s := os.Getenv("IDEM_SIM_SEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("IDEM_SIM_SEEDS=%q: %v", s, err)
		}
		return n
	}
	if testing.Short() {
		return 100
	}
	return 1000
}

func TestScenariosHoldOnTheCorrectLedger(t *testing.T) {
	t.Parallel()
	for _, sc := range sim.Scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			t.Parallel()
			sum := sim.RunSeeds(sc, 1, seeds(t), nil)
			if !sum.OK() {
				t.Fatalf("the correct ledger broke an invariant:\n%s", sum.Failed)
			}
			if sum.Seeds != seeds(t) {
				t.Fatalf("ran %d seeds, want %d", sum.Seeds, seeds(t))
			}
			t.Logf("%d seeds, %.0f seeds/s", sum.Seeds, sum.SeedsPerSecond())
		})
	}
}

// TestMutantsAreCaught proves the simulator catches every broken ledger
// within 10 000 seeds, in the scenarios built to expose it.
func TestMutantsAreCaught(t *testing.T) {
	t.Parallel()
	catches := map[string][]string{
		// Behind fencing tokens, with effects that commit with the
		// outcome, a second owner's work is refused in payments and
		// messages: only pauses lets a completed key be taken again.
		"check-then-set":    {"pauses"},
		"record-before-run": {"payments", "messages", "pauses"},
		"ignore-token":      {"pauses"},
		"replay-mismatch":   {"payments", "messages"},
		"release-completed": {"payments", "messages", "pauses"},
		// The workflow mutants break the engine, not the ledger: only the
		// workflows scenario runs it.
		"commit-before-action": {"workflows"},
		"compensate-twice":     {"workflows"},
		"forget-step-key":      {"workflows"},
		"keep-token":           {"workflows"},
		// The consumer mutants break messaging.Consumer (or its adapter),
		// which only the messages scenario drives.
		"record-before-handler": {"messages"},
		"ack-before-commit":     {"messages"},
		// The relay mutants break messaging.Relay, which only the
		// messages scenario drives, through its outbox.
		"mark-before-publish":  {"messages"},
		"new-id-per-attempt":   {"messages"},
		"publish-past-failure": {"messages"},
	}
	if len(catches) != len(sim.Mutants) {
		t.Fatalf("%d mutants, %d in the table", len(sim.Mutants), len(catches))
	}
	for _, m := range sim.Mutants {
		for _, name := range catches[m.Name] {
			t.Run(m.Name+"/"+name, func(t *testing.T) {
				t.Parallel()
				sc, ok := sim.ScenarioNamed(name)
				if !ok {
					t.Fatalf("no scenario %q", name)
				}
				sum := sim.RunSeeds(sc, 1, 10_000, &m)
				if sum.OK() {
					t.Fatalf("mutant %s survived 10 000 seeds of %s", m.Name, name)
				}
				t.Logf("caught after %d seeds: %s", sum.Seeds, sum.Failed.Violations[0])
			})
		}
	}
}

func TestOneSeedReproducesOneRun(t *testing.T) {
	t.Parallel()
	for _, sc := range sim.Scenarios {
		a, b := sim.Run(sc, 42, nil), sim.Run(sc, 42, nil)
		if a.Hash() != b.Hash() || a.Steps != b.Steps || a.Events != b.Events {
			t.Fatalf("%s seed 42 ran twice: hash %x/%x steps %d/%d", sc.Name, a.Hash(), b.Hash(), a.Steps, b.Steps)
		}
		sa, sb := a.Trace().Steps(), b.Trace().Steps()
		for i := range sa {
			if sa[i] != sb[i] {
				t.Fatalf("%s seed 42: step %d differs:\n%s\n%s", sc.Name, i, sa[i], sb[i])
			}
		}
		if c := sim.Run(sc, 43, nil); c.Hash() == a.Hash() {
			t.Fatalf("%s: seeds 42 and 43 ran the same", sc.Name)
		}
		if a.Events < 20 {
			t.Fatalf("%s seed 42: only %d trace lines; the scenario hardly ran", sc.Name, a.Events)
		}
	}
}

func TestAViolationTellsItsSeedAndStory(t *testing.T) {
	t.Parallel()
	m, _ := sim.MutantNamed("ignore-token")
	sc, _ := sim.ScenarioNamed("pauses")
	sum := sim.RunSeeds(sc, 1, 10_000, &m)
	if sum.OK() {
		t.Fatal("the mutant was not caught")
	}
	r := sum.Failed
	v := r.Violations[0]
	if v.Invariant != "fenced" {
		t.Fatalf("first violation %s, want fenced", v)
	}
	out := r.String()
	want := "reproduce: idem sim --scenario pauses --seed " + strconv.FormatUint(r.Seed, 10) + " --mutant ignore-token"
	if !strings.Contains(out, want) {
		t.Fatalf("report lacks %q:\n%s", want, out)
	}
	story := r.Story(24)
	if len(story) == 0 || len(story) > 24 {
		t.Fatalf("story of %d steps", len(story))
	}
	for _, s := range story {
		if s.Key != v.Key && s.Op != "crash" && s.Op != "pause" {
			t.Fatalf("story step about another key: %s", s)
		}
	}
	if last := story[len(story)-1]; last.Op != "VIOLATION" {
		t.Fatalf("story ends with %s, want the violation", last)
	}
	// The same seed finds the same violation again.
	again := sim.Run(sc, r.Seed, &m)
	if again.OK() || again.Violations[0] != v || again.Hash() != r.Hash() {
		t.Fatalf("seed %d did not reproduce: %v", r.Seed, again.Violations)
	}
}

// TestRunSeedsContextStopsWhenCancelled cancels a long run from its own
// progress callback once 20 seeds are done: the run stops soon after, says
// it was interrupted, and counts exactly the prefix of seeds that ran.
func TestRunSeedsContextStopsWhenCancelled(t *testing.T) {
	t.Parallel()
	sc, _ := sim.ScenarioNamed("messages")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	calls, highest := 0, 0
	const total = 1_000_000
	sum := sim.RunSeedsContext(ctx, sc, 7, total, nil, &sim.SeedOptions{Progress: func(done int) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		highest = max(highest, done)
		if done == 20 {
			cancel()
		}
	}})
	if !sum.OK() || !sum.Interrupted || sum.First != 7 {
		t.Fatalf("summary %+v, want interrupted and OK from seed 7", sum)
	}
	// Every seed handed out before the cancel finishes: one per CPU at most
	// besides the 20.
	if sum.Seeds < 20 || sum.Seeds >= total || sum.Seeds != calls || highest != calls {
		t.Fatalf("%d seeds ran, progress called %d times up to %d; want the same count, at least 20", sum.Seeds, calls, highest)
	}

	// Cancelled before it starts: nothing runs.
	sum = sim.RunSeedsContext(ctx, sc, 1, 10, nil, nil)
	if !sum.Interrupted || sum.Seeds != 0 || !sum.OK() {
		t.Fatalf("a cancelled context ran %+v", sum)
	}
	// A run that finishes is not interrupted, and a failure found is
	// reported as without a context.
	m, _ := sim.MutantNamed("release-completed")
	sum = sim.RunSeedsContext(context.Background(), sc, 1, 10_000, &m, nil)
	if sum.Interrupted || sum.OK() || sum.Seeds != int(sum.Failed.Seed) {
		t.Fatalf("mutant run: %+v", sum)
	}
}
