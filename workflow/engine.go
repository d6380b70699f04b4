package workflow

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/wfhook"
)

// ReusePolicy says whether the id of a finished instance may start again,
// as Temporal's workflow id reuse policies.
type ReusePolicy int

// The values of ReusePolicy.
const (
	// RejectDuplicate (the default): a finished id never starts again;
	// Start returns the finished instance if the input is the same.
	RejectDuplicate ReusePolicy = iota
	// AllowIfFailed: a failed or cancelled id starts a new run; a
	// succeeded one does not.
	AllowIfFailed
	// AllowAlways: any finished id starts a new run, with any input.
	AllowAlways
)

// StartOptions adjust one Start. Nil means defaults.
type StartOptions struct {
	ReusePolicy ReusePolicy
}

// EngineConfig configures an Engine. Nil or zero fields mean defaults.
type EngineConfig struct {
	// ID names the engine in the instances it owns (Instance.Owner): give
	// each process its own, such as its host name and pid. Default: a
	// random id.
	ID string
	// Clock tells the time of leases, retries and timeouts. Default
	// idem.SystemClock.
	Clock idem.Clock
	// Lease is how long an engine owns an instance after its last write
	// before another engine may take it over; it is renewed while an
	// action runs longer than a third of it. Default 30 s.
	Lease time.Duration
	// PollInterval is how often Run looks for due work that nothing
	// woke it for: instances whose owner died, events and retries queued
	// through other engines. Default 1 s.
	PollInterval time.Duration
	// Workers is how many instances Run advances at once. Default 16.
	Workers int
	// Rand draws the jitter of retry backoffs, in [0, 1). Default
	// math/rand/v2's Float64.
	Rand func() float64
	// Observer, if set, sees the engine's work for metrics and tracing
	// (module idemotel). Nil: nothing is called.
	Observer Observer
}

// Observer sees an engine's work: the instances it starts and advances,
// and the steps (actions and compensations) it runs. The engine calls it
// from the goroutines that do the work, so it must be fast and safe for
// concurrent use, and must not change the instances it is handed.
type Observer interface {
	// Started is called when Start created an instance (or started a
	// finished id again), with Start's context, before any engine can
	// advance it.
	Started(ctx context.Context, in *Instance)
	// Advance is called when the engine starts advancing in (it owns it
	// now): the instance's units run with the context it returns, and
	// done is called when the advance stops, with the instance as it is
	// then (in.Status.Finished() tells whether it ended) and the error
	// that stopped it, if any.
	Advance(ctx context.Context, in *Instance) (_ context.Context, done func(in *Instance, err error))
	// Step is called before an action or compensation runs under its
	// step key: the step function runs with the context it returns, and
	// done is called with the step's error (nil on success; one the
	// engine retries, parks or unwinds on) and kept, true when the
	// function did not run because an earlier run of the unit kept its
	// result.
	Step(ctx context.Context, in *Instance, s StepInfo) (_ context.Context, done func(kept bool, err error))
}

// StepInfo describes a step for an Observer.
type StepInfo struct {
	Key          string // the step key (ActionKey or CompensationKey)
	Action       string // the action's name
	Compensation bool   // the action's compensation runs, not the action
	Attempt      int    // from 1
}

// Engine runs workflow instances: it starts them, delivers their events,
// runs their actions once per step key, retries, unwinds, and lets
// operators list, cancel, retry, resume and purge them. It is safe for
// concurrent use; several engines (processes) may share one journal.
//
// An engine owns an instance while it advances it, under a lease kept in
// the instance itself (Owner, Token, LeaseUntil), so the write that
// records a step also renews the lease: a step costs one journal commit.
// Start, Signal, Cancel, Retry and Resume take an instance that nobody
// owns in the same write that gives it work, and a running engine (Run)
// advances it at once; instances whose owner died are taken over by any
// engine once their lease has run out.
type Engine struct {
	journal  Journal
	registry *Registry
	clock    idem.Clock
	cfg      EngineConfig
	wake     chan struct{}

	mu      sync.Mutex
	ready   []*Instance // taken by this engine, to advance now
	busy    map[string]bool
	waiters map[string][]chan *Instance
	// ended holds the instances that an advance in progress ended or
	// parked, for Wait.
	ended  map[string]*Instance
	runs   int // Run calls in progress
	active int // instances Run handed to its workers, not yet done
	// nextWake is the earliest WakeAt this engine wrote or listed, for
	// Run's timer; zero if none.
	nextWake time.Time

	randMu sync.Mutex

	// crash, set by tests only, is called at named points; a non-nil
	// error abandons the step there as a crashed process would.
	crash func(point, stepKey string) error

	// hooks, set by the simulator only (internal/wfhook), break the
	// engine on purpose for its mutants; nil in every other engine.
	hooks *wfhook.Hooks
	// deferred is the commit-before-action mutant's action, run after
	// the unit's journal commit. Only an engine with hooks touches it
	// (the simulator's, which runs one task at a time).
	deferred func(ctx context.Context)
}

