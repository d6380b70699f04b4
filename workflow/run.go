package workflow

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// Run advances instances until ctx is done, Workers of them at a time: the
// ones this engine takes (in Start, Signal, Cancel, Retry and Resume, while
// Run is in progress) at once, and every PollInterval, or when the clock
// reaches the next retry or timeout, the due ones nobody owns: waiting for
// a timer, queued through another engine, or left by an engine that died,
// once its lease has run out. It returns ctx's error.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	e.runs++
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.runs--
		e.mu.Unlock()
	}()
	work := make(chan *Instance)
	var wg sync.WaitGroup
	for range e.cfg.Workers {
		wg.Go(func() {
			for in := range work {
				// A failed unit (a store error) leaves the instance to
				// its lease: it is taken again once that runs out.
				_, _ = e.advance(ctx, in)
				e.mu.Lock()
				e.active--
				e.mu.Unlock()
				e.kick()
			}
		})
	}
	defer func() {
		close(work)
		wg.Wait()
	}()
	nextPoll := e.clock.Now()
	for {
		for in := e.pop(); in != nil; in = e.pop() {
			e.mu.Lock()
			e.active++
			e.mu.Unlock()
			select {
			case work <- in:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		now := e.clock.Now()
		e.mu.Lock()
		// Take no more than the idle workers can start on: an instance
		// taken and left waiting would only see its lease run out.
		room := e.cfg.Workers - e.active - len(e.ready)
		due := !e.nextWake.IsZero() && !e.nextWake.After(now)
		if room > 0 && due {
			e.nextWake = time.Time{}
		}
		e.mu.Unlock()
		if room > 0 && (due || !now.Before(nextPoll)) {
			n, _ := e.takeDue(ctx, room, func(in *Instance) { e.enqueue(in) })
			if !now.Before(nextPoll) {
				// Timers other engines set: learn the next one.
				e.noteNextDue(ctx, now.Add(e.cfg.PollInterval))
				nextPoll = now.Add(e.cfg.PollInterval)
			}
			if n == room {
				// More may be due: look again once a worker is free.
				nextPoll = now
			}
			continue
		}
		wait := nextPoll.Sub(now)
		e.mu.Lock()
		if !e.nextWake.IsZero() {
			wait = min(wait, e.nextWake.Sub(now))
		}
		e.mu.Unlock()
		if room <= 0 {
			// Every worker is busy: wait for one to finish (it wakes
			// the loop).
			wait = e.cfg.PollInterval
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
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// pop takes the next instance this engine took, nil if none.
func (e *Engine) pop() *Instance {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.ready) == 0 {
		return nil
	}
	in := e.ready[0]
	e.ready[0] = nil
	e.ready = e.ready[1:]
	return in
}

// noteNextDue notes, for Run's timer, the earliest WakeAt before until of
// the instances that have one.
func (e *Engine) noteNextDue(ctx context.Context, until time.Time) {
	res, err := e.journal.List(ctx, &ListParams{Due: until})
	if err != nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, in := range res.Instances {
		if e.nextWake.IsZero() || in.WakeAt.Before(e.nextWake) {
			e.nextWake = in.WakeAt
		}
	}
}

// takeDue takes the instances due now that nobody owns, at most limit of
// them (0: no limit), and hands each to got; it returns how many, and the
// store errors, joined.
func (e *Engine) takeDue(ctx context.Context, limit int, got func(*Instance)) (int, error) {
	n, after := 0, ""
	var errs error
	for {
		res, err := e.journal.List(ctx, &ListParams{Due: e.clock.Now(), After: after})
		if err != nil {
			return n, errors.Join(errs, err)
		}
		for _, listed := range res.Instances {
			if limit > 0 && n == limit {
				return n, errs
			}
			in, err := e.takeOver(ctx, listed)
			if err != nil {
				errs = errors.Join(errs, fmt.Errorf("instance %q: %w", listed.ID, err))
				continue
			}
			if in != nil {
				n++
				got(in)
			}
		}
		if res.Next == "" || ctx.Err() != nil {
			return n, errs
		}
		after = res.Next
	}
}

// takeOver makes this engine the owner of in, as listed, if it is due and
// free: one journal write, which raises its Token. It returns nil if
// another engine got there first or nothing is due any more.
func (e *Engine) takeOver(ctx context.Context, in *Instance) (*Instance, error) {
	id := in.ID
	e.mu.Lock()
	busy := e.busy[id]
	e.mu.Unlock()
	if busy {
		return nil, nil
	}
	if _, err := e.registry.Lookup(in.Type, in.Version); err != nil {
		// A type this engine does not know (registered on another
		// engine only): leave the instance to one that does.
		return nil, nil
	}
	for {
		now := e.clock.Now()
		if !in.free(now) {
			return nil, nil
		}
		if !e.schedule(in, now, false, true) {
			return nil, nil
		}
		ar, err := e.journal.Append(ctx, &AppendParams{Instance: in})
		if errors.Is(err, ErrConflict) {
			res, err := e.journal.Get(ctx, &GetParams{ID: id})
			if err != nil {
				return nil, err
			}
			in = res.Instance
			in.History = nil
			continue
		}
		if err != nil {
			return nil, err
		}
		in.Seq = ar.Seq
		return in, nil
	}
}

// Step advances every instance this engine took and every instance due
// now that nobody owns, each as far as it can go without waiting (for an
// event, a backoff or a timeout), one after the other, and returns how
// many units of work it did (events processed, actions and compensations
// run, timeouts fired, instances ended). An instance whose unit fails (a
// store error) is left to its lease and the others go on; the errors are
// joined. Tests call Step to drive engines deterministically; Run does
// the same work concurrently.
func (e *Engine) Step(ctx context.Context) (int, error) {
	total := 0
	var errs error
	for {
		var took []*Instance
		for in := e.pop(); in != nil; in = e.pop() {
			took = append(took, in)
		}
		_, err := e.takeDue(ctx, 0, func(in *Instance) { took = append(took, in) })
		errs = errors.Join(errs, err)
		if len(took) == 0 {
			return total, errs
		}
		for _, in := range took {
			n, err := e.advance(ctx, in)
			total += n
			if errors.Is(err, errCrash) || ctx.Err() != nil {
				return total, errors.Join(errs, err)
			}
			if err != nil {
				errs = errors.Join(errs, fmt.Errorf("instance %q: %w", in.ID, err))
			}
		}
	}
}

// errLost: the instance changed hands while this engine worked on it.
var errLost = fmt.Errorf("%w: another engine took the workflow instance over", idem.ErrLeaseLost)

var errCrash = errors.New("workflow: simulated crash")

// advance does the due work of in, which this engine owns, until none is
// due or the instance is lost.
func (e *Engine) advance(ctx context.Context, in *Instance) (n int, err error) {
	e.mu.Lock()
	if e.busy[in.ID] {
		e.mu.Unlock()
		return 0, nil
	}
	e.busy[in.ID] = true
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.busy, in.ID)
		delete(e.ended, in.ID)
		e.mu.Unlock()
	}()
	if o := e.cfg.Observer; o != nil {
		var done func(*Instance, error)
		ctx, done = o.Advance(ctx, in)
		defer func() { done(in, err) }()
	}
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := e.keepAlive(ctx, in.ID, in.Token, func() { cancel(errLost) })
	defer stop()
	// Results of actions that ran, by step key, for a unit done again
	// after a conflicting write (an event came in): they do not run again.
	results := map[string][]byte{}
	for in.Owner == e.cfg.ID {
		did, err := e.unit(wctx, in, results)
		n += did
		if err != nil {
			if c := context.Cause(wctx); c != nil && ctx.Err() == nil {
				err = c
			}
			return n, err
		}
		if did == 0 {
			break
		}
	}
	return n, nil
}

// keepAlive renews the lease of instance id under token every third of
// the lease while this engine works on it, and calls lost if another
// engine took it. stop ends it.
func (e *Engine) keepAlive(ctx context.Context, id string, token int64, lost func()) (stop func()) {
	ctx = context.WithoutCancel(ctx)
	var mu sync.Mutex
	stopped := false
	var timer func() bool
	every := max(e.cfg.Lease/3, time.Millisecond)
	var tick func()
	tick = func() {
		mu.Lock()
		if stopped {
			mu.Unlock()
			return
		}
		mu.Unlock()
		gone, err := e.renew(ctx, id, token)
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if gone && err != nil {
			stopped = true
			lost()
			return
		}
		if gone {
			stopped = true
			return
		}
		timer = e.clock.AfterFunc(every, tick)
	}
	timer = e.clock.AfterFunc(every, tick)
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		timer()
	}
}

