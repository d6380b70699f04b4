package watermill_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/idemkit/idem"
	idemwatermill "github.com/idemkit/idem/broker/watermill"
	"github.com/idemkit/idem/messaging"
)

// flakyPublisher fails its first Publish: before sending anything
// (refused), or after the broker got the messages (its ack lost).
type flakyPublisher struct {
	next     message.Publisher
	sendLost bool // send, then fail
	mu       sync.Mutex
	calls    int
}

var errPublish = errors.New("publish failed")

func (p *flakyPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	p.calls++
	first := p.calls == 1
	p.mu.Unlock()
	if !first {
		return p.next.Publish(topic, msgs...)
	}
	if p.sendLost {
		if err := p.next.Publish(topic, msgs...); err != nil {
			return err
		}
	}
	return errPublish
}

func (*flakyPublisher) Close() error { return nil }

// delivery is one produced message as a downstream handler saw it.
type delivery struct {
	uuid, payload, order string
}

// chain is two routers' worth of handlers over one gochannel pub/sub:
// "orders" (idem middleware) reads "in" and produces two messages per order
// to "out" through pub; "ship" (idem middleware, same ledger) applies
// what arrives on "out", and "tap" (no middleware) sees every delivery on
// "out".
type chain struct {
	pubSub  *gochannel.GoChannel
	ledger  *idem.Ledger
	mu      sync.Mutex
	calls   int        // "orders" handler calls
	shipped []delivery // applied by "ship"
	tapped  []delivery // every delivery on "out"
}

func newChain(t *testing.T, pub func(*gochannel.GoChannel) message.Publisher) *chain {
	t.Helper()
	c := &chain{}
	var router *message.Router
	c.pubSub, router = newRouter(t)
	c.ledger = newLedger(t)
	mw := newMiddleware(t, c.ledger, nil)
	orders := router.AddHandler("orders", "in", c.pubSub, "out", pub(c.pubSub), func(msg *message.Message) ([]*message.Message, error) {
		c.mu.Lock()
		c.calls++
		c.mu.Unlock()
		out := make([]*message.Message, 2)
		for i := range out {
			// Bytes that are not UTF-8 come back as they were.
			out[i] = message.NewMessage(fmt.Sprintf("%s-%d", msg.UUID, i), append([]byte{0xff, byte(i)}, msg.Payload...))
			out[i].Metadata.Set("order", string(msg.Payload))
		}
		return out, nil
	})
	orders.AddMiddleware(mw)
	see := func(into *[]delivery) func(*message.Message) error {
		return func(m *message.Message) error {
			c.mu.Lock()
			*into = append(*into, delivery{m.UUID, string(m.Payload), m.Metadata.Get("order")})
			c.mu.Unlock()
			return nil
		}
	}
	router.AddConsumerHandler("ship", "out", c.pubSub, see(&c.shipped)).AddMiddleware(mw)
	router.AddConsumerHandler("tap", "out", c.pubSub, see(&c.tapped))
	runRouter(t, router, c.pubSub)
	return c
}

// publish sends an order to "in" and returns once the router acked it:
// nacks, redeliveries and the publishes to "out" (each acked by "ship"
// and "tap") included.
func (c *chain) publish(t *testing.T, uuid, payload string) {
	t.Helper()
	publishIn(t, c.pubSub, uuid, payload)
}

func (c *chain) snapshot() (calls int, shipped, tapped []delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls, append([]delivery(nil), c.shipped...), append([]delivery(nil), c.tapped...)
}

// produced is what the "orders" handler produces for one order.
func produced(uuid, payload string) []delivery {
	return []delivery{
		{uuid + "-0", "\xff\x00" + payload, payload},
		{uuid + "-1", "\xff\x01" + payload, payload},
	}
}