func init() {
	wfhook.Install = func(engine any, h *wfhook.Hooks) {
		e := engine.(*Engine)
		e.hooks = h
		if h != nil && h.Crash != nil {
			e.crash = h.Crash
		}
	}
}

// NewEngine returns an engine over journal (instances, their histories
// and leases) and registry (definitions).
func NewEngine(journal Journal, registry *Registry, cfg *EngineConfig) (*Engine, error) {
	if journal == nil || registry == nil {
		return nil, fmt.Errorf("%w: NewEngine needs a journal and a registry", idem.ErrInvalid)
	}
	e := &Engine{journal: journal, registry: registry, wake: make(chan struct{}, 1),
		busy: map[string]bool{}, waiters: map[string][]chan *Instance{}, ended: map[string]*Instance{}}
	if cfg != nil {
		e.cfg = *cfg
	}
	if e.cfg.Lease < 0 || e.cfg.PollInterval < 0 || e.cfg.Workers < 0 {
		return nil, fmt.Errorf("%w: EngineConfig durations and Workers must not be negative", idem.ErrInvalid)
	}
	if e.cfg.ID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		e.cfg.ID = "engine-" + hex.EncodeToString(b[:])
	}
	if e.cfg.Clock == nil {
		e.cfg.Clock = idem.SystemClock{}
	}
	e.clock = e.cfg.Clock
	if e.cfg.Lease == 0 {
		e.cfg.Lease = 30 * time.Second
	}
	if e.cfg.PollInterval == 0 {
		e.cfg.PollInterval = time.Second
	}
	if e.cfg.Workers == 0 {
		e.cfg.Workers = 16
	}
	if e.cfg.Rand == nil {
		e.cfg.Rand = mrand.Float64
	}
	return e, nil
}

// ID returns the engine's owner name (EngineConfig.ID).
func (e *Engine) ID() string { return e.cfg.ID }

// stepKeyCtx marks a context as carrying a step key.
type stepKeyCtx struct{}

// StepKey returns the step key of the action whose context ctx is, "" if
// ctx is not an action's. The same key is also in idem.KeyFrom(ctx), which
// idemhttp.Transport sends as the Idempotency-Key.
func StepKey(ctx context.Context) string {
	if ctx.Value(stepKeyCtx{}) == nil {
		return ""
	}
	k, _ := idem.KeyFrom(ctx)
	return k
}

func withStepKey(ctx context.Context, key string) context.Context {
	return idem.WithKey(context.WithValue(ctx, stepKeyCtx{}, true), key)
}

// ActionKey is the step key of action name run as step number step of
// instance id: "<id>/<step>/<name>".
func ActionKey(id string, step int, name string) string {
	return id + "/" + strconv.Itoa(step) + "/" + name
}

// CompensationKey is the step key of the compensation of that action:
// "<id>/<step>/compensate/<name>".
func CompensationKey(id string, step int, name string) string {
	return id + "/" + strconv.Itoa(step) + "/compensate/" + name
}

func startFingerprint(typ string, input []byte) string {
	h := sha256.New()
	h.Write([]byte(typ))
	h.Write([]byte{0})
	h.Write(input)
	return hex.EncodeToString(h.Sum(nil))
}

func (e *Engine) kick() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// free reports whether an engine may take in at now: nobody owns it, or
// its owner's lease has run out.
func (in *Instance) free(now time.Time) bool {
	return in.Owner == "" || !in.LeaseUntil.After(now)
}

