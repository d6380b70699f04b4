// Package wfhook lets the simulator (package sim) reach inside a
// workflow.Engine: to crash it at step boundaries and to break it on
// purpose, as the simulator's mutants do, to prove that its workflow
// scenario catches each break. Nothing outside idem can import it, and an
// engine nobody installed hooks on runs exactly as without this package.
package wfhook

// Hooks are the points where the simulator reaches into an engine. The
// zero value changes nothing.
type Hooks struct {
	// Crash is called at named step boundaries ("before-commit": the
	// action or compensation ran, its journal entry is not committed); a
	// non-nil error abandons the step as a killed process would.
	Crash func(point, stepKey string) error
	// StepKey, if set, maps the key an action runs under: the
	// forget-step-key mutant gives every attempt a fresh one.
	StepKey func(key string) string
	// CommitBeforeAction commits an action's transition to the journal
	// first and runs the action afterwards (a mutant).
	CommitBeforeAction bool
	// KeepToken keeps an instance's Token when an engine takes it over,
	// so a worker that lost it is not fenced out downstream (a mutant).
	KeepToken bool
	// CompensateAgain runs every compensation a second time, under a
	// fresh key (a mutant).
	CompensateAgain bool
}

// Install sets h on engine, a *workflow.Engine; package workflow sets it
// when it is initialised.
var Install func(engine any, h *Hooks)
