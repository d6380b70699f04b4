package redisstore_test

import (
	"context"
	"fmt"
	"os"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/store/redisstore"
)

// A ledger on Redis: two app servers share it, the work runs once. The
// example needs a Redis server, so it is compiled, not run; it prints
//
//	server 1: {"charge":"ch_1"} replayed=false
//	server 2: {"charge":"ch_1"} replayed=true
//	charges: 1
func Example() {
	ctx := context.Background()
	url := os.Getenv("IDEM_REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	charges := 0
	charge := func(ctx context.Context, c *idem.Claim) (idem.Outcome, error) {
		charges++
		return idem.Outcome{Data: []byte(`{"charge":"ch_1"}`)}, nil
	}

	for server := 1; server <= 2; server++ { // two servers, one Redis
		store, err := redisstore.Open(ctx, url, &redisstore.Config{Prefix: "idem-example"})
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
		fmt.Printf("server %d: %s replayed=%v\n", server, res.Outcome.Data, res.Replayed)
		ledger.Close()
	}
	fmt.Println("charges:", charges)
}
