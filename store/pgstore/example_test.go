package pgstore_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/idemkit/idem/workflow"
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

// An action marked InTx writes on the transaction that records its step:
// the shipment row and the step commit together, so a crash between them
// is impossible and a re-run of the step never inserts twice. It needs a
// running PostgreSQL, so it is compiled but not run.
func ExampleStepTx() {
	ctx := context.Background()
	store, err := pgstore.Open(ctx, os.Getenv("DATABASE_URL"), &pgstore.Config{Migrate: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer store.Close()
	ship := &workflow.Action{Name: "record_shipment", InTx: true, NoCompensation: true,
		Run: func(ctx context.Context, s *workflow.Step) ([]byte, error) {
			_, err := pgstore.StepTx(ctx).Exec(ctx,
				`INSERT INTO shipments (order_id, step_key) VALUES ($1, $2)`, s.InstanceID, s.Key)
			return nil, err // an error rolls the INSERT back; the attempt is recorded as failed
		}}
	registry := workflow.NewRegistry()
	if err := registry.Register(&workflow.Definition{
		Name: "shipping", Version: 1, Initial: "paid",
		States: []workflow.State{{Name: "paid"}, {Name: "shipped", Terminal: workflow.Success}},
		Transitions: []workflow.Transition{
			{From: "paid", To: "shipped", Action: ship}, // automatic: runs as soon as the instance starts
		},
	}); err != nil {
		fmt.Println(err)
		return
	}
	engine, err := workflow.NewEngine(store.Journal(), registry, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	go engine.Run(ctx)
	if _, err := engine.Start(ctx, "shipping", 0, "order-7", nil, nil); err != nil {
		fmt.Println(err)
		return
	}
	done, err := engine.Wait(ctx, "order-7")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(done.Status)
}
