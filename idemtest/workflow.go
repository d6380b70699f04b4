package idemtest

import (
	"fmt"
	"strings"
	"testing"

	"github.com/idemkit/idem/sim"
	"github.com/idemkit/idem/workflow"
)

// WorkflowOptions tune Workflow. The zero value (or nil) runs 100 seeds
// of three instances that start from the input "{}" and receive no
// events, with crashes.
type WorkflowOptions struct {
	// Options: Seeds, Seed, Reset, NoCrash and Lease (the engines'
	// lease, default 1 s) apply; Clients, Effects and Middleware do not.
	// Reset clears the state your actions change; it runs before each
	// world.
	Options
	// Input is every instance's input (default "{}").
	Input []byte
	// Events are the events a client sends its instance, in this order,
	// each once under its own event id; the world duplicates some and
	// delivers them reordered. Nil: none, for a definition whose
	// transitions are automatic or time out.
	Events []string
	// Cancel is the chance that a client cancels its instance, at a
	// random moment (default 0: never).
	Cancel float64
	// Instances is how many instances each world starts (default 3),
	// with ids Definition.Name followed by 0, 1, 2...
	Instances int
	// Check is your own check of each instance once the world is at
	// rest (finished or parked), with its history: typically, that your
	// effects are those of the steps its history completes
	// (workflow.EntryActionCompleted, their StepKey), once each. An
	// error fails the world.
	Check func(in *workflow.Instance) error
}

// Workflow checks that def, run by the workflow engine with your own
// action functions, survives crashes, lost journal writes, duplicate
// starts and duplicated, reordered events: in every world every instance
// ends finished or parked, its history explains its state, every step
// its history completes ran with that step key, an unwound instance
// recorded the compensations of exactly its completed actions that have
// one, latest first, and opts.Check passes.
//
// Each seed is a simulated world (package sim, sim.SetupWorkflows): three
// worker processes, each a workflow.Engine over one journal that fails
// before and after committing, step the instances; they crash at step
// boundaries (an action ran and its step is not recorded yet, so the
// engine that takes the instance over runs it again with the same
// Step.Key and a higher Step.Token) and at random, restart, and pause
// past their lease. Clients start opts.Instances instances, start some
// again with the same input and with another, send opts.Events (some
// twice, reordered) and cancel some (opts.Cancel). A failure names the
// seed that reproduces it (Options.Seed) and prints the instance's story.
//
// The engine and the world cannot see your effects: count them in your
// own state, keyed by Step.Key, and check them in opts.Check (see the
// package doc, Workflows). def must be valid (workflow.Registry.Register
// validates it); it is not registered anywhere but in each world.
func Workflow(t testing.TB, def *workflow.Definition, opts *WorkflowOptions) {
	t.Helper()
	var wo WorkflowOptions
	if opts != nil {
		wo = *opts
	}
	o := wo.Options.withDefaults()
	if wo.Instances <= 0 {
		wo.Instances = 3
	}
	input := wo.Input
	if input == nil {
		input = []byte("{}")
	}
	if def == nil {
		t.Fatalf("idemtest: Workflow needs a definition")
		return
	}
	var types workflow.Registry
	if err := types.Register(def); err != nil {
		t.Fatalf("idemtest: the workflow definition is not valid: %v", err)
		return
	}
	if a := inTx(def); a != "" {
		t.Fatalf("idemtest: action %q is InTx: the simulated journal runs no transactions; test it against pgstore's journal", a)
		return
	}
	faults := sim.Faults{Crash: 0.002, RestartAfter: o.Lease, Pause: 0.002, PauseFor: 3 * o.Lease}
	crashAtStep, journal := 0.04, sim.Failpoints{BeforeCommit: 0.02, AfterCommit: 0.02}
	if o.NoCrash {
		faults, crashAtStep, journal = sim.Faults{}, 0, sim.Failpoints{}
	}
	var seen map[string]*workflow.Instance // the world's instances at rest, by id
	sc := &sim.Scenario{Name: "idemtest-workflow", Faults: faults, MaxSteps: 500_000,
		Setup: func(w *sim.World, _ *sim.Store) func() {
			seen = map[string]*workflow.Instance{}
			return sim.SetupWorkflows(w, &sim.WorkflowConfig{
				Definition: def, Instances: wo.Instances, Input: func(int) []byte { return input },
				Events: wo.Events, Cancel: wo.Cancel, Lease: o.Lease, CrashAtStep: crashAtStep, Journal: journal,
				Check: func(in *workflow.Instance) {
					seen[in.ID] = in
					if wo.Check == nil {
						return
					}
					if err := wo.Check(in); err != nil {
						w.Violate("check", in.ID, err.Error())
					}
				},
			})
		}}
	for seed := o.Seed; seed < o.Seed+uint64(o.Seeds); seed++ {
		if o.Reset != nil {
			o.Reset()
		}
		r := sim.Run(sc, seed, nil)
		if r.OK() {
			continue
		}
		v := r.Violations[0]
		hint := "The engine or the world broke an invariant with this definition."
		switch v.Invariant {
		case "ends-terminal":
			hint = "An instance ended neither finished nor parked. If it waits for an event: the world sends each of\n" +
				"Events once, some twice, in random order, and an event its state does not take is rejected, as\n" +
				"real clients' events can be; give the states that wait for events a Timeout and a TimeoutEvent."
		case "check":
			hint = "Your Check failed. If it counts effects: a crash or a lost journal write ran an action again\n" +
				"with the same step key; key its effect by Step.Key (and refuse a Step.Token lower than the key\n" +
				"has seen). See the idemtest package doc, Workflows."
		}
		id := instanceOf(def.Name, wo.Instances, v.Key)
		t.Fatalf("idemtest: seed %d: the workflow %q broke an invariant: %s\n%s\n"+
			"Rerun just this world with WorkflowOptions{Options: idemtest.Options{Seed: %d, Seeds: 1}}.\n%s%s",
			seed, def.Name, v, hint, seed, history(seen[id]), workflowStory(r, id))
		return
	}
}

