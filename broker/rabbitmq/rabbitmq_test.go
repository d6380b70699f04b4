package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
	amqp "github.com/rabbitmq/amqp091-go"
)

// dial connects to the test RabbitMQ (skipping, or failing under
// IDEM_REQUIRE_SERVICES=1, when it does not answer) and closes the
// connection when t ends.
func dial(t testing.TB) *amqp.Connection {
	t.Helper()
	url := servicetest.RabbitMQ.Need(t)
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func channel(t testing.TB, conn *amqp.Connection) *amqp.Channel {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	return ch
}

var queueSeq atomic.Int64

// freshQueue declares a queue of the test's own (a quorum queue unless
// opts says otherwise) and deletes it, and its dead-letter queue, when t
// ends.
func freshQueue(t testing.TB, conn *amqp.Connection, opts *QueueOptions) string {
	t.Helper()
	name := fmt.Sprintf("idem-test-%d-%d", time.Now().UnixNano()%1e9, queueSeq.Add(1))
	var o QueueOptions
	if opts != nil {
		o = *opts
	}
	if o.DeadLetterQueue != "" {
		o.DeadLetterQueue = name + "." + o.DeadLetterQueue
	}
	ch := channel(t, conn)
	if err := DeclareQueue(ch, name, &o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A fresh channel: the test's may be closed by now.
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("delete queue %s: %v", name, err)
			return
		}
		defer ch.Close()
		for _, q := range []string{name, o.DeadLetterQueue} {
			if q == "" {
				continue
			}
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				t.Errorf("delete queue %s: %v", q, err)
			}
		}
	})
	return name
}

