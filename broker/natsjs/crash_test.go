package natsjs

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/crashtest"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore/pgcrashtest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The broker's part of the environment of a consumer process of
// TestConsumerSIGKILL.
const (
	crashStreamEnv = "IDEM_NATSJS_CRASH_STREAM"
	crashNATSEnv   = "IDEM_NATSJS_CRASH_NATS"
)

const (
	crashMessages = 300
	crashKills    = 12
	crashAckWait  = 2 * time.Second // JetStream redelivers what a killed consumer held after it
)

// inTx is the Options.Around of the consumers: each delivery gets a slot;
// a transaction its handling left open (the lease was lost) rolls back.
func inTx(ctx context.Context, m *messaging.Message, handle func(context.Context, *messaging.Message) messaging.Decision) messaging.Decision {
	slot := &pgcrashtest.TxSlot{}
	d := handle(pgcrashtest.WithTxSlot(ctx, slot), m)
	slot.RollbackOpen(ctx)
	return d
}

// crashChild runs in a consumer process: Consume over the stream's durable
// "work" consumer, feeding the pgcrashtest.ConsumerProcess (its handler
// prints "run ID DELIVERY PROC"), until it is killed (or its stdin, the
// parent's pipe, closes). Each settled delivery prints "settled ID ACTION
// PROC".
func crashChild() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "consumer:", err); return 2 }
	ctx, cancel := crashtest.ChildContext(2 * time.Minute)
	defer cancel()
	p, err := pgcrashtest.NewConsumerProcess(ctx, 12)
	if err != nil {
		return fail(err)
	}
	nc, err := nats.Connect(os.Getenv(crashNATSEnv))
	if err != nil {
		return fail(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fail(err)
	}
	cons, err := js.Consumer(ctx, os.Getenv(crashStreamEnv), "work")
	if err != nil {
		return fail(err)
	}
	err = Consume(ctx, cons, p.Consumer, &Options{Workers: 2, Around: inTx,
		PullOptions: []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(16)},
		OnDecision: func(m *messaging.Message, d messaging.Decision, err error) {
			p.Say("settled %s %s %s", m.ID, d.Action, p.Name)
		},
		OnError: p.OnError})
	return p.Stopped(err)
}

// TestConsumerSIGKILL publishes 300 messages, each stored twice in the
// stream (the second publish of an id comes after the stream's 100 ms
// duplicate window), to a consumer process (a re-execution of this test
// binary) whose handler inserts a row per message into a PostgreSQL table
// without a unique constraint, in a transaction that commits with the
// ledger's record of the key. The test SIGKILLs the process twelve times,
// each 20 to 150 ms after its handler first ran, starting a fresh one each
// time, and waits until every delivery is settled. Every message must have
// exactly one row: its effect applied once, none lost, whatever the
// duplicates, the redeliveries of what a killed process held, and the
// transactions the kills cut.
func TestConsumerSIGKILL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ct := pgcrashtest.NewConsumerTest(t, "idem_natsjs", crashMessages)
	natsURL := servicetest.NATS.Need(t)
	_, js := connect(t)
	stream := newStream(t, js, 100*time.Millisecond)
	cons, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable: "work", AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1, AckWait: crashAckWait})
	if err != nil {
		t.Fatal(err)
	}

	rng := crashtest.Rand(t, 16)
	r := ct.Runner
	proc := ct.Start(crashStreamEnv+"="+stream, crashNATSEnv+"="+natsURL)
	began := time.Now()

	// The publisher: every message once, then (past the stream's 100 ms
	// duplicate window) every message again; a second copy the stream
	// still took for a duplicate is published again later.
	pubDone := make(chan error, 1)
	go func() {
		pub := NewPublisher(js)
		publish := func(todo []int) ([]int, error) {
			var dups []int
			for _, i := range todo {
				id := pgcrashtest.MessageID(i)
				ack, err := pub.Publish(ctx, stream+".orders", id, []byte("order "+id), nil)
				if err != nil {
					return nil, err
				}
				if ack.Duplicate {
					dups = append(dups, i)
				}
			}
			return dups, nil
		}
		all := make([]int, crashMessages)
		for i := range all {
			all[i] = i
		}
		if _, err := publish(all); err != nil {
			pubDone <- err
			return
		}
		for again := all; len(again) > 0; {
			<-time.After(150 * time.Millisecond) // past the duplicate window
			var err error
			if again, err = publish(again); err != nil {
				pubDone <- err
				return
			}
		}
		pubDone <- nil
	}()

	// The chaos schedule: each process is killed 20 to 150 ms after its
	// handler first ran (or at once when every message already has a row).
	for k := range crashKills {
		ct.AwaitRun(proc, 20*time.Second)
		<-time.After(time.Duration(20+rng.IntN(130)) * time.Millisecond)
		t.Logf("kill %d at %v: %s", k+1, time.Since(began).Round(time.Millisecond), proc.Name)
		proc = r.Restart(proc)
	}
	killed := r.Killed()
	if err := <-pubDone; err != nil {
		t.Fatalf("publishing: %v", err)
	}
	killsDone := time.Since(began)
	if si, err := js.Stream(ctx, stream); err != nil {
		t.Fatal(err)
	} else if n := si.CachedInfo().State.Msgs; n != 2*crashMessages {
		t.Fatalf("the stream holds %d messages, want %d (each published twice, beyond the duplicate window)", n, 2*crashMessages)
	}

	// Wait until every delivery is settled and every message has a row.
	var ids int
	var ci *jetstream.ConsumerInfo
	crashtest.Until(t, 40*time.Second, "every message to have a row and every delivery to be settled", func() bool {
		ids = ct.Applied()
		var err error
		if ci, err = cons.Info(ctx); err != nil {
			t.Fatal(err)
		}
		return ids == crashMessages && ci.NumAckPending == 0 && ci.NumPending == 0
	}, func() {
		r.Log()
		t.Logf("%d of %d messages have a row; %d deliveries ack-pending, %d not delivered", ids, crashMessages, ci.NumAckPending, ci.NumPending)
	})
	total := time.Since(began)
	ci, err = cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	proc.Kill()

	t.Logf("%d messages x 2 copies, %d SIGKILLs (%d processes) in %v; all settled after %v",
		crashMessages, len(killed), r.Started(), killsDone.Round(time.Millisecond), total.Round(time.Millisecond))
	ct.Check()
	t.Logf("JetStream consumer: %d deliveries in all for %d stream messages", ci.Delivered.Consumer, 2*crashMessages)
	// A cut run's message may come back through its twin copy (delivery
	// 1) rather than its own redelivery, so count JetStream's deliveries:
	// every one past the 600 stored is a redelivery.
	if ci.Delivered.Consumer <= 2*crashMessages {
		t.Errorf("JetStream delivered %d times for %d stored messages: nothing was redelivered", ci.Delivered.Consumer, 2*crashMessages)
	}
}
