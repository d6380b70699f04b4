package rabbitmq_test

import (
	"context"
	"fmt"
	"log"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/broker/rabbitmq"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Publish an order twice and consume it: the handler runs once, both
// deliveries are acked. (Use a durable store, such as pgstore, in
// production: the ledger must outlive the consumer.)
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn, err := amqp.Dial("amqp://guest:guest@127.0.0.1:5672/")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	if err := rabbitmq.DeclareQueue(ch, "orders", &rabbitmq.QueueOptions{DeadLetterQueue: "orders.dead"}); err != nil {
		log.Fatal(err)
	}

	pubCh, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(pubCh)
	if err != nil {
		log.Fatal(err)
	}
	for range 2 { // a producer retrying after a lost confirm
		if err := pub.Publish(ctx, "", &messaging.Message{ID: "order-7", Subject: "orders", Payload: []byte("5 EUR")}); err != nil {
			log.Fatal(err)
		}
	}

	ledger, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer ledger.Close()
	consumer, err := messaging.NewConsumer(ledger, func(ctx context.Context, m *messaging.Message) error {
		fmt.Printf("charging %s for %s\n", m.Payload, m.ID)
		return nil
	}, &messaging.Config{Scope: "orders"})
	if err != nil {
		log.Fatal(err)
	}
	settled := 0 // one worker (the default): OnDecision is not called concurrently
	err = rabbitmq.Consume(ctx, ch, "orders", consumer, &rabbitmq.Options{
		OnDecision: func(m *messaging.Message, d messaging.Decision, err error) {
			fmt.Println(m.ID, d.Action)
			if settled++; settled == 2 {
				cancel()
			}
		}})
	fmt.Println(err)
}
