package workflow_test

import (
	"context"
	"fmt"
	"time"

	"github.com/idemkit/idem/workflow"
)

// noop stands for a call to another service. A real action passes
// step.Key downstream as an idempotency key and step.Token as a fencing
// token.
func noop(ctx context.Context, step *workflow.Step) ([]byte, error) { return nil, nil }

// orderSaga reserves stock, charges the card and ships the parcel. Every
// side-effecting action says how to undo it. A cancel, or fifteen minutes
// without payment, ends the order in the failure state "cancelled"; an
// order placed for stock that is gone ends in "rejected".
func orderSaga() *workflow.Definition {
	return &workflow.Definition{
		Name:    "order",
		Version: 1,
		Initial: "pending",
		States: []workflow.State{
			{Name: "pending"},
			{Name: "reserved", Timeout: 15 * time.Minute, TimeoutEvent: "payment_timeout"},
			{Name: "charged"},
			{Name: "shipped", Terminal: workflow.Success},
			{Name: "cancelled", Terminal: workflow.Failure,
				OnEnter: &workflow.Action{Name: "notify_customer", Run: noop, NoCompensation: true}},
			{Name: "rejected", Terminal: workflow.Failure},
		},
		Transitions: []workflow.Transition{
			{From: "pending", Event: "place", To: "reserved",
				Action: &workflow.Action{Name: "reserve_stock", Run: noop, Compensate: noop}},
			{From: "pending", Event: "out_of_stock", To: "rejected"},
			{From: "reserved", Event: "pay", To: "charged",
				Action: &workflow.Action{Name: "charge_card", Run: noop, Compensate: noop,
					Retry: &workflow.RetryPolicy{MaxAttempts: 5, Jitter: 0.2}}},
			{From: "reserved", Event: "cancel", To: "cancelled"},
			{From: "reserved", Event: "payment_timeout", To: "cancelled"},
			{From: "charged", Event: "dispatch", To: "shipped",
				Action: &workflow.Action{Name: "ship_parcel", Run: noop, Compensate: noop,
					OnExhausted: workflow.Park}}, // a person looks at a parcel stuck in the warehouse
			{From: "charged", Event: "cancel", To: "cancelled"},
		},
	}
}

// Define the order saga, register it (which validates it) and draw it.
func Example() {
	var reg workflow.Registry
	if err := reg.Register(orderSaga()); err != nil {
		fmt.Println(err)
		return
	}
	def, _ := reg.Latest("order")
	fmt.Print(def.Mermaid())
	// Output:
	// stateDiagram-v2
	//     state "pending" as s0
	//     state "reserved" as s1
	//     state "charged" as s2
	//     state "shipped" as s3
	//     state "cancelled" as s4
	//     state "rejected" as s5
	//     [*] --> s0
	//     s0 --> s1 : place / reserve_stock
	//     s0 --> s5 : out_of_stock
	//     s1 --> s2 : pay / charge_card
	//     s1 --> s4 : cancel
	//     s1 --> s4 : payment_timeout (after 15m0s)
	//     s2 --> s3 : dispatch / ship_parcel
	//     s2 --> s4 : cancel
	//     s3 --> [*]
	//     note right of s4 : on enter / notify_customer
	//     s4 --> [*]
	//     s5 --> [*]
	//     classDef success fill:#d4edda,stroke:#1e7e34
	//     classDef failure fill:#f8d7da,stroke:#bd2130
	//     class s3 success
	//     class s4,s5 failure
}
