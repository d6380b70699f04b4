package idemtest_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem/idemtest"
	"github.com/idemkit/idem/workflow"
)

// ledger is the application's state a workflow's actions change: the
// careful actions upsert one effect per step key, the naive ones append
// one per call.
type ledger struct {
	mu     sync.Mutex
	byKey  map[string]string // step key -> effect
	tokens map[string]int64  // step key -> highest token seen
	calls  []string          // the step key of every naive call
}

func newLedger() *ledger {
	l := &ledger{}
	l.Reset()
	return l
}

func (l *ledger) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.byKey, l.tokens, l.calls = map[string]string{}, map[string]int64{}, nil
}

// careful records what under the step key, once, and refuses a stale
// token.
func (l *ledger) careful(what string) workflow.StepFunc {
	return func(ctx context.Context, s *workflow.Step) ([]byte, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if s.Token < l.tokens[s.Key] {
			return nil, workflow.Permanent(fmt.Errorf("%s: token %d is stale", what, s.Token))
		}
		l.tokens[s.Key] = s.Token
		if _, ok := l.byKey[s.Key]; !ok {
			l.byKey[s.Key] = what
		}
		return []byte(what), nil
	}
}

// naive records a call every time it runs.
func (l *ledger) naive(what string) workflow.StepFunc {
	return func(ctx context.Context, s *workflow.Step) ([]byte, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.calls = append(l.calls, s.Key)
		return []byte(what), nil
	}
}

// keysOf returns the keys of in's effects: the careful ones, or every
// naive call.
func (l *ledger) keysOf(id string, naive bool) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var keys []string
	if naive {
		keys = append(keys, l.calls...)
	} else {
		for k := range l.byKey {
			keys = append(keys, k)
		}
	}
	var mine []string
	for _, k := range keys {
		if strings.HasPrefix(k, id+"/") {
			mine = append(mine, k)
		}
	}
	return mine
}

// oneEffectPerStep checks that in's effects are those of the steps its
// history completes or compensates, one each.
func (l *ledger) oneEffectPerStep(naive bool) func(in *workflow.Instance) error {
	return func(in *workflow.Instance) error {
		want := map[string]bool{}
		for _, e := range in.History {
			if e.Kind == workflow.EntryActionCompleted || e.Kind == workflow.EntryCompensated {
				want[e.StepKey] = true
			}
		}
		got := l.keysOf(in.ID, naive)
		seen := map[string]bool{}
		for _, k := range got {
			if seen[k] {
				return fmt.Errorf("instance %s: two effects for step %s", in.ID, k)
			}
			seen[k] = true
			if !want[k] {
				return fmt.Errorf("instance %s: an effect for step %s, which the history does not complete", in.ID, k)
			}
		}
		if len(got) != len(want) {
			return fmt.Errorf("instance %s: %d effects for %d completed steps", in.ID, len(got), len(want))
		}
		return nil
	}
}

// automatic is a three-step workflow that runs from Start alone.
func automatic(step func(what string) workflow.StepFunc) *workflow.Definition {
	return &workflow.Definition{
		Name: "auto", Version: 1, Initial: "new",
		States: []workflow.State{{Name: "new"}, {Name: "reserved"}, {Name: "charged"}, {Name: "shipped", Terminal: workflow.Success}},
		Transitions: []workflow.Transition{
			{From: "new", To: "reserved", Action: &workflow.Action{Name: "reserve", Run: step("reserve"), Compensate: step("release")}},
			{From: "reserved", To: "charged", Action: &workflow.Action{Name: "charge", Run: step("charge"), Compensate: step("refund")}},
			{From: "charged", To: "shipped", Action: &workflow.Action{Name: "ship", Run: step("ship"), NoCompensation: true}},
		},
	}
}

func TestWorkflowPassesACarefulDefinition(t *testing.T) {
	t.Parallel()
	l := newLedger()
	completed := 0
	check := l.oneEffectPerStep(false)
	idemtest.Workflow(t, automatic(l.careful), &idemtest.WorkflowOptions{
		Options: idemtest.Options{Seeds: 200, Reset: l.Reset},
		Check: func(in *workflow.Instance) error {
			if in.Status != workflow.Succeeded {
				return fmt.Errorf("instance %s ended %s", in.ID, in.Status)
			}
			for _, e := range in.History {
				if e.Kind == workflow.EntryActionCompleted {
					completed++
				}
			}
			return check(in)
		},
	})
	// 200 worlds of 3 instances of 3 steps, all checked.
	if completed != 200*3*3 {
		t.Fatalf("Check saw %d completed steps, want %d", completed, 200*3*3)
	}
}

var seedRE = regexp.MustCompile(`idemtest: seed (\d+): `)

func TestWorkflowCatchesAnEffectNotKeyedByStepKey(t *testing.T) {
	t.Parallel()
	l := newLedger()
	opts := &idemtest.WorkflowOptions{Options: idemtest.Options{Seeds: 200, Reset: l.Reset}, Check: l.oneEffectPerStep(true)}
	msg := failure(t, func(tb testing.TB) { idemtest.Workflow(tb, automatic(l.naive), opts) })
	for _, want := range []string{`the workflow "auto" broke an invariant: check broken on key "auto`, "two effects for step auto",
		"key its effect by Step.Key", "WorkflowOptions{Options: idemtest.Options{Seed: ", "crash"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("failure lacks %q:\n%s", want, msg)
		}
	}
	m := seedRE.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("failure names no seed:\n%s", msg)
	}
	seed, _ := strconv.ParseUint(m[1], 10, 64)
	// The seed named reruns the same world: the same failure, word for
	// word.
	again := failure(t, func(tb testing.TB) {
		idemtest.Workflow(tb, automatic(l.naive), &idemtest.WorkflowOptions{Options: idemtest.Options{Seed: seed, Seeds: 1, Reset: l.Reset}, Check: l.oneEffectPerStep(true)})
	})
	if again != msg {
		t.Fatalf("seed %d did not reproduce:\n%s\nthen:\n%s", seed, msg, again)
	}
	// Without crashes, pauses and journal failures nothing runs twice.
	opts.NoCrash = true
	idemtest.Workflow(t, automatic(l.naive), opts)
}

