package workflow

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// Definition is a workflow type: an explicit state machine that an instance
// walks from Initial to a terminal state, one transition per event. It is
// plain data (the json tags give its declarative form), except for the
// functions of its actions, which the declarative form leaves out.
//
// A Definition is checked by Validate, and Registry.Register refuses one
// that does not pass. Once registered it must not be modified.
type Definition struct {
	// Name names the workflow type, such as "order". Non-empty.
	Name string `json:"name"`
	// Version distinguishes successive definitions of the same type: an
	// instance finishes on the version it started with. Positive.
	Version int `json:"version"`
	// Initial is the name of the state an instance starts in.
	Initial string `json:"initial"`
	// States are the states, each named once. Their order is kept in
	// rendering and error messages, and nowhere else.
	States []State `json:"states"`
	// Transitions say, for a state and an event, which state comes next
	// and which action takes the instance there.
	Transitions []Transition `json:"transitions"`
	// Source, if set, is what else defines the type's behaviour beyond
	// the structure Fingerprint covers: the document a declarative
	// definition was read from, whose requests and rules are its
	// functions. It enters Fingerprint, so a changed document under a
	// registered version is a version conflict.
	Source []byte `json:"-"`
}

// Terminal says whether a state ends an instance, and how.
type Terminal string

// The values of Terminal.
const (
	// NotTerminal (the zero value) marks a state an instance leaves.
	NotTerminal Terminal = ""
	// Success marks a terminal state reached when the work was done.
	Success Terminal = "success"
	// Failure marks a terminal state reached when the work was abandoned,
	// after whatever unwinding the definition describes.
	Failure Terminal = "failure"
)

// State is one state of a Definition.
type State struct {
	// Name is unique within the definition and non-empty.
	Name string `json:"name"`
	// Terminal marks a state that ends an instance. No transition leaves
	// it and it has no timeout.
	Terminal Terminal `json:"terminal,omitempty"`
	// OnEnter, if set, runs each time an instance enters the state,
	// before the instance waits for the state's events.
	OnEnter *Action `json:"on_enter,omitempty"`
	// Timeout, if positive, fires TimeoutEvent once the instance has been
	// in the state that long without leaving it.
	Timeout time.Duration `json:"timeout,omitempty"`
	// TimeoutEvent is the event fired when Timeout passes. A transition
	// from this state on this event must exist: every timeout leads
	// somewhere.
	TimeoutEvent string `json:"timeout_event,omitempty"`
}

// Transition moves an instance from one state to another on an event.
type Transition struct {
	// From is the state the transition leaves; never a terminal one.
	From string `json:"from"`
	// Event names what makes the transition happen: an event sent to the
	// instance, or a state's TimeoutEvent. At most one transition per
	// (From, Event).
	//
	// An empty Event (in JSON, "event" omitted or "") makes the transition
	// automatic: an instance takes it as soon as it has entered From, once
	// From's OnEnter action, if any, has completed, without waiting for an
	// event; its Action runs as any transition's does. A chain of automatic
	// transitions runs a sequence of steps from Start alone (as Step
	// Functions' Next or XState's always). A state with an automatic
	// transition has no other transition and no timeout, and a cycle of
	// automatic transitions without actions is refused: see Validate.
	Event string `json:"event"`
	// To is the state the instance is in after the transition (From itself
	// for a self-loop).
	To string `json:"to"`
	// Action, if set, runs as part of the transition: the instance reaches
	// To only once it succeeded.
	Action *Action `json:"action,omitempty"`
}

// StepFunc is the body of an action or of its compensation. It returns the
// step's result, which the engine records. It must honour ctx, and should
// pass step.Key downstream as an idempotency key and step.Token as a
// fencing token, since a crash may run it again for the same step.
type StepFunc func(ctx context.Context, step *Step) ([]byte, error)

// Step is what an action is told about the step it runs. The engine fills
// it; a definition never does.
type Step struct {
	// InstanceID is the id of the workflow instance.
	InstanceID string
	// Key is the step key: the same for every attempt of one step of one
	// instance, including a re-run after a crash, and different for every
	// other step (and for each compensation).
	Key string
	// Token is the instance's fencing token (Instance.Token): it strictly
	// increases when another engine takes the instance over, so a
	// downstream that remembers the highest token it saw for a key can
	// refuse a worker that lost the instance and woke late.
	Token int64
	// Input is the payload of the event that started the step, or the
	// instance's input when that is empty (always for an entry action). A
	// compensation gets the Input of the action it undoes.
	Input []byte
	// Attempt counts the attempts of this step, from 1.
	Attempt int
	// InstanceInput is the instance's input, whatever Input is.
	InstanceInput []byte
	// Results holds the results of the instance's completed actions, by
	// action name (the latest completion of each). Read it, never change
	// it.
	Results map[string][]byte
}

