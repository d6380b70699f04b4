package natsjs

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var streamSeq atomic.Int64

// connect returns a JetStream context on the test's NATS server.
func connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	url := servicetest.NATS.Need(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connecting to NATS at %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// newStream creates a stream of the test's own, on subjects "<name>.>",
// deleted when the test ends.
func newStream(t testing.TB, js jetstream.JetStream, dup time.Duration) (name string) {
	t.Helper()
	name = fmt.Sprintf("IDEMT_%s_%d_%d", strings.NewReplacer("/", "_", ".", "_", " ", "_").Replace(t.Name()), time.Now().UnixNano(), streamSeq.Add(1))
	ctx := context.Background()
	cfg := jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Storage: jetstream.MemoryStorage, Duplicates: dup}
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatalf("creating stream %s: %v", name, err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), name) })
	return name
}

func pullConsumer(t testing.TB, js jetstream.JetStream, stream string, ackWait time.Duration) jetstream.Consumer {
	t.Helper()
	cons, err := js.CreateOrUpdateConsumer(context.Background(), stream, jetstream.ConsumerConfig{
		Durable: "work", AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	return cons
}

func ledger(t testing.TB) *idem.Ledger {
	t.Helper()
	l, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// settled is one delivery as OnDecision saw it.
type settled struct {
	m   *messaging.Message
	d   messaging.Decision
	err error
	at  time.Time
}

// run starts Consume in the background with OnDecision feeding the
// returned channel; the test's cleanup stops it, checks it returned
// ctx's error and closes the channel.
func run(t *testing.T, cons jetstream.Consumer, c *messaging.Consumer, o Options) <-chan settled {
	t.Helper()
	ch := make(chan settled, 1024)
	o.OnDecision = func(m *messaging.Message, d messaging.Decision, err error) { ch <- settled{m, d, err, time.Now()} }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Consume(ctx, cons, c, &o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Consume returned %v, want context.Canceled", err)
		}
		close(ch) // Consume returned: no OnDecision runs any more
	})
	return ch
}

// next waits (up to 10 s) for the next settled delivery.
func next(t *testing.T, ch <-chan settled) settled {
	t.Helper()
	select {
	case s := <-ch:
		if s.err != nil {
			t.Fatalf("settling %q (%s): %v", s.m.ID, s.d.Action, s.err)
		}
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery settled within 10 s")
	}
	return settled{}
}

func info(t *testing.T, cons jetstream.Consumer) *jetstream.ConsumerInfo {
	t.Helper()
	ci, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ci
}

func TestAckOnSuccess(t *testing.T) {
	t.Parallel()
	_, js := connect(t)
	stream := newStream(t, js, 0)
	ctx := context.Background()
	pub := NewPublisher(js)
	for i := range 3 {
		ack, err := pub.Publish(ctx, stream+".orders", fmt.Sprintf("order-%d", i), []byte(fmt.Sprintf("pay %d", i)), map[string]string{"Tenant": "acme"})
		if err != nil {
			t.Fatal(err)
		}
		if ack.Duplicate || ack.Stream != stream || ack.Sequence != uint64(i+1) {
			t.Fatalf("publish %d: %+v", i, ack)
		}
	}
	// One without a Nats-Msg-Id: its id is <stream>/<sequence>.
	if _, err := js.Publish(ctx, stream+".orders", []byte("no id")); err != nil {
		t.Fatal(err)
	}
	var handled sync.Map
	c, err := messaging.NewConsumer(ledger(t), func(ctx context.Context, m *messaging.Message) error {
		key, _ := idem.KeyFrom(ctx)
		handled.Store(m.ID, string(m.Payload)+"|"+key)
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch := run(t, pullConsumer(t, js, stream, 30*time.Second), c, Options{DoubleAck: true})
	want := map[string]string{"order-0": "pay 0", "order-1": "pay 1", "order-2": "pay 2", stream + "/4": "no id"}
	for range want {
		s := next(t, ch)
		if s.d.Action != messaging.Ack || s.m.Delivery != 1 || s.m.Subject != stream+".orders" {
			t.Errorf("%q: %s, delivery %d, subject %s; want ack, 1, %s.orders", s.m.ID, s.d.Action, s.m.Delivery, s.m.Subject, stream)
		}
		if p, ok := want[s.m.ID]; !ok || string(s.m.Payload) != p {
			t.Errorf("delivery %q with payload %q; want one of %v", s.m.ID, s.m.Payload, want)
		}
		if s.m.ID != stream+"/4" && (s.m.Headers["Tenant"] != "acme" || s.m.Headers[MsgIDHeader] != s.m.ID) {
			t.Errorf("%q: headers %v, want Tenant and Nats-Msg-Id", s.m.ID, s.m.Headers)
		}
	}
	for id, p := range want {
		if got, _ := handled.Load(id); got != p+"|"+id {
			t.Errorf("handler for %q saw %q, want %q (payload|key)", id, got, p+"|"+id)
		}
	}
	// DoubleAck waited for the server: nothing is pending.
	if ci := info(t, pullConsumer(t, js, stream, 30*time.Second)); ci.NumAckPending != 0 || ci.NumPending != 0 || ci.Delivered.Stream != 4 {
		t.Errorf("consumer after the acks: %d ack pending, %d pending, delivered up to %d; want 0, 0, 4", ci.NumAckPending, ci.NumPending, ci.Delivered.Stream)
	}
}

// A message published again after the stream's duplicate window is stored
// twice and delivered twice: the handler runs once, the copy is acked as a
// duplicate.
func TestDuplicateBeyondDedupWindow(t *testing.T) {
	t.Parallel()
	_, js := connect(t)
	// Long enough that the immediate republish falls inside it on a
	// loaded machine too.
	stream := newStream(t, js, 500*time.Millisecond)
	ctx := context.Background()
	pub := NewPublisher(js)
	if _, err := pub.Publish(ctx, stream+".x", "m-1", []byte("body"), nil); err != nil {
		t.Fatal(err)
	}
	// Within the window the stream drops the republish; wait it out.
	dups := 0
	for {
		ack, err := pub.Publish(ctx, stream+".x", "m-1", []byte("body"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if !ack.Duplicate {
			if ack.Sequence != 2 {
				t.Fatalf("the republish was stored at %d, want 2", ack.Sequence)
			}
			break
		}
		dups++
		<-time.After(25 * time.Millisecond) // the window is a wall-clock span
	}
	if dups == 0 {
		t.Error("the immediate republish was not reported as a duplicate by the stream")
	}
	var runs atomic.Int32
	c, err := messaging.NewConsumer(ledger(t), func(context.Context, *messaging.Message) error { runs.Add(1); return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch := run(t, pullConsumer(t, js, stream, 30*time.Second), c, Options{DoubleAck: true})
	a, b := next(t, ch), next(t, ch)
	if a.m.ID != "m-1" || b.m.ID != "m-1" || a.d.Action != messaging.Ack || b.d.Action != messaging.AckDuplicate {
		t.Errorf("deliveries %q %s, %q %s; want m-1 ack then m-1 ack-duplicate", a.m.ID, a.d.Action, b.m.ID, b.d.Action)
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("the handler ran %d times, want 1", n)
	}
}

// A retryable failure is nak'ed with the backoff as delay and redelivered
// no sooner; the redelivery succeeds.
func TestRetryNaksWithDelay(t *testing.T) {
	t.Parallel()
	_, js := connect(t)
	stream := newStream(t, js, 0)
	if _, err := NewPublisher(js).Publish(context.Background(), stream+".x", "r-1", []byte("b"), nil); err != nil {
		t.Fatal(err)
	}
	const delay = 300 * time.Millisecond
	var runs atomic.Int32
	c, err := messaging.NewConsumer(ledger(t), func(context.Context, *messaging.Message) error {
		if runs.Add(1) == 1 {
			return errors.New("downstream unavailable")
		}
		return nil
	}, &messaging.Config{Backoff: func(int) time.Duration { return delay }})
	if err != nil {
		t.Fatal(err)
	}
	ch := run(t, pullConsumer(t, js, stream, 30*time.Second), c, Options{})
	first := next(t, ch)
	if first.d.Action != messaging.Retry || first.d.Delay != delay || first.m.Delivery != 1 {
		t.Fatalf("first delivery: %s after %v, delivery %d; want retry after %v, 1", first.d.Action, first.d.Delay, first.m.Delivery, delay)
	}
	second := next(t, ch)
	if second.d.Action != messaging.Ack || second.m.Delivery != 2 || second.m.ID != "r-1" {
		t.Errorf("second delivery: %q %s, delivery %d; want r-1 ack, 2", second.m.ID, second.d.Action, second.m.Delivery)
	}
	// The nak carried the delay: the server held the message back.
	if gap := second.at.Sub(first.at); gap < delay-50*time.Millisecond {
		t.Errorf("redelivered %v after the nak, want about %v", gap, delay)
	}
	if n := runs.Load(); n != 2 {
		t.Errorf("the handler ran %d times, want 2", n)
	}
}

// A permanent failure dead-letters the message: the hook runs once and
// the delivery is terminated, so nothing stays pending.
func TestDeadLetterTerms(t *testing.T) {
	t.Parallel()
	_, js := connect(t)
	stream := newStream(t, js, 0)
	if _, err := NewPublisher(js).Publish(context.Background(), stream+".x", "d-1", []byte("poison"), nil); err != nil {
		t.Fatal(err)
	}
	var hook []string
	var mu sync.Mutex
	c, err := messaging.NewConsumer(ledger(t), func(context.Context, *messaging.Message) error {
		return messaging.Permanent(errors.New("cannot parse"))
	}, &messaging.Config{DeadLetter: func(_ context.Context, m *messaging.Message, _ []messaging.Attempt, err error) error {
		mu.Lock()
		hook = append(hook, m.ID+": "+err.Error())
		mu.Unlock()
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	cons := pullConsumer(t, js, stream, 30*time.Second)
	ch := run(t, cons, c, Options{})
	s := next(t, ch)
	if s.d.Action != messaging.DeadLetter || s.m.ID != "d-1" {
		t.Fatalf("%q: %s, want d-1 dead-letter", s.m.ID, s.d.Action)
	}
	mu.Lock()
	if len(hook) != 1 || hook[0] != "d-1: cannot parse" {
		t.Errorf("dead-letter hook calls %q, want one for d-1", hook)
	}
	mu.Unlock()
	// A term is settled at once (a nak would leave it ack-pending): poll
	// the server until it has processed the term.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ci := info(t, cons)
		if ci.NumAckPending == 0 && ci.AckFloor.Stream == 1 {
			if ci.NumRedelivered != 0 || ci.NumPending != 0 {
				t.Errorf("after the term: %d redelivered, %d pending; want 0, 0", ci.NumRedelivered, ci.NumPending)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the term: %d ack pending, ack floor %d; want 0 and 1", ci.NumAckPending, ci.AckFloor.Stream)
		}
		<-time.After(20 * time.Millisecond)
	}
}

// Three consumers of one durable pull consumer, four workers each, get
// 100 orders each published twice under two message ids: the handler runs
// once per order (the dedup key is the order), every delivery is acked.
func TestConcurrentConsumers(t *testing.T) {
	t.Parallel()
	_, js := connect(t)
	stream := newStream(t, js, 0)
	ctx := context.Background()
	pub := NewPublisher(js)
	const orders = 100
	for i := range orders {
		for copy := range 2 { // adjacent: the twins reach two workers at once
			order := fmt.Sprintf("order-%03d", i)
			if _, err := pub.Publish(ctx, stream+".orders", fmt.Sprintf("%s#%d", order, copy), []byte(order), map[string]string{"Order": order}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var mu sync.Mutex
	runs := map[string]int{}
	c, err := messaging.NewConsumer(ledger(t), func(_ context.Context, m *messaging.Message) error {
		mu.Lock()
		runs[m.Headers["Order"]]++
		mu.Unlock()
		return nil
	}, &messaging.Config{Key: func(m *messaging.Message) string { return m.Headers["Order"] }})
	if err != nil {
		t.Fatal(err)
	}
	cons := pullConsumer(t, js, stream, 30*time.Second)
	chs := []<-chan settled{}
	for range 3 {
		// A twin that finds its key in flight is nak'ed with the owner's
		// remaining lease (30 s) as delay; the cap brings it back sooner.
		chs = append(chs, run(t, cons, c, Options{Workers: 4, MaxNakDelay: 50 * time.Millisecond}))
	}
	merged := make(chan settled, 1024)
	for _, ch := range chs {
		go func() {
			for s := range ch {
				merged <- s
			}
		}()
	}
	acked := map[messaging.Action]int{}
	for acked[messaging.Ack]+acked[messaging.AckDuplicate] < 2*orders {
		s := next(t, merged)
		acked[s.d.Action]++
		if s.d.Action == messaging.Retry && s.d.Delay <= 50*time.Millisecond {
			t.Errorf("%q: retry after %v; a key in flight should give the owner's remaining lease (then capped)", s.m.ID, s.d.Delay)
		}
	}
	if acked[messaging.Ack] != orders || acked[messaging.AckDuplicate] != orders {
		t.Errorf("decisions %v, want %d ack and %d ack-duplicate", acked, orders, orders)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(runs) != orders {
		t.Errorf("%d orders handled, want %d", len(runs), orders)
	}
	for o, n := range runs {
		if n != 1 {
			t.Errorf("%s handled %d times, want 1", o, n)
		}
	}
	t.Logf("decisions: %v (a retry is a copy that arrived while its twin was in flight)", acked)
}

// ConsumePush handles a push consumer's deliveries the same way.
func TestPushConsumer(t *testing.T) {
	t.Parallel()
	nc, js := connect(t)
	stream := newStream(t, js, 0)
	ctx := context.Background()
	cons, err := js.CreateOrUpdatePushConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable: "push", DeliverSubject: nc.NewInbox(), AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1})
	if err != nil {
		t.Fatal(err)
	}
	pub := NewPublisher(js)
	for i := range 5 {
		if _, err := pub.Publish(ctx, stream+".x", fmt.Sprintf("p-%d", i%3), []byte(fmt.Sprint(i%3)), nil); err != nil {
			t.Fatal(err)
		}
	}
	var runs atomic.Int32
	c, err := messaging.NewConsumer(ledger(t), func(context.Context, *messaging.Message) error { runs.Add(1); return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan settled, 16)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- ConsumePush(runCtx, cons, c, &Options{DoubleAck: true, OnDecision: func(m *messaging.Message, d messaging.Decision, err error) {
			ch <- settled{m: m, d: d, err: err}
		}})
	}()
	// Publish dedup kept 3 of the 5 (p-0, p-1, p-2).
	got := map[string]messaging.Action{}
	for range 3 {
		s := next(t, ch)
		got[s.m.ID] = s.d.Action
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("ConsumePush returned %v, want context.Canceled", err)
	}
	if len(got) != 3 || got["p-0"] != messaging.Ack || got["p-1"] != messaging.Ack || got["p-2"] != messaging.Ack {
		t.Errorf("push deliveries %v, want p-0, p-1, p-2 acked", got)
	}
	if n := runs.Load(); n != 3 {
		t.Errorf("handler ran %d times, want 3", n)
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	if _, err := ToMessage(nil); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("ToMessage(nil): %v, want ErrInvalid", err)
	}
	if err := Consume(context.Background(), nil, nil, nil); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("Consume(nil...): %v, want ErrInvalid", err)
	}
	if err := Consume(context.Background(), nil, (*messaging.Consumer)(nil), nil); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("Consume(typed nil consumer): %v, want ErrInvalid", err)
	}
	if _, err := HandleMsg(context.Background(), nil, HandlerFunc(nil), nil); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("HandleMsg(nil HandlerFunc): %v, want ErrInvalid", err)
	}
	if err := ConsumePush(context.Background(), nil, nil, nil); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("ConsumePush(nil...): %v, want ErrInvalid", err)
	}
	p := NewPublisher(nil)
	if _, err := p.Publish(context.Background(), "s", "", nil, nil); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("Publish without id: %v, want ErrInvalid", err)
	}
	if _, err := p.Publish(context.Background(), "", "id", nil, nil); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("Publish without subject: %v, want ErrInvalid", err)
	}
	if err := Settle(context.Background(), nil, messaging.Decision{Action: messaging.Action(99)}, false); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("Settle of an unknown action: %v, want ErrInvalid", err)
	}
}

// A Guard in front of the consumer, through HandlerFunc: versions 1 and 3
// of an entity, then a stale copy of version 1. Version 1 is applied;
// version 3 is held back (nak'ed) until 2 arrives; the stale copy is
// acked as superseded without running the handler.
func TestGuardThroughHandlerFunc(t *testing.T) {
	t.Parallel()
	_, js := connect(t)
	stream := newStream(t, js, 0)
	ctx := context.Background()
	l := ledger(t)
	var mu sync.Mutex
	var applied []string
	c, err := messaging.NewConsumer(l, func(_ context.Context, m *messaging.Message) error {
		mu.Lock()
		applied = append(applied, m.ID)
		mu.Unlock()
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := messaging.NewGuard(l, &messaging.GuardConfig{
		Versioned: func(m *messaging.Message) (string, int64, bool) {
			v, err := strconv.ParseInt(m.Headers["Version"], 10, 64)
			return m.Headers["Entity"], v, err == nil
		},
		MaxGap: time.Minute, GapRetry: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	h := HandlerFunc(func(ctx context.Context, m *messaging.Message) messaging.Decision { return g.Handle(ctx, m, c.Handle) })
	pub := NewPublisher(js)
	send := func(id, version string) {
		t.Helper()
		if _, err := pub.Publish(ctx, stream+".acct", id, []byte(id), map[string]string{"Entity": "acct-1", "Version": version}); err != nil {
			t.Fatal(err)
		}
	}
	cons := pullConsumer(t, js, stream, 30*time.Second)
	ch := make(chan settled, 64)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Consume(runCtx, cons, h, &Options{OnDecision: func(m *messaging.Message, d messaging.Decision, err error) {
			ch <- settled{m: m, d: d, err: err}
		}})
	}()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Consume returned %v, want context.Canceled", err)
		}
	}()
	send("v1", "1")
	if s := next(t, ch); s.m.ID != "v1" || s.d.Action != messaging.Ack {
		t.Fatalf("%q: %s, want v1 ack", s.m.ID, s.d.Action)
	}
	send("v3", "3")
	if s := next(t, ch); s.m.ID != "v3" || s.d.Action != messaging.Retry || !errors.Is(s.d.Err, messaging.ErrGap) {
		t.Fatalf("%q: %s (%v), want v3 held back (retry, ErrGap)", s.m.ID, s.d.Action, s.d.Err)
	}
	send("v1-stale", "1")
	send("v2", "2")
	got := map[string]messaging.Action{}
	for got["v3"] != messaging.Ack || got["v2"] == 0 || got["v1-stale"] == 0 {
		s := next(t, ch)
		got[s.m.ID] = s.d.Action
	}
	if got["v1-stale"] != messaging.AckSuperseded || got["v2"] != messaging.Ack {
		t.Errorf("decisions %v, want v1-stale ack-superseded, v2 and v3 ack", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(applied, ",") != "v1,v2,v3" {
		t.Errorf("applied %v, want v1,v2,v3 in order", applied)
	}
}