// schedule sets in's lease and WakeAt after a change this engine made at
// now. mine says the engine owns in already. An instance with work due
// now is taken (its Token grows when it changes hands) if it is mine or
// free and the engine is running, and schedule reports true: the caller
// advances it after its write commits. An instance with no work due now
// is let go. One another engine owns keeps its owner, who finds the change
// when its next write conflicts.
func (e *Engine) schedule(in *Instance, now time.Time, mine, take bool) bool {
	w := in.wakeAt(now)
	due := !w.IsZero() && !w.After(now)
	switch {
	case due && (mine || take && in.free(now)):
		if !mine {
			clean := in.Owner == "" // released, everything attempted recorded
			if e.hooks == nil || !e.hooks.KeepToken {
				in.Token++
			}
			if clean && in.Pending != nil {
				in.Pending.Token = in.Token
			}
		}
		in.Owner, in.LeaseUntil = e.cfg.ID, now.Add(e.cfg.Lease)
		in.WakeAt = in.LeaseUntil
		return true
	case mine:
		in.Owner, in.LeaseUntil, in.WakeAt = "", time.Time{}, w
	case in.free(now):
		// Nobody's, or an owner's that died: only an owner lets go, so
		// that the next to take it knows whether an attempt may have
		// gone unrecorded (PendingAction.Token).
		in.WakeAt = w
	default:
		// Another engine's live lease: it is working on the instance.
		// If it dies, the instance is due when its lease ends.
		in.WakeAt = in.LeaseUntil
	}
	return false
}

// running reports whether Run is in progress, so that this engine takes
// the instances it gives work to.
func (e *Engine) running() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.runs > 0
}

// enqueue hands an instance this engine took to Run (or to Step).
func (e *Engine) enqueue(in *Instance) {
	e.mu.Lock()
	e.ready = append(e.ready, in)
	e.mu.Unlock()
	e.kick()
}

// Start starts an instance of workflow type typ (version 0: the latest
// registered) with id and input, idempotently: if id exists with the same
// type and input, Start returns it; with another, an error wrapping
// idem.ErrFingerprintMismatch. A finished id starts a new run only as
// opts.ReusePolicy allows; otherwise it is returned (same input) or
// refused (other input) as a running one is. While Run is in progress,
// the engine owns the new instance and advances it at once.
func (e *Engine) Start(ctx context.Context, typ string, version int, id string, input []byte, opts *StartOptions) (*Instance, error) {
	if err := idem.ValidateKey("wf", id); err != nil {
		return nil, err
	}
	var def *Definition
	var err error
	if version == 0 {
		def, err = e.registry.Latest(typ)
	} else {
		def, err = e.registry.Lookup(typ, version)
	}
	if err != nil {
		return nil, err
	}
	if _, ok := e.journal.(TxJournal); !ok && usesTx(def) {
		return nil, fmt.Errorf("%w: workflow %q v%d has actions InTx, and the journal runs no transactions (TxJournal)", idem.ErrInvalid, typ, def.Version)
	}
	var o StartOptions
	if opts != nil {
		o = *opts
	}
	now := e.clock.Now()
	in := &Instance{ID: id, Type: typ, Version: def.Version, Run: 1, Input: input,
		Fingerprint: startFingerprint(typ, input), Status: Running, Created: now, Updated: now}
	entries := []Entry{{At: now, Kind: EntryStarted, Run: 1, Status: Running, Reason: "version " + strconv.Itoa(def.Version)}}
	e.enter(in, def, def.Initial, now, &entries)
	run := e.schedule(in, now, false, e.running())
	// Most starts are of new ids: create first, and read the existing
	// instance only when there is one.
	cr, err := e.journal.Create(ctx, &CreateParams{Instance: in, Entries: entries})
	switch {
	case err == nil && cr.Created:
		if e.cfg.Observer != nil {
			e.cfg.Observer.Started(ctx, cr.Instance)
		}
		e.created(cr.Instance, run)
		return cr.Instance, nil
	case err == nil && (!cr.Instance.Status.Finished() || o.ReusePolicy == RejectDuplicate):
		return cr.Instance, nil
	case err != nil && !errors.Is(err, idem.ErrFingerprintMismatch):
		return nil, err
	case err != nil && o.ReusePolicy == RejectDuplicate:
		return nil, err
	}
	// The id exists, finished perhaps, and the policy may let it start
	// again.
	res, err := e.journal.Get(ctx, &GetParams{ID: id})
	if err != nil {
		return nil, err
	}
	old := res.Instance
	old.History = nil
	reuse := old.Status.Finished() && (o.ReusePolicy == AllowAlways ||
		o.ReusePolicy == AllowIfFailed && (old.Status == Failed || old.Status == Cancelled))
	if !reuse {
		if old.Fingerprint != startFingerprint(typ, input) {
			return nil, fmt.Errorf("%w: instance %q was started with another type or input", idem.ErrFingerprintMismatch, id)
		}
		return old, nil
	}
	now = e.clock.Now()
	in = &Instance{ID: id, Type: typ, Version: def.Version, Run: old.Run + 1, Input: input,
		Fingerprint: startFingerprint(typ, input), Status: Running, Created: now, Updated: now,
		Steps: old.Steps, Entered: old.Entered, Token: old.Token}
	entries = []Entry{{At: now, Kind: EntryStarted, Run: in.Run, Status: Running, Reason: "version " + strconv.Itoa(def.Version)}}
	e.enter(in, def, def.Initial, now, &entries)
	run = e.schedule(in, now, false, e.running())
	cr, err = e.journal.Create(ctx, &CreateParams{Instance: in, Entries: entries, Replace: true, ReplaceSeq: old.Seq})
	if err != nil {
		if errors.Is(err, ErrConflict) {
			// Another Start won the race to reuse the id: answer as a
			// duplicate of it.
			return e.Start(ctx, typ, version, id, input, &StartOptions{})
		}
		return nil, err
	}
	if e.cfg.Observer != nil {
		e.cfg.Observer.Started(ctx, cr.Instance)
	}
	e.created(cr.Instance, run)
	return cr.Instance, nil
}

