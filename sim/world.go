package sim

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"time"

	"github.com/idemkit/idem/internal/msghook"
	"github.com/idemkit/idem/internal/wfhook"
)

// Epoch is where every world's clock starts.
var Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// ErrCrashed is what a crashed process's pending calls return while its
// goroutines unwind.
var ErrCrashed = errors.New("sim: the process crashed")

// World is one seeded, deterministic run: a virtual clock, the processes
// and their tasks, a network, and a trace. Tasks are goroutines, but only
// one runs at a time: it runs until it parks at a yield point (a store
// call, Sleep, Recv, Yield), and the scheduler picks the next one with the
// world's random source. The same seed therefore gives the same run, bit
// for bit, as long as the code under test waits only through the world
// (its Clock, its network) and starts no goroutines of its own.
//
// A World is not safe for concurrent use, except that its tasks may call
// it: they never run at the same time.
type World struct {
	seed   uint64
	rng    *rand.Rand
	now    time.Time
	seq    uint64
	events eventQueue
	ready  []*task
	cur    *task
	parked chan struct{}
	procs  []*Process
	live   []*task
	faults Faults
	trace  *Trace
	steps  int
	panics []string

	effects     map[string][]string
	effectOrder []string // the keys of applied effects, in the order they applied
	violations  []Violation
	// engineMutant breaks the workflow engines of the workflows scenario.
	engineMutant func(w *World) wfhook.Hooks
	// consumerMutant breaks the messaging consumers of the messages
	// scenario; ack acks the delivery that ctx carries.
	consumerMutant func(ack func(ctx context.Context, key string)) msghook.Hooks
	// relayMutant breaks the outbox relays of the messages scenario.
	relayMutant func(w *World) msghook.RelayHooks
}

// Faults says how often the world breaks things. Probabilities are per
// scheduling step (crash, pause) or per message (drop, duplicate).
type Faults struct {
	Crash        float64       // a crashable process crashes, losing its memory
	RestartAfter time.Duration // a crashed process restarts after up to this
	Pause        float64       // a pausable process stops (GC, VM freeze) ...
	PauseFor     time.Duration // ... for up to this
	Drop         float64       // a message is lost
	Duplicate    float64       // a message is delivered twice
	MinDelay     time.Duration // network delay range; random delays reorder
	MaxDelay     time.Duration
}

// NewWorld returns a world whose every random choice comes from seed.
func NewWorld(seed uint64, faults Faults) *World {
	return &World{
		seed:   seed,
		rng:    rand.New(rand.NewPCG(seed, 0x1de4)),
		now:    Epoch,
		parked: make(chan struct{}),
		faults: faults,
		trace:  newTrace(),
	}
}

// Seed returns the world's seed.
func (w *World) Seed() uint64 { return w.seed }

// Now returns the virtual time.
func (w *World) Now() time.Time { return w.now }

// Faults returns the faults the world injects.
func (w *World) Faults() Faults { return w.faults }

// Rand returns the world's random source. Draw from it only in tasks or
// scheduler callbacks, never from a goroutine of your own.
func (w *World) Rand() *rand.Rand { return w.rng }

// Trace returns what happened so far.
func (w *World) Trace() *Trace { return w.trace }

// Between returns a random duration in [lo, hi].
func (w *World) Between(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(w.rng.Int64N(int64(hi-lo)+1))
}

// Chance reports true with probability p.
func (w *World) Chance(p float64) bool { return p > 0 && w.rng.Float64() < p }

// Log adds a line to the trace, attributed to the running task.
func (w *World) Log(op, key, note string) {
	name := "world"
	if w.cur != nil {
		name = w.cur.name
	}
	w.trace.add(w.now.Sub(Epoch), name, op, key, note)
}

// ---- tasks ----

type task struct {
	name    string
	proc    *Process // nil: the world's own (never crashes)
	resume  chan struct{}
	killed  bool
	done    bool
	waiting *event // the timer that wakes a sleeping task, if any
	msg     any    // what Recv was woken with
	staged  []effect
}

// Go starts fn as a task of the world itself: it never crashes or pauses.
func (w *World) Go(name string, fn func()) { w.spawn(nil, name, fn) }

