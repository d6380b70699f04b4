package pebblestore_test

import (
	"context"
	"fmt"
	"os"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/store/pebblestore"
)

// A ledger on the embedded store: the outcome survives a restart.
func Example() {
	dir, _ := os.MkdirTemp("", "idem-data-")
	defer os.RemoveAll(dir)
	ctx := context.Background()
	charges := 0
	charge := func(ctx context.Context, c *idem.Claim) (idem.Outcome, error) {
		charges++
		return idem.Outcome{Data: []byte(`{"charge":"ch_1"}`)}, nil
	}

	for run := 1; run <= 2; run++ { // two runs of the program, one directory
		store, err := pebblestore.Open(dir, nil)
		if err != nil {
			fmt.Println(err)
			return
		}
		ledger, _ := idem.New(store, nil)
		res, err := ledger.Do(ctx, "customer_42", "order-7-payment", "amount=500", charge)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Printf("run %d: %s replayed=%v\n", run, res.Outcome.Data, res.Replayed)
		ledger.Close()
	}
	fmt.Println("charges:", charges)
	// Output:
	// run 1: {"charge":"ch_1"} replayed=false
	// run 2: {"charge":"ch_1"} replayed=true
	// charges: 1
}
