package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/wfhook"
	"github.com/idemkit/idem/workflow"
)

// WorkflowConfig describes a world of workflow engines and clients around
// one definition: the machinery of the workflows scenario, for any
// definition. SetupWorkflows builds it; package idemtest runs users'
// definitions through it.
type WorkflowConfig struct {
	// Definition is the workflow the world runs. SetupWorkflows registers
	// a copy whose actions and compensations record the step keys they
	// are called with, then call the definition's own. It must be valid
	// (Registry.Register).
	Definition *workflow.Definition
	// Instances is how many instances clients start, one client each
	// (default 3). Instance i has the id Definition.Name followed by i.
	Instances int
	// Input returns instance i's input; nil: "{}" for every instance.
	Input func(i int) []byte
	// Events are the events each client sends its instance, in this
	// order, each under its own event id, at growing random delays that
	// overlap (so they arrive reordered), some twice. Nil: none.
	Events []string
	// Cancel is the chance that a client cancels its instance, at a
	// random moment (default 0).
	Cancel float64
	// Workers is how many worker processes run engines (default 3).
	Workers int
	// Lease is the engines' lease (default 1 s).
	Lease time.Duration
	// CrashAtStep is the chance that a worker crashes at a step boundary
	// it passes: an action or compensation ran and the journal does not
	// record it yet.
	CrashAtStep float64
	// Journal are the journal's failpoints (before-commit, after-commit).
	Journal Failpoints
	// Check, if set, checks each instance at rest, after the generic
	// checks; it reports what broke with World.Violate.
	Check func(in *workflow.Instance)
}

const (
	wfPoll    = 200 * time.Millisecond
	wfDefault = 3
)

// wfWorld is one world's run of a WorkflowConfig.
type wfWorld struct {
	w       *World
	cfg     WorkflowConfig
	def     *workflow.Definition // as registered: its actions record their keys
	journal *Journal
	types   workflow.Registry
	ran     map[string]int // step key -> calls of an action or compensation
	clients []*wfClient
	// clientsLeft counts the clients still at work.
	clientsLeft int
}

// wfClient is a client's record of one instance.
type wfClient struct {
	id        string
	input     []byte
	acked     map[string]string // event id -> event, for events accepted
	cancelled bool              // a Cancel returned nil
}

// SetupWorkflows builds, in w, the world of the workflows scenario around
// cfg.Definition, and returns the checks to run once the world is at rest
// (a Scenario's Setup calls it and returns them).
//
// Worker processes, each a workflow.Engine over one Journal (NewJournal,
// with cfg.Journal's failpoints), step their instances; each crashes at
// the step boundaries it passes with chance cfg.CrashAtStep (an action
// ran, its outcome is not recorded), and, when the scenario's Faults say
// so, at random, and pauses; a crashed worker restarts as a new engine.
// One client per instance starts it, maybe starts it again with the same
// input (which must return the instance: same-start) and with another
// (which must be refused: no-mismatch-start), sends cfg.Events and
// maybe cancels it. Workers stop once every client is done and every
// instance is finished, parked, or waits for an event nobody will send
// (it fails ends-terminal).
//
// At rest it checks each instance: ends-terminal (finished or parked),
// history-append-only, history-explains (replaying its transitions gives
// its state and status; every accepted event is in it), cancel-honoured,
// step-key (an action's context carries its step key, and every step the
// history completes or compensates ran with its key), compensations (an
// unwound instance recorded the compensations of exactly its completed
// actions that have one, latest first; one that did not unwind, none);
// then cfg.Check.
//
// It panics if the definition does not register.
func SetupWorkflows(w *World, cfg *WorkflowConfig) (check func()) {
	ww := &wfWorld{w: w, cfg: *cfg, ran: map[string]int{}}
	c := &ww.cfg
	if c.Instances <= 0 {
		c.Instances = wfDefault
	}
	if c.Workers <= 0 {
		c.Workers = wfDefault
	}
	if c.Lease <= 0 {
		c.Lease = time.Second
	}
	ww.journal = w.NewJournal(c.Journal)
	ww.def = recordKeys(w, c.Definition, ww.ran)
	if err := ww.types.Register(ww.def); err != nil {
		panic(fmt.Sprintf("sim: SetupWorkflows: %v", err))
	}
	var hooks wfhook.Hooks
	if w.engineMutant != nil {
		hooks = w.engineMutant(w)
	}
	for n := range c.Workers {
		ww.worker(fmt.Sprintf("worker%d", n), hooks)
	}
	ww.clientsLeft = c.Instances
	for i := range c.Instances {
		cl := &wfClient{id: fmt.Sprintf("%s%d", c.Definition.Name, i), input: []byte("{}"), acked: map[string]string{}}
		if c.Input != nil {
			cl.input = c.Input(i)
		}
		ww.clients = append(ww.clients, cl)
		w.Go("client"+fmt.Sprint(i), func() { ww.client(cl) })
	}
	return func() {
		for _, cl := range ww.clients {
			ww.checkInstance(cl)
		}
	}
}

