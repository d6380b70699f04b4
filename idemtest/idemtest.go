// Package idemtest checks, in your own tests, that an operation behind idem
// is idempotent: run under duplicate, concurrent, lost and crashed
// deliveries, it answers every duplicate the same and makes its effects as
// often as one clean delivery does; and (Workflow, below) that a workflow
// definition's steps make their effects once each under crashing workflow
// engines.
//
//	func TestCreateOrderIsIdempotent(t *testing.T) {
//		db := newFakeDB()
//		idemtest.Handler(t, createOrder(db), func() *http.Request {
//			return httptest.NewRequest("POST", "/orders", strings.NewReader(`{"sku":"a"}`))
//		}, &idemtest.Options{Reset: db.Reset, Effects: db.Count})
//	}
//
// Each seed is a simulated world (package sim): clients send the request
// several times at once and again after time-outs, the network loses,
// duplicates and reorders messages, the store fails before and after
// committing, and the server crashes at random points and restarts on the
// same ledger. The operation runs for real, through the real idemhttp
// middleware or Ledger.Do, on a memory store and virtual time. A failure
// names the seed that reproduces it (Options.Seed) and prints what
// happened.
//
// # Crashes and effects
//
// A crash between an operation's effect and the moment its outcome is
// stored is the hard case: the key is still free when the lease runs out,
// and a retry runs the operation again. An operation passes only if it
// survives that: its effect is keyed by the idempotency key (an upsert, a
// unique constraint), or it is written in the same transaction as the
// outcome (pgstore.CompleteTx). Set Options.NoCrash to check the rest
// while that is being fixed.
//
// # Workflows
//
// Workflow runs your workflow definition (package workflow), with your
// own action and compensation functions, through worlds of the
// simulator's workflow engines:
//
//	func TestOrderWorkflow(t *testing.T) {
//		db := newFakeDB()
//		idemtest.Workflow(t, orderDefinition(db), &idemtest.WorkflowOptions{
//			Options: idemtest.Options{Reset: db.Reset},
//			Events:  []string{"place", "pay", "ship"},
//			Check:   db.CheckOrder, // func(*workflow.Instance) error
//		})
//	}
//
// Three engines share a journal that fails before and after committing.
// They crash at step boundaries, an action done and its step not yet
// recorded, and pause past their lease: another engine takes the
// instance over and runs that step again, with the same Step.Key and a
// higher Step.Token. Clients start each instance, start it again with
// the same input and with another, send WorkflowOptions.Events (some
// twice, reordered) and cancel some (Cancel). Workflow checks what the
// engine promises: every instance ends finished or parked, its history
// explains its state, every step the history completes ran with its step
// key, and an unwound instance compensated exactly its completed actions
// that have a compensation, latest first.
//
// Your effects, though, are yours: the world cannot see them. Key each by
// Step.Key (an upsert, a unique constraint, or the Idempotency-Key of the
// service it calls), refuse a Step.Token lower than the highest the key
// has seen, and count them in WorkflowOptions.Check against the steps the
// instance's history completes (workflow.EntryActionCompleted entries,
// their StepKey) and compensates (workflow.EntryCompensated): one each.
// An action that appends on every call fails there as soon as a crash
// runs its step again (see ExampleWorkflow).
//
// Events arrive reordered and an event that its state does not take is
// rejected, as real clients' events can be: give the states that wait
// for events a Timeout, or an instance waits for ever and fails
// (ends-terminal). Actions marked InTx cannot run here: the simulated
// journal has no transactions.
//
// # Rules for the code under test
//
// The operation, and a workflow's actions and compensations, run in the
// world's tasks, one at a time: they must not wait on real time
// (time.Sleep, time.After, a channel that another goroutine fills) or
// start goroutines that outlive them, and should not hold a lock while
// they call into the world (the ledger, the store, the engine).
package idemtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/sim"
)

// Options tune a check. The zero value (or nil) runs 100 seeds of three
// concurrent clients, with crashes.
type Options struct {
	// Seeds is how many worlds to run (default 100); Seed is the first
	// (default 1). A failure prints the seed: set both to rerun just it.
	Seeds int
	Seed  uint64
	// Clients is how many clients send the request at once (default 3).
	Clients int
	// Reset clears the state the operation changes; it runs before each
	// world.
	Reset func()
	// Effects counts the operation's effects in that state. After each
	// world it must equal what one clean delivery left.
	Effects func() int
	// NoCrash keeps the server (or consumers) from crashing and the store
	// from failing: duplicates, concurrency and a lossy network remain.
	NoCrash bool
	// Middleware configures the middleware (Handler). Its Clock and, when
	// nil, its Logger are replaced.
	Middleware *idemhttp.Config
	// Lease is the ledger's lease (default 1 s of virtual time).
	Lease time.Duration
}

