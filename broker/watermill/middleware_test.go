package watermill_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
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

// rig is a real Watermill router over the in-memory gochannel pub/sub,
// with one handler "orders" reading topic "in" and publishing its produced
// messages to topic "out". Publish blocks until the router acked the
// message (BlockPublishUntilSubscriberAck), nacks included: gochannel
// redelivers a nacked message at once, so a Publish that returned means the
// message was finally acked, and every handler call for it has happened.
type rig struct {
	pubSub *gochannel.GoChannel
	mu     sync.Mutex
	out    []string // payloads published to "out", in order
	outIDs []string // their UUIDs
	poison []string // payloads published to "poison"
}

// newRouter returns the in-memory gochannel pub/sub, its Publish blocking
// until the subscriber acked (BlockPublishUntilSubscriberAck), and a
// router to add handlers on it to; runRouter runs the router.
func newRouter(t *testing.T) (*gochannel.GoChannel, *message.Router) {
	t.Helper()
	logger := wm.NopLogger{}
	pubSub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, logger)
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	return pubSub, router
}

// runRouter runs router until t ends, when it stops it, checks that Run
// returned no error, and closes pubSub.
func runRouter(t *testing.T, router *message.Router, pubSub *gochannel.GoChannel) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- router.Run(ctx) }()
	<-router.Running()
	t.Cleanup(func() {
		cancel()
		_ = router.Close()
		if err := <-done; err != nil {
			t.Errorf("router.Run: %v", err)
		}
		_ = pubSub.Close()
	})
}

// publishIn sends a message with the given UUID and payload to "in" and
// returns once the router acked it.
func publishIn(t *testing.T, pubSub *gochannel.GoChannel, uuid, payload string) {
	t.Helper()
	if err := pubSub.Publish("in", message.NewMessage(uuid, []byte(payload))); err != nil {
		t.Fatalf("publish %s: %v", uuid, err)
	}
}

func newRig(t *testing.T, h message.HandlerFunc, mws ...message.HandlerMiddleware) *rig {
	t.Helper()
	r := &rig{}
	var router *message.Router
	r.pubSub, router = newRouter(t)
	handler := router.AddHandler("orders", "in", r.pubSub, "out", r.pubSub, h)
	handler.AddMiddleware(mws...)
	collect := func(topic string, into *[]string) {
		router.AddConsumerHandler("collect-"+topic, topic, r.pubSub, func(m *message.Message) error {
			r.mu.Lock()
			*into = append(*into, string(m.Payload))
			if topic == "out" {
				r.outIDs = append(r.outIDs, m.UUID)
			}
			r.mu.Unlock()
			return nil
		})
	}
	collect("out", &r.out)
	collect("poison", &r.poison)
	runRouter(t, router, r.pubSub)
	return r
}

// publish sends a message with the given UUID and payload to "in" and
// returns once the router acked it.
func (r *rig) publish(t *testing.T, uuid, payload string) {
	t.Helper()
	publishIn(t, r.pubSub, uuid, payload)
}

func (r *rig) published() (out, poison []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.out...), append([]string(nil), r.poison...)
}

// handlerLog records every handler call and every applied effect.
type handlerLog struct {
	mu      sync.Mutex
	calls   []string // "uuid:payload" per call
	applied []string // per successful call
	keys    []string // the dedup key the handler found in its context
	fail    map[string]int
}

// handler fails the first fail[uuid] calls of a message, then applies it
// and produces one message "produced:<payload>".
func (l *handlerLog) handler(msg *message.Message) ([]*message.Message, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, msg.UUID+":"+string(msg.Payload))
	key, _ := idem.KeyFrom(msg.Context())
	l.keys = append(l.keys, key)
	out := []*message.Message{message.NewMessage("p-"+msg.UUID, []byte("produced:"+string(msg.Payload)))}
	if l.fail[msg.UUID] > 0 {
		l.fail[msg.UUID]--
		return out, errors.New("transient failure")
	}
	l.applied = append(l.applied, msg.UUID)
	return out, nil
}

func (l *handlerLog) snapshot() (calls, applied, keys []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.calls...), append([]string(nil), l.applied...), append([]string(nil), l.keys...)
}

func newLedger(t *testing.T) *idem.Ledger {
	t.Helper()
	ledger, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	return ledger
}