// created hands a new instance to Run if this engine took it, or notes
// when it is due, for a Run that started after the instance was created.
func (e *Engine) created(in *Instance, took bool) {
	if took {
		e.enqueue(copyInstance(in, false))
	} else if !in.WakeAt.IsZero() {
		e.noteWake(in.WakeAt)
	}
}

// usesTx reports whether an action of def runs in the journal's
// transaction.
func usesTx(def *Definition) bool {
	for _, s := range def.States {
		if s.OnEnter != nil && s.OnEnter.InTx {
			return true
		}
	}
	for _, t := range def.Transitions {
		if t.Action != nil && t.Action.InTx {
			return true
		}
	}
	return false
}

// enter moves in into state name: runs nothing, but sets the OnEnter
// action pending, or else finishes the entry (finishEnter).
func (e *Engine) enter(in *Instance, def *Definition, name string, now time.Time, entries *[]Entry) {
	in.State = name
	in.Entered++
	in.TimeoutAt = time.Time{}
	st, _ := def.State(name)
	if st.OnEnter != nil {
		in.Steps++
		in.Pending = &PendingAction{Step: in.Steps, Action: st.OnEnter.Name, OnEnter: true, To: name}
		in.Attempt = 0
		return
	}
	e.finishEnter(in, def, now, entries)
}

// finishEnter ends the instance in a terminal state, takes the state's
// automatic transition, or arms its timeout.
func (e *Engine) finishEnter(in *Instance, def *Definition, now time.Time, entries *[]Entry) {
	st, _ := def.State(in.State)
	switch st.Terminal {
	case Success, Failure:
		in.Status = Succeeded
		if st.Terminal == Failure {
			in.Status = Failed
		}
		in.Finished = now
		*entries = append(*entries, Entry{At: now, Kind: EntryFinished, Run: in.Run, State: in.State, Status: in.Status})
		rejectInbox(in, now, "instance is "+string(in.Status), entries)
		return
	}
	if t, ok := def.Transition(in.State, ""); ok {
		e.take(in, def, t, InboxEvent{}, now, entries)
		return
	}
	if st.Timeout > 0 {
		in.TimeoutAt = now.Add(st.Timeout)
	}
}