// settled reports whether every client is done and every instance is
// finished, parked or waiting forever: the workers may stop.
func (ww *wfWorld) settled() bool {
	if ww.clientsLeft > 0 {
		return false
	}
	res, err := ww.journal.Inner().List(context.Background(), &workflow.ListParams{Limit: 1000})
	if err != nil {
		return false
	}
	for _, in := range res.Instances {
		if !in.Status.Finished() && in.Status != workflow.Parked && !waitsForever(in) {
			return false
		}
	}
	return true
}

// waitsForever reports whether in, once every client is done, waits for
// an event that nobody will send: nobody owns it and nothing (an event,
// an action, a retry, a timeout) is due for it, ever.
func waitsForever(in *workflow.Instance) bool {
	return in.Owner == "" && in.WakeAt.IsZero() && !in.Status.Finished() && in.Status != workflow.Parked
}

// recordKeys returns a copy of def whose actions and compensations count
// their calls by step key in ran, trace them, and check that their
// context carries that key.
func recordKeys(w *World, def *workflow.Definition, ran map[string]int) *workflow.Definition {
	step := func(fn workflow.StepFunc) workflow.StepFunc {
		if fn == nil {
			return nil
		}
		return func(ctx context.Context, s *workflow.Step) ([]byte, error) {
			if got := workflow.StepKey(ctx); got != s.Key {
				w.Violate("step-key", s.Key, fmt.Sprintf("the action's context carries step key %q", got))
			}
			ran[s.Key]++
			w.Log("step", s.Key, fmt.Sprintf("attempt %d, token %d", s.Attempt, s.Token))
			return fn(ctx, s)
		}
	}
	action := func(a *workflow.Action) *workflow.Action {
		if a == nil {
			return nil
		}
		c := *a
		c.Run, c.Compensate = step(a.Run), step(a.Compensate)
		return &c
	}
	d := *def
	d.States = slices.Clone(def.States)
	for i := range d.States {
		d.States[i].OnEnter = action(d.States[i].OnEnter)
	}
	d.Transitions = slices.Clone(def.Transitions)
	for i := range d.Transitions {
		d.Transitions[i].Action = action(d.Transitions[i].Action)
	}
	return &d
}

// worker starts a crashable, pausable process that runs an engine, new at
// each restart, stepping instances until the world has settled.
func (ww *wfWorld) worker(name string, hooks wfhook.Hooks) {
	w := ww.w
	w.NewProcess(name, func(p *Process) {
		engine, err := workflow.NewEngine(ww.journal, &ww.types, &workflow.EngineConfig{ID: fmt.Sprintf("%s.%d", name, p.epoch),
			Clock: w.Clock(), Lease: ww.cfg.Lease, PollInterval: wfPoll, Rand: w.Rand().Float64})
		if err != nil {
			panic(err)
		}
		h := hooks
		epoch := p.epoch
		h.Crash = func(point, key string) error {
			if !w.Chance(ww.cfg.CrashAtStep) {
				return nil
			}
			// Crash the whole process, from the scheduler, right here.
			w.Log("crash-at", key, point)
			w.After(0, func() {
				if p.alive && p.epoch == epoch {
					p.Crash()
					w.After(w.Between(0, w.faults.RestartAfter), p.Start)
				}
			})
			if err := w.Sleep(time.Millisecond); err != nil {
				return err
			}
			return ErrCrashed
		}
		wfhook.Install(engine, &h)
		p.Go("loop", func() {
			ctx := context.Background()
			for {
				n, _ := engine.Step(ctx)
				if n > 0 {
					continue
				}
				if ww.settled() {
					return
				}
				if w.Sleep(wfPoll) != nil {
					return
				}
			}
		})
	}).Crashable().Pausable().Start()
}