func (w *World) spawn(p *Process, name string, fn func()) {
	t := &task{name: name, proc: p, resume: make(chan struct{})}
	w.live = append(w.live, t)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				w.panics = append(w.panics, fmt.Sprintf("task %s panicked: %v", t.name, r))
			}
			t.done = true
			w.parked <- struct{}{}
		}()
		<-t.resume
		if t.killed {
			return
		}
		fn()
	}()
	w.ready = append(w.ready, t)
}

// park gives control back to the scheduler until the running task is made
// ready again. It returns false, at once, if the task was killed: the
// caller returns ErrCrashed and its goroutine unwinds.
func (w *World) park() bool {
	t := w.cur
	if t == nil {
		panic("sim: a blocking call outside a task (use World.Go or Process.Go)")
	}
	if t.killed {
		return false
	}
	w.cur = nil
	w.parked <- struct{}{}
	<-t.resume
	if t.killed {
		runtime.Goexit()
	}
	return true
}

// Running reports whether the caller is a live task of the world.
func (w *World) running() bool { return w.cur != nil && !w.cur.killed }

// Yield lets the scheduler run another task before the caller goes on:
// a point where an interleaving may happen.
func (w *World) Yield() error {
	if w.cur == nil {
		return nil
	}
	if w.cur.killed {
		return ErrCrashed
	}
	w.ready = append(w.ready, w.cur)
	w.park()
	return nil
}

// Sleep parks the running task for d of virtual time.
func (w *World) Sleep(d time.Duration) error {
	if w.cur == nil {
		panic("sim: Sleep outside a task")
	}
	if w.cur.killed {
		return ErrCrashed
	}
	t := w.cur
	t.waiting = w.at(d, func() { t.waiting = nil; w.wake(t, nil) })
	w.park()
	return nil
}

// wake makes a parked task ready, with msg for Recv.
func (w *World) wake(t *task, msg any) {
	if t.killed || t.done {
		return
	}
	t.msg = msg
	w.ready = append(w.ready, t)
}

// ---- processes ----

// Process is a simulated program: its tasks share one fate. A crash kills
// every task (their memory is gone; the durable world outside stays) and a
// restart runs its start function again. A pause stops every task and
// timer of the process for a while, as a GC pause or a frozen VM would.
type Process struct {
	w         *World
	name      string
	start     func(p *Process)
	alive     bool
	crashable bool
	pausable  bool
	paused    bool
	epoch     int
	crashes   int
	pauses    int
}

// NewProcess returns a process that runs start when started or restarted.
// start runs in the scheduler: it sets the process up and starts tasks with
// p.Go; it must not block.
func (w *World) NewProcess(name string, start func(p *Process)) *Process {
	p := &Process{w: w, name: name, start: start}
	w.procs = append(w.procs, p)
	return p
}

// Crashable lets the world crash (and later restart) the process.
func (p *Process) Crashable() *Process { p.crashable = true; return p }

// Pausable lets the world pause the process.
func (p *Process) Pausable() *Process { p.pausable = true; return p }

// Name returns the process's name.
func (p *Process) Name() string { return p.name }

// Alive reports whether the process runs (started and not crashed).
func (p *Process) Alive() bool { return p.alive }

// Crashes returns how many times the process crashed.
func (p *Process) Crashes() int { return p.crashes }

// Start runs the process's start function.
func (p *Process) Start() {
	p.alive = true
	p.w.Log("start", "", p.name)
	p.start(p)
}

// Go starts fn as a task of the process.
func (p *Process) Go(name string, fn func()) {
	if !p.alive {
		return
	}
	p.w.spawn(p, p.name+"/"+name, fn)
}

// Crash kills every task of the process and drops its timers. Call it from
// the scheduler (a world callback), not from one of the process's tasks.
func (p *Process) Crash() {
	w := p.w
	if !p.alive {
		return
	}
	p.alive = false
	p.paused = false
	p.epoch++
	p.crashes++
	w.Log("crash", "", p.name)
	w.kill(func(t *task) bool { return t.proc == p })
}