func newMiddleware(t *testing.T, ledger *idem.Ledger, cfg *idemwatermill.Config) message.HandlerMiddleware {
	t.Helper()
	mw, err := idemwatermill.Middleware(ledger, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return mw
}

// equal reports whether a and b hold the same elements in the same order.
func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMiddlewareDuplicateHandledOnce(t *testing.T) {
	ledger := newLedger(t)
	log := &handlerLog{}
	r := newRig(t, log.handler, newMiddleware(t, ledger, nil))

	r.publish(t, "m1", "order-1")
	r.publish(t, "m1", "order-1") // the broker's redelivery of a handled message
	r.publish(t, "m2", "order-2")

	calls, applied, keys := log.snapshot()
	if want := []string{"m1:order-1", "m2:order-2"}; !equal(calls, want) {
		t.Fatalf("handler calls = %q, want %q (the duplicate must not run)", calls, want)
	}
	if want := []string{"m1", "m2"}; !equal(applied, want) || !equal(keys, want) {
		t.Fatalf("applied %q with keys %q, want %q", applied, keys, want)
	}
	// The duplicate returns the produced messages the first run recorded:
	// the router publishes them again, under the same UUID.
	out, _ := r.published()
	if want := []string{"produced:order-1", "produced:order-1", "produced:order-2"}; !equal(out, want) {
		t.Fatalf("produced messages = %q, want %q (the duplicate's again)", out, want)
	}
	r.mu.Lock()
	ids := append([]string(nil), r.outIDs...)
	r.mu.Unlock()
	if want := []string{"p-m1", "p-m1", "p-m2"}; !equal(ids, want) {
		t.Fatalf("produced UUIDs = %q, want %q", ids, want)
	}
	// The key is recorded in Scope + "/" + handler name, as handled, with
	// the produced messages as its data.
	rec, err := ledger.Get(context.Background(), "messages/orders", "m1")
	if err != nil || rec.State != idem.StateCompleted || rec.Outcome == nil || rec.Outcome.Meta["messaging"] != "handled" || len(rec.Outcome.Data) == 0 {
		t.Fatalf("record of m1 = %+v, %v; want completed as handled, with data", rec, err)
	}
}

// The claim, proven: a handler that fails once and then succeeds.
// Under the idem middleware the redelivery is handled; under Watermill's
// own Deduplicator (its in-memory repository, or ours swapped in: the same
// record-before-handler semantics) the redelivery is acked as a duplicate
// and the message is lost.
func TestFailedMessageRedeliveryIsHandled(t *testing.T) {
	run := func(t *testing.T, mw message.HandlerMiddleware) (calls, applied, out []string) {
		log := &handlerLog{fail: map[string]int{"m1": 1}}
		r := newRig(t, log.handler, mw)
		r.publish(t, "m1", "order-1")
		calls, applied, _ = log.snapshot()
		out, _ = r.published()
		return calls, applied, out
	}

	t.Run("idem middleware handles the redelivery", func(t *testing.T) {
		ledger := newLedger(t)
		calls, applied, out := run(t, newMiddleware(t, ledger, nil))
		if want := []string{"m1:order-1", "m1:order-1"}; !equal(calls, want) {
			t.Fatalf("handler calls = %q, want %q", calls, want)
		}
		if !equal(applied, []string{"m1"}) {
			t.Fatalf("applied = %q, want m1 once", applied)
		}
		// The failed call's produced message was not published; the
		// successful one's was, once.
		if want := []string{"produced:order-1"}; !equal(out, want) {
			t.Fatalf("produced messages = %q, want %q", out, want)
		}
		c, err := messaging.NewConsumer(ledger, func(context.Context, *messaging.Message) error { return nil },
			&messaging.Config{Scope: "messages/orders"})
		if err != nil {
			t.Fatal(err)
		}
		attempts, err := c.Attempts(context.Background(), "m1", 1)
		if err != nil || len(attempts) != 1 || attempts[0].Error != "transient failure" || attempts[0].At.IsZero() {
			t.Fatalf("recorded attempts = %+v, %v; want the one transient failure", attempts, err)
		}
	})

	watermillLoses := func(t *testing.T, repo middleware.ExpiringKeyRepository) {
		dedup := &middleware.Deduplicator{Repository: repo}
		calls, applied, out := run(t, dedup.Middleware)
		// The first call failed and the router nacked; the redelivery was
		// found in the repository and acked without running the handler.
		if want := []string{"m1:order-1"}; !equal(calls, want) {
			t.Fatalf("handler calls = %q, want %q", calls, want)
		}
		if len(applied) != 0 || len(out) != 0 {
			t.Fatalf("applied %q, produced %q: want the message lost (nothing applied)", applied, out)
		}
	}
	t.Run("watermill deduplicator drops the redelivery", func(t *testing.T) {
		repo, err := middleware.NewMapExpiringKeyRepository(time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		watermillLoses(t, repo)
	})
	t.Run("watermill deduplicator on KeyRepository drops it too", func(t *testing.T) {
		repo, err := idemwatermill.KeyRepository(newLedger(t), "dedup", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		watermillLoses(t, repo)
	})
}

func TestMiddlewareDeadLetter(t *testing.T) {
	type dead struct {
		id       string
		attempts int
		err      string
	}
	var mu sync.Mutex
	var got []dead
	cfg := &idemwatermill.Config{Config: messaging.Config{
		MaxAttempts: 2,
		DeadLetter: func(_ context.Context, m *messaging.Message, attempts []messaging.Attempt, err error) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, dead{m.ID, len(attempts), err.Error()})
			return nil
		},
	}}

	t.Run("acked after the hook", func(t *testing.T) {
		got = nil
		log := &handlerLog{fail: map[string]int{"m1": 100}}
		r := newRig(t, log.handler, newMiddleware(t, newLedger(t), cfg))
		r.publish(t, "m1", "order-1")
		r.publish(t, "m1", "order-1") // a duplicate of a dead-lettered message
		calls, applied, _ := log.snapshot()
		if len(calls) != 2 || len(applied) != 0 {
			t.Fatalf("calls %q applied %q, want 2 failed calls", calls, applied)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(got) != 1 || got[0] != (dead{"m1", 2, "transient failure"}) {
			t.Fatalf("dead letters = %+v, want m1 once with 2 attempts", got)
		}
		if out, poison := r.published(); len(out) != 0 || len(poison) != 0 {
			t.Fatalf("out %q poison %q, want nothing published", out, poison)
		}
	})

	t.Run("to Watermill's poison queue", func(t *testing.T) {
		got = nil
		pcfg := *cfg
		pcfg.DeadLetterError = true
		log := &handlerLog{fail: map[string]int{"m1": 100, "m2": 100}}
		var r *rig
		pub := publisherFunc(func(topic string, msgs ...*message.Message) error { return r.pubSub.Publish(topic, msgs...) })
		poison, err := middleware.PoisonQueueWithFilter(pub, "poison", idemwatermill.IsDeadLettered)
		if err != nil {
			t.Fatal(err)
		}
		r = newRig(t, log.handler, poison, newMiddleware(t, newLedger(t), &pcfg))
		r.publish(t, "m1", "order-1")
		r.publish(t, "m2", "order-2")
		calls, _, _ := log.snapshot()
		if want := []string{"m1:order-1", "m1:order-1", "m2:order-2", "m2:order-2"}; !equal(calls, want) {
			t.Fatalf("handler calls = %q, want %q", calls, want)
		}
		if _, p := r.published(); !equal(p, []string{"order-1", "order-2"}) {
			t.Fatalf("poison topic = %q, want both messages once", p)
		}
	})
}

type publisherFunc func(topic string, msgs ...*message.Message) error

func (f publisherFunc) Publish(topic string, msgs ...*message.Message) error {
	return f(topic, msgs...)
}
func (publisherFunc) Close() error { return nil }

// Watermill's Retry middleware outside the idem middleware retries in
// process: each retry is a new attempt of the consumer; the router acks
// once the handler succeeded.
func TestMiddlewareUnderRetryMiddleware(t *testing.T) {
	ledger := newLedger(t)
	log := &handlerLog{fail: map[string]int{"m1": 2}}
	retry := middleware.Retry{MaxRetries: 3, ShouldRetry: func(p middleware.RetryParams) bool { return !idemwatermill.IsDeadLettered(p.Err) }}
	r := newRig(t, log.handler, retry.Middleware, newMiddleware(t, ledger, nil))
	r.publish(t, "m1", "order-1")
	calls, applied, _ := log.snapshot()
	if len(calls) != 3 || !equal(applied, []string{"m1"}) {
		t.Fatalf("calls %q applied %q, want 3 calls and m1 applied once", calls, applied)
	}
	rec, err := ledger.Get(context.Background(), "messages/orders", "m1")
	if err != nil || rec.State != idem.StateCompleted || rec.Attempts != 3 {
		t.Fatalf("record = %+v, %v; want completed at attempt 3", rec, err)
	}
}

// A Retry's error says what was decided and unwraps to the handler's error.
func TestDecisionError(t *testing.T) {
	ledger := newLedger(t)
	boom := errors.New("boom")
	mw := newMiddleware(t, ledger, nil)
	h := mw(func(*message.Message) ([]*message.Message, error) { return nil, boom })
	_, err := h(message.NewMessage("m1", []byte("x")))
	var de *idemwatermill.DecisionError
	if !errors.As(err, &de) || de.Decision.Action != messaging.Retry || de.Decision.Key != "m1" || de.Decision.Delay != time.Second {
		t.Fatalf("err = %v, want a Retry DecisionError for m1 after 1s", err)
	}
	if !errors.Is(err, boom) || idemwatermill.IsDeadLettered(err) {
		t.Fatalf("err = %v: want it to wrap the handler's error and not be a dead letter", err)
	}
	if got, want := err.Error(), `idem watermill: retry key "m1" after 1s: boom`; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	// Outside a router there is no handler name: the keys are in Scope.
	if rec, err := ledger.Get(context.Background(), "messages/attempts", "m1#1"); err != nil || rec.State != idem.StateCompleted {
		t.Fatalf("attempt record = %+v, %v", rec, err)
	}
}

func TestMiddlewareInvalidConfig(t *testing.T) {
	if _, err := idemwatermill.Middleware(nil, nil); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("nil ledger: err = %v, want idem.ErrInvalid", err)
	}
	_, err := idemwatermill.Middleware(newLedger(t), &idemwatermill.Config{Config: messaging.Config{MaxAttempts: -1}})
	if !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("MaxAttempts -1: err = %v, want idem.ErrInvalid", err)
	}
}

