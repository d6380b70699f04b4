// Package workflow defines workflow types: multi-step work across services
// (reserve stock, charge the card, ship the parcel) written as an explicit
// state machine that is checked before anything runs, versioned, and drawn.
//
// This package holds the definitions only. The engine that runs instances
// of them durably on the ledger (idempotent starts, deduplicated events,
// one step key per action, compensation on cancel and failure) lands in a
// later change. What a registered definition promises, and that engine
// will rely on:
//
//   - every state can be reached, and from every state an instance can
//     still reach a terminal one, so there are no dead ends;
//   - an event in a state has at most one outcome, and nothing leaves a
//     terminal state;
//   - every action says how to undo it, or that nothing needs undoing, so
//     an instance can always be unwound;
//   - every timeout fires an event that leads somewhere;
//   - a registered (name, version) never changes, so an instance finishes
//     on the definition it started with.
//
// # The model
//
// A Definition names a workflow type and its Version, its States, the
// Initial state and the Transitions between states. An instance is always
// in exactly one state. A Transition says: in state From, event Event
// moves the instance to state To, running Action on the way (optional).
// A State may run an OnEnter action each time it is entered, may fire a
// TimeoutEvent when the instance stays in it longer than Timeout, and may
// be Terminal: a Success or Failure end from which nothing leaves.
//
// An Action has a Name (unique in the definition, it enters step keys),
// a Run function, and either a Compensate function that undoes Run or
// NoCompensation, the explicit statement that nothing needs undoing. Its
// RetryPolicy says how many attempts Run gets, how long to wait between
// them (exponential backoff with jitter, computed by RetryPolicy.Backoff)
// and which errors are worth retrying; an error wrapped with Permanent
// never is. OnExhausted says whether an action that fails for good unwinds
// the instance or parks it for an operator.
//
// Run and Compensate receive a *Step: the instance id, a step key that is
// the same for every attempt of one step, a fencing token and the
// attempt number. An action passes the key downstream as an idempotency
// key, so that a re-run after a crash replays instead of repeating.
//
// # Defining a workflow
//
//	order := &workflow.Definition{
//		Name: "order", Version: 1, Initial: "pending",
//		States: []workflow.State{
//			{Name: "pending"},
//			{Name: "reserved", Timeout: 15 * time.Minute, TimeoutEvent: "payment_timeout"},
//			{Name: "shipped", Terminal: workflow.Success},
//			{Name: "cancelled", Terminal: workflow.Failure},
//		},
//		Transitions: []workflow.Transition{
//			{From: "pending", Event: "place", To: "reserved",
//				Action: &workflow.Action{Name: "reserve_stock", Run: reserve, Compensate: release}},
//			{From: "reserved", Event: "pay", To: "shipped",
//				Action: &workflow.Action{Name: "charge_card", Run: charge, Compensate: refund}},
//			{From: "reserved", Event: "payment_timeout", To: "cancelled"},
//		},
//	}
//	var types workflow.Registry
//	if err := types.Register(order); err != nil { // validates
//		log.Fatal(err)
//	}
//
// # Validation
//
// Definition.Validate, which Registry.Register calls, refuses a definition
// the engine could not run to an end: an unreachable state, a non-terminal
// state from which no terminal state is reachable, a transition leaving a
// terminal state, two transitions for one state and event, an action
// without a compensation or the statement that it needs none, a timeout
// whose event leads nowhere, and more (see Validate). It reports every
// problem at once, each a *DefinitionError naming the state, transition or
// action, all wrapping ErrInvalidDefinition.
//
// # Versions
//
// A Registry holds definitions by (name, version). A new version registers
// beside the old ones: an instance finishes on the version it started
// with, and new instances start on Latest. Registering the same structure
// again is a no-op, so every process can register its types at start; a
// different structure under a registered version is refused
// (ErrVersionConflict). Structure means everything but functions, as
// Definition.Fingerprint computes it: change a state, an event, a timeout
// or a retry value and you need a new version; change the code of Run and
// you do not.
//
// # Rendering
//
// Definition.Mermaid and Definition.DOT draw the state machine for docs
// and reviews (Mermaid's stateDiagram-v2, Graphviz's dot): the initial
// state, every transition labelled with its event and action, timeouts,
// and success and failure terminals styled apart. Output is deterministic,
// and any name, quotes and newlines included, is escaped.
//
// # Declarative form
//
// Every type carries json tags (lower_snake_case) for a declarative form
// of the same definitions. Functions (Run, Compensate, Retryable) are not
// part of it, and durations are encoded as encoding/json encodes a
// time.Duration, in nanoseconds.
package workflow
