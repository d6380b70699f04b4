package idem_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// Charge a card at most once per idempotency key, however often the request
// is retried.
func ExampleLedger_Do() {
	ledger, _ := idem.New(memstore.New(nil), nil) // pebblestore.Open("./idem-data", nil) in production
	defer ledger.Close()

	charges := 0
	charge := func(ctx context.Context, c *idem.Claim) (idem.Outcome, error) {
		charges++ // the side effect; pass c.Token() downstream to fence it
		return idem.Outcome{Data: []byte(`{"charge":"ch_1","amount":500}`)}, nil
	}

	ctx := context.Background()
	for attempt := 1; attempt <= 3; attempt++ {
		res, err := ledger.Do(ctx, "customer_42", "order-7-payment", "amount=500", charge)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Printf("attempt %d: %s replayed=%v\n", attempt, res.Outcome.Data, res.Replayed)
	}
	// The same key for a different request is refused, not replayed.
	_, err := ledger.Do(ctx, "customer_42", "order-7-payment", "amount=900", charge)
	fmt.Println(errors.Is(err, idem.ErrFingerprintMismatch), "charges:", charges)
	// Output:
	// attempt 1: {"charge":"ch_1","amount":500} replayed=false
	// attempt 2: {"charge":"ch_1","amount":500} replayed=true
	// attempt 3: {"charge":"ch_1","amount":500} replayed=true
	// true charges: 1
}

// Begin and Complete by hand, with a checkpoint a successor can resume from.
func ExampleLedger_Begin() {
	ledger, _ := idem.New(memstore.New(nil), nil)
	ctx := context.Background()

	claim, err := ledger.Begin(ctx, "provisioning", "vm-create-17", "size=large")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("replayed:", claim.Replayed(), "attempt:", claim.Attempt(), "resume from:", claim.Checkpoint())
	_ = claim.SetCheckpoint(ctx, "disk-created", []byte("disk-9"))
	_ = claim.Complete(ctx, idem.Outcome{Data: []byte("vm-17 ready")})

	again, _ := ledger.Begin(ctx, "provisioning", "vm-create-17", "size=large")
	fmt.Println("replayed:", again.Replayed(), "outcome:", string(again.Outcome().Data))
	// Output:
	// replayed: false attempt: 1 resume from: <nil>
	// replayed: true outcome: vm-17 ready
}
