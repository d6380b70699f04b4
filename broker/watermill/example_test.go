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