// order is a workflow driven by events, whose charge is declined for
// good for instance order1: it unwinds. A state waited in 3 s expires:
// events arrive reordered, and one its state does not take is rejected.
func order(l *ledger) *workflow.Definition {
	charge := l.careful("charge")
	return &workflow.Definition{
		Name: "order", Version: 1, Initial: "pending",
		States: []workflow.State{
			{Name: "pending", Timeout: 3 * time.Second, TimeoutEvent: "expire"},
			{Name: "reserved", Timeout: 3 * time.Second, TimeoutEvent: "expire"},
			{Name: "paid", Timeout: 3 * time.Second, TimeoutEvent: "expire"},
			{Name: "shipped", Terminal: workflow.Success},
			{Name: "expired", Terminal: workflow.Failure},
		},
		Transitions: []workflow.Transition{
			{From: "pending", Event: "expire", To: "expired"},
			{From: "reserved", Event: "expire", To: "expired"},
			{From: "paid", Event: "expire", To: "expired"},
			{From: "pending", Event: "place", To: "reserved",
				Action: &workflow.Action{Name: "reserve", Run: l.careful("reserve"), Compensate: l.careful("release")}},
			{From: "reserved", Event: "pay", To: "paid",
				Action: &workflow.Action{Name: "charge", Compensate: l.careful("refund"),
					Run: func(ctx context.Context, s *workflow.Step) ([]byte, error) {
						if s.InstanceID == "order1" {
							return nil, workflow.Permanent(errors.New("card declined"))
						}
						return charge(ctx, s)
					}}},
			{From: "paid", Event: "ship", To: "shipped",
				Action: &workflow.Action{Name: "ship", Run: l.careful("ship"), NoCompensation: true}},
		},
	}
}

func TestWorkflowWithEventsAndCancels(t *testing.T) {
	t.Parallel()
	l := newLedger()
	statuses := map[workflow.Status]int{}
	check := l.oneEffectPerStep(false)
	idemtest.Workflow(t, order(l), &idemtest.WorkflowOptions{
		Options: idemtest.Options{Seeds: 200, Reset: l.Reset},
		Events:  []string{"place", "pay", "ship"},
		Cancel:  0.4,
		Check: func(in *workflow.Instance) error {
			statuses[in.Status]++
			if in.ID == "order1" && in.Status == workflow.Succeeded {
				return errors.New("order1 succeeded with its card declined")
			}
			return check(in)
		},
	})
	// The worlds cover the ends: shipped, failed (declined, or expired
	// after an event that came too early was rejected) and cancelled.
	for _, s := range []workflow.Status{workflow.Succeeded, workflow.Failed, workflow.Cancelled} {
		if statuses[s] == 0 {
			t.Fatalf("no instance ended %s in 200 worlds: %v", s, statuses)
		}
	}
}

func TestWorkflowRefusesAnInvalidDefinition(t *testing.T) {
	t.Parallel()
	l := newLedger()
	def := automatic(l.careful)
	def.Transitions[0].Action.Compensate = nil // says neither how to undo it nor that it needs none
	msg := failure(t, func(tb testing.TB) { idemtest.Workflow(tb, def, nil) })
	if !strings.Contains(msg, "idemtest: the workflow definition is not valid") || !strings.Contains(msg, "reserve") {
		t.Fatalf("failure: %s", msg)
	}
}

func TestWorkflowReportsAnInstanceThatWaitsForever(t *testing.T) {
	t.Parallel()
	l := newLedger()
	def := order(l)
	// Without timeouts, an instance whose "pay" came before "place" (and
	// was rejected) waits in reserved for ever.
	def.States = []workflow.State{{Name: "pending"}, {Name: "reserved"}, {Name: "paid"}, {Name: "shipped", Terminal: workflow.Success}}
	def.Transitions = def.Transitions[3:]
	msg := failure(t, func(tb testing.TB) {
		idemtest.Workflow(tb, def, &idemtest.WorkflowOptions{Options: idemtest.Options{Reset: l.Reset}, Events: []string{"place", "pay", "ship"}})
	})
	for _, want := range []string{"ends-terminal broken on key \"order", "waiting for an event that nobody sends and no timeout fires",
		"give the states that wait for events a Timeout", "event_rejected", "History of order"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("failure lacks %q:\n%s", want, msg)
		}
	}
}

func TestWorkflowRefusesInTxActions(t *testing.T) {
	t.Parallel()
	l := newLedger()
	def := automatic(l.careful)
	def.Transitions[1].Action.InTx = true
	msg := failure(t, func(tb testing.TB) { idemtest.Workflow(tb, def, nil) })
	if !strings.Contains(msg, `action "charge" is InTx`) {
		t.Fatalf("failure: %s", msg)
	}
}
