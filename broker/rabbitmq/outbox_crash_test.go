package rabbitmq

import (
	"context"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/crashtest"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/idemkit/idem/store/pgstore/pgcrashtest"
	amqp "github.com/rabbitmq/amqp091-go"
)

// relayPublisher is the publisher of a relay process of TestRelaySIGKILL:
// the glue of docs/broker-rabbitmq.md, confirm mode, the outbox ID as
// message-id, to the queue m.Subject through the default exchange, over
// its own connection to url. RabbitMQ has no dedup: dup is always false.
func relayPublisher(ctx context.Context, url string) (pgcrashtest.PublishFunc, func(), error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	pub, err := NewPublisher(ch)
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	return func(ctx context.Context, m *pgstore.OutboxMessage) (bool, error) {
		return false, pub.Publish(ctx, "", &messaging.Message{ID: m.ID, Subject: m.Subject, Payload: m.Payload, Headers: m.Headers})
	}, func() { _ = conn.Close() }, nil
}

// TestRelaySIGKILL is the outbox relay killed mid-publish against
// RabbitMQ (pgcrashtest.RunRelay): two relay processes publish the outbox to a
// quorum queue with publisher confirms, each row with its outbox ID as
// message-id; eight times the one publishing is SIGKILLed and a fresh one
// started. RabbitMQ keeps every copy a republish sends, so the consumer
// in the test is a messaging.Consumer over a pgstore ledger (one worker,
// in queue order) applying each message to the count table: every
// message must be applied exactly once, in seq order per entity, and the
// copies republished after a kill must come back as duplicates (at least
// as many AckDuplicate decisions as republishes printed).
func TestRelaySIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash test starts relay processes")
	}
	t.Parallel()
	conn, q := dialQueue(t, nil)
	queueState := func() (ready, consumers int) {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Close()
		st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil {
			t.Fatalf("inspect %s: %v", q, err)
		}
		return st.Messages, st.Consumers
	}
	res := pgcrashtest.RunRelay(t, &pgcrashtest.RelayTest{
		Broker:  servicetest.RabbitMQ.Need(t),
		Subject: q,
		Consume: func(ctx context.Context, d *pgcrashtest.Downstream) error {
			ch, err := conn.Channel()
			if err != nil {
				return err
			}
			defer ch.Close() // gives back what it held unacked
			return Consume(ctx, ch, q, d.Consumer(), &Options{Workers: 1, Prefetch: 8,
				OnDecision: func(m *messaging.Message, dec messaging.Decision, err error) {
					if err == nil {
						d.Settled(dec)
					}
				}})
		},
		Drained: func() bool { ready, _ := queueState(); return ready == 0 },
		Leftover: func() int {
			var ready int
			crashtest.Until(t, 30*time.Second, "the stopped consumer to leave the queue", func() bool {
				var consumers int
				ready, consumers = queueState()
				return consumers == 0
			})
			return ready
		},
	})
	if res.Settled["ack"] != res.Messages {
		t.Errorf("%d deliveries handled (ack), want one per message, %d", res.Settled["ack"], res.Messages)
	}
	if res.Settled["ack-duplicate"] < res.Republishes {
		t.Errorf("%d deliveries answered as duplicates, want at least the %d republishes", res.Settled["ack-duplicate"], res.Republishes)
	}
	if ready, _ := queueState(); ready != 0 {
		t.Errorf("%d messages left in %s", ready, q)
	}
}