// renew extends this engine's lease on instance id. gone reports that the
// lease is not this engine's any more: let go (err nil) or taken by
// another engine (err errLost).
func (e *Engine) renew(ctx context.Context, id string, token int64) (gone bool, err error) {
	for {
		res, err := e.journal.Get(ctx, &GetParams{ID: id})
		if err != nil {
			return false, err
		}
		in := res.Instance
		in.History = nil
		switch {
		case in.Token != token:
			return true, errLost
		case in.Owner != e.cfg.ID:
			return true, nil
		}
		in.LeaseUntil = e.clock.Now().Add(e.cfg.Lease)
		in.WakeAt = in.LeaseUntil
		_, err = e.journal.Append(ctx, &AppendParams{Instance: in})
		if errors.Is(err, ErrConflict) {
			continue
		}
		return false, err
	}
}

// unit does one unit of work for in, which this engine owns, and commits
// it with one journal write: 1 if it did, 0 if nothing was due. in is
// updated to what the journal holds.
func (e *Engine) unit(ctx context.Context, in *Instance, results map[string][]byte) (int, error) {
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		def, err := e.registry.Lookup(in.Type, in.Version)
		if err != nil {
			return 0, err
		}
		now := e.clock.Now()
		if w := in.wakeAt(now); w.IsZero() || w.After(now) {
			return 0, nil
		}
		next := copyInstance(in, false)
		if e.hooks != nil {
			e.deferred = nil
		}
		var seq int64
		var fail *txFailure // an InTx unit's
		commit := func(ctx context.Context) error {
			var entries []Entry
			if err := e.work(ctx, next, def, now, &entries, results); err != nil {
				return err
			}
			if fail != nil && fail.err != nil && !fail.replay {
				return errTxRollback
			}
			next.Updated = e.clock.Now()
			if next.Pending != nil {
				next.Pending.Token = next.Token
			}
			e.schedule(next, next.Updated, true, true)
			ar, err := e.journal.Append(ctx, &AppendParams{Instance: next, Entries: entries})
			if err != nil {
				return err
			}
			seq = ar.Seq
			return nil
		}
		if a := unitAction(next, def); a != nil && a.InTx {
			tj, ok := e.journal.(TxJournal)
			if !ok {
				return 0, fmt.Errorf("%w: action %q is InTx, and the journal runs no transactions (TxJournal)", idem.ErrInvalid, a.Name)
			}
			fail = &txFailure{}
			tctx := context.WithValue(ctx, txFailureKey{}, fail)
			err = tj.InTx(tctx, commit)
			if errors.Is(err, errTxRollback) {
				// The action failed: its writes are rolled back with the
				// transaction, and the failed attempt is recorded by a
				// write of its own, without running the action again.
				next = copyInstance(in, false)
				fail.replay = true
				err = commit(tctx)
			}
		} else {
			err = commit(ctx)
		}
		if errors.Is(err, ErrConflict) {
			// Another engine's write came in (an event, a cancel): do the
			// unit again on what the journal holds now, if this engine
			// still owns the instance. An action that ran outside a
			// transaction does not run again: its result is kept.
			res, err := e.journal.Get(ctx, &GetParams{ID: in.ID})
			if err != nil {
				return 0, err
			}
			fresh := res.Instance
			fresh.History = nil
			if fresh.Token != in.Token || fresh.Owner != e.cfg.ID {
				return 0, errLost
			}
			*in = *fresh
			continue
		}
		if err != nil {
			return 0, err
		}
		next.Seq = seq
		*in = *next
		e.committed(in)
		if e.hooks != nil && e.deferred != nil {
			f := e.deferred
			e.deferred = nil
			f(ctx)
		}
		return 1, nil
	}
}

