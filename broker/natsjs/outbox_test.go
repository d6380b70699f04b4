package natsjs

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgstore's outbox relay publishes through a Publisher with the two-line
// glue of docs/broker-nats.md: each row reaches the stream once, with its
// outbox ID as Nats-Msg-Id, and a consumer handles it once.
func TestOutboxRelayPublishes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, servicetest.Postgres.Need(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close) // after the schema's drop
	schema := fmt.Sprintf("idem_natsjs_outbox_%d", time.Now().UnixNano()%1e9)
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	store, err := pgstore.New(pool, &pgstore.Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	_, js := connect(t)
	stream := newStream(t, js, 0)

	// Three messages written in the business transaction.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := store.Enqueue(ctx, tx, &pgstore.OutboxMessage{ID: fmt.Sprintf("ship-%d", i), Entity: "order-7",
			Subject: stream + ".shipments", Payload: []byte(fmt.Sprint(i)), Headers: map[string]string{"Order": "7"}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	pub := NewPublisher(js)
	relay := store.Relay(pgstore.PublisherFunc(func(ctx context.Context, m *pgstore.OutboxMessage) error {
		_, err := pub.Publish(ctx, m.Subject, m.ID, m.Payload, m.Headers)
		return err
	}), &pgstore.RelayConfig{PollInterval: 50 * time.Millisecond})
	relayCtx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(relayCtx) }()
	defer func() {
		stopRelay()
		if err := <-relayDone; !errors.Is(err, context.Canceled) {
			t.Errorf("relay returned %v, want context.Canceled", err)
		}
	}()

	c, err := messaging.NewConsumer(ledger(t), func(context.Context, *messaging.Message) error { return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch := run(t, pullConsumer(t, js, stream, 30*time.Second), c, Options{})
	for i := range 3 {
		s := next(t, ch)
		want := fmt.Sprintf("ship-%d", i) // one entity: published in order
		if s.m.ID != want || string(s.m.Payload) != fmt.Sprint(i) || s.m.Headers["Order"] != "7" || s.d.Action != messaging.Ack {
			t.Errorf("delivery %d: %q %q %v %s; want %s acked with its payload and headers", i, s.m.ID, s.m.Payload, s.m.Headers, s.d.Action, want)
		}
	}
	si, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	if n := si.CachedInfo().State.Msgs; n != 3 {
		t.Errorf("the stream holds %d messages, want 3", n)
	}
}