// history lists in's history, one entry a line; "" if in is nil.
func history(in *workflow.Instance) string {
	if in == nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "History of %s (%s in state %s):\n", in.ID, in.Status, in.State)
	for _, e := range in.History {
		fmt.Fprintf(&b, "  %3d %-16s", e.Seq, e.Kind)
		for _, f := range [][2]string{{"event", e.Event}, {"event-id", e.EventID}, {"from", e.From}, {"to", e.To},
			{"action", e.Action}, {"key", e.StepKey}, {"state", e.State}, {"status", string(e.Status)},
			{"error", e.Error}, {"reason", e.Reason}} {
			if f[1] != "" {
				fmt.Fprintf(&b, " %s=%s", f[0], f[1])
			}
		}
		if e.Token != 0 {
			fmt.Fprintf(&b, " token=%d", e.Token)
		}
		if e.Attempt != 0 {
			fmt.Fprintf(&b, " attempt=%d", e.Attempt)
		}
		if e.Replayed {
			b.WriteString(" replayed")
		}
		b.WriteByte('\n')
	}
	b.WriteString("Trace of its steps, with the workers' crashes and pauses:\n")
	return b.String()
}

// inTx returns the name of an action of def marked InTx, "" if none.
func inTx(def *workflow.Definition) string {
	for _, st := range def.States {
		if st.OnEnter != nil && st.OnEnter.InTx {
			return st.OnEnter.Name
		}
	}
	for _, tr := range def.Transitions {
		if tr.Action != nil && tr.Action.InTx {
			return tr.Action.Name
		}
	}
	return ""
}

// instanceOf returns the id of the instance key names (an instance id or
// one of its step keys), "" if none.
func instanceOf(name string, instances int, key string) string {
	best := ""
	for i := range instances {
		id := fmt.Sprintf("%s%d", name, i)
		if (key == id || strings.HasPrefix(key, id+"/")) && len(id) > len(best) {
			best = id
		}
	}
	return best
}

// workflowStory is the trace of one instance up to its first violation:
// every line about it or its steps, with the crashes, restarts and pauses
// of the workers; the whole trace if id is "". Long stories keep their
// last 150 lines.
func workflowStory(r *sim.Report, id string) string {
	const most = 150
	var lines []string
	for _, s := range r.Trace().Steps() {
		switch {
		case id == "",
			s.Key == id || strings.HasPrefix(s.Key, id+"/"),
			s.Key == "" && (s.Op == "crash" || s.Op == "start" || s.Op == "pause" || s.Op == "wake"):
			lines = append(lines, "  "+s.String()+"\n")
		}
		if s.Op == "VIOLATION" {
			break
		}
	}
	var b strings.Builder
	if len(lines) > most {
		fmt.Fprintf(&b, "  (%d earlier lines left out)\n", len(lines)-most)
		lines = lines[len(lines)-most:]
	}
	for _, l := range lines {
		b.WriteString(l)
	}
	return b.String()
}
