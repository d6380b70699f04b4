package kafka

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/crashtest"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore/pgcrashtest"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The broker's part of the environment of a consumer process of
// TestConsumerSIGKILL.
const crashAddrsEnv = "IDEM_KAFKA_CRASH_ADDRS"

const (
	crashMessages = 300
	crashKills    = 8
	crashTopic    = "orders"
	crashGroup    = "work"
	// crashInstance is the group.instance.id of every consumer process:
	// static membership lets a new process take the killed one's place at
	// once, instead of waiting for its session to time out.
	crashInstance = "crash-consumer"
)

func TestMain(m *testing.M) {
	if pgcrashtest.IsConsumerChild() {
		// Re-executed by TestConsumerSIGKILL: consume until killed.
		os.Exit(crashChild())
	}
	if pgcrashtest.IsRelayChild() {
		// Re-executed by TestRelaySIGKILL: relay until killed.
		os.Exit(pgcrashtest.RelayChild(relayPublisher))
	}
	os.Exit(m.Run())
}

// crashChild runs in a consumer process: Consume over the parent's kfake
// cluster as the static member crashInstance of group "work", feeding the
// pgcrashtest.ConsumerProcess (its handler prints "run ID 0 PROC": Kafka
// does not count deliveries), until it is killed (or its stdin, the
// parent's pipe, closes). Each decision prints "settled ID ACTION PROC".
func crashChild() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "consumer:", err); return 2 }
	ctx, cancel := crashtest.ChildContext(2 * time.Minute)
	defer cancel()
	p, err := pgcrashtest.NewConsumerProcess(ctx, 0)
	if err != nil {
		return fail(err)
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(os.Getenv(crashAddrsEnv), ",")...),
		kgo.ConsumerGroup(crashGroup),
		kgo.ConsumeTopics(crashTopic),
		kgo.InstanceID(crashInstance),
		kgo.SessionTimeout(6*time.Second), // kfake's minimum
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	if err != nil {
		return fail(err)
	}
	slot := &pgcrashtest.TxSlot{} // Consume handles one record at a time: one slot serves each in turn
	err = Consume(pgcrashtest.WithTxSlot(ctx, slot), cl, p.Consumer, &Options{
		MaxPollRecords: 16,
		MaxRetryDelay:  pgcrashtest.ConsumerLease,
		OnDecision: func(r *kgo.Record, m *messaging.Message, d messaging.Decision) {
			slot.RollbackOpen(ctx) // the handling left it open (the lease was lost)
			p.Say("settled %s %s %s", m.ID, d.Action, p.Name)
		},
		OnError: p.OnError})
	return p.Stopped(err)
}

// TestConsumerSIGKILL is the real-process crash test: the kfake cluster
// runs in this process and listens on TCP, the consumer is a re-execution
// of this test binary. 300 messages are each produced twice (same
// idem-message-id) to one partition; the consumer's handler inserts a row
// per message into a PostgreSQL table without a unique constraint, in a
// transaction that commits with the ledger's record of the key. The test
// SIGKILLs the process eight times, each 20 to 150 ms after it began
// handling, starting a fresh one each time, and waits until the group has
// committed every offset. Every message must have exactly one row: its
// effect applied once, none lost, whatever the duplicates, the
// uncommitted batches a killed process left and the transactions the
// kills cut.
func TestConsumerSIGKILL(t *testing.T) {
	ctx := context.Background()
	ct := pgcrashtest.NewConsumerTest(t, "idem_kafka", crashMessages)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, crashTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	addrs := cluster.ListenAddrs()
	prod := producer(t, addrs)
	for range 2 { // every message twice, same id
		for i := range crashMessages {
			id := pgcrashtest.MessageID(i)
			if err := Publish(ctx, prod, crashTopic, id, []byte("order "+id), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	adm := kadm.NewClient(prod)
	committedAt := func() int64 {
		resps, err := adm.FetchOffsets(ctx, crashGroup)
		if err != nil {
			t.Fatal(err)
		}
		if o, ok := resps.Lookup(crashTopic, 0); ok {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			return o.At
		}
		return -1
	}

	rng := crashtest.Rand(t, 16)
	r := ct.Runner
	proc := ct.Start(crashAddrsEnv + "=" + strings.Join(addrs, ","))
	began := time.Now()

	// The chaos schedule: each process is killed 20 to 150 ms after its
	// handler first ran, mid-batch (a batch is up to 16 records of 2 to
	// 10 ms each).
	for k := range crashKills {
		ct.AwaitRun(proc, 20*time.Second)
		<-time.After(time.Duration(20+rng.IntN(130)) * time.Millisecond)
		t.Logf("kill %d at %v: %s", k+1, time.Since(began).Round(time.Millisecond), proc.Name)
		proc = r.Restart(proc)
	}
	killsDone := time.Since(began)

	// Wait until every message has a row and every offset is committed.
	var ids int
	var at int64
	crashtest.Until(t, 40*time.Second, "every message to have a row and every offset to be committed", func() bool {
		ids = ct.Applied()
		at = committedAt()
		return ids == crashMessages && at == 2*crashMessages
	}, func() {
		r.Log()
		t.Logf("%d of %d messages have a row; committed offset %d of %d", ids, crashMessages, at, 2*crashMessages)
	})
	total := time.Since(began)
	proc.Kill()

	t.Logf("%d messages x 2 copies, %d SIGKILLs (%d processes) in %v; all committed after %v",
		crashMessages, len(r.Killed()), r.Started(), killsDone.Round(time.Millisecond), total.Round(time.Millisecond))
	ct.Check()
}
