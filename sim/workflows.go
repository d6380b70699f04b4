package sim

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/wfhook"
	"github.com/idemkit/idem/workflow"
)

// workflows: clients start order workflows (reserve, charge, ship) on the
// real workflow engine and send their events, duplicated and reordered,
// start the same order twice (with the same input, and by mistake with
// another) and cancel some; worker processes, each an Engine over the
// same ledger and journal, crash at step boundaries (after an action,
// before its commit, during compensation) and at random, restart as new
// engines, and pause past their lease. Actions fail now and then, for a
// while or for good. Actions call a downstream service that honours
// idempotency keys and fencing tokens, as Stripe does: the first final
// answer for a step key (done, or declined) is the answer to every later
// request with that key, and a request with a lower token than the
// highest the key has seen is refused. An action's effect is applied
// there, when its request is first done.
var workflows = &Scenario{
	Name: "workflows",
	Doc:  "workflow engines that crash at step boundaries and pause past their lease; duplicate starts and events, cancels",
	Faults: Faults{
		Crash: 0.002, RestartAfter: time.Second,
		Pause: 0.002, PauseFor: 3 * time.Second,
	},
	Failpoints: Failpoints{BeforeCommit: 0.01, AfterCommit: 0.01, Latency: 2 * time.Millisecond},
	Setup:      setupWorkflows,
}

const (
	wfInstances   = 4
	wfWorkers     = 3
	wfLease       = time.Second
	wfPoll        = 200 * time.Millisecond
	wfTimeout     = 3 * time.Second
	wfCrashAtStep = 0.04 // per step boundary a worker passes
)

// wfClient is a client's record of one order.
type wfClient struct {
	id, input string
	acked     map[string]string // event id -> event, for events accepted
	cancelled bool              // a Cancel returned nil
}

func setupWorkflows(w *World, store *Store) func() {
	journal := w.NewJournal(Failpoints{BeforeCommit: 0.02, AfterCommit: 0.02})
	var types workflow.Registry
	def := orderDefinition(w)
	if err := types.Register(def); err != nil {
		panic(err)
	}
	var hooks wfhook.Hooks
	if w.engineMutant != nil {
		hooks = w.engineMutant(w)
	}
	clientsLeft := wfInstances
	settled := func() bool {
		if clientsLeft > 0 {
			return false
		}
		res, err := journal.Inner().List(context.Background(), &workflow.ListParams{Limit: 1000})
		if err != nil {
			return false
		}
		for _, in := range res.Instances {
			if !in.Status.Finished() && in.Status != workflow.Parked {
				return false
			}
		}
		return true
	}
	for n := range wfWorkers {
		name := fmt.Sprintf("worker%d", n)
		w.NewProcess(name, func(p *Process) {
			engine, err := workflow.NewEngine(journal, &types, &workflow.EngineConfig{ID: fmt.Sprintf("%s.%d", name, p.epoch),
				Clock: w.Clock(), Lease: wfLease, PollInterval: wfPoll, Rand: w.Rand().Float64})
			if err != nil {
				panic(err)
			}
			h := hooks
			epoch := p.epoch
			h.Crash = func(point, key string) error {
				if !w.Chance(wfCrashAtStep) {
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
					if settled() {
						return
					}
					if w.Sleep(wfPoll) != nil {
						return
					}
				}
			})
		}).Crashable().Pausable().Start()
	}

	var clients []*wfClient
	for i := range wfInstances {
		c := &wfClient{id: fmt.Sprintf("order%d", i), input: fmt.Sprintf(`{"order":%d}`, i), acked: map[string]string{}}
		clients = append(clients, c)
		w.Go("client"+fmt.Sprint(i), func() { runWfClient(w, journal, &types, c, func() { clientsLeft-- }) })
	}

	return func() {
		for _, c := range clients {
			checkInstance(w, journal, def, c)
		}
	}
}

// clientEngine is the engine a client calls Start, Signal and Cancel on:
// it never runs (Run), so it takes no instance; those calls only touch
// the journal.
func clientEngine(w *World, journal *Journal, types *workflow.Registry) *workflow.Engine {
	e, err := workflow.NewEngine(journal, types, &workflow.EngineConfig{Clock: w.Clock(), Rand: w.Rand().Float64})
	if err != nil {
		panic(err)
	}
	return e
}

