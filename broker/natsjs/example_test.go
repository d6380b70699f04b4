package natsjs_test

import (
	"context"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/broker/natsjs"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A pull consumer whose handler runs once per Nats-Msg-Id, however often
// JetStream delivers it. (Not run: it needs a NATS server.)
func ExampleConsume() {
	ctx := context.Background()
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	cons, err := js.CreateOrUpdateConsumer(ctx, "ORDERS", jetstream.ConsumerConfig{
		Durable: "billing", AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1, AckWait: time.Minute})
	if err != nil {
		panic(err)
	}
	ledger, _ := idem.New(memstore.New(nil), nil) // pgstore or redisstore across processes
	consumer, _ := messaging.NewConsumer(ledger, func(ctx context.Context, m *messaging.Message) error {
		return nil // charge the order in m.Payload
	}, &messaging.Config{Scope: "orders"})
	_ = natsjs.Consume(ctx, cons, consumer, &natsjs.Options{Workers: 8})
}

// Publishing with a message id: a republish within the stream's
// duplicate window is stored once. (Not run: it needs a NATS server.)
func ExamplePublisher_Publish() {
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	pub := natsjs.NewPublisher(js)
	ack, err := pub.Publish(context.Background(), "ORDERS.created", "order-7/created", []byte(`{"order":7}`), nil)
	if err == nil && ack.Duplicate {
		// the stream had order-7/created already and stored nothing
	}
}