// take starts transition t, on event ev (the zero InboxEvent for an
// automatic transition): its action becomes pending, or the instance
// moves on at once.
func (e *Engine) take(in *Instance, def *Definition, t Transition, ev InboxEvent, now time.Time, entries *[]Entry) {
	if t.Action == nil {
		*entries = append(*entries, Entry{At: now, Kind: EntryTransition, Run: in.Run, Event: ev.Event, EventID: ev.ID,
			From: in.State, To: t.To, State: t.To, Status: in.Status})
		e.enter(in, def, t.To, now, entries)
		return
	}
	in.Steps++
	in.Attempt, in.NotBefore = 0, time.Time{}
	in.Pending = &PendingAction{Step: in.Steps, Action: t.Action.Name, Event: ev.Event, EventID: ev.ID, From: in.State, To: t.To, Input: ev.Payload}
	*entries = append(*entries, Entry{At: now, Kind: EntryActionStarted, Run: in.Run, State: in.State, Status: in.Status,
		Event: ev.Event, EventID: ev.ID, Action: t.Action.Name, StepKey: ActionKey(in.ID, in.Steps, t.Action.Name)})
}

// rejectInbox records every queued event as rejected, for reason, and
// empties the queue: an event is never dropped silently.
func rejectInbox(in *Instance, now time.Time, reason string, entries *[]Entry) {
	for _, ev := range in.Inbox {
		*entries = append(*entries, Entry{At: now, Kind: EntryEventRejected, Run: in.Run, State: in.State, Status: in.Status,
			Event: ev.Event, EventID: ev.ID, Reason: reason})
	}
	in.Inbox = nil
}

// wakeAt is when a worker next has work for in: zero when none.
func (in *Instance) wakeAt(now time.Time) time.Time {
	switch {
	case in.Status.Finished():
		return time.Time{}
	case in.CancelRequested && in.Status != Unwinding:
		return now
	case in.Status == Parked:
		return time.Time{}
	case in.Status == Unwinding || in.Pending != nil:
		if in.NotBefore.After(now) {
			return in.NotBefore
		}
		return now
	case len(in.Inbox) > 0:
		return now
	case !in.TimeoutAt.IsZero():
		return in.TimeoutAt
	}
	return time.Time{}
}

// update reads instance id, lets change change it (nil entries: nothing
// to write), and writes it back, again on a conflict. An instance that
// has work due and that nobody owns is taken, and advanced by Run.
func (e *Engine) update(ctx context.Context, id string, change func(in *Instance, now time.Time) ([]Entry, error)) error {
	for {
		res, err := e.journal.Get(ctx, &GetParams{ID: id})
		if err != nil {
			return err
		}
		in := res.Instance
		in.History = nil
		now := e.clock.Now()
		entries, err := change(in, now)
		if err != nil || entries == nil {
			return err
		}
		in.Updated = now
		run := e.schedule(in, now, false, e.running())
		ar, err := e.journal.Append(ctx, &AppendParams{Instance: in, Entries: entries})
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		in.Seq = ar.Seq
		e.committed(in)
		e.created(in, run)
		return nil
	}
}

// Signal delivers event to instance id with payload. Events are
// deduplicated by eventID: a second delivery of an id returns duplicate
// true and changes nothing. An accepted event is queued and processed in
// order; if it does not apply in the instance's state then, it is
// recorded in the history as rejected, with the reason. An event for a
// finished, unwinding or cancelled instance is recorded as rejected at
// once, and one still queued when the instance ends or unwinds is
// recorded as rejected then: no event is dropped silently. An event for an
// automatic transition (the empty event) is refused (idem.ErrInvalid).
func (e *Engine) Signal(ctx context.Context, id, eventID, event string, payload []byte) (duplicate bool, err error) {
	if eventID == "" || event == "" {
		return false, fmt.Errorf("%w: Signal needs an event id and an event", idem.ErrInvalid)
	}
	err = e.update(ctx, id, func(in *Instance, now time.Time) ([]Entry, error) {
		if seen(in, eventID) {
			duplicate = true
			return nil, nil
		}
		in.Seen = append(in.Seen, eventID)
		if in.Status.Finished() || in.Status == Unwinding || in.CancelRequested {
			reason := "instance is " + string(in.Status)
			if in.CancelRequested {
				reason = "instance is being cancelled"
			}
			return []Entry{{At: now, Kind: EntryEventRejected, Run: in.Run, State: in.State, Event: event, EventID: eventID,
				Status: in.Status, Reason: reason}}, nil
		}
		in.Inbox = append(in.Inbox, InboxEvent{ID: eventID, Event: event, Payload: payload})
		return []Entry{{At: now, Kind: EntryEventReceived, Run: in.Run, State: in.State, Event: event, EventID: eventID, Status: in.Status}}, nil
	})
	return duplicate, err
}

