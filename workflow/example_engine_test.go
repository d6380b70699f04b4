package workflow_test

import (
	"context"
	"fmt"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
)

// An order runs reserve → charge; the charge fails for good, so the
// reservation is released and the order ends failed.
func ExampleEngine() {
	ctx := context.Background()
	clock := idem.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))

	step := func(what string, err error) workflow.StepFunc {
		return func(ctx context.Context, s *workflow.Step) ([]byte, error) {
			fmt.Println(what, s.Key, workflow.StepKey(ctx) == s.Key)
			return nil, err
		}
	}
	var types workflow.Registry
	err := types.Register(&workflow.Definition{
		Name: "order", Version: 1, Initial: "pending",
		States: []workflow.State{
			{Name: "pending"}, {Name: "reserved"},
			{Name: "charged", Terminal: workflow.Success},
		},
		Transitions: []workflow.Transition{
			{From: "pending", Event: "place", To: "reserved", Action: &workflow.Action{
				Name: "reserve", Run: step("reserve", nil), Compensate: step("release", nil)}},
			{From: "reserved", Event: "pay", To: "charged", Action: &workflow.Action{
				Name: "charge", Run: step("charge", workflow.Permanent(fmt.Errorf("card declined"))), NoCompensation: true}},
		},
	})
	if err != nil {
		panic(err)
	}
	engine, _ := workflow.NewEngine(workflow.NewMemJournal(), &types, &workflow.EngineConfig{Clock: clock})

	engine.Start(ctx, "order", 0, "order-7", []byte(`{"sku":"book"}`), nil)
	engine.Signal(ctx, "order-7", "evt-1", "place", nil)
	engine.Signal(ctx, "order-7", "evt-2", "pay", nil)
	dup, _ := engine.Signal(ctx, "order-7", "evt-2", "pay", nil)
	fmt.Println("duplicate pay:", dup)
	for {
		if n, _ := engine.Step(ctx); n == 0 {
			break
		}
	}

	in, _ := engine.Get(ctx, "order-7")
	fmt.Println(in.Status, in.State, in.Error)
	for _, e := range in.History {
		line := fmt.Sprint(e.Seq, " ", e.Kind)
		switch {
		case e.StepKey != "":
			line += " " + e.StepKey
		case e.Kind == workflow.EntryTransition:
			line += " " + e.From + " -> " + e.To
		case e.EventID != "":
			line += " " + e.Event + " " + e.EventID
		}
		fmt.Println(line)
	}
	// Output:
	// duplicate pay: true
	// reserve order-7/1/reserve true
	// charge order-7/2/charge true
	// release order-7/1/compensate/reserve true
	// failed reserved card declined
	// 1 started
	// 2 event_received place evt-1
	// 3 event_received pay evt-2
	// 4 action_started order-7/1/reserve
	// 5 action_completed order-7/1/reserve
	// 6 transition pending -> reserved
	// 7 action_started order-7/2/charge
	// 8 action_failed order-7/2/charge
	// 9 unwinding
	// 10 compensated order-7/1/compensate/reserve
	// 11 finished
}