func (o *Options) withDefaults() Options {
	var c Options
	if o != nil {
		c = *o
	}
	if c.Seeds <= 0 {
		c.Seeds = 100
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.Clients <= 0 {
		c.Clients = 3
	}
	if c.Lease <= 0 {
		c.Lease = time.Second
	}
	return c
}

func (o *Options) faults() (sim.Faults, sim.Failpoints) {
	f := sim.Faults{Drop: 0.05, Duplicate: 0.2, MinDelay: time.Millisecond, MaxDelay: 20 * time.Millisecond,
		Crash: 0.02, RestartAfter: 500 * time.Millisecond}
	fp := sim.Failpoints{BeforeCommit: 0.03, AfterCommit: 0.03, Latency: 2 * time.Millisecond}
	if o.NoCrash {
		f.Crash, fp.BeforeCommit, fp.AfterCommit = 0, 0, 0
	}
	return f, fp
}

const key = "idemtest-key"

// Handler checks that h, behind idemhttp.Middleware, is idempotent for the
// request newRequest makes (a new one each call; a key is added when it
// has none): in every world, every client gets a final answer
// (sim.FinalStatus: not 409, 5xx, 408 or 429), all final answers have the
// same status, body, Content-Type and Location, and Effects counts what
// one clean delivery made.
func Handler(t testing.TB, h http.Handler, newRequest func() *http.Request, opts *Options) {
	t.Helper()
	o := opts.withDefaults()
	keyed := func() *http.Request {
		r := newRequest()
		if r.Header.Get(idemhttp.HeaderKey) == "" {
			r.Header.Set(idemhttp.HeaderKey, key)
		}
		return r
	}
	build := func(w *sim.World, store *sim.Store) http.Handler {
		ledger, err := idem.New(store, &idem.Config{Clock: w.Clock(), Lease: o.Lease})
		if err != nil {
			panic(err)
		}
		var cfg idemhttp.Config
		if o.Middleware != nil {
			cfg = *o.Middleware
		}
		cfg.Clock = w.Clock()
		if cfg.Logger == nil {
			cfg.Logger = slog.New(slog.DiscardHandler)
		}
		return idemhttp.Middleware(ledger, &cfg)(h)
	}
	setup := func(clients int) func(w *sim.World, store *sim.Store) func() {
		return func(w *sim.World, store *sim.Store) func() {
			srv := w.NewHTTPServer("server", func() http.Handler { return build(w, store) })
			if w.Faults().Crash > 0 {
				srv.Process().Crashable()
			}
			var answers []sim.HTTPAnswer
			seen := func(a sim.HTTPAnswer) {
				if sim.FinalStatus(a.Status) {
					answers = append(answers, a)
				}
			}
			got := 0
			var boxes []*sim.Mailbox
			for c := range clients {
				box := w.NewMailbox()
				boxes = append(boxes, box)
				w.Go(fmt.Sprintf("client%d", c), func() {
					if _, ok := w.CallHTTP(srv, box, "request", keyed, seen, 20); ok {
						got++
					}
				})
			}
			return func() {
				for _, box := range boxes {
					for _, m := range box.Pending() {
						seen(m.(sim.HTTPAnswer))
					}
				}
				if got < clients {
					w.Violate("ends-known", key, fmt.Sprintf("%d of %d clients got no final answer in 20 attempts", clients-got, clients))
				}
				for _, a := range answers[min(1, len(answers)):] {
					if diff := differ(answers[0], a); diff != "" {
						w.Violate("same-outcome", key, diff)
						break
					}
				}
			}
		}
	}
	check(t, o, "handler", setup)
}

func differ(a, b sim.HTTPAnswer) string {
	switch {
	case a.Status != b.Status:
		return fmt.Sprintf("one client got status %d, another %d", a.Status, b.Status)
	case a.Body != b.Body:
		return fmt.Sprintf("one client got body %q, another %q", a.Body, b.Body)
	}
	for _, h := range []string{"Content-Type", "Location"} {
		if x, y := a.Header.Get(h), b.Header.Get(h); x != y {
			return fmt.Sprintf("one client got %s %q, another %q", h, x, y)
		}
	}
	return ""
}

// Do checks that fn, run through Ledger.Do, is idempotent for a message
// delivered at least once to consumers that crash: every consumer that
// got a result got the same outcome (or the same failure), the message
// ends processed, and Effects counts what one clean run made.
func Do(t testing.TB, fn func(ctx context.Context, c *idem.Claim) (idem.Outcome, error), opts *Options) {
	t.Helper()
	o := opts.withDefaults()
	setup := func(copies int) func(w *sim.World, store *sim.Store) func() {
		return func(w *sim.World, store *sim.Store) func() {
			consumers := make([]*sim.Process, 2)
			ledgers := make([]*idem.Ledger, len(consumers))
			for i := range consumers {
				consumers[i] = w.NewProcess(fmt.Sprintf("consumer%d", i), func(*sim.Process) {
					l, err := idem.New(store, &idem.Config{Clock: w.Clock(), Lease: o.Lease})
					if err != nil {
						panic(err)
					}
					ledgers[i] = l
				})
				if w.Faults().Crash > 0 {
					consumers[i].Crashable()
				}
				consumers[i].Start()
			}
			var outcomes []string
			acked := false
			handle := func(i int) {
				res, err := ledgers[i].Do(context.Background(), "idemtest", key, "message", fn)
				var failed *idem.OutcomeError
				switch {
				case err == nil:
					outcomes = append(outcomes, fmt.Sprintf("outcome %q %v", res.Outcome.Data, res.Outcome.Meta))
				case errors.As(err, &failed):
					outcomes = append(outcomes, "failure "+failed.Message)
				default:
					return // not acked: delivered again
				}
				w.Send("ack", func() { acked = true })
			}
			for c := range copies {
				w.After(time.Duration(c)*w.Between(0, 300*time.Millisecond), func() {
					w.DeliverAtLeastOnce("message", consumers, 2*time.Second, 40, func() bool { return acked }, handle)
				})
			}
			return func() {
				if !acked {
					w.Violate("ends-known", key, "the message was never processed in 40 deliveries")
				}
				for _, out := range outcomes[min(1, len(outcomes)):] {
					if out != outcomes[0] {
						w.Violate("same-outcome", key, fmt.Sprintf("one delivery got %s, another %s", outcomes[0], out))
						break
					}
				}
			}
		}
	}
	check(t, o, "Do", setup)
}

// check runs one clean world to learn the effects of one delivery, then
// the seeds with faults, and fails t at the first broken world.
func check(t testing.TB, o Options, what string, setup func(copies int) func(*sim.World, *sim.Store) func()) {
	t.Helper()
	run := func(seed uint64, sc *sim.Scenario) *sim.Report {
		if o.Reset != nil {
			o.Reset()
		}
		return sim.Run(sc, seed, nil)
	}
	clean := &sim.Scenario{Name: "idemtest-clean", Faults: sim.Faults{MinDelay: time.Millisecond, MaxDelay: time.Millisecond}, Setup: setup(1)}
	r := run(0, clean)
	if !r.OK() {
		t.Fatalf("idemtest: the %s fails even with one clean delivery:\n%s", what, story(r))
	}
	want := 0
	if o.Effects != nil {
		want = o.Effects()
	}
	faults, fp := o.faults()
	sc := &sim.Scenario{Name: "idemtest", Faults: faults, Failpoints: fp, Setup: setup(o.Clients)}
	for seed := o.Seed; seed < o.Seed+uint64(o.Seeds); seed++ {
		r := run(seed, sc)
		if r.OK() && o.Effects != nil {
			if got := o.Effects(); got != want {
				t.Fatalf("idemtest: seed %d: the %s made %d effects, one clean delivery makes %d.\n"+
					"A crash or a lost outcome let it run again: key its effect by the idempotency key, or write it\n"+
					"in the same transaction as the outcome (see the idemtest package doc).\n"+
					"Rerun just this world with Options{Seed: %d, Seeds: 1}.\n%s",
					seed, what, got, want, seed, story(r))
			}
		}
		if !r.OK() {
			t.Fatalf("idemtest: seed %d: the %s is not idempotent: %s\nRerun just this world with Options{Seed: %d, Seeds: 1}.\n%s",
				seed, what, r.Violations[0], seed, story(r))
		}
	}
}

// story is the whole trace of a small world.
func story(r *sim.Report) string {
	var b strings.Builder
	for _, s := range r.Trace().Steps() {
		b.WriteString("  " + s.String() + "\n")
	}
	return b.String()
}