// Action is a unit of work a transition or a state entry performs.
//
// A side-effecting action says how to undo it (Compensate), and any other
// action says it needs no undoing (NoCompensation): the engine unwinds a
// cancelled or failed instance by running the compensations of the actions
// it completed, in reverse order, and refuses to guess.
type Action struct {
	// Name names the action: unique within the definition, non-empty. It
	// enters step keys and history, so renaming an action is a new version.
	Name string `json:"name"`
	// Run does the work. Required.
	Run StepFunc `json:"-"`
	// Compensate undoes what Run did. Exactly one of Compensate and
	// NoCompensation is set.
	Compensate StepFunc `json:"-"`
	// NoCompensation declares that the action needs no undoing: it has no
	// side effect, or its effect undoes itself (a reservation that
	// expires).
	NoCompensation bool `json:"no_compensation,omitempty"`
	// Retry is how Run is retried when it fails; nil means
	// DefaultRetryPolicy().
	Retry *RetryPolicy `json:"retry,omitempty"`
	// InTx runs Run and Compensate inside the journal's transaction that
	// records the step (the engine's journal must be a TxJournal, such as
	// pgstore.Journal; read the transaction with pgstore.StepTx): their
	// writes commit with the step or not at all, so a crash never leaves
	// them done and the step not, and a re-run never repeats them. A
	// failed attempt's writes roll back; the failure is recorded by a
	// journal write of its own.
	InTx bool `json:"in_tx,omitempty"`
	// Next, if set, chooses from Run's result the event that follows the
	// action (the empty event: none): the engine queues it, with the
	// result as its payload and the id "<step key>/next", as the action's
	// step commits, and processes it in the state the action led to, as
	// any event. Declarative definitions choose it with rules on the
	// result.
	Next func(result []byte) string `json:"-"`
	// OnExhausted says what the engine does when Run has failed for good
	// (attempts exhausted, or a Permanent error): unwind the instance (the
	// default) or park it for an operator.
	OnExhausted Exhausted `json:"on_exhausted,omitempty"`
}

// Exhausted says what happens to an instance when an action fails for
// good.
type Exhausted string

// The values of Exhausted.
const (
	// Unwind (the zero value also means it) runs the compensations of the
	// instance's completed actions, in reverse order, and ends it.
	Unwind Exhausted = "unwind"
	// Park stops the instance where it is, for an operator to retry or
	// cancel once the cause is fixed.
	Park Exhausted = "park"
)

// definitionForm is the part of a Definition that its fingerprint covers:
// everything but functions. Whether an action has a compensation needs no
// field of its own: in a valid definition it is !NoCompensation.
type actionForm struct {
	Name           string       `json:"name"`
	NoCompensation bool         `json:"no_compensation"`
	InTx           bool         `json:"in_tx,omitempty"`
	Retry          *RetryPolicy `json:"retry"`
	OnExhausted    Exhausted    `json:"on_exhausted"`
}

type stateForm struct {
	Name         string        `json:"name"`
	Terminal     Terminal      `json:"terminal"`
	OnEnter      *actionForm   `json:"on_enter"`
	Timeout      time.Duration `json:"timeout"`
	TimeoutEvent string        `json:"timeout_event"`
}

type transitionForm struct {
	From   string      `json:"from"`
	Event  string      `json:"event"`
	To     string      `json:"to"`
	Action *actionForm `json:"action"`
}

type definitionForm struct {
	Name        string           `json:"name"`
	Version     int              `json:"version"`
	Initial     string           `json:"initial"`
	States      []stateForm      `json:"states"`
	Transitions []transitionForm `json:"transitions"`
	Source      [32]byte         `json:"source,omitzero"`
}

func formOf(a *Action) *actionForm {
	if a == nil {
		return nil
	}
	return &actionForm{Name: a.Name, NoCompensation: a.NoCompensation, InTx: a.InTx, Retry: a.Retry, OnExhausted: a.OnExhausted}
}

// Fingerprint returns a hex SHA-256 of the definition's structure: names,
// version, states, transitions, timeouts, and each action's name,
// NoCompensation, retry values and OnExhausted; not its functions (Run,
// Compensate, Retryable, Next), which cannot be compared, but Source's
// SHA-256 when it is set. Two valid definitions
// with the same fingerprint describe the same state machine, and the
// declarative (JSON) form of a definition has the definition's
// fingerprint.
func (d *Definition) Fingerprint() string {
	f := definitionForm{Name: d.Name, Version: d.Version, Initial: d.Initial}
	for _, s := range d.States {
		f.States = append(f.States, stateForm{Name: s.Name, Terminal: s.Terminal, OnEnter: formOf(s.OnEnter), Timeout: s.Timeout, TimeoutEvent: s.TimeoutEvent})
	}
	for _, t := range d.Transitions {
		f.Transitions = append(f.Transitions, transitionForm{From: t.From, Event: t.Event, To: t.To, Action: formOf(t.Action)})
	}
	if len(d.Source) > 0 {
		f.Source = sha256.Sum256(d.Source)
	}
	b, err := json.Marshal(f)
	if err != nil {
		// Only a NaN or infinite float can fail to marshal; Validate
		// refuses those, and the fingerprint of an invalid definition
		// need only be deterministic.
		b = []byte(err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// clone copies the definition deeply enough that changes to the caller's
// slices and actions do not reach it.
func (d *Definition) clone() *Definition {
	c := *d
	c.States = append([]State(nil), d.States...)
	for i := range c.States {
		c.States[i].OnEnter = cloneAction(c.States[i].OnEnter)
	}
	c.Transitions = append([]Transition(nil), d.Transitions...)
	for i := range c.Transitions {
		c.Transitions[i].Action = cloneAction(c.Transitions[i].Action)
	}
	return &c
}

func cloneAction(a *Action) *Action {
	if a == nil {
		return nil
	}
	c := *a
	if a.Retry != nil {
		r := *a.Retry
		c.Retry = &r
	}
	return &c
}

// State returns the state named name, if there is one.
func (d *Definition) State(name string) (State, bool) {
	for _, s := range d.States {
		if s.Name == name {
			return s, true
		}
	}
	return State{}, false
}

// Transition returns the transition from state from on event, if there is
// one: the one the engine takes when the event arrives in that state.
func (d *Definition) Transition(from, event string) (Transition, bool) {
	for _, t := range d.Transitions {
		if t.From == from && t.Event == event {
			return t, true
		}
	}
	return Transition{}, false
}
