package messaging

import (
	"context"
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/idemkit/idem/broker/rabbitmq"
	"github.com/idemkit/idem/internal/bench"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/messaging"
)

// prefetch is every RabbitMQ side's basic.qos prefetch.
const prefetch = 64

func amqpChannel(t testing.TB, conn *amqp.Connection) *amqp.Channel {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// fill declares the quorum queue name and publishes n persistent 64-byte
// messages with the message-ids ids-0 to ids-(n-1) to it, waiting for
// every publisher confirm.
func fill(t testing.TB, conn *amqp.Connection, name, ids string, n int) {
	t.Helper()
	ch := amqpChannel(t, conn)
	defer ch.Close()
	if err := rabbitmq.DeclareQueue(ch, name, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	body := make([]byte, 64)
	confs := make([]*amqp.DeferredConfirmation, 0, n)
	for i := range n {
		c, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", name, false, false,
			amqp.Publishing{MessageId: idOf(ids, i), Body: body, DeliveryMode: amqp.Persistent})
		if err != nil {
			t.Fatal(err)
		}
		confs = append(confs, c)
	}
	for _, c := range confs {
		if ok, err := c.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("publish confirm: ok=%v err=%v", ok, err)
		}
	}
}

// TestRabbitMQConsumerFigures measures rabbitmq.ConsumeFunc (prefetch 64)
// draining a fresh quorum queue pre-filled with IDEM_BENCH_MSGS persistent
// messages (default 2000) at 1 and 16 workers, for every side of
// consumerFigures. It runs only with IDEM_BENCH_FIGURES=1
// (IDEM_BENCH_ROUNDS, default 5); docs/performance.md quotes it.
func TestRabbitMQConsumerFigures(t *testing.T) {
	if testing.Short() {
		t.Skip("figures")
	}
	url := servicetest.RabbitMQ.Need(t)
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	var queues int
	drain := func(t testing.TB, ids string, handle handleFunc, workers, n int, want messaging.Action) time.Duration {
		t.Helper()
		queues++
		name := fmt.Sprintf("idem-bench-%d-%d", time.Now().UnixNano()%1e9, queues)
		fill(t, conn, name, ids, n)
		defer func() {
			ch := amqpChannel(t, conn)
			defer ch.Close()
			if _, err := ch.QueueDelete(name, false, false, false); err != nil {
				t.Errorf("delete queue %s: %v", name, err)
			}
		}()
		ch := amqpChannel(t, conn)
		defer ch.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s := newSettles(n, want)
		start := time.Now()
		ended := make(chan error, 1)
		go func() {
			ended <- rabbitmq.ConsumeFunc(ctx, ch, name, handle, &rabbitmq.Options{Workers: workers, Prefetch: prefetch, OnDecision: s.onDecision})
		}()
		s.wait(t, name, ended)
		elapsed := time.Since(start)
		cancel()
		<-ended
		s.check(t, name)
		return elapsed
	}
	consumerFigures(t, broker{name: "rabbitmq", msgs: 2000, drain: drain})
	t.Logf("load average after: %s", bench.LoadAvg())
}
