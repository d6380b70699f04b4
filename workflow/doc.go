// Package workflow defines workflow types: multi-step work across services
// (reserve stock, charge the card, ship the parcel) written as an explicit
// state machine that is checked before anything runs, versioned, and drawn.
//
// It also runs instances of them (Engine): idempotent starts,
// deduplicated events, one step key and fencing token per action, retries,
// compensation on cancel and failure, and operators' cancel, retry, resume
// and purge. Instances live in a Journal, which is the engine's ledger:
// this package has the memory one (MemJournal), the embedded store and
// PostgreSQL have durable ones ((*pebblestore.Store).Journal,
// (*pgstore.Store).Journal), and every journal passes the conformance
// suite in workflow/journaltest. On PostgreSQL an action can run in the
// transaction that records its step (Action.InTx). The simulator (package
// sim, scenario workflows) runs engines through crashes, pauses and store
// faults. What a registered definition promises, and the engine relies on:
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
// the same for every attempt of one step, the instance's fencing token
// (it grows each time another engine takes the instance over) and the
// attempt number. An action passes the key downstream as an idempotency
// key, so that a re-run after a crash replays instead of repeating, and
// the token as a fencing token, so that an engine that lost the instance
// and woke late is refused.
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
// # Running instances
//
//	engine, err := workflow.NewEngine(workflow.NewMemJournal(), &types, nil)
//	go engine.Run(ctx)                                                  // or engine.Step(ctx) in tests
//	inst, err := engine.Start(ctx, "order", 0, "order-7", input, nil)  // idempotent by id
//	dup, err := engine.Signal(ctx, "order-7", "evt-1", "place", payload) // deduplicated by event id
//	done, err := engine.Wait(ctx, "order-7")                            // finished or parked
//
// Start is idempotent: the same id with the same type and input returns
// the existing instance, with another input it fails with
// idem.ErrFingerprintMismatch, and a finished id starts again only as the
// ReusePolicy allows. Signal queues an event once per event id; the
// instance processes events in order, and one that no transition of the
// current state takes is recorded in the history as rejected, with the
// reason. A transition with no event is automatic: it is taken as soon as
// its state has been entered, so a sequence of steps runs from Start alone.
//
// Each action runs under its step key, "<id>/<step>/<action>", which is in
// the action's context (StepKey, idem.KeyFrom) and which
// idemhttp.Transport sends as the Idempotency-Key. A step is done when the
// journal records it: the write that records an action's result also
// records the transition it completes and the next action to run, so a
// step costs one journal commit. An engine that dies after an action and
// before that commit leaves the step to be run again, by the engine that
// takes the instance over, with the same key and a higher token: a
// downstream that honours the key replays instead of repeating. An action
// marked InTx runs in the commit's own transaction (pgstore), so its
// writes and the step commit together or not at all.
//
// A failed attempt is retried by the action's RetryPolicy on the engine's
// clock; an action that fails for good unwinds the instance (the
// compensations of its completed actions, latest first, each once under
// its own key "<id>/<step>/compensate/<action>") or parks it for Retry or
// Resume. Cancel unwinds too. A state's Timeout fires its TimeoutEvent as
// an event with a deterministic id.
//
// An engine owns an instance while it advances it, under a lease kept in
// the instance (Owner, Token, LeaseUntil) and renewed by the writes that
// record its steps; every write to the journal is a compare-and-set, so
// any number of engines can share a journal, and an engine that lost an
// instance can record nothing. Start, Signal, Cancel, Retry and Resume
// give an engine that is running the instance they give work to; an
// instance whose owner died is taken over once its lease has run out.
// Operators list instances by type, state and status, read one with its
// history (Get), cancel, retry a parked one, resume one from a named state
// and purge finished ones past a retention.
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