// Cancel asks instance id to stop: its owner stops forward progress and
// runs the compensations of the completed actions, latest first; the
// instance then ends Cancelled, in the state it was in. An action that was
// in progress is settled first: it runs once more under its step key (a
// downstream that honours the key answers with what an earlier attempt
// did), and counts as completed, and is compensated, if that attempt
// succeeds. Cancelling a cancelled or unwinding instance does nothing; a
// finished one, ErrFinished.
func (e *Engine) Cancel(ctx context.Context, id, reason string) error {
	return e.update(ctx, id, func(in *Instance, now time.Time) ([]Entry, error) {
		switch {
		case in.Status == Cancelled || in.CancelRequested || in.Status == Unwinding:
			return nil, nil
		case in.Status.Finished():
			return nil, fmt.Errorf("%w: instance %q is %s", ErrFinished, id, in.Status)
		}
		in.CancelRequested, in.CancelReason = true, reason
		return []Entry{{At: now, Kind: EntryCancelRequested, Run: in.Run, State: in.State, Status: in.Status, Reason: reason}}, nil
	})
}

// Retry resumes a parked instance: its failed action (or compensation)
// gets a fresh set of attempts, with the same step key. ErrNotParked if
// the instance is not parked.
func (e *Engine) Retry(ctx context.Context, id string) error {
	return e.update(ctx, id, func(in *Instance, now time.Time) ([]Entry, error) {
		if in.Status != Parked {
			return nil, fmt.Errorf("%w: instance %q is %s", ErrNotParked, id, in.Status)
		}
		in.Status, in.ParkedFrom, in.Attempt, in.NotBefore, in.Error = in.ParkedFrom, "", 0, time.Time{}, ""
		return []Entry{{At: now, Kind: EntryRetried, Run: in.Run, State: in.State, Status: in.Status}}, nil
	})
}

// Resume restarts instance id from state, after the cause of its failure
// was fixed (as DBOS's fork, but in place, keeping the id): the instance
// enters state again, as a transition into it would, and goes on from
// there with fresh step keys. The instance must be parked by a failed
// action (not by a failed compensation), or have failed or been cancelled
// without a compensation having run; otherwise Resume fails with
// ErrNotResumable. Its completed actions stay completed, and are
// compensated if it unwinds later; queued events stay queued. state must
// be a non-terminal state of the instance's definition (idem.ErrInvalid).
func (e *Engine) Resume(ctx context.Context, id, state, reason string) error {
	return e.update(ctx, id, func(in *Instance, now time.Time) ([]Entry, error) {
		def, err := e.registry.Lookup(in.Type, in.Version)
		if err != nil {
			return nil, err
		}
		st, ok := def.State(state)
		if !ok || st.Terminal != NotTerminal {
			return nil, fmt.Errorf("%w: %q is not a non-terminal state of workflow %q v%d", idem.ErrInvalid, state, in.Type, in.Version)
		}
		switch {
		case in.Status == Parked && in.ParkedFrom == Running:
		case (in.Status == Failed || in.Status == Cancelled) && in.Undone == 0:
		default:
			return nil, fmt.Errorf("%w: instance %q is %s", ErrNotResumable, id, in.Status)
		}
		from := in.State
		in.Status, in.ParkedFrom, in.EndStatus, in.Error = Running, "", "", ""
		in.Pending, in.Attempt, in.NotBefore, in.Finished = nil, 0, time.Time{}, time.Time{}
		in.CancelRequested, in.CancelReason = false, ""
		entries := []Entry{{At: now, Kind: EntryResumed, Run: in.Run, From: from, To: state, State: state, Status: Running, Reason: reason}}
		e.enter(in, def, state, now, &entries)
		return entries, nil
	})
}

