package pgstore_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/store/pgstore"
)

// A ledger shared by every server that points at one database. It needs a
// running PostgreSQL, so it is compiled but not run.
func Example() {
	ctx := context.Background()
	store, err := pgstore.Open(ctx, os.Getenv("DATABASE_URL"), &pgstore.Config{Migrate: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	ledger, err := idem.New(store, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ledger.Close()
	res, err := ledger.Do(ctx, "customer_42", "order-7-payment", "amount=500",
		func(ctx context.Context, c *idem.Claim) (idem.Outcome, error) {
			return idem.Outcome{Data: []byte(`{"charge":"ch_1"}`)}, nil
		})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s replayed=%v\n", res.Outcome.Data, res.Replayed)
}

// The claim and the business write commit in one transaction: a rollback
// leaves the key free, a commit makes every duplicate a replay.
func ExampleStore_BeginTx() {
	ctx := context.Background()
	store, err := pgstore.Open(ctx, os.Getenv("DATABASE_URL"), &pgstore.Config{Migrate: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer store.Close()
	tx, err := store.Pool().Begin(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tx.Rollback(ctx)
	res, err := store.BeginTx(ctx, tx, &idem.BeginParams{Scope: "payments", Key: "order-7", Fingerprint: "amount=500",
		Lease: time.Minute, Window: 24 * time.Hour})
	if err != nil {
		fmt.Println(err)
		return
	}
	if res.Decision != idem.Acquired {
		fmt.Println(res.Decision) // replay: res.Record.Outcome is what the first commit stored
		return
	}
	if _, err := tx.Exec(ctx, `INSERT INTO payments (order_id, amount) VALUES ('order-7', 500)`); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := store.CompleteTx(ctx, tx, &idem.CompleteParams{Scope: "payments", Key: "order-7",
		Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte(`{"paid":500}`)}}); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(tx.Commit(ctx))
}