// The router's publish of the produced messages fails after the outcome
// was recorded: the router nacks, the redelivery is a duplicate, and the
// middleware returns the recorded messages, which the router publishes
// with the same UUIDs. Downstream, the idem middleware on "ship" applies
// each once; "tap" sees every publish that reached the broker.
func TestProducedMessagesSurviveAFailedPublish(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sendLost bool
		taps     int // deliveries on "out" of each produced message
	}{
		{"publish refused", false, 1},
		{"publish sent, its ack lost", true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var flaky *flakyPublisher
			c := newChain(t, func(ps *gochannel.GoChannel) message.Publisher {
				flaky = &flakyPublisher{next: ps, sendLost: tc.sendLost}
				return flaky
			})
			c.publish(t, "m1", "order-1")

			calls, shipped, tapped := c.snapshot()
			want := produced("m1", "order-1")
			if calls != 1 {
				t.Fatalf("orders handler ran %d times, want 1 (the redelivery is a duplicate)", calls)
			}
			if !equal(shipped, want) {
				t.Fatalf("shipped = %q, want %q: each produced message once, same UUID, payload and metadata", shipped, want)
			}
			var wantTapped []delivery
			for range tc.taps {
				wantTapped = append(wantTapped, want...)
			}
			if !equal(tapped, wantTapped) {
				t.Fatalf("deliveries on out = %q, want %q", tapped, wantTapped)
			}
			flaky.mu.Lock()
			defer flaky.mu.Unlock()
			if flaky.calls != 2 {
				t.Fatalf("router published %d times, want 2 (the failure, then the duplicate's)", flaky.calls)
			}
		})
	}
}

// A plain duplicate (the broker redelivers a message that was acked)
// returns the recorded produced messages again: the router republishes them
// unchanged, and the downstream dedup drops them.
func TestDuplicateRepublishesProducedMessages(t *testing.T) {
	c := newChain(t, func(ps *gochannel.GoChannel) message.Publisher { return ps })
	c.publish(t, "m1", "order-1")
	c.publish(t, "m1", "order-1")
	c.publish(t, "m2", "order-2")
	calls, shipped, tapped := c.snapshot()
	m1, m2 := produced("m1", "order-1"), produced("m2", "order-2")
	if calls != 2 {
		t.Fatalf("orders handler ran %d times, want 2", calls)
	}
	if want := append(append([]delivery(nil), m1...), m2...); !equal(shipped, want) {
		t.Fatalf("shipped = %q, want %q", shipped, want)
	}
	if want := append(append(append([]delivery(nil), m1...), m1...), m2...); !equal(tapped, want) {
		t.Fatalf("deliveries on out = %q, want %q", tapped, want)
	}
}

// A recorded result this version cannot read (a newer encoding) is an
// error wrapping idem.ErrInvalid, so the router nacks instead of dropping
// what the first run produced.
func TestUnreadableProducedMessagesAreAnError(t *testing.T) {
	ledger := newLedger(t)
	mw := newMiddleware(t, ledger, nil)
	ctx := context.Background()
	msg := message.NewMessage("m1", []byte("order-1"))
	claim, err := ledger.Begin(ctx, "messages", "m1", messaging.PayloadFingerprint(idemwatermill.FromWatermill(msg)))
	if err != nil {
		t.Fatal(err)
	}
	if err := claim.Complete(ctx, idem.Outcome{Data: []byte{99, 0}, Meta: map[string]string{"messaging": "handled"}}); err != nil {
		t.Fatal(err)
	}
	h := mw(func(*message.Message) ([]*message.Message, error) { t.Fatal("handler ran"); return nil, nil })
	out, err := h(msg)
	if !errors.Is(err, idem.ErrInvalid) || out != nil {
		t.Fatalf("duplicate with an unknown encoding: %v, %v; want an error wrapping idem.ErrInvalid", out, err)
	}
}

// Produced messages over Config.MaxResult once encoded dead-letter the
// message: the handler's error wraps idem.ErrInvalid, nothing is returned
// for the router to publish, and a duplicate returns nothing either.
func TestProducedMessagesOverMaxResultDeadLetter(t *testing.T) {
	ledger := newLedger(t)
	var dead []error
	mw := newMiddleware(t, ledger, &idemwatermill.Config{Config: messaging.Config{
		MaxResult: 64,
		DeadLetter: func(_ context.Context, _ *messaging.Message, _ []messaging.Attempt, err error) error {
			dead = append(dead, err)
			return nil
		},
	}})
	calls := 0
	h := mw(func(msg *message.Message) ([]*message.Message, error) {
		calls++
		return []*message.Message{message.NewMessage("p-"+msg.UUID, make([]byte, 100))}, nil
	})
	for range 2 {
		out, err := h(message.NewMessage("m1", []byte("order-1")))
		if err != nil || out != nil {
			t.Fatalf("middleware returned %v, %v; want no messages and nil (dead-lettered, acked)", out, err)
		}
	}
	if calls != 1 || len(dead) != 1 || !errors.Is(dead[0], idem.ErrInvalid) {
		t.Fatalf("%d handler calls, dead letters %v; want 1 call and one ErrInvalid", calls, dead)
	}
}