// kill ends the live tasks match selects: they leave the ready list, their
// timers are cancelled, and each goroutine unwinds (it sees killed when it
// resumes). Call it from the scheduler, not from a task it kills.
func (w *World) kill(match func(*task) bool) {
	var dying []*task
	live := w.live[:0]
	for _, t := range w.live {
		switch {
		case t.done:
			continue
		case match(t):
			t.killed = true
			if t.waiting != nil {
				t.waiting.cancel()
				t.waiting = nil
			}
			dying = append(dying, t)
		default:
			live = append(live, t)
		}
	}
	clear(w.live[len(live):])
	w.live = live
	w.ready = dropKilled(w.ready)
	prev := w.cur
	for _, t := range dying {
		w.cur = t
		t.resume <- struct{}{}
		<-w.parked
	}
	w.cur = prev
}

func dropKilled(ts []*task) []*task {
	kept := ts[:0]
	for _, t := range ts {
		if !t.killed {
			kept = append(kept, t)
		}
	}
	clear(ts[len(kept):])
	return kept
}

// Pause stops the process for d.
func (p *Process) Pause(d time.Duration) {
	if !p.alive || p.paused {
		return
	}
	p.paused = true
	p.pauses++
	epoch := p.epoch
	p.w.Log("pause", "", p.name+" for "+d.String())
	p.w.at(d, func() {
		if p.epoch == epoch {
			p.paused = false
			p.w.Log("wake", "", p.name)
		}
	})
}

// ---- the scheduler ----

// ErrStuck is returned by Run when the world did not come to rest within
// its step limit: a livelock, or a scenario that never ends.
var ErrStuck = errors.New("sim: the world did not come to rest")

// Run runs the world until nothing is ready and no timer is left, or until
// maxSteps tasks have been scheduled (ErrStuck).
func (w *World) Run(maxSteps int) error {
	for {
		if len(w.panics) > 0 {
			return fmt.Errorf("sim: %s", w.panics[0])
		}
		t := w.pick()
		if t == nil {
			if w.events.Len() == 0 {
				return nil
			}
			w.fire()
			continue
		}
		w.steps++
		if w.steps > maxSteps {
			return fmt.Errorf("%w after %d steps", ErrStuck, maxSteps)
		}
		w.cur = t
		t.resume <- struct{}{}
		<-w.parked
		w.cur = nil
		w.inject()
	}
}