// runWfClient starts one order, duplicates the start, sends its events
// (some twice, in an order of the network's choosing) and maybe cancels.
func runWfClient(w *World, journal *Journal, types *workflow.Registry, c *wfClient, done func()) {
	defer done()
	ctx := context.Background()
	e := clientEngine(w, journal, types)
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
	start := func(input string) (*workflow.Instance, error) {
		var in *workflow.Instance
		err := retry("start", func() (err error) {
			in, err = e.Start(ctx, "order", 0, c.id, []byte(input), nil)
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
	for i, ev := range []string{"place", "pay", "ship"} {
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
		if _, err := start(`{"order":"another"}`); !errors.Is(err, idem.ErrFingerprintMismatch) {
			w.Violate("no-mismatch-start", c.id, fmt.Sprintf("a start with another input was not refused: %v", err))
		}
	}
	if w.Chance(0.25) {
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

// orderDefinition is the workflow the scenario runs: reserve, charge and
// ship, each with a compensation; charge may be declined (unwinding), and
// a state waited in too long expires.
func orderDefinition(w *World) *workflow.Definition {
	retry := &workflow.RetryPolicy{MaxAttempts: 3, InitialBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Jitter: 0.5}
	ds := &downstream{keys: map[string]*downstreamKey{}}
	act := func(name string, transient, permanent float64) *workflow.Action {
		return &workflow.Action{Name: name, Retry: retry,
			Run:        effectStep(w, ds, name, transient, permanent),
			Compensate: effectStep(w, ds, "undo "+name, 0.1, 0)}
	}
	return &workflow.Definition{
		Name: "order", Version: 1, Initial: "pending",
		States: []workflow.State{
			{Name: "pending", Timeout: wfTimeout, TimeoutEvent: "expire"},
			{Name: "reserved", Timeout: wfTimeout, TimeoutEvent: "expire"},
			{Name: "charged", Timeout: wfTimeout, TimeoutEvent: "expire"},
			{Name: "shipped", Terminal: workflow.Success},
			{Name: "expired", Terminal: workflow.Failure},
		},
		Transitions: []workflow.Transition{
			{From: "pending", Event: "place", To: "reserved", Action: act("reserve", 0.15, 0)},
			{From: "reserved", Event: "pay", To: "charged", Action: act("charge", 0.15, 0.1)},
			{From: "charged", Event: "ship", To: "shipped", Action: act("ship", 0.15, 0)},
			{From: "pending", Event: "expire", To: "expired"},
			{From: "reserved", Event: "expire", To: "expired"},
			{From: "charged", Event: "expire", To: "expired"},
		},
	}
}

// downstream is a service the actions call, which honours idempotency
// keys and fencing tokens.
type downstream struct {
	keys map[string]*downstreamKey
}

type downstreamKey struct {
	token  int64  // the highest token a request with the key carried
	answer string // "done" or "declined" once final, "" before
}

// effectStep is an action (or compensation) that works a while and calls
// the world's downstream service with its step key and token: the
// service may be unavailable (transient) or decline (permanent), and
// applies the effect the first time a key's request is done.
func effectStep(w *World, ds *downstream, what string, transient, permanent float64) workflow.StepFunc {
	return func(ctx context.Context, s *workflow.Step) ([]byte, error) {
		if got := workflow.StepKey(ctx); got != s.Key {
			w.Violate("step-key", s.Key, fmt.Sprintf("the action's context carries step key %q", got))
		}
		if err := w.Sleep(w.Between(0, 300*time.Millisecond)); err != nil {
			return nil, err
		}
		k := ds.keys[s.Key]
		if k == nil {
			k = &downstreamKey{}
			ds.keys[s.Key] = k
		}
		switch {
		case s.Token < k.token:
			w.Log("downstream-fenced", s.Key, fmt.Sprintf("token %d < %d", s.Token, k.token))
			return nil, workflow.Permanent(fmt.Errorf("%s refused: token %d is stale", what, s.Token))
		case k.answer == "done":
			return []byte(what + " done"), nil
		case k.answer == "declined":
			return nil, workflow.Permanent(errors.New(what + " declined"))
		}
		k.token = s.Token
		switch {
		case w.Chance(permanent):
			k.answer = "declined"
			return nil, workflow.Permanent(errors.New(what + " declined"))
		case w.Chance(transient):
			return nil, errors.New(what + " unavailable")
		}
		k.answer = "done"
		w.apply(s.Key, what)
		return []byte(what + " done"), nil
	}
}

// checkInstance checks one order at rest: it ended, its history explains
// it, and its effects and compensations are what its history says.
func checkInstance(w *World, journal *Journal, def *workflow.Definition, c *wfClient) {
	res, err := journal.Inner().Get(context.Background(), &workflow.GetParams{ID: c.id})
	if err != nil {
		w.Violate("ends-known", c.id, "no instance: "+err.Error())
		return
	}
	in := res.Instance
	journal.Observe(in)
	if !in.Status.Finished() && in.Status != workflow.Parked {
		w.Violate("ends-terminal", c.id, fmt.Sprintf("ended %s in state %s", in.Status, in.State))
	}

	// The history explains the state: replaying its transitions from the
	// initial state gives the final state, and its last status is the
	// instance's.
	state, status := "", workflow.Status("")
	var completed []workflow.Entry // action_completed, in order
	var compensated []workflow.Entry
	unwound, cancelRequested := false, false
	events := map[string]bool{}
	for _, e := range in.History {
		switch e.Kind {
		case workflow.EntryStarted:
			state = def.Initial
		case workflow.EntryTransition:
			if e.From != state {
				w.Violate("history-explains", c.id, fmt.Sprintf("entry %d moves from %q, the instance was in %q", e.Seq, e.From, state))
			}
			state = e.To
		case workflow.EntryActionCompleted:
			completed = append(completed, e)
		case workflow.EntryCompensated:
			compensated = append(compensated, e)
		case workflow.EntryUnwinding:
			unwound = true
		case workflow.EntryCancelRequested:
			cancelRequested = true
		case workflow.EntryEventReceived, workflow.EntryEventRejected:
			events[e.EventID] = true
		}
		if e.Status != "" {
			status = e.Status
		}
	}
	// A cancel recorded is honoured; one accepted and not recorded found
	// the instance cancelled or already unwinding.
	switch {
	case cancelRequested && in.Status != workflow.Cancelled && in.Status != workflow.Parked:
		w.Violate("cancel-honoured", c.id, fmt.Sprintf("a cancel was recorded, the instance ended %s", in.Status))
	case c.cancelled && !cancelRequested && !unwound:
		w.Violate("cancel-honoured", c.id, "a cancel was accepted, the history neither records it nor unwinds")
	}
	if state != in.State || status != in.Status {
		w.Violate("history-explains", c.id, fmt.Sprintf("history ends in %s/%s, the instance is %s/%s", state, status, in.State, in.Status))
	}
	for id := range c.acked {
		if !events[id] {
			w.Violate("history-explains", c.id, fmt.Sprintf("accepted event %s is neither received nor rejected in the history", id))
		}
	}

	// Effects: each completed action's exactly once, under the step key
	// its history names; none of a step the history does not complete;
	// at most one per step, whatever key it ran under.
	done := map[string]bool{}
	for _, e := range completed {
		done[e.StepKey] = true
		if n := len(w.Effects(e.StepKey)); n != 1 {
			inv := "exactly-once"
			if n > 1 {
				inv = "at-most-once"
			}
			w.Violate(inv, e.StepKey, fmt.Sprintf("a completed action has %d effects", n))
		}
	}
	perStep := map[string]int{}
	var compOrder []string // compensation effects, in the order they applied
	for _, key := range w.effectOrder {
		if !strings.HasPrefix(key, c.id+"/") {
			continue
		}
		base, _, _ := strings.Cut(key, "#")
		perStep[base]++
		if perStep[base] == 2 {
			w.Violate("at-most-once", base, "a step's effect applied twice (under "+key+")")
		}
		if strings.Contains(key, "/compensate/") {
			compOrder = append(compOrder, base)
		} else if !done[key] {
			w.Violate("at-most-once", key, "an effect applied for a step the history does not complete")
		}
	}
	if in.Status == workflow.Succeeded && len(completed) != 3 {
		w.Violate("exactly-once", c.id, fmt.Sprintf("succeeded with %d actions completed, want 3", len(completed)))
	}

	// Compensations: for exactly the completed actions, latest first,
	// once each, when the instance unwound; none otherwise.
	var want []string
	if unwound {
		for i := len(completed) - 1; i >= 0; i-- {
			e := completed[i]
			step, _, _ := strings.Cut(strings.TrimPrefix(e.StepKey, c.id+"/"), "/")
			want = append(want, fmt.Sprintf("%s/%s/compensate/%s", c.id, step, e.Action))
		}
		if in.Status == workflow.Parked && len(compOrder) <= len(want) {
			want = want[:len(compOrder)]
		}
	}
	if fmt.Sprint(compOrder) != fmt.Sprint(want) {
		w.Violate("compensations", c.id, fmt.Sprintf("compensations applied %v, want %v", compOrder, want))
	}
	if len(compensated) != len(compOrder) {
		w.Violate("compensations", c.id, fmt.Sprintf("history records %d compensations, %d applied", len(compensated), len(compOrder)))
	}
}