// Wait blocks until instance id is finished or parked, and returns it
// without its history (Get has it); or until ctx is done (ctx's error),
// or at once with idem.ErrNotFound for an unknown id. It is woken by this
// engine's commit of the instance's end, without reading the journal,
// and otherwise reads the instance every PollInterval.
func (e *Engine) Wait(ctx context.Context, id string) (*Instance, error) {
	for first := true; ; first = false {
		ch := make(chan *Instance, 1)
		e.mu.Lock()
		if in, ok := e.ended[id]; ok {
			e.mu.Unlock()
			return copyInstance(in, false), nil
		}
		e.waiters[id] = append(e.waiters[id], ch)
		// An instance this engine is advancing ends here, and wakes ch:
		// no need to read it first.
		mine := first && (e.busy[id] || slices.ContainsFunc(e.ready, func(in *Instance) bool { return in.ID == id }))
		e.mu.Unlock()
		if !mine {
			res, err := e.journal.Get(ctx, &GetParams{ID: id})
			if err != nil {
				e.unwait(id, ch)
				return nil, err
			}
			if in := res.Instance; in.Status.Finished() || in.Status == Parked {
				e.unwait(id, ch)
				in.History = nil
				return in, nil
			}
		}
		tctx, cancel := context.WithCancel(ctx)
		timer := make(chan struct{})
		go func() {
			if e.clock.Sleep(tctx, e.cfg.PollInterval) == nil {
				close(timer)
			}
		}()
		select {
		case in := <-ch:
			cancel()
			return in, nil
		case <-timer:
		case <-ctx.Done():
		}
		cancel()
		e.unwait(id, ch)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

func (e *Engine) unwait(id string, ch chan *Instance) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ws := e.waiters[id]
	for i, w := range ws {
		if w == ch {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(e.waiters, id)
	} else {
		e.waiters[id] = ws
	}
}

// committed notes a write of in by this engine: Run wakes for a timer it
// set, and the waiters of in, if it ended or parked.
func (e *Engine) committed(in *Instance) {
	if in.Owner == "" && !in.WakeAt.IsZero() {
		e.noteWake(in.WakeAt)
	}
	if !in.Status.Finished() && in.Status != Parked {
		return
	}
	c := copyInstance(in, false)
	e.mu.Lock()
	ws := e.waiters[in.ID]
	delete(e.waiters, in.ID)
	if e.busy[in.ID] {
		// A Wait that comes before advance lets go of the instance finds
		// it here (advance's end forgets it).
		e.ended[in.ID] = c
	}
	e.mu.Unlock()
	for _, ch := range ws {
		ch <- copyInstance(c, false)
	}
}

// noteWake notes, for Run's timer, that an instance is due at t.
func (e *Engine) noteWake(t time.Time) {
	e.mu.Lock()
	if e.nextWake.IsZero() || t.Before(e.nextWake) {
		e.nextWake = t
	}
	e.mu.Unlock()
	e.kick()
}

// Get returns instance id with its history, or an error wrapping
// idem.ErrNotFound.
func (e *Engine) Get(ctx context.Context, id string) (*Instance, error) {
	res, err := e.journal.Get(ctx, &GetParams{ID: id})
	if err != nil {
		return nil, err
	}
	return res.Instance, nil
}

// List lists instances (without history) by type, state and status, a
// page at a time; see ListParams.
func (e *Engine) List(ctx context.Context, p *ListParams) (*ListResult, error) {
	if p == nil {
		p = &ListParams{}
	}
	return e.journal.List(ctx, p)
}

// Purge deletes the instances that finished more than retention ago, with
// their histories, and returns how many.
func (e *Engine) Purge(ctx context.Context, retention time.Duration) (int, error) {
	if retention < 0 {
		return 0, fmt.Errorf("%w: Purge retention is negative", idem.ErrInvalid)
	}
	before := e.clock.Now().Add(-retention)
	n := 0
	for {
		res, err := e.journal.List(ctx, &ListParams{FinishedBefore: before})
		if err != nil {
			return n, err
		}
		for _, in := range res.Instances {
			_, err := e.journal.Delete(ctx, &DeleteParams{ID: in.ID, Seq: in.Seq})
			switch {
			case err == nil:
				n++
			case errors.Is(err, ErrConflict), errors.Is(err, idem.ErrNotFound):
				// Restarted or purged by another: not ours to delete.
			default:
				return n, err
			}
		}
		if res.Next == "" {
			return n, nil
		}
	}
}
