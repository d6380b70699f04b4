package watermill_test

import (
	"context"
	"fmt"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/idemkit/idem"
	idemwatermill "github.com/idemkit/idem/broker/watermill"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
)

// A router whose handler fails the first time: the redelivery is handled,
// and a duplicate is acked without running the handler.
func ExampleMiddleware() {
	ledger, _ := idem.New(memstore.New(nil), nil)
	mw, err := idemwatermill.Middleware(ledger, &idemwatermill.Config{
		Config: messaging.Config{Scope: "orders"},
	})
	if err != nil {
		panic(err)
	}

	pubSub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, wm.NopLogger{})
	router, _ := message.NewRouter(message.RouterConfig{}, wm.NopLogger{})
	router.AddMiddleware(mw)
	calls := 0
	router.AddConsumerHandler("charge", "orders", pubSub, func(msg *message.Message) error {
		calls++
		if calls == 1 {
			return fmt.Errorf("payment service unavailable")
		}
		fmt.Printf("charged %s\n", msg.Payload)
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = router.Run(ctx); close(done) }()
	<-router.Running()

	_ = pubSub.Publish("orders", message.NewMessage("order-1", []byte("order 1"))) // fails, then handled
	_ = pubSub.Publish("orders", message.NewMessage("order-1", []byte("order 1"))) // a duplicate
	fmt.Println("handler calls:", calls)

	cancel()
	<-done
	// Output:
	// charged order 1
	// handler calls: 2
}

// failFirst fails its first Publish, as a broker that is briefly down.
type failFirst struct {
	message.Publisher
	failed bool
}

func (p *failFirst) Publish(topic string, msgs ...*message.Message) error {
	if !p.failed {
		p.failed = true
		fmt.Println("publish of the produced messages failed")
		return fmt.Errorf("broker unavailable")
	}
	return p.Publisher.Publish(topic, msgs...)
}

// The router fails to publish a handler's produced message: the redelivery
// is a duplicate, the handler does not run again, and the middleware
// returns the recorded message, which the router publishes under the same
// UUID.
func ExampleMiddleware_producedMessages() {
	ledger, _ := idem.New(memstore.New(nil), nil)
	mw, err := idemwatermill.Middleware(ledger, nil)
	if err != nil {
		panic(err)
	}
	pubSub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, wm.NopLogger{})
	router, _ := message.NewRouter(message.RouterConfig{}, wm.NopLogger{})
	router.AddHandler("ship", "orders", pubSub, "shipments", &failFirst{Publisher: pubSub}, func(msg *message.Message) ([]*message.Message, error) {
		fmt.Printf("shipping %s\n", msg.Payload)
		return []*message.Message{message.NewMessage(wm.NewUUID(), []byte("shipment of "+string(msg.Payload)))}, nil
	}).AddMiddleware(mw)
	var uuids []string
	router.AddConsumerHandler("track", "shipments", pubSub, func(msg *message.Message) error {
		uuids = append(uuids, msg.UUID)
		fmt.Printf("tracking %s\n", msg.Payload)
		return nil
	}).AddMiddleware(mw) // dedups by UUID too
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = router.Run(ctx); close(done) }()
	<-router.Running()

	_ = pubSub.Publish("orders", message.NewMessage("order-1", []byte("order 1")))
	_ = pubSub.Publish("orders", message.NewMessage("order-1", []byte("order 1"))) // a duplicate: republished, dropped downstream
	fmt.Println("shipments tracked:", len(uuids))

	cancel()
	<-done
	// Output:
	// shipping order 1
	// publish of the produced messages failed
	// tracking shipment of order 1
	// shipments tracked: 1
}

// The one-line switch for users of Watermill's Deduplicator: its keys in
// any idem store instead of one process's memory (its semantics stay).
func ExampleKeyRepository() {
	ledger, _ := idem.New(memstore.New(nil), nil)

	// repo, err := middleware.NewMapExpiringKeyRepository(time.Minute)
	repo, err := idemwatermill.KeyRepository(ledger, "dedup", 24*time.Hour)
	if err != nil {
		panic(err)
	}
	dedup := &middleware.Deduplicator{Repository: repo}
	_ = dedup.Middleware // router.AddMiddleware(dedup.Middleware)

	first, _ := repo.IsDuplicate(context.Background(), "key-1")
	again, _ := repo.IsDuplicate(context.Background(), "key-1")
	fmt.Println(first, again)
	// Output: false true
}