// pick removes and returns a random ready task of a running process.
func (w *World) pick() *task {
	n := 0
	for _, t := range w.ready {
		if t.proc == nil || !t.proc.paused {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	i := w.rng.IntN(n)
	for j, t := range w.ready {
		if t.proc != nil && t.proc.paused {
			continue
		}
		if i == 0 {
			w.ready = append(w.ready[:j], w.ready[j+1:]...)
			return t
		}
		i--
	}
	panic("unreachable")
}

// inject crashes or pauses a process, as the faults say.
func (w *World) inject() {
	if w.Chance(w.faults.Crash) {
		if p := w.randomProc(func(p *Process) bool { return p.crashable && p.alive }); p != nil {
			p.Crash()
			w.at(w.Between(0, w.faults.RestartAfter), p.Start)
		}
	}
	if w.Chance(w.faults.Pause) {
		if p := w.randomProc(func(p *Process) bool { return p.pausable && p.alive && !p.paused }); p != nil {
			p.Pause(w.Between(w.faults.PauseFor/4, w.faults.PauseFor))
		}
	}
}

func (w *World) randomProc(ok func(*Process) bool) *Process {
	var c []*Process
	for _, p := range w.procs {
		if ok(p) {
			c = append(c, p)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[w.rng.IntN(len(c))]
}

// stop kills every task still parked, so that a run that ended early
// (stuck, or a panic) leaves no goroutine behind.
func (w *World) stop() {
	w.kill(func(*task) bool { return true })
}

// ---- timers ----

type event struct {
	at        time.Time
	seq       uint64
	fn        func()
	cancelled bool
	fired     bool
	index     int
}

// cancel stops the event; it reports whether it had not fired yet.
func (e *event) cancel() bool {
	if e.fired || e.cancelled {
		return false
	}
	e.cancelled = true
	return true
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i]; q[i].index = i; q[j].index = j }
func (q *eventQueue) Push(x any)   { e := x.(*event); e.index = len(*q); *q = append(*q, e) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return e
}

// at schedules fn to run in the scheduler d from now.
func (w *World) at(d time.Duration, fn func()) *event {
	w.seq++
	e := &event{at: w.now.Add(max(d, 0)), seq: w.seq, fn: fn}
	heap.Push(&w.events, e)
	return e
}

// After runs fn in the scheduler (not as a task: it must not block) d
// from now.
func (w *World) After(d time.Duration, fn func()) { w.at(d, fn) }

// fire moves the clock to the next event and runs it.
func (w *World) fire() {
	e := heap.Pop(&w.events).(*event)
	if e.cancelled {
		return
	}
	if e.at.After(w.now) {
		w.now = e.at
	}
	e.fired = true
	e.fn()
}

// ---- the clock ----

// Clock returns the world's clock as an idem.Clock: give it to the ledger
// and to stores so that leases, heartbeats and waits run on virtual time.
func (w *World) Clock() *Clock { return &Clock{w: w} }

// Clock is an idem.Clock on a world's virtual time. AfterFunc's function
// runs as a task of the process that set the timer (and never, if that
// process crashed meanwhile); Sleep parks the calling task. After returns
// a channel that the world fills in time, but a task must not block on it:
// it would stall the scheduler. Use Sleep.
type Clock struct{ w *World }

// Now returns the virtual time.
func (c *Clock) Now() time.Time { return c.w.now }

// After returns a channel that receives once d has passed.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.w.at(d, func() { ch <- c.w.now })
	return ch
}

// AfterFunc runs f as a task of the caller's process once d has passed.
func (c *Clock) AfterFunc(d time.Duration, f func()) func() bool {
	w := c.w
	var owner *Process
	if w.cur != nil {
		owner = w.cur.proc
	}
	epoch := 0
	if owner != nil {
		epoch = owner.epoch
	}
	e := w.at(d, func() {
		switch {
		case owner == nil:
			w.spawn(nil, "timer", f)
		case owner.alive && owner.epoch == epoch:
			owner.Go("timer", f)
		}
	})
	return e.cancel
}

// Sleep parks the calling task for d. It does not notice ctx being
// cancelled meanwhile (nothing in a world cancels contexts on a timer).
func (c *Clock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.w.Sleep(d); err != nil {
		return err
	}
	return ctx.Err()
}

// ---- mailboxes and the network ----

// Mailbox receives messages for the tasks of one process.
type Mailbox struct {
	w      *World
	msgs   []any
	waiter *task
}

// NewMailbox returns an empty mailbox.
func (w *World) NewMailbox() *Mailbox { return &Mailbox{w: w} }

// Recv returns the next message, waiting up to timeout; ok is false on
// timeout or crash.
func (m *Mailbox) Recv(timeout time.Duration) (msg any, ok bool) {
	w := m.w
	if !w.running() {
		return nil, false
	}
	if len(m.msgs) > 0 {
		msg = m.msgs[0]
		m.msgs = m.msgs[1:]
		return msg, true
	}
	t := w.cur
	m.waiter = t
	t.msg = nil
	t.waiting = w.at(timeout, func() {
		t.waiting = nil
		if m.waiter == t {
			m.waiter = nil
		}
		w.wake(t, nil)
	})
	w.park()
	return t.msg, t.msg != nil
}

// Pending returns the messages that arrived after their receiver stopped
// waiting.
func (m *Mailbox) Pending() []any { return m.msgs }

// Deliver puts msg in the mailbox now (from the scheduler).
func (m *Mailbox) Deliver(msg any) {
	if t := m.waiter; t != nil && !t.killed {
		m.waiter = nil
		if t.waiting != nil {
			t.waiting.cancel()
			t.waiting = nil
		}
		m.w.wake(t, msg)
		return
	}
	m.waiter = nil
	m.msgs = append(m.msgs, msg)
}

// Send carries a message over the network: after a random delay deliver
// runs in the scheduler, or never (dropped), or twice (duplicated).
func (w *World) Send(what string, deliver func()) {
	f := w.faults
	if w.Chance(f.Drop) {
		w.Log("drop", "", what)
		return
	}
	w.at(w.Between(f.MinDelay, f.MaxDelay), deliver)
	if w.Chance(f.Duplicate) {
		w.Log("duplicate", "", what)
		w.at(w.Between(f.MinDelay, f.MaxDelay), deliver)
	}
}