// WaitRetryDelay holds a Retry's error back for Decision.Delay, by the
// ledger's clock, so that a subscriber that redelivers at once does not
// spin.
func TestMiddlewareWaitRetryDelay(t *testing.T) {
	clock := idem.NewManualClock(epoch)
	ledger, err := idem.New(memstore.New(&memstore.Config{Clock: clock}), &idem.Config{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	mw := newMiddleware(t, ledger, &idemwatermill.Config{WaitRetryDelay: true})
	h := mw(func(*message.Message) ([]*message.Message, error) { return nil, errors.New("boom") })
	done := make(chan error, 1)
	go func() {
		_, err := h(message.NewMessage("m1", []byte("x")))
		done <- err
	}()
	// Move the clock on in steps while something waits on it, until the
	// call returns: it must not return before a second has passed.

wait:
	for {
		select {
		case err = <-done:
			break wait
		default:
		}
		if clock.Waiters() > 0 {
			clock.Advance(100 * time.Millisecond)
		} else {
			runtime.Gosched()
		}
	}
	if waited := clock.Now().Sub(epoch); waited < time.Second {
		t.Fatalf("returned after %s on the clock, want the 1s delay", waited)
	}
	var de *idemwatermill.DecisionError
	if !errors.As(err, &de) || de.Decision.Action != messaging.Retry || de.Decision.Delay != time.Second {
		t.Fatalf("err = %v, want the Retry after 1s", err)
	}
}

// Config.Key reads a business key from the metadata: a producer's resend
// under a new UUID is a duplicate.
func TestMiddlewareBusinessKey(t *testing.T) {
	ledger := newLedger(t)
	log := &handlerLog{}
	mw := newMiddleware(t, ledger, &idemwatermill.Config{Config: messaging.Config{
		Key: func(m *messaging.Message) string { return "order:" + m.Headers["order_id"] },
	}})
	r := newRig(t, log.handler, mw)
	for _, uuid := range []string{"u1", "u2"} { // one order, two UUIDs
		m := message.NewMessage(uuid, []byte("order-7"))
		m.Metadata.Set("order_id", "7")
		if err := r.pubSub.Publish("in", m); err != nil {
			t.Fatal(err)
		}
	}
	calls, _, keys := log.snapshot()
	if !equal(calls, []string{"u1:order-7"}) || !equal(keys, []string{"order:7"}) {
		t.Fatalf("calls %q keys %q, want u1 once under order:7", calls, keys)
	}
}

func TestFromWatermill(t *testing.T) {
	msg := message.NewMessage("u1", []byte("body"))
	msg.Metadata.Set("a", "1")
	m := idemwatermill.FromWatermill(msg)
	if m.ID != "u1" || string(m.Payload) != "body" || m.Headers["a"] != "1" || len(m.Headers) != 1 || m.Delivery != 0 || m.Subject != "" {
		t.Fatalf("FromWatermill = %+v", m)
	}
	m.Headers["a"] = "2" // a copy: the Watermill message is untouched
	if msg.Metadata.Get("a") != "1" {
		t.Fatal("FromWatermill shares the metadata map")
	}
}