func ledger(t testing.TB, lease time.Duration) *idem.Ledger {
	t.Helper()
	l, err := idem.New(memstore.New(nil), &idem.Config{Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// nopConsumer returns a messaging.Consumer, over a ledger of its own,
// whose handler does nothing.
func nopConsumer(t testing.TB) *messaging.Consumer {
	t.Helper()
	c, err := messaging.NewConsumer(ledger(t, 0), func(context.Context, *messaging.Message) error { return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func publish(t testing.TB, conn *amqp.Connection, queue string, msgs ...*messaging.Message) {
	t.Helper()
	p, err := NewPublisher(channel(t, conn))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range msgs {
		m.Subject = queue
		if err := p.Publish(ctx, "", m); err != nil {
			t.Fatal(err)
		}
	}
}

// depth is the number of ready messages in queue.
// dialQueue dials the test broker (the test skips without one) and
// declares a fresh queue with opts on the connection.
func dialQueue(t testing.TB, opts *QueueOptions) (*amqp.Connection, string) {
	t.Helper()
	conn := dial(t)
	return conn, freshQueue(t, conn, opts)
}

// wantEmpty fails the test unless queue holds no message; why, if not
// empty, says why it should be empty.
func wantEmpty(t testing.TB, conn *amqp.Connection, queue, why string) {
	t.Helper()
	if n := depth(t, conn, queue); n != 0 {
		if why != "" {
			why = " (" + why + ")"
		}
		t.Errorf("%d messages left in %s, want 0%s", n, queue, why)
	}
}

func depth(t testing.TB, conn *amqp.Connection, queue string) int {
	t.Helper()
	ch := channel(t, conn)
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect %s: %v", queue, err)
	}
	return q.Messages
}

type settled struct {
	m   *messaging.Message
	d   messaging.Decision
	err error
}

// consumer runs Consume on a channel of its own in a goroutine until t
// ends (or stop is called) and sends every settled delivery to the
// returned channel.
type consumer struct {
	settled chan settled
	stop    func() error
}

func startConsumer(t testing.TB, conn *amqp.Connection, queue string, c *messaging.Consumer, opts *Options) *consumer {
	t.Helper()
	return startConsumerTo(t, conn, queue, c, opts, make(chan settled, 1024))
}

// startConsumerTo is startConsumer sending to to.
func startConsumerTo(t testing.TB, conn *amqp.Connection, queue string, c *messaging.Consumer, opts *Options, to chan settled) *consumer {
	t.Helper()
	var o Options
	if opts != nil {
		o = *opts
	}
	out := &consumer{settled: to}
	o.OnDecision = func(m *messaging.Message, d messaging.Decision, err error) { out.settled <- settled{m, d, err} }
	ch := channel(t, conn)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Consume(ctx, ch, queue, c, &o) }()
	var once sync.Once
	var err error
	out.stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() { _ = out.stop() })
	return out
}

// next returns the next settled delivery, failing t after 20 s.
func (c *consumer) next(t testing.TB) settled {
	t.Helper()
	select {
	case s := <-c.settled:
		if s.err != nil {
			t.Fatalf("settling %q (%s): %v", s.m.ID, s.d.Action, s.err)
		}
		return s
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery settled within 20 s")
	}
	return settled{}
}

func TestAckOnSuccess(t *testing.T) {
	t.Parallel()
	conn, q := dialQueue(t, nil)
	var got []*messaging.Message
	var mu sync.Mutex
	c, err := messaging.NewConsumer(ledger(t, 0), func(ctx context.Context, m *messaging.Message) error {
		d, ok := DeliveryFrom(ctx)
		if !ok || d.MessageId != m.ID {
			return messaging.Permanent(errors.New("no delivery in the handler's context"))
		}
		if d.DeliveryMode != amqp.Persistent {
			return messaging.Permanent(fmt.Errorf("delivery mode %d, want persistent", d.DeliveryMode))
		}
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, conn, q, &messaging.Message{ID: "m-1", Payload: []byte("one"), Headers: map[string]string{"tenant": "acme"}})
	cons := startConsumer(t, conn, q, c, nil)
	s := cons.next(t)
	if s.d.Action != messaging.Ack || s.d.Key != "m-1" {
		t.Fatalf("decision %+v, want ack of key m-1", s.d)
	}
	if err := cons.stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Consume returned %v, want context.Canceled", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("handler ran %d times, want 1", len(got))
	}
	m := got[0]
	if m.ID != "m-1" || string(m.Payload) != "one" || m.Subject != q || m.Delivery != 1 || m.Headers["tenant"] != "acme" {
		t.Errorf("handler got %+v, want ID m-1, payload one, subject %s, delivery 1, header tenant=acme", m, q)
	}
	wantEmpty(t, conn, q, "after the ack")
}

func TestDuplicateHandledOnce(t *testing.T) {
	t.Parallel()
	conn, q := dialQueue(t, nil)
	var runs atomic.Int64
	c, err := messaging.NewConsumer(ledger(t, 0), func(ctx context.Context, m *messaging.Message) error {
		runs.Add(1)
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, conn, q, &messaging.Message{ID: "dup", Payload: []byte("x")}, &messaging.Message{ID: "dup", Payload: []byte("x")})
	cons := startConsumer(t, conn, q, c, nil)
	a, b := cons.next(t), cons.next(t)
	if a.d.Action != messaging.Ack || b.d.Action != messaging.AckDuplicate {
		t.Fatalf("decisions %s, %s; want ack, ack-duplicate", a.d.Action, b.d.Action)
	}
	_ = cons.stop()
	if n := runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
	wantEmpty(t, conn, q, "the duplicate is acked")
}

func TestRetryRedelivers(t *testing.T) {
	t.Parallel()
	conn, q := dialQueue(t, nil)
	var deliveries []int
	var mu sync.Mutex
	c, err := messaging.NewConsumer(ledger(t, 0), func(ctx context.Context, m *messaging.Message) error {
		mu.Lock()
		defer mu.Unlock()
		deliveries = append(deliveries, m.Delivery)
		if len(deliveries) < 3 {
			return errors.New("downstream unavailable")
		}
		return nil
	}, &messaging.Config{Backoff: func(int) time.Duration { return 20 * time.Millisecond }})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, conn, q, &messaging.Message{ID: "flaky", Payload: []byte("x")})
	cons := startConsumer(t, conn, q, c, nil)
	var actions []messaging.Action
	for s := cons.next(t); ; s = cons.next(t) {
		actions = append(actions, s.d.Action)
		if s.d.Action != messaging.Retry {
			break
		}
		if s.d.Delay != 20*time.Millisecond {
			t.Errorf("retry delay %v, want the backoff's 20ms", s.d.Delay)
		}
	}
	_ = cons.stop()
	want := []messaging.Action{messaging.Retry, messaging.Retry, messaging.Ack}
	if fmt.Sprint(actions) != fmt.Sprint(want) {
		t.Errorf("decisions %v, want %v", actions, want)
	}
	mu.Lock()
	defer mu.Unlock()
	// The quorum queue counts the nacks in x-delivery-count.
	if fmt.Sprint(deliveries) != "[1 2 3]" {
		t.Errorf("the handler saw deliveries %v, want [1 2 3]", deliveries)
	}
	wantEmpty(t, conn, q, "")
}

func TestDeadLetter(t *testing.T) {
	t.Parallel()
	conn, q := dialQueue(t, &QueueOptions{DeadLetterQueue: "dead"})
	dlq := q + ".dead"
	var hooked []string
	var mu sync.Mutex
	c, err := messaging.NewConsumer(ledger(t, 0), func(ctx context.Context, m *messaging.Message) error {
		return messaging.Permanent(errors.New("malformed order"))
	}, &messaging.Config{DeadLetter: func(ctx context.Context, m *messaging.Message, attempts []messaging.Attempt, err error) error {
		mu.Lock()
		defer mu.Unlock()
		hooked = append(hooked, fmt.Sprintf("%s:%d:%v", m.ID, len(attempts), err))
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, conn, q, &messaging.Message{ID: "bad", Payload: []byte("x")})
	// No message-id, no Idempotency-Key header: no key.
	raw, err := channel(t, conn).PublishWithDeferredConfirmWithContext(context.Background(), "", q, false, false, amqp.Publishing{Body: []byte("anonymous")})
	if err != nil || raw != nil {
		t.Fatalf("publish without id: %v (%v)", err, raw)
	}
	cons := startConsumer(t, conn, q, c, nil)
	a, b := cons.next(t), cons.next(t)
	_ = cons.stop()
	if a.d.Action != messaging.DeadLetter || a.m.ID != "bad" || a.d.Err == nil || a.d.Err.Error() != "malformed order" {
		t.Errorf("first decision %+v for %q, want dead-letter with the handler's error", a.d, a.m.ID)
	}
	if b.d.Action != messaging.DeadLetter || b.m.ID != "" || !errors.Is(b.d.Err, idem.ErrInvalid) {
		t.Errorf("decision for the message without an id: %+v, want dead-letter wrapping idem.ErrInvalid", b.d)
	}
	mu.Lock()
	if len(hooked) != 2 || hooked[0] != "bad:1:malformed order" {
		t.Errorf("dead-letter hook got %q, want bad with 1 attempt, then the message without id", hooked)
	}
	mu.Unlock()
	wantEmpty(t, conn, q, "")
	// Both landed in the dead-letter queue, bodies intact.
	ch := channel(t, conn)
	var bodies []string
	for range 2 {
		d, ok, err := ch.Get(dlq, true)
		if err != nil || !ok {
			t.Fatalf("get from %s: ok=%v err=%v", dlq, ok, err)
		}
		bodies = append(bodies, d.MessageId+"="+string(d.Body))
	}
	if fmt.Sprint(bodies) != "[bad=x =anonymous]" {
		t.Errorf("dead-letter queue holds %v, want [bad=x =anonymous]", bodies)
	}
}

func TestIDHeader(t *testing.T) {
	t.Parallel()
	conn, q := dialQueue(t, &QueueOptions{Classic: true})
	c := nopConsumer(t)
	ch := channel(t, conn)
	for range 2 {
		if err := ch.PublishWithContext(context.Background(), "", q, false, false,
			amqp.Publishing{Body: []byte("x"), Headers: amqp.Table{"Idempotency-Key": "hdr-1"}}); err != nil {
			t.Fatal(err)
		}
	}
	cons := startConsumer(t, conn, q, c, nil)
	a, b := cons.next(t), cons.next(t)
	_ = cons.stop()
	if a.m.ID != "hdr-1" || a.d.Action != messaging.Ack || b.d.Action != messaging.AckDuplicate {
		t.Errorf("got %q %s then %s, want hdr-1 ack then ack-duplicate", a.m.ID, a.d.Action, b.d.Action)
	}
}

// Three consumers on three channels share a queue holding 100 messages,
// each published twice: every message is handled exactly once, every copy
// is acked, and the three consumers all take part.
func TestSeveralConsumers(t *testing.T) {
	t.Parallel()
	const n = 100
	conn, q := dialQueue(t, nil)
	l := ledger(t, 2*time.Second)
	var mu sync.Mutex
	runs := map[string]int{}
	var msgs []*messaging.Message
	for i := range n {
		msgs = append(msgs, &messaging.Message{ID: fmt.Sprintf("m-%03d", i), Payload: fmt.Appendf(nil, "body %d", i)})
	}
	for i := range n {
		msgs = append(msgs, &messaging.Message{ID: fmt.Sprintf("m-%03d", i), Payload: fmt.Appendf(nil, "body %d", i)})
	}
	publish(t, conn, q, msgs...)
	all := make(chan settled, 4*n)
	var conss []*consumer
	by := map[int]int{}
	for k := range 3 {
		c, err := messaging.NewConsumer(l, func(ctx context.Context, m *messaging.Message) error {
			mu.Lock()
			runs[m.ID]++
			by[k]++
			mu.Unlock()
			return nil
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		conss = append(conss, startConsumerTo(t, conn, q, c, &Options{Workers: 2, MaxRetryDelay: 100 * time.Millisecond}, all))
	}
	acts := map[messaging.Action]int{}
	deadline := time.After(30 * time.Second)
	for acts[messaging.Ack]+acts[messaging.AckDuplicate] < 2*n {
		select {
		case s := <-all:
			if s.err != nil {
				t.Fatalf("settling %q: %v", s.m.ID, s.err)
			}
			acts[s.d.Action]++
		case <-deadline:
			t.Fatalf("after 30 s: %v", acts)
		}
	}
	for _, c := range conss {
		_ = c.stop()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(runs) != n {
		t.Errorf("%d messages handled, want %d", len(runs), n)
	}
	for id, k := range runs {
		if k != 1 {
			t.Errorf("%s handled %d times, want 1", id, k)
		}
	}
	if acts[messaging.Ack] != n || acts[messaging.AckDuplicate] != n || acts[messaging.DeadLetter] != 0 {
		t.Errorf("decisions %v, want %d acks and %d duplicates", acts, n, n)
	}
	if len(by) != 3 {
		t.Errorf("handler runs by consumer %v: not all three took part", by)
	}
	if d := depth(t, conn, q); d != 0 {
		t.Errorf("%d messages left in the queue, want 0", d)
	}
	t.Logf("decisions %v; handler runs by consumer %v", acts, by)
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	c := nopConsumer(t)
	ctx := context.Background()
	for name, err := range map[string]error{
		"nil channel":      Consume(ctx, nil, "q", c, nil),
		"nil consumer":     Consume(ctx, nil, "q", nil, nil),
		"nil handle":       ConsumeFunc(ctx, nil, "q", nil, nil),
		"negative workers": Consume(ctx, nil, "q", c, &Options{Workers: -1}),
		"negative delay":   Consume(ctx, nil, "q", c, &Options{MaxRetryDelay: -time.Second}),
		"huge prefetch":    Consume(ctx, nil, "q", c, &Options{Prefetch: 1 << 16}),
		"nil publisher ch": func() error { _, err := NewPublisher(nil); return err }(),
		"publish no id":    (&Publisher{}).Publish(ctx, "", &messaging.Message{Payload: []byte("x")}),
		"publish nil":      (&Publisher{}).Publish(ctx, "", nil),
		"declare nil ch":   DeclareQueue(nil, "q", nil),
	} {
		if !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("%s: %v, want an error wrapping idem.ErrInvalid", name, err)
		}
	}
}

func TestDeliveryCount(t *testing.T) {
	for _, c := range []struct {
		d    amqp.Delivery
		want int
	}{
		{amqp.Delivery{}, 1},
		{amqp.Delivery{Redelivered: true}, 2},
		{amqp.Delivery{Headers: amqp.Table{"x-delivery-count": int64(3)}}, 4},
		{amqp.Delivery{Redelivered: true, Headers: amqp.Table{"x-delivery-count": int32(1)}}, 2},
		{amqp.Delivery{Headers: amqp.Table{"x-delivery-count": "7"}}, 1},
	} {
		if got := DeliveryCount(&c.d); got != c.want {
			t.Errorf("DeliveryCount(%+v) = %d, want %d", c.d, got, c.want)
		}
	}
	o, _ := (&Options{}).withDefaults()
	m := o.message(&amqp.Delivery{RoutingKey: "rk", Headers: amqp.Table{"s": "v", "b": []byte("raw"), "n": int32(5), "ok": true, "t": amqp.Table{"x": 1}}})
	want := map[string]string{"s": "v", "b": "raw", "n": "5", "ok": "true"}
	if fmt.Sprint(m.Headers) != fmt.Sprint(want) || m.Subject != "rk" || m.ID != "" {
		t.Errorf("message %+v, want headers %v (the table left out), subject rk, no id", m, want)
	}
}

// A delivery held for a long Retry delay goes back onto the queue as soon
// as Consume's ctx ends, and Consume returns ctx's error.
func TestStopDuringRetryWaitRequeues(t *testing.T) {
	t.Parallel()
	conn, q := dialQueue(t, nil)
	failed := make(chan struct{}, 1)
	c, err := messaging.NewConsumer(ledger(t, 0), func(ctx context.Context, m *messaging.Message) error {
		failed <- struct{}{}
		return errors.New("not yet")
	}, &messaging.Config{Backoff: func(int) time.Duration { return time.Hour }})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, conn, q, &messaging.Message{ID: "slow", Payload: []byte("x")})
	cons := startConsumer(t, conn, q, c, &Options{MaxRetryDelay: time.Hour})
	select {
	case <-failed:
	case <-time.After(20 * time.Second):
		t.Fatal("the handler did not run within 20 s")
	}
	stopped := time.Now()
	if err := cons.stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Consume returned %v, want context.Canceled", err)
	}
	s := cons.next(t)
	if s.d.Action != messaging.Retry || s.d.Delay != time.Hour {
		t.Errorf("decision %+v, want retry after 1h", s.d)
	}
	if d := time.Since(stopped); d > 10*time.Second {
		t.Errorf("Consume took %v to stop during a 1h retry wait", d)
	}
	// The nack requeued it: another consumer gets it at once. (It may
	// have come back to the stopping consumer before its cancel, which
	// nacked it again: a delivery count of 2 or 3.)
	// A quorum queue applies the requeue through its log: ask until the
	// message is there (or a deadline passes).
	ch := channel(t, conn)
	d, ok, err := ch.Get(q, true)
	for deadline := time.Now().Add(10 * time.Second); err == nil && !ok && time.Now().Before(deadline); {
		<-time.After(20 * time.Millisecond)
		d, ok, err = ch.Get(q, true)
	}
	if n := DeliveryCount(&d); err != nil || !ok || d.MessageId != "slow" || n < 2 || n > 3 {
		t.Errorf("get after the stop: ok=%v err=%v id=%q delivery %d; want slow, delivery 2 or 3", ok, err, d.MessageId, n)
	}
}

// Deleting the queue under a running Consume ends it with ErrClosed.
func TestQueueDeletedEndsConsume(t *testing.T) {
	t.Parallel()
	conn, q := dialQueue(t, &QueueOptions{Classic: true})
	c := nopConsumer(t)
	ch := channel(t, conn)
	done := make(chan error, 1)
	go func() { done <- Consume(context.Background(), ch, q, c, nil) }()
	publish(t, conn, q, &messaging.Message{ID: "one", Payload: []byte("x")})
	// Wait until the consumer is registered (the message consumed), then delete.
	for deadline := time.Now().Add(20 * time.Second); depth(t, conn, q) > 0; <-time.After(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the message was not consumed within 20 s")
		}
	}
	if _, err := channel(t, conn).QueueDelete(q, false, false, false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Consume returned %v, want ErrClosed", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Consume did not return within 20 s of the queue's deletion")
	}
}

// A quorum queue's x-delivery-limit counts every Retry nack: past it the
// broker dead-letters the message itself, before the consumer's
// MaxAttempts is reached (see QueueOptions.DeliveryLimit).
func TestDeliveryLimitDeadLetters(t *testing.T) {
	t.Parallel()
	conn, q := dialQueue(t, &QueueOptions{DeadLetterQueue: "dead", DeliveryLimit: 2})
	var runs atomic.Int64
	c, err := messaging.NewConsumer(ledger(t, 0), func(ctx context.Context, m *messaging.Message) error {
		runs.Add(1)
		return errors.New("always failing")
	}, &messaging.Config{MaxAttempts: 10, Backoff: func(int) time.Duration { return time.Millisecond }})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, conn, q, &messaging.Message{ID: "doomed", Payload: []byte("x")})
	cons := startConsumer(t, conn, q, c, nil)
	var deliveries []int
	for len(deliveries) < 3 {
		s := cons.next(t)
		if s.d.Action != messaging.Retry {
			t.Fatalf("decision %s, want retry", s.d.Action)
		}
		deliveries = append(deliveries, s.m.Delivery)
	}
	// The third nack passes the limit of 2 returns: the broker moves it.
	ch := channel(t, conn)
	for deadline := time.Now().Add(20 * time.Second); ; <-time.After(10 * time.Millisecond) {
		d, ok, err := ch.Get(q+".dead", true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if d.MessageId != "doomed" {
				t.Errorf("dead-letter queue holds %q, want doomed", d.MessageId)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the message did not reach the dead-letter queue within 20 s")
		}
	}
	_ = cons.stop()
	if fmt.Sprint(deliveries) != "[1 2 3]" || runs.Load() != 3 {
		t.Errorf("deliveries %v, %d handler runs; want [1 2 3] and 3 runs", deliveries, runs.Load())
	}
	wantEmpty(t, conn, q, "")
}

// ConsumeFunc drives a Guard in front of a Consumer: versions published
// out of order (3, 1, 2, then a stale 1 under a new id) are applied in
// order, the stale one acked as superseded.
func TestConsumeFuncGuard(t *testing.T) {
	t.Parallel()
	conn, q := dialQueue(t, nil)
	l := ledger(t, 0)
	var mu sync.Mutex
	var applied []string
	c, err := messaging.NewConsumer(l, func(ctx context.Context, m *messaging.Message) error {
		mu.Lock()
		defer mu.Unlock()
		applied = append(applied, m.Headers["version"])
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := messaging.NewGuard(l, &messaging.GuardConfig{GapRetry: 20 * time.Millisecond,
		Versioned: func(m *messaging.Message) (string, int64, bool) {
			v, err := strconv.ParseInt(m.Headers["version"], 10, 64)
			return m.Headers["entity"], v, err == nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*messaging.Message
	for _, v := range []string{"3", "1", "2", "1"} {
		msgs = append(msgs, &messaging.Message{ID: fmt.Sprintf("acct-v%s-%d", v, len(msgs)), Payload: []byte("balance v" + v),
			Headers: map[string]string{"entity": "acct", "version": v}})
	}
	publish(t, conn, q, msgs...)
	settledc := make(chan settled, 64)
	ch := channel(t, conn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- ConsumeFunc(ctx, ch, q, func(ctx context.Context, m *messaging.Message) messaging.Decision {
			return g.Handle(ctx, m, c.Handle)
		}, &Options{OnDecision: func(m *messaging.Message, d messaging.Decision, err error) { settledc <- settled{m, d, err} }})
	}()
	acts := map[string]messaging.Action{}
	for len(acts) < 4 || acts["acct-v3-0"] == messaging.Retry {
		select {
		case s := <-settledc:
			if s.err != nil {
				t.Fatal(s.err)
			}
			acts[s.m.ID] = s.d.Action
		case <-time.After(20 * time.Second):
			t.Fatalf("after 20 s: %v", acts)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("ConsumeFunc: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(applied) != "[1 2 3]" {
		t.Errorf("applied versions %v, want [1 2 3]", applied)
	}
	want := map[string]messaging.Action{"acct-v3-0": messaging.Ack, "acct-v1-1": messaging.Ack, "acct-v2-2": messaging.Ack, "acct-v1-3": messaging.AckSuperseded}
	if fmt.Sprint(acts) != fmt.Sprint(want) {
		t.Errorf("final decisions %v, want %v", acts, want)
	}
	wantEmpty(t, conn, q, "")
}

// Publish is safe for concurrent use: 8 goroutines publish 25 messages
// each on one Publisher; all 200 are confirmed and in the queue.
func TestPublishConcurrent(t *testing.T) {
	t.Parallel()
	conn, q := dialQueue(t, nil)
	p, err := NewPublisher(channel(t, conn))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				errs <- p.Publish(context.Background(), "", &messaging.Message{ID: fmt.Sprintf("g%d-%d", g, i), Subject: q, Payload: []byte("x")})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := depth(t, conn, q); n != 200 {
		t.Errorf("%d messages in the queue after 200 confirmed publishes, want 200", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Publish(ctx, "", &messaging.Message{ID: "late", Subject: q}); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a cancelled ctx: %v, want context.Canceled", err)
	}
}
