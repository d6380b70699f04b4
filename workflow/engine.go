package workflow

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/wfhook"
)

// Ledger scopes the engine uses.
const (
	// InstanceScope holds one key per instance id: the lease under which
	// one worker at a time advances the instance.
	InstanceScope = "wf-instance"
	// StepScope holds one key per step key: an action's outcome, replayed
	// when a crash re-runs the step.
	StepScope = "wf-step"
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
	// Lease is how long a worker holds an instance, and an action's step
	// key, before another worker may take over; kept alive while the
	// worker works. Default: the ledger's lease.
	Lease time.Duration
	// PollInterval is how often Run looks for due work when nothing woke
	// it. Default 1 s.
	PollInterval time.Duration
	// Rand draws the jitter of retry backoffs, in [0, 1). Default
	// math/rand/v2's Float64.
	Rand func() float64
}

// Engine runs workflow instances: it starts them, delivers their events,
// runs their actions once per step key through the ledger, retries,
// unwinds, and lets operators list, cancel, retry and purge them. It is
// safe for concurrent use; several engines (workers) may share one
// journal and one ledger.
type Engine struct {
	ledger   *idem.Ledger
	journal  Journal
	registry *Registry
	clock    idem.Clock
	cfg      EngineConfig
	wake     chan struct{}

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

// NewEngine returns an engine over ledger (leases and step outcomes),
// journal (instances and histories) and registry (definitions).
func NewEngine(ledger *idem.Ledger, journal Journal, registry *Registry, cfg *EngineConfig) (*Engine, error) {
	if ledger == nil || journal == nil || registry == nil {
		return nil, fmt.Errorf("%w: NewEngine needs a ledger, a journal and a registry", idem.ErrInvalid)
	}
	e := &Engine{ledger: ledger, journal: journal, registry: registry, clock: ledger.Clock(), wake: make(chan struct{}, 1)}
	if cfg != nil {
		e.cfg = *cfg
	}
	if e.cfg.Lease < 0 || e.cfg.PollInterval < 0 {
		return nil, fmt.Errorf("%w: EngineConfig durations must not be negative", idem.ErrInvalid)
	}
	if e.cfg.Lease == 0 {
		e.cfg.Lease = ledger.Lease()
	}
	if e.cfg.PollInterval == 0 {
		e.cfg.PollInterval = time.Second
	}
	if e.cfg.Rand == nil {
		e.cfg.Rand = rand.Float64
	}
	return e, nil
}

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

// Start starts an instance of workflow type typ (version 0: the latest
// registered) with id and input, idempotently: if id exists with the same
// type and input, Start returns it; with another, an error wrapping
// idem.ErrFingerprintMismatch. A finished id starts a new run only as
// opts.ReusePolicy allows; otherwise it is returned (same input) or
// refused (other input) as a running one is.
func (e *Engine) Start(ctx context.Context, typ string, version int, id string, input []byte, opts *StartOptions) (*Instance, error) {
	if err := idem.ValidateKey(InstanceScope, id); err != nil {
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
	var o StartOptions
	if opts != nil {
		o = *opts
	}
	now := e.clock.Now()
	in := &Instance{ID: id, Type: typ, Version: def.Version, Run: 1, Input: input,
		Fingerprint: startFingerprint(typ, input), Status: Running, Created: now, Updated: now}
	res, err := e.journal.Get(ctx, &GetParams{ID: id})
	replace := false
	var replaceSeq int64
	switch {
	case err == nil:
		old := res.Instance
		reuse := old.Status.Finished() && (o.ReusePolicy == AllowAlways ||
			o.ReusePolicy == AllowIfFailed && (old.Status == Failed || old.Status == Cancelled))
		if !reuse {
			if old.Fingerprint != in.Fingerprint {
				return nil, fmt.Errorf("%w: instance %q was started with another type or input", idem.ErrFingerprintMismatch, id)
			}
			return old, nil
		}
		replace, replaceSeq = true, old.Seq
		in.Run, in.Steps, in.Entered = old.Run+1, old.Steps, old.Entered
	case !errors.Is(err, idem.ErrNotFound):
		return nil, err
	}
	entries := []Entry{{At: now, Kind: EntryStarted, Run: in.Run, Status: Running, Reason: "version " + strconv.Itoa(def.Version)}}
	e.enter(in, def, def.Initial, now, &entries)
	in.WakeAt = in.wakeAt(now)
	cr, err := e.journal.Create(ctx, &CreateParams{Instance: in, Entries: entries, Replace: replace, ReplaceSeq: replaceSeq})
	if err != nil {
		if replace && errors.Is(err, ErrConflict) {
			// Another Start won the race to reuse the id: answer as a
			// duplicate of it.
			return e.Start(ctx, typ, version, id, input, &StartOptions{})
		}
		return nil, err
	}
	e.kick()
	return cr.Instance, nil
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

// finishEnter arms the state's timeout, or ends the instance in a
// terminal state.
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
	if st.Timeout > 0 {
		in.TimeoutAt = now.Add(st.Timeout)
	}
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

// Signal delivers event to instance id with payload. Events are
// deduplicated by eventID: a second delivery of an id returns duplicate
// true and changes nothing. An accepted event is queued and processed in
// order by a worker; if it does not apply in the instance's state then,
// it is recorded in the history as rejected, with the reason. An event
// for a finished, unwinding or cancelled instance is recorded as rejected
// at once, and one still queued when the instance ends or unwinds is
// recorded as rejected then: no event is dropped silently.
func (e *Engine) Signal(ctx context.Context, id, eventID, event string, payload []byte) (duplicate bool, err error) {
	if eventID == "" || event == "" {
		return false, fmt.Errorf("%w: Signal needs an event id and an event", idem.ErrInvalid)
	}
	for {
		res, err := e.journal.Get(ctx, &GetParams{ID: id})
		if err != nil {
			return false, err
		}
		in := res.Instance
		in.History = nil
		for _, s := range in.Seen {
			if s == eventID {
				return true, nil
			}
		}
		now := e.clock.Now()
		in.Seen = append(in.Seen, eventID)
		in.Updated = now
		var entry Entry
		if in.Status.Finished() || in.Status == Unwinding || in.CancelRequested {
			reason := "instance is " + string(in.Status)
			if in.CancelRequested {
				reason = "instance is being cancelled"
			}
			entry = Entry{At: now, Kind: EntryEventRejected, Run: in.Run, State: in.State, Event: event, EventID: eventID,
				Status: in.Status, Reason: reason}
		} else {
			in.Inbox = append(in.Inbox, InboxEvent{ID: eventID, Event: event, Payload: payload})
			entry = Entry{At: now, Kind: EntryEventReceived, Run: in.Run, State: in.State, Event: event, EventID: eventID, Status: in.Status}
		}
		in.WakeAt = in.wakeAt(now)
		_, err = e.journal.Append(ctx, &AppendParams{Instance: in, Entries: []Entry{entry}})
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err == nil {
			e.kick()
		}
		return false, err
	}
}

// Cancel asks instance id to stop: the worker that next owns it stops
// forward progress (an action in progress that already completed counts
// as completed, one that did not is abandoned) and runs the compensations
// of the completed actions, latest first; the instance then ends
// Cancelled, in the state it was in. Cancelling a cancelled or unwinding
// instance does nothing; a finished one, ErrFinished.
func (e *Engine) Cancel(ctx context.Context, id, reason string) error {
	for {
		res, err := e.journal.Get(ctx, &GetParams{ID: id})
		if err != nil {
			return err
		}
		in := res.Instance
		in.History = nil
		switch {
		case in.Status == Cancelled || in.CancelRequested:
			return nil
		case in.Status.Finished():
			return fmt.Errorf("%w: instance %q is %s", ErrFinished, id, in.Status)
		case in.Status == Unwinding:
			return nil
		}
		now := e.clock.Now()
		in.CancelRequested, in.CancelReason, in.Updated = true, reason, now
		in.WakeAt = in.wakeAt(now)
		_, err = e.journal.Append(ctx, &AppendParams{Instance: in, Entries: []Entry{{At: now, Kind: EntryCancelRequested,
			Run: in.Run, State: in.State, Status: in.Status, Reason: reason}}})
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err == nil {
			e.kick()
		}
		return err
	}
}

// Retry resumes a parked instance: its failed action (or compensation)
// gets a fresh set of attempts, with the same step key. ErrNotParked if
// the instance is not parked.
func (e *Engine) Retry(ctx context.Context, id string) error {
	for {
		res, err := e.journal.Get(ctx, &GetParams{ID: id})
		if err != nil {
			return err
		}
		in := res.Instance
		in.History = nil
		if in.Status != Parked {
			return fmt.Errorf("%w: instance %q is %s", ErrNotParked, id, in.Status)
		}
		now := e.clock.Now()
		in.Status, in.ParkedFrom, in.Attempt, in.NotBefore, in.Error, in.Updated = in.ParkedFrom, "", 0, time.Time{}, "", now
		in.WakeAt = in.wakeAt(now)
		_, err = e.journal.Append(ctx, &AppendParams{Instance: in, Entries: []Entry{{At: now, Kind: EntryRetried,
			Run: in.Run, State: in.State, Status: in.Status}}})
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err == nil {
			e.kick()
		}
		return err
	}
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
// their histories, and returns how many. Their step outcomes in the ledger
// expire with the ledger's window.
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

// Run advances instances until ctx is done: it calls Step whenever it is
// woken (a Start, Signal, Cancel or Retry of this engine, a timer of the
// clock for the next due retry or timeout) and every PollInterval, for
// work that other engines queued. It returns ctx's error.
func (e *Engine) Run(ctx context.Context) error {
	for {
		// An instance whose unit failed (a store error) is tried again at
		// the next poll; Step went on with the others.
		_, _ = e.Step(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Step did all the work due now; what is still due now is blocked
		// (owned by another worker, a store error) and waits for the poll.
		wait := e.cfg.PollInterval
		if next, ok := e.nextDue(ctx); ok && next.After(e.clock.Now()) {
			wait = min(wait, next.Sub(e.clock.Now()))
		}
		tctx, cancel := context.WithCancel(ctx)
		fired := make(chan struct{})
		go func() {
			if e.clock.Sleep(tctx, wait) == nil {
				close(fired)
			}
		}()
		select {
		case <-ctx.Done():
		case <-e.wake:
		case <-fired:
		}
		cancel()
	}
}

// nextDue is the earliest WakeAt of the instances that have one.
func (e *Engine) nextDue(ctx context.Context) (time.Time, bool) {
	res, err := e.journal.List(ctx, &ListParams{Due: e.clock.Now().Add(e.cfg.PollInterval)})
	if err != nil || len(res.Instances) == 0 {
		return time.Time{}, false
	}
	next := res.Instances[0].WakeAt
	for _, in := range res.Instances[1:] {
		if in.WakeAt.Before(next) {
			next = in.WakeAt
		}
	}
	return next, true
}

// Step advances every instance that has work due now, each as far as it
// can go without waiting (for an event, a backoff or a timeout), and
// returns how many units of work it did (events processed, actions and
// compensations run, timeouts fired, instances ended). An instance owned
// by another worker is skipped. An instance whose unit fails (a store
// error) is left for a later Step and the others go on; the errors are
// joined. Tests call Step to drive the engine deterministically; Run calls
// it in a loop.
func (e *Engine) Step(ctx context.Context) (int, error) {
	total := 0
	after := ""
	var errs error
	for {
		res, err := e.journal.List(ctx, &ListParams{Due: e.clock.Now(), After: after})
		if err != nil {
			return total, errors.Join(errs, err)
		}
		for _, in := range res.Instances {
			n, err := e.advance(ctx, in.ID)
			total += n
			if errors.Is(err, errCrash) || ctx.Err() != nil {
				return total, errors.Join(errs, err)
			}
			if err != nil {
				// One instance's failure does not hold the others up.
				errs = errors.Join(errs, fmt.Errorf("instance %q: %w", in.ID, err))
			}
		}
		if res.Next == "" {
			return total, errs
		}
		after = res.Next
	}
}

// advance owns instance id for a while and does its due work.
func (e *Engine) advance(ctx context.Context, id string) (int, error) {
	claim, err := e.ledger.Begin(ctx, InstanceScope, id, "", idem.WithLease(e.cfg.Lease))
	if errors.Is(err, idem.ErrInFlight) {
		return 0, nil // another worker owns it
	}
	if err != nil {
		return 0, err
	}
	if claim.Replayed() {
		// Never completed by the engine; a stray record is not a lease.
		return 0, fmt.Errorf("workflow: instance key %q holds a completed record", id)
	}
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := claim.KeepAlive(ctx, e.cfg.Lease, func(err error) { cancel(err) })
	n := 0
	for {
		did, err := e.unit(wctx, id)
		n += did
		if errors.Is(err, idem.ErrInFlight) {
			// A step key is held by a worker that lost this instance
			// (paused past its lease): wait for its lease to end.
			break
		}
		if err != nil {
			stop()
			if errors.Is(err, errCrash) {
				// A crashed worker releases nothing: its lease runs out.
				return n, err
			}
			_ = claim.Release(context.WithoutCancel(ctx))
			return n, err
		}
		if did == 0 {
			break
		}
	}
	stop()
	if err := claim.Release(context.WithoutCancel(ctx)); err != nil && !errors.Is(err, idem.ErrLeaseLost) {
		return n, err
	}
	return n, nil
}

var errCrash = errors.New("workflow: simulated crash")

// unit does one unit of work for instance id and commits it: 1 if it did,
// 0 if there was nothing due.
func (e *Engine) unit(ctx context.Context, id string) (int, error) {
	for {
		if err := ctx.Err(); err != nil {
			// The lease was lost (or the caller gave up): stop here.
			return 0, err
		}
		res, err := e.journal.Get(ctx, &GetParams{ID: id})
		if err != nil {
			return 0, err
		}
		in := res.Instance
		in.History = nil
		def, err := e.registry.Lookup(in.Type, in.Version)
		if err != nil {
			return 0, err
		}
		now := e.clock.Now()
		w := in.wakeAt(now)
		if w.IsZero() || w.After(now) {
			return 0, nil
		}
		var entries []Entry
		if e.hooks != nil {
			e.deferred = nil
		}
		if err := e.work(ctx, in, def, now, &entries); err != nil {
			return 0, err
		}
		in.Updated = e.clock.Now()
		in.WakeAt = in.wakeAt(in.Updated)
		_, err = e.journal.Append(ctx, &AppendParams{Instance: in, Entries: entries})
		if errors.Is(err, ErrConflict) {
			// A Signal or Cancel came in meanwhile: do the unit again on
			// the new version; an action that ran replays from the ledger.
			continue
		}
		if err != nil {
			return 0, err
		}
		if e.hooks != nil && e.deferred != nil {
			f := e.deferred
			e.deferred = nil
			f(ctx)
		}
		return 1, nil
	}
}

// work changes in by one unit of work, appending its history entries.
func (e *Engine) work(ctx context.Context, in *Instance, def *Definition, now time.Time, entries *[]Entry) error {
	entry := func(x Entry) {
		x.At, x.Run = e.clock.Now(), in.Run
		if x.State == "" {
			x.State = in.State
		}
		if x.Status == "" {
			x.Status = in.Status
		}
		*entries = append(*entries, x)
	}
	switch {
	case in.CancelRequested && in.Status != Unwinding:
		if in.Pending != nil {
			// The pending action may have completed before the worker
			// that ran it crashed: claim its step to know, and to stop a
			// straggler from completing it later.
			done, result, err := e.settlePending(ctx, in, def)
			if err != nil {
				return err
			}
			if done {
				entry(Entry{Kind: EntryActionCompleted, Action: in.Pending.Action, StepKey: ActionKey(in.ID, in.Pending.Step, in.Pending.Action), Replayed: true})
				e.recordDone(in, def, result)
			}
			in.Pending = nil
		}
		in.CancelRequested = false
		in.Status, in.EndStatus, in.Attempt, in.NotBefore, in.TimeoutAt = Unwinding, Cancelled, 0, time.Time{}, time.Time{}
		entry(Entry{Kind: EntryUnwinding, Reason: "cancelled: " + in.CancelReason})
		rejectInbox(in, e.clock.Now(), "instance is unwinding", entries)
		return nil
	case in.Status == Unwinding:
		return e.compensateNext(ctx, in, def, entry)
	case in.Pending != nil:
		return e.runPending(ctx, in, def, entries, entry)
	case len(in.Inbox) > 0:
		ev := in.Inbox[0]
		in.Inbox = in.Inbox[1:]
		t, ok := def.Transition(in.State, ev.Event)
		if !ok {
			entry(Entry{Kind: EntryEventRejected, Event: ev.Event, EventID: ev.ID,
				Reason: fmt.Sprintf("no transition from state %q on event %q", in.State, ev.Event)})
			return nil
		}
		if t.Action == nil {
			entry(Entry{Kind: EntryTransition, Event: ev.Event, EventID: ev.ID, From: in.State, To: t.To, State: t.To})
			e.enter(in, def, t.To, now, entries)
			return nil
		}
		in.Steps++
		in.Attempt, in.NotBefore = 0, time.Time{}
		in.Pending = &PendingAction{Step: in.Steps, Action: t.Action.Name, Event: ev.Event, EventID: ev.ID, From: in.State, To: t.To, Input: ev.Payload}
		entry(Entry{Kind: EntryActionStarted, Event: ev.Event, EventID: ev.ID, Action: t.Action.Name, StepKey: ActionKey(in.ID, in.Steps, t.Action.Name)})
		return nil
	case !in.TimeoutAt.IsZero() && !in.TimeoutAt.After(now):
		st, _ := def.State(in.State)
		evID := in.ID + "/timeout/" + strconv.Itoa(in.Entered)
		in.TimeoutAt = time.Time{}
		if !seen(in, evID) {
			in.Seen = append(in.Seen, evID)
			in.Inbox = append(in.Inbox, InboxEvent{ID: evID, Event: st.TimeoutEvent})
			entry(Entry{Kind: EntryTimeoutFired, Event: st.TimeoutEvent, EventID: evID})
		}
		return nil
	}
	return nil
}

func seen(in *Instance, id string) bool {
	for _, s := range in.Seen {
		if s == id {
			return true
		}
	}
	return false
}

// pendingAction returns the Action of in.Pending.
func pendingAction(in *Instance, def *Definition) *Action {
	p := in.Pending
	if p.OnEnter {
		st, _ := def.State(p.To)
		return st.OnEnter
	}
	t, _ := def.Transition(p.From, p.Event)
	return t.Action
}

// recordDone notes the completed pending action for unwinding, if it has
// a compensation.
func (e *Engine) recordDone(in *Instance, def *Definition, result []byte) {
	a := pendingAction(in, def)
	if a.Compensate == nil {
		return
	}
	p := in.Pending
	in.Done = append(in.Done, DoneAction{Step: p.Step, Action: p.Action, Key: ActionKey(in.ID, p.Step, p.Action), Input: p.Input, Result: result})
}

// cancelledMeta marks a step outcome written by a cancellation: the step
// never ran to completion and never will.
const cancelledMeta = "workflow.cancelled"

// failedMeta marks a step outcome written by an action's last, failed
// attempt, with its error: the step failed for good, and a worker that
// lost the instance meanwhile must not run it again, for its effect would
// belong to no step the instance records, and never be compensated.
const failedMeta = "workflow.failed"

// settlePending decides whether the pending action of a cancelled
// instance completed: it claims the step key; a replay says it did, an
// acquisition that it did not, and the claim is then completed as
// cancelled so that a straggling worker's later Complete is refused.
func (e *Engine) settlePending(ctx context.Context, in *Instance, def *Definition) (bool, []byte, error) {
	p := in.Pending
	key := ActionKey(in.ID, p.Step, p.Action)
	c, err := e.ledger.Begin(ctx, StepScope, key, "", idem.WithLease(e.cfg.Lease))
	if err != nil {
		return false, nil, err // in flight: a straggler runs it; try again later
	}
	if c.Replayed() {
		out := c.Outcome()
		_, cancelled := out.Meta[cancelledMeta]
		_, failed := out.Meta[failedMeta]
		if cancelled || failed {
			return false, nil, nil
		}
		return true, out.Data, nil
	}
	err = c.Complete(context.WithoutCancel(ctx), idem.Outcome{Meta: map[string]string{cancelledMeta: "1"}})
	return false, nil, err
}

// runStep runs fn once under the step key: a completed step replays its
// result; a failure releases the key so that the next attempt runs again
// with the same key, unless final (nil: never) says it is the last: then
// the key is completed as failed, and replays the failure.
func (e *Engine) runStep(ctx context.Context, in *Instance, key string, input []byte, fn StepFunc, final func(error) bool) (result []byte, token int64, replayed bool, err error) {
	c, err := e.ledger.Begin(ctx, StepScope, key, "", idem.WithLease(e.cfg.Lease))
	if err != nil {
		return nil, 0, false, err
	}
	if c.Replayed() {
		out := c.Outcome()
		if _, cancelled := out.Meta[cancelledMeta]; cancelled {
			return nil, c.Token(), true, Permanent(errors.New("step was cancelled"))
		}
		if msg, failed := out.Meta[failedMeta]; failed {
			return nil, c.Token(), true, Permanent(errors.New(msg))
		}
		return out.Data, c.Token(), true, nil
	}
	sctx, cancel := context.WithCancelCause(withStepKey(ctx, key))
	defer cancel(nil)
	stop := c.KeepAlive(ctx, e.cfg.Lease, func(err error) { cancel(err) })
	if len(input) == 0 {
		input = in.Input
	}
	result, err = callStep(sctx, fn, &Step{InstanceID: in.ID, Key: key, Token: c.Token(), Input: input, Attempt: in.Attempt + 1})
	stop()
	finish := context.WithoutCancel(ctx)
	if err != nil {
		if final != nil && final(err) {
			// Fenced like a success: a worker that lost the step key
			// meanwhile gets ErrLeaseLost, and commits nothing.
			if cerr := c.Complete(finish, idem.Outcome{Meta: map[string]string{failedMeta: err.Error()}}); cerr != nil {
				return nil, c.Token(), false, cerr
			}
			return nil, c.Token(), false, err
		}
		if rerr := c.Release(finish); rerr != nil {
			return nil, c.Token(), false, errors.Join(err, rerr)
		}
		return nil, c.Token(), false, err
	}
	if e.crash != nil {
		if err := e.crash("before-step-complete", key); err != nil {
			return nil, c.Token(), false, errCrash
		}
	}
	if err := c.Complete(finish, idem.Outcome{Data: result}); err != nil {
		return nil, c.Token(), false, err
	}
	if e.crash != nil {
		if err := e.crash("before-commit", key); err != nil {
			return nil, c.Token(), false, errCrash
		}
	}
	return result, c.Token(), false, nil
}

// callStep calls fn, turning a panic into an error.
func callStep(ctx context.Context, fn StepFunc, s *Step) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("workflow: step %s panicked: %v", s.Key, r)
		}
	}()
	return fn(ctx, s)
}

// infra reports whether err is the engine's or the ledger's, not the
// action's: the unit is abandoned and done again later.
func infra(err error) bool {
	return errors.Is(err, errCrash) || errors.Is(err, idem.ErrInFlight) || errors.Is(err, idem.ErrUnavailable) ||
		errors.Is(err, idem.ErrLeaseLost) || errors.Is(err, idem.ErrClosed)
}

func (e *Engine) runPending(ctx context.Context, in *Instance, def *Definition, entries *[]Entry, entry func(Entry)) error {
	p := in.Pending
	a := pendingAction(in, def)
	key := ActionKey(in.ID, p.Step, p.Action)
	start := e.clock.Now()
	if e.hooks != nil {
		if e.hooks.StepKey != nil {
			key = e.hooks.StepKey(key)
		}
		if e.hooks.CommitBeforeAction {
			// The mutant: the transition commits as if the action had
			// completed, and the action runs after the commit.
			run, input := *in, p.Input
			e.deferred = func(ctx context.Context) { _, _, _, _ = e.runStep(ctx, &run, key, input, a.Run, nil) }
			entry(Entry{Kind: EntryActionCompleted, Action: p.Action, StepKey: key, Attempt: in.Attempt + 1})
			e.recordDone(in, def, nil)
			in.Pending, in.Attempt, in.NotBefore = nil, 0, time.Time{}
			if p.OnEnter {
				e.finishEnter(in, def, e.clock.Now(), entries)
				return nil
			}
			entry(Entry{Kind: EntryTransition, Event: p.Event, EventID: p.EventID, From: p.From, To: p.To, State: p.To})
			e.enter(in, def, p.To, e.clock.Now(), entries)
			return nil
		}
	}
	// The last attempt of an action that unwinds settles its step key as
	// failed; one that parks leaves it free for Retry's fresh attempts.
	final := func(err error) bool { return a.OnExhausted != Park && !a.Retry.ShouldRetry(in.Attempt+1, err) }
	result, stoken, replayed, err := e.runStep(ctx, in, key, p.Input, a.Run, final)
	if err != nil && (infra(err) || ctx.Err() != nil) {
		return err
	}
	in.Attempt++
	if err != nil {
		entry(Entry{Kind: EntryActionFailed, Action: p.Action, StepKey: key, Token: stoken, Attempt: in.Attempt, Error: err.Error(), Duration: e.clock.Now().Sub(start)})
		if a.Retry.ShouldRetry(in.Attempt, err) {
			in.NotBefore = e.clock.Now().Add(a.Retry.Backoff(in.Attempt, e.rand()))
			return nil
		}
		in.Error = err.Error()
		if a.OnExhausted == Park {
			in.Status, in.ParkedFrom = Parked, Running
			entry(Entry{Kind: EntryParked, Action: p.Action, StepKey: key, Error: in.Error})
			return nil
		}
		in.Pending = nil
		in.Status, in.EndStatus, in.Attempt, in.NotBefore, in.TimeoutAt = Unwinding, Failed, 0, time.Time{}, time.Time{}
		entry(Entry{Kind: EntryUnwinding, Action: p.Action, Reason: "action " + p.Action + " failed for good", Error: in.Error})
		rejectInbox(in, e.clock.Now(), "instance is unwinding", entries)
		return nil
	}
	entry(Entry{Kind: EntryActionCompleted, Action: p.Action, StepKey: key, Token: stoken, Attempt: in.Attempt, Replayed: replayed, Duration: e.clock.Now().Sub(start)})
	e.recordDone(in, def, result)
	in.Pending, in.Attempt, in.NotBefore = nil, 0, time.Time{}
	if p.OnEnter {
		e.finishEnter(in, def, e.clock.Now(), entries)
		return nil
	}
	entry(Entry{Kind: EntryTransition, Event: p.Event, EventID: p.EventID, From: p.From, To: p.To, State: p.To})
	e.enter(in, def, p.To, e.clock.Now(), entries)
	return nil
}

func (e *Engine) rand() float64 {
	e.randMu.Lock()
	defer e.randMu.Unlock()
	return e.cfg.Rand()
}

// compensateNext runs the compensation of the latest completed action not
// yet compensated, or ends the unwinding.
func (e *Engine) compensateNext(ctx context.Context, in *Instance, def *Definition, entry func(Entry)) error {
	if in.Undone >= len(in.Done) {
		in.Status, in.Finished = in.EndStatus, e.clock.Now()
		entry(Entry{Kind: EntryFinished, Status: in.Status})
		return nil
	}
	d := in.Done[len(in.Done)-1-in.Undone]
	a := actionNamed(def, d.Action)
	key := CompensationKey(in.ID, d.Step, d.Action)
	start := e.clock.Now()
	_, stoken, replayed, err := e.runStep(ctx, in, key, d.Input, a.Compensate, nil)
	if err == nil && replayed && e.hooks != nil && e.hooks.CompensateAgain {
		// The mutant: it does not trust the ledger's record that the
		// compensation ran, and runs it again under a new key.
		key += "#again"
		_, stoken, replayed, err = e.runStep(ctx, in, key, d.Input, a.Compensate, nil)
	}
	if err != nil && (infra(err) || ctx.Err() != nil) {
		return err
	}
	in.Attempt++
	if err != nil {
		entry(Entry{Kind: EntryCompensateFailed, Action: d.Action, StepKey: key, Token: stoken, Attempt: in.Attempt, Error: err.Error(), Duration: e.clock.Now().Sub(start)})
		if a.Retry.ShouldRetry(in.Attempt, err) {
			in.NotBefore = e.clock.Now().Add(a.Retry.Backoff(in.Attempt, e.rand()))
			return nil
		}
		// A compensation that cannot succeed needs a person: park, and
		// resume the unwinding on Retry.
		in.Error = err.Error()
		in.Status, in.ParkedFrom = Parked, Unwinding
		entry(Entry{Kind: EntryParked, Action: d.Action, StepKey: key, Error: in.Error})
		return nil
	}
	in.Undone++
	entry(Entry{Kind: EntryCompensated, Action: d.Action, StepKey: key, Token: stoken, Attempt: in.Attempt, Replayed: replayed, Duration: e.clock.Now().Sub(start)})
	in.Attempt, in.NotBefore = 0, time.Time{}
	return nil
}

func actionNamed(def *Definition, name string) *Action {
	for _, s := range def.States {
		if s.OnEnter != nil && s.OnEnter.Name == name {
			return s.OnEnter
		}
	}
	for _, t := range def.Transitions {
		if t.Action != nil && t.Action.Name == name {
			return t.Action
		}
	}
	return nil
}
