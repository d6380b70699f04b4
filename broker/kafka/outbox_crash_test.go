package kafka

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/idemkit/idem/store/pgstore/pgcrashtest"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// relayPublisher is the publisher of a relay process of TestRelaySIGKILL:
// Publish with the outbox ID as idem-message-id, to the topic m.Subject,
// over its own client of the brokers addrs (comma-separated). Kafka's
// idempotent producer dedups only within one producer session, so a
// republish by the next process is a new record: dup is always false.
func relayPublisher(ctx context.Context, addrs string) (pgcrashtest.PublishFunc, func(), error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(addrs, ",")...))
	if err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context, m *pgstore.OutboxMessage) (bool, error) {
		return false, Publish(ctx, cl, m.Subject, m.ID, m.Payload, m.Headers)
	}, cl.Close, nil
}

// TestRelaySIGKILL is the outbox relay killed mid-publish against a kfake
// cluster that runs in the test process and listens on TCP
// (pgcrashtest.RunRelay): two relay processes produce the outbox to a
// one-partition topic, each row with its outbox ID as idem-message-id;
// eight times the one publishing is SIGKILLed and a fresh one started.
// The topic keeps every copy a republish produces, so the consumer in the
// test is a messaging.Consumer over a pgstore ledger (Consume, a group of
// its own) applying each message to the count table: every message must
// be applied exactly once, in seq order per entity, the copies
// republished after a kill must come back as duplicates, and the group
// must commit the whole partition.
func TestRelaySIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash test starts relay processes")
	}
	ctx := context.Background()
	const topic, group = "outbox", "downstream"
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	addrs := cluster.ListenAddrs()
	adm := kadm.NewClient(producer(t, addrs))
	lag := func() int64 {
		ends, err := adm.ListEndOffsets(ctx, topic)
		if err != nil {
			return -1
		}
		end, ok := ends.Lookup(topic, 0)
		if !ok || end.Err != nil {
			return -1
		}
		resps, err := adm.FetchOffsets(ctx, group)
		if err != nil {
			return -1
		}
		at := int64(0)
		if o, ok := resps.Lookup(topic, 0); ok && o.Err == nil {
			at = o.At
		}
		return end.Offset - at
	}
	res := pgcrashtest.RunRelay(t, &pgcrashtest.RelayTest{
		Broker:  strings.Join(addrs, ","),
		Subject: topic,
		Consume: func(ctx context.Context, d *pgcrashtest.Downstream) error {
			cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
				kgo.DisableAutoCommit(), kgo.BlockRebalanceOnPoll(), kgo.FetchMaxWait(100*time.Millisecond))
			if err != nil {
				return err
			}
			defer cl.Close()
			return Consume(ctx, cl, d.Consumer(), &Options{
				OnDecision: func(r *kgo.Record, m *messaging.Message, dec messaging.Decision) { d.Settled(dec) }})
		},
		Drained: func() bool { return lag() == 0 },
	})
	if res.Settled["ack"] != res.Messages {
		t.Errorf("%d records handled (ack), want one per message, %d", res.Settled["ack"], res.Messages)
	}
	if res.Settled["ack-duplicate"] < res.Republishes {
		t.Errorf("%d records answered as duplicates, want at least the %d republishes", res.Settled["ack-duplicate"], res.Republishes)
	}
}
