package messaging_test

import (
	"context"
	"fmt"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
)

// A broker redelivers an order: the handler runs once, and the adapter
// acks the duplicate without running it.
func Example() {
	ledger, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		panic(err)
	}
	defer ledger.Close()
	consumer, err := messaging.NewConsumer(ledger, func(ctx context.Context, m *messaging.Message) error {
		key, _ := idem.KeyFrom(ctx) // idemhttp.Transport sends it as Idempotency-Key
		fmt.Printf("charging %s (key %s)\n", m.Payload, key)
		return nil
	}, &messaging.Config{Scope: "orders"})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for delivery := 1; delivery <= 2; delivery++ {
		d := consumer.Handle(ctx, &messaging.Message{ID: "msg-7", Subject: "orders", Payload: []byte("order 7: 5 EUR"), Delivery: delivery})
		fmt.Printf("delivery %d: %s\n", delivery, d.Action)
	}
	// Output:
	// charging order 7: 5 EUR (key msg-7)
	// delivery 1: ack
	// delivery 2: ack-duplicate
}

// A handler attaches a reply to its outcome: the duplicate gets the same
// reply without running the handler, so the adapter can send it again.
func ExampleSetResult() {
	ledger, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		panic(err)
	}
	defer ledger.Close()
	consumer, err := messaging.NewConsumer(ledger, func(ctx context.Context, m *messaging.Message) error {
		fmt.Printf("charging %s\n", m.Payload)
		messaging.SetResult(ctx, []byte("charge ch_1 for "+string(m.Payload)))
		return nil
	}, &messaging.Config{Scope: "orders"})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for delivery := 1; delivery <= 2; delivery++ {
		d := consumer.Handle(ctx, &messaging.Message{ID: "msg-7", Payload: []byte("order 7"), Delivery: delivery})
		fmt.Printf("delivery %d: %s, result %q\n", delivery, d.Action, d.Result)
	}
	// Output:
	// charging order 7
	// delivery 1: ack, result "charge ch_1 for order 7"
	// delivery 2: ack-duplicate, result "charge ch_1 for order 7"
}