// unitAction is the action whose function the next unit of in calls (its
// Run, or its Compensate when unwinding), nil if none.
func unitAction(in *Instance, def *Definition) *Action {
	switch {
	case in.CancelRequested && in.Status != Unwinding && in.Pending != nil:
		return pendingAction(in, def)
	case in.Status == Unwinding:
		if in.Undone < len(in.Done) {
			return actionNamed(def, in.Done[len(in.Done)-1-in.Undone].Action)
		}
		return nil
	case in.Pending != nil:
		return pendingAction(in, def)
	}
	return nil
}

// work changes in by one unit of work, appending its history entries.
func (e *Engine) work(ctx context.Context, in *Instance, def *Definition, now time.Time, entries *[]Entry, results map[string][]byte) error {
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
		if p := in.Pending; p != nil {
			a := pendingAction(in, def)
			key := ActionKey(in.ID, p.Step, p.Action)
			_, ran := results[key]
			if ran || p.Token != in.Token {
				// The action completed here before a conflicting write, or
				// an owner that died may have run it unrecorded: settle it
				// with one more attempt under its step key (a downstream
				// that honours the key replays what an earlier one did).
				result, kept, err := e.runStep(ctx, in, key, p.Input, a.Run, a.InTx, results)
				if err != nil && (infra(err) || ctx.Err() != nil) {
					return err
				}
				if err != nil {
					entry(Entry{Kind: EntryActionFailed, Action: p.Action, StepKey: key, Token: in.Token, Attempt: in.Attempt + 1, Error: err.Error(),
						Reason: "settling the action in progress before unwinding"})
				} else {
					entry(Entry{Kind: EntryActionCompleted, Action: p.Action, StepKey: key, Token: in.Token, Attempt: in.Attempt + 1, Replayed: kept})
					e.recordDone(in, def, result)
				}
			}
			in.Pending = nil
		}
		in.CancelRequested = false
		in.Status, in.EndStatus, in.Attempt, in.NotBefore, in.TimeoutAt = Unwinding, Cancelled, 0, time.Time{}, time.Time{}
		reason := "cancelled"
		if in.CancelReason != "" {
			reason += ": " + in.CancelReason
		}
		entry(Entry{Kind: EntryUnwinding, Reason: reason})
		rejectInbox(in, e.clock.Now(), "instance is unwinding", entries)
		return nil
	case in.Status == Unwinding:
		return e.compensateNext(ctx, in, def, entry, results)
	case in.Pending != nil:
		return e.runPending(ctx, in, def, entries, entry, results)
	case len(in.Inbox) > 0:
		ev := in.Inbox[0]
		in.Inbox = in.Inbox[1:]
		t, ok := def.Transition(in.State, ev.Event)
		if !ok {
			entry(Entry{Kind: EntryEventRejected, Event: ev.Event, EventID: ev.ID,
				Reason: fmt.Sprintf("no transition from state %q on event %q", in.State, ev.Event)})
			return nil
		}
		e.take(in, def, t, ev, now, entries)
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

// recordDone notes the result of the completed pending action, and the
// action for unwinding, if it has a compensation.
func (e *Engine) recordDone(in *Instance, def *Definition, result []byte) {
	if in.Results == nil {
		in.Results = map[string][]byte{}
	}
	in.Results[in.Pending.Action] = result
	a := pendingAction(in, def)
	if a.Compensate == nil {
		return
	}
	p := in.Pending
	in.Done = append(in.Done, DoneAction{Step: p.Step, Action: p.Action, Key: ActionKey(in.ID, p.Step, p.Action), Input: p.Input, Result: result})
}

// txFailure is the failed attempt of an InTx unit's action, which the
// unit's context carries: the unit rolls its transaction back, with the
// attempt's writes, and records the failure outside it (replay: runStep
// returns err again instead of running the action).
type txFailure struct {
	key    string
	err    error
	replay bool
}

type txFailureKey struct{}

// errTxRollback rolls back the transaction of an InTx unit whose action
// failed.
var errTxRollback = errors.New("workflow: the action in the transaction failed")

// runStep runs fn once under the step key, with the instance's fencing
// token, unless results holds the key's result already (kept true). A
// result of a step outside a transaction is kept in results, for a unit
// done again after a conflicting write; a transaction's is not, since the
// transaction rolled back.
func (e *Engine) runStep(ctx context.Context, in *Instance, key string, input []byte, fn StepFunc, tx bool, results map[string][]byte) (result []byte, kept bool, err error) {
	if r, ok := results[key]; ok {
		return r, true, nil
	}
	fail, _ := ctx.Value(txFailureKey{}).(*txFailure)
	if !tx {
		fail = nil
	}
	if fail != nil && fail.replay && fail.key == key {
		return nil, false, fail.err
	}
	if len(input) == 0 {
		input = in.Input
	}
	result, err = callStep(withStepKey(ctx, key), fn, &Step{InstanceID: in.ID, Key: key, Token: in.Token, Input: input, Attempt: in.Attempt + 1, InstanceInput: in.Input, Results: in.Results})
	if err != nil {
		if fail != nil && !fail.replay && !infra(err) && ctx.Err() == nil {
			fail.key, fail.err = key, err
		}
		return nil, false, err
	}
	if e.crash != nil {
		if err := e.crash("before-commit", key); err != nil {
			return nil, false, errCrash
		}
	}
	if !tx {
		results[key] = result
	}
	return result, false, nil
}

// observedStep is runStep, shown to the Observer if there is one.
func (e *Engine) observedStep(ctx context.Context, in *Instance, key, action string, compensation bool, input []byte, fn StepFunc, tx bool, results map[string][]byte) ([]byte, bool, error) {
	o := e.cfg.Observer
	if o == nil {
		return e.runStep(ctx, in, key, input, fn, tx, results)
	}
	ctx, done := o.Step(ctx, in, StepInfo{Key: key, Action: action, Compensation: compensation, Attempt: in.Attempt + 1})
	result, kept, err := e.runStep(ctx, in, key, input, fn, tx, results)
	done(kept, err)
	return result, kept, err
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

// infra reports whether err is the engine's or the journal's, not the
// action's: the unit is abandoned and done again later.
func infra(err error) bool {
	return errors.Is(err, errCrash) || errors.Is(err, idem.ErrUnavailable) || errors.Is(err, ErrConflict) ||
		errors.Is(err, idem.ErrLeaseLost) || errors.Is(err, idem.ErrClosed)
}

func (e *Engine) runPending(ctx context.Context, in *Instance, def *Definition, entries *[]Entry, entry func(Entry), results map[string][]byte) error {
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
			e.deferred = func(ctx context.Context) {
				_, _, _ = e.runStep(ctx, &run, key, input, a.Run, false, map[string][]byte{})
			}
			entry(Entry{Kind: EntryActionCompleted, Action: p.Action, StepKey: key, Attempt: in.Attempt + 1})
			e.recordDone(in, def, nil)
			e.advancePast(in, def, p, entries)
			return nil
		}
	}
	result, kept, err := e.observedStep(ctx, in, key, p.Action, false, p.Input, a.Run, a.InTx, results)
	if err != nil && (infra(err) || ctx.Err() != nil) {
		return err
	}
	in.Attempt++
	if err != nil {
		entry(Entry{Kind: EntryActionFailed, Action: p.Action, StepKey: key, Token: in.Token, Attempt: in.Attempt, Error: err.Error(), Duration: e.clock.Now().Sub(start)})
		if a.Retry.ShouldRetry(in.Attempt, err) {
			in.NotBefore = e.clock.Now().Add(retryWait(a.Retry, in.Attempt, err, e.rand()))
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
	entry(Entry{Kind: EntryActionCompleted, Action: p.Action, StepKey: key, Token: in.Token, Attempt: in.Attempt, Replayed: kept, Duration: e.clock.Now().Sub(start)})
	e.recordDone(in, def, result)
	e.advancePast(in, def, p, entries)
	if a.Next != nil {
		// The action chose the event that follows it: queued, with an
		// id of its step, so it is processed once, in the new state.
		if ev := a.Next(result); ev != "" {
			id := key + "/next"
			if !seen(in, id) && !in.Status.Finished() {
				in.Seen = append(in.Seen, id)
				in.Inbox = append(in.Inbox, InboxEvent{ID: id, Event: ev, Payload: result})
				entry(Entry{Kind: EntryEventReceived, Event: ev, EventID: id, Reason: "chosen by action " + p.Action})
			}
		}
	}
	return nil
}

// advancePast moves in on once its pending action p completed: the entry
// finishes, or the transition reaches its state.
func (e *Engine) advancePast(in *Instance, def *Definition, p *PendingAction, entries *[]Entry) {
	in.Pending, in.Attempt, in.NotBefore = nil, 0, time.Time{}
	now := e.clock.Now()
	if p.OnEnter {
		e.finishEnter(in, def, now, entries)
		return
	}
	*entries = append(*entries, Entry{At: now, Kind: EntryTransition, Run: in.Run, Event: p.Event, EventID: p.EventID,
		From: p.From, To: p.To, State: p.To, Status: in.Status})
	e.enter(in, def, p.To, now, entries)
}

func (e *Engine) rand() float64 {
	e.randMu.Lock()
	defer e.randMu.Unlock()
	return e.cfg.Rand()
}

// compensateNext runs the compensation of the latest completed action not
// yet compensated, or ends the unwinding.
func (e *Engine) compensateNext(ctx context.Context, in *Instance, def *Definition, entry func(Entry), results map[string][]byte) error {
	if in.Undone >= len(in.Done) {
		in.Status, in.Finished = in.EndStatus, e.clock.Now()
		entry(Entry{Kind: EntryFinished, Status: in.Status})
		return nil
	}
	d := in.Done[len(in.Done)-1-in.Undone]
	a := actionNamed(def, d.Action)
	key := CompensationKey(in.ID, d.Step, d.Action)
	start := e.clock.Now()
	_, kept, err := e.observedStep(ctx, in, key, d.Action, true, d.Input, a.Compensate, a.InTx, results)
	if err == nil && e.hooks != nil && e.hooks.CompensateAgain {
		// The mutant: it runs the compensation a second time, under a
		// new key.
		_, _, err = e.runStep(ctx, in, key+"#again", d.Input, a.Compensate, a.InTx, results)
	}
	if err != nil && (infra(err) || ctx.Err() != nil) {
		return err
	}
	in.Attempt++
	if err != nil {
		entry(Entry{Kind: EntryCompensateFailed, Action: d.Action, StepKey: key, Token: in.Token, Attempt: in.Attempt, Error: err.Error(), Duration: e.clock.Now().Sub(start)})
		if a.Retry.ShouldRetry(in.Attempt, err) {
			in.NotBefore = e.clock.Now().Add(retryWait(a.Retry, in.Attempt, err, e.rand()))
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
	entry(Entry{Kind: EntryCompensated, Action: d.Action, StepKey: key, Token: in.Token, Attempt: in.Attempt, Replayed: kept, Duration: e.clock.Now().Sub(start)})
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