// clientEngine is the engine a client calls Start, Signal and Cancel on:
// it never runs (Run), so it takes no instance; those calls only touch
// the journal.
func (ww *wfWorld) clientEngine() *workflow.Engine {
	e, err := workflow.NewEngine(ww.journal, &ww.types, &workflow.EngineConfig{Clock: ww.w.Clock(), Rand: ww.w.Rand().Float64})
	if err != nil {
		panic(err)
	}
	return e
}

// client starts one instance, duplicates the start, sends its events
// (some twice, in an order of the network's choosing) and maybe cancels.
func (ww *wfWorld) client(c *wfClient) {
	w := ww.w
	defer func() { ww.clientsLeft-- }()
	ctx := context.Background()
	e := ww.clientEngine()
	typ := ww.def.Name
	retry := func(what string, op func() error) error {
		var err error
		for range 100 {
			if err = op(); err == nil || !errors.Is(err, idem.ErrUnavailable) {
				return err
			}
			if w.Sleep(w.Between(5*time.Millisecond, 50*time.Millisecond)) != nil {
				return err
			}
		}
		w.Violate("ends-known", c.id, what+" kept failing: "+err.Error())
		return err
	}
	start := func(input []byte) (*workflow.Instance, error) {
		var in *workflow.Instance
		err := retry("start", func() (err error) {
			in, err = e.Start(ctx, typ, 0, c.id, input, nil)
			return err
		})
		return in, err
	}
	first, err := start(c.input)
	if err != nil {
		w.Violate("ends-known", c.id, "start failed: "+err.Error())
		return
	}
	senders := 0
	send := func(evID, event string, delay time.Duration) {
		senders++
		w.Go(c.id+"/"+evID, func() {
			defer func() { senders-- }()
			if w.Sleep(delay) != nil {
				return
			}
			if err := retry("signal", func() error {
				_, err := e.Signal(ctx, c.id, evID, event, []byte(event))
				return err
			}); err == nil {
				c.acked[evID] = event
			}
		})
	}
	for i, ev := range ww.cfg.Events {
		id := fmt.Sprintf("e%d", i)
		base := time.Duration(i) * 150 * time.Millisecond
		send(id, ev, w.Between(base, base+250*time.Millisecond))
		if w.Chance(0.3) {
			send(id, ev, w.Between(0, time.Second))
		}
	}
	if w.Chance(0.3) {
		if in, err := start(c.input); err != nil || in.ID != first.ID || in.Fingerprint != first.Fingerprint || in.Run != first.Run {
			w.Violate("same-start", c.id, fmt.Sprintf("a duplicate start with the same input got %v, %v", in, err))
		}
	}
	if w.Chance(0.3) {
		another := []byte(`{"another":"input"}`)
		if bytes.Equal(another, c.input) {
			another = []byte(`{"another":"input","again":true}`)
		}
		if _, err := start(another); !errors.Is(err, idem.ErrFingerprintMismatch) {
			w.Violate("no-mismatch-start", c.id, fmt.Sprintf("a start with another input was not refused: %v", err))
		}
	}
	if w.Chance(ww.cfg.Cancel) {
		if w.Sleep(w.Between(0, 1500*time.Millisecond)) != nil {
			return
		}
		err := retry("cancel", func() error { return e.Cancel(ctx, c.id, "client") })
		switch {
		case err == nil:
			c.cancelled = true
		case errors.Is(err, workflow.ErrFinished):
		default:
			w.Violate("ends-known", c.id, "cancel failed: "+err.Error())
		}
	}
	for senders > 0 {
		if w.Sleep(50*time.Millisecond) != nil {
			return
		}
	}
}

// wfHistory is what an instance's history says, replayed from its start.
type wfHistory struct {
	state           string           // the state its transitions lead to
	status          workflow.Status  // its last status
	completed       []workflow.Entry // action_completed, in order
	compensated     []workflow.Entry // compensated, in order
	unwound         bool             // it began unwinding
	cancelRequested bool
	events          map[string]bool // event ids received or rejected
	// moves are transitions from another state than the one the
	// history was in.
	moves []string
}

func historyOf(def *workflow.Definition, in *workflow.Instance) *wfHistory {
	h := &wfHistory{events: map[string]bool{}}
	for _, e := range in.History {
		switch e.Kind {
		case workflow.EntryStarted:
			h.state = def.Initial
		case workflow.EntryTransition:
			if e.From != h.state {
				h.moves = append(h.moves, fmt.Sprintf("entry %d moves from %q, the instance was in %q", e.Seq, e.From, h.state))
			}
			h.state = e.To
		case workflow.EntryActionCompleted:
			h.completed = append(h.completed, e)
		case workflow.EntryCompensated:
			h.compensated = append(h.compensated, e)
		case workflow.EntryUnwinding:
			h.unwound = true
		case workflow.EntryCancelRequested:
			h.cancelRequested = true
		case workflow.EntryEventReceived, workflow.EntryEventRejected:
			h.events[e.EventID] = true
		}
		if e.Status != "" {
			h.status = e.Status
		}
	}
	return h
}

