package natsjs

import (
	"context"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/idemkit/idem/store/pgstore/pgcrashtest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// relayPublisher is the publisher of a relay process of TestRelaySIGKILL:
// the glue of docs/broker-nats.md, the outbox ID as Nats-Msg-Id, over its
// own connection to url. It reports the PubAck's Duplicate.
func relayPublisher(ctx context.Context, url string) (pgcrashtest.PublishFunc, func(), error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	pub := NewPublisher(js)
	return func(ctx context.Context, m *pgstore.OutboxMessage) (bool, error) {
		ack, err := pub.Publish(ctx, m.Subject, m.ID, m.Payload, m.Headers)
		if err != nil {
			return false, err
		}
		return ack.Duplicate, nil
	}, nc.Close, nil
}

// TestRelaySIGKILL is the outbox relay killed mid-publish against
// JetStream (pgcrashtest.RunRelay): two relay processes publish the outbox to a
// stream with a two-minute duplicate window, each row with its outbox ID
// as Nats-Msg-Id; eight times the one publishing is SIGKILLed and a fresh
// one started. The consumer in the test applies each delivery to the
// count table without a ledger, so only the stream's dedup stands between
// a republish and a second application: every message must be applied
// exactly once, in seq order per entity, every republish after a kill must
// be acked as a duplicate, and the stream must hold exactly one copy of
// each message.
func TestRelaySIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash test starts relay processes")
	}
	t.Parallel()
	ctx := context.Background()
	_, js := connect(t)
	stream := newStream(t, js, 2*time.Minute)
	cons := pullConsumer(t, js, stream, 30*time.Second)
	res := pgcrashtest.RunRelay(t, &pgcrashtest.RelayTest{
		Broker:      servicetest.NATS.Need(t),
		Subject:     stream + ".outbox",
		BrokerDedup: true,
		Consume: func(ctx context.Context, d *pgcrashtest.Downstream) error {
			apply := HandlerFunc(func(ctx context.Context, m *messaging.Message) messaging.Decision {
				if err := d.Apply(ctx, m); err != nil {
					return messaging.Decision{Action: messaging.Retry, Delay: 100 * time.Millisecond, Err: err}
				}
				return messaging.Decision{Action: messaging.Ack}
			})
			return Consume(ctx, cons, apply, &Options{Workers: 1, DoubleAck: true,
				OnDecision: func(m *messaging.Message, dec messaging.Decision, err error) { d.Settled(dec) }})
		},
		Drained: func() bool {
			ci, err := cons.Info(ctx)
			return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
		},
	})
	si, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	if n := si.CachedInfo().State.Msgs; n != uint64(res.Messages) {
		t.Errorf("the stream holds %d messages, want %d: one per outbox row, whatever was republished", n, res.Messages)
	}
	if res.BrokerDups == 0 {
		t.Error("JetStream reported no duplicate publish: its dedup was not exercised")
	}
}
