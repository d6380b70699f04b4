package sim

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// Scenario is a world of clients, servers and faults around the real
// ledger code, with the checks that must hold after every run.
type Scenario struct {
	Name       string
	Doc        string
	Faults     Faults
	Failpoints Failpoints
	// MaxSteps bounds a run; a world still busy after it is stuck.
	MaxSteps int
	// Setup builds the world's processes over store and returns the
	// checks to run once the world is at rest.
	Setup func(w *World, store *Store) (check func())
}

// Scenarios lists the built-in scenarios.
var Scenarios = []*Scenario{payments, messages, pauses, workflows}

// ScenarioNamed returns the scenario called name.
func ScenarioNamed(name string) (*Scenario, bool) {
	i := slices.IndexFunc(Scenarios, func(s *Scenario) bool { return s.Name == name })
	if i < 0 {
		return nil, false
	}
	return Scenarios[i], true
}

// Report is the result of one run.
type Report struct {
	Scenario   string
	Seed       uint64
	Mutant     string `json:",omitempty"`
	Violations []Violation
	Steps      int
	Events     int // trace lines
	// Virtual is how much virtual time the run took.
	Virtual time.Duration
	trace   *Trace
}

// OK reports whether every invariant held.
func (r *Report) OK() bool { return len(r.Violations) == 0 }

// Trace returns the run's trace.
func (r *Report) Trace() *Trace { return r.trace }

// Hash digests the run's whole trace: equal for equal seeds. It is worked
// out when asked, not for every run.
func (r *Report) Hash() uint64 { return r.trace.Hash() }

// Story returns the short trace of the first violation: the last n steps
// about its key, with the crashes and pauses among them.
func (r *Report) Story(n int) []Step {
	if r.OK() {
		return nil
	}
	return r.trace.About(r.Violations[0].Key, n)
}

// String tells the first violation, the seed that reproduces it, and its
// story; or that the run passed.
func (r *Report) String() string {
	var b strings.Builder
	if r.OK() {
		fmt.Fprintf(&b, "scenario %s seed %d: every invariant held (%d steps)\n", r.Scenario, r.Seed, r.Steps)
		return b.String()
	}
	mut := ""
	if r.Mutant != "" {
		mut = " --mutant " + r.Mutant
	}
	fmt.Fprintf(&b, "scenario %s seed %d: %s\n", r.Scenario, r.Seed, r.Violations[0])
	if len(r.Violations) > 1 {
		fmt.Fprintf(&b, "  (and %d more violations)\n", len(r.Violations)-1)
	}
	fmt.Fprintf(&b, "reproduce: idem sim --scenario %s --seed %d%s\n", r.Scenario, r.Seed, mut)
	for _, s := range r.Story(24) {
		b.WriteString("  " + s.String() + "\n")
	}
	return b.String()
}

// Run runs one seed of a scenario, on the correct ledger when mutant is
// nil, and checks its invariants.
func Run(sc *Scenario, seed uint64, mutant *Mutant) *Report {
	w := NewWorld(seed, sc.Faults)
	var inner idem.Store = memstore.New(&memstore.Config{Clock: w.Clock()})
	rep := &Report{Scenario: sc.Name, Seed: seed}
	if mutant != nil {
		if mutant.Wrap != nil {
			inner = mutant.Wrap(w, inner)
		}
		w.engineMutant = mutant.engine
		w.consumerMutant = mutant.consumer
		w.relayMutant = mutant.relay
		rep.Mutant = mutant.Name
	}
	store := w.NewStore(inner, sc.Failpoints)
	check := sc.Setup(w, store)
	maxSteps := sc.MaxSteps
	if maxSteps == 0 {
		maxSteps = 100_000
	}
	if err := w.Run(maxSteps); err != nil {
		w.Violate("ends-known", "", err.Error())
		w.stop()
	} else {
		check()
	}
	rep.Violations = w.violations
	rep.Steps = w.steps
	rep.Events = len(w.trace.steps)
	rep.Virtual = w.now.Sub(Epoch)
	rep.trace = w.trace
	return rep
}

// Free checks, with the world at rest, that every key it names ends
// completed or free: nobody holds it once the longest lease has run out.
func (s *Store) Free(lease time.Duration, keys ...string) {
	w := s.w
	after := w.now.Add(lease + time.Millisecond)
	for _, key := range keys {
		scope, ok := s.scopes[key]
		if !ok {
			continue // never begun
		}
		rec, err := s.inner.Get(context.Background(), &idem.KeyParams{Scope: scope, Key: key})
		if err != nil {
			continue // absent: free
		}
		if rec.State == idem.StatePending && rec.LeaseUntil.After(after) {
			w.Violate("ends-known", key, fmt.Sprintf("still held at rest, lease until %s", rec.LeaseUntil.Sub(Epoch)))
		}
	}
}

// Acked checks what a client was told against what committed: an
// acknowledged outcome's data is stored byte for byte (no-lost-outcome),
// and it came with its effects (at-least-once) exactly once
// (at-most-once). body reads the data a stored outcome holds (nil: its
// Data as it is).
func (s *Store) Acked(key string, data []byte, effects int, body func(idem.Outcome) ([]byte, error)) {
	w := s.w
	stored, ok := s.OutcomeOf(key)
	got := stored.Data
	var err error
	if ok && body != nil {
		got, err = body(stored)
	}
	switch {
	case !ok:
		w.Violate("no-lost-outcome", key, "a client was acknowledged, but no outcome is stored")
	case err != nil:
		w.Violate("same-outcome", key, fmt.Sprintf("a client was acknowledged %q, the stored outcome %q does not read: %v", data, stored.Data, err))
	case !bytes.Equal(got, data):
		w.Violate("same-outcome", key, fmt.Sprintf("a client was acknowledged %q, the stored outcome holds %q", data, got))
	}
	if got := len(w.Effects(key)); got != effects {
		inv := "at-least-once"
		if got > effects {
			inv = "at-most-once"
		}
		w.Violate(inv, key, fmt.Sprintf("an acknowledged request has %d effects applied, want %d", got, effects))
	}
}

// AtMostOnce checks that no key has more than one effect applied.
func (w *World) AtMostOnce(keys ...string) {
	for _, k := range keys {
		if n := len(w.effects[k]); n > 1 {
			w.Violate("at-most-once", k, fmt.Sprintf("%d effects applied: %v", n, w.effects[k]))
		}
	}
}