// compensations returns the step keys of the compensations an instance
// that unwound owes: those of its completed actions that have one, latest
// first; none if it did not unwind.
func (h *wfHistory) compensations(def *workflow.Definition, id string) []string {
	if !h.unwound {
		return nil
	}
	var want []string
	for i := len(h.completed) - 1; i >= 0; i-- {
		e := h.completed[i]
		if a := actionNamed(def, e.Action); a == nil || a.Compensate == nil {
			continue
		}
		// The step number from the key the history names, whatever
		// suffix a mutant gave the key.
		step, _, _ := strings.Cut(strings.TrimPrefix(e.StepKey, id+"/"), "/")
		want = append(want, id+"/"+step+"/compensate/"+e.Action)
	}
	return want
}

// actionNamed returns the action called name in def, nil if none.
func actionNamed(def *workflow.Definition, name string) *workflow.Action {
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

// checkInstance checks one instance at rest: it ended, its history
// explains it, the steps it completes ran with their keys, and it
// compensated what it owed; then the config's own check.
func (ww *wfWorld) checkInstance(c *wfClient) {
	w := ww.w
	res, err := ww.journal.Inner().Get(context.Background(), &workflow.GetParams{ID: c.id})
	if err != nil {
		w.Violate("ends-known", c.id, "no instance: "+err.Error())
		return
	}
	in := res.Instance
	ww.journal.Observe(in)
	switch {
	case waitsForever(in):
		w.Violate("ends-terminal", c.id, fmt.Sprintf("ended %s in state %s, waiting for an event that nobody sends and no timeout fires", in.Status, in.State))
	case !in.Status.Finished() && in.Status != workflow.Parked:
		w.Violate("ends-terminal", c.id, fmt.Sprintf("ended %s in state %s", in.Status, in.State))
	}

	// The history explains the state: replaying its transitions from the
	// initial state gives the final state, and its last status is the
	// instance's.
	h := historyOf(ww.def, in)
	for _, m := range h.moves {
		w.Violate("history-explains", c.id, m)
	}
	// A cancel recorded is honoured; one accepted and not recorded found
	// the instance cancelled or already unwinding.
	switch {
	case h.cancelRequested && in.Status != workflow.Cancelled && in.Status != workflow.Parked:
		w.Violate("cancel-honoured", c.id, fmt.Sprintf("a cancel was recorded, the instance ended %s", in.Status))
	case c.cancelled && !h.cancelRequested && !h.unwound:
		w.Violate("cancel-honoured", c.id, "a cancel was accepted, the history neither records it nor unwinds")
	}
	if h.state != in.State || h.status != in.Status {
		w.Violate("history-explains", c.id, fmt.Sprintf("history ends in %s/%s, the instance is %s/%s", h.state, h.status, in.State, in.Status))
	}
	for id := range c.acked {
		if !h.events[id] {
			w.Violate("history-explains", c.id, fmt.Sprintf("accepted event %s is neither received nor rejected in the history", id))
		}
	}

	// Every step the history completes or compensates ran with its key.
	for _, e := range slices.Concat(h.completed, h.compensated) {
		if ww.ran[e.StepKey] == 0 {
			w.Violate("step-key", e.StepKey, fmt.Sprintf("the history records %s of %s, and nothing ran with its step key", e.Kind, e.Action))
		}
	}

	// Compensations: those of exactly the completed actions that have
	// one, latest first, when the instance unwound (a prefix of them if
	// it parked while unwinding); none otherwise.
	want := h.compensations(ww.def, c.id)
	var got []string
	for _, e := range h.compensated {
		got = append(got, e.StepKey)
	}
	if in.Status == workflow.Parked && len(got) <= len(want) {
		want = want[:len(got)]
	}
	if !slices.Equal(got, want) {
		w.Violate("compensations", c.id, fmt.Sprintf("the history records compensations %v, want %v", got, want))
	}
	if ww.cfg.Check != nil {
		ww.cfg.Check(in)
	}
}
