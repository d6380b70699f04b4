package idemclient_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemclient"
)

// Use a running `idem serve` as the ledger of a service. The token must be
// bound to the scope in the server's tokens file.
func Example() {
	store, err := idemclient.New("http://127.0.0.1:7070", os.Getenv("IDEM_TOKEN"), nil)
	if err != nil {
		log.Fatal(err)
	}
	ledger, err := idem.New(store, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer ledger.Close()

	res, err := ledger.Do(context.Background(), "customer_42", "order-7-payment", "amount=500",
		func(ctx context.Context, c *idem.Claim) (idem.Outcome, error) {
			// Charge the card here, passing c.Token() downstream to fence it.
			return idem.Outcome{Data: []byte(`{"charge":"ch_1"}`)}, nil
		})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s replayed=%v\n", res.Outcome.Data, res.Replayed)
}
