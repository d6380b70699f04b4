package natsjs

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/crashtest"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/idemkit/idem/store/pgstore/pgcrashtest"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The environment of a consumer process of TestConsumerSIGKILL.
const (
	crashSchemaEnv = "IDEM_NATSJS_CRASH_SCHEMA" // set: this process is a consumer
	crashStreamEnv = "IDEM_NATSJS_CRASH_STREAM"
	crashPGEnv     = "IDEM_NATSJS_CRASH_PG"
	crashNATSEnv   = "IDEM_NATSJS_CRASH_NATS"
	crashIDEnv     = "IDEM_NATSJS_CRASH_ID"
)

const (
	crashMessages = 300
	crashKills    = 12
	crashLease    = time.Second     // the ledger's: a killed owner's keys free up after it
	crashAckWait  = 2 * time.Second // JetStream redelivers what a killed consumer held after it
	crashScope    = "orders"
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
// "work" consumer with a messaging.Consumer on a pgstore ledger, until it
// is killed (or its stdin, the parent's pipe, closes). The handler prints
// "run ID DELIVERY PROC", begins a transaction, inserts (ID, PROC) into
// effects (no unique constraint) and holds the transaction for 2 to 10 ms
// of pg_sleep; it commits with the key's outcome. Each settled delivery
// prints "settled ID ACTION PROC".
func crashChild(schema string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "consumer:", err); return 2 }
	ctx, cancel := crashtest.ChildContext(2 * time.Minute)
	defer cancel()
	proc := os.Getenv(crashIDEnv)
	pool, err := pgcrashtest.Pool(ctx, os.Getenv(crashPGEnv), 12)
	if err != nil {
		return fail(err)
	}
	s, err := pgstore.New(pool, &pgstore.Config{Schema: schema})
	if err != nil {
		return fail(err)
	}
	ledger, err := idem.New(pgcrashtest.TxStore{Store: s}, &idem.Config{Lease: crashLease})
	if err != nil {
		return fail(err)
	}
	effects := pgx.Identifier{schema, "effects"}.Sanitize()
	say := crashtest.Say()
	c, err := messaging.NewConsumer(ledger, func(ctx context.Context, m *messaging.Message) error {
		slot := pgcrashtest.TxSlotFrom(ctx)
		if slot == nil {
			return messaging.Permanent(fmt.Errorf("no transaction slot"))
		}
		say("run %s %d %s", m.ID, m.Delivery, proc)
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+effects+` (msg_id, proc) VALUES ($1, $2)`, m.ID, proc); err != nil {
			_ = tx.Rollback(ctx)
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_sleep($1)`, 0.002+0.008*rand.Float64()); err != nil {
			_ = tx.Rollback(ctx)
			return err
		}
		slot.Tx = tx // committed by the ledger's Complete
		return nil
	}, &messaging.Config{Scope: crashScope, MaxAttempts: 50, Backoff: func(int) time.Duration { return 100 * time.Millisecond }})
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
	err = Consume(ctx, cons, c, &Options{Workers: 2, Around: inTx,
		PullOptions: []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(16)},
		OnDecision: func(m *messaging.Message, d messaging.Decision, err error) {
			say("settled %s %s %s", m.ID, d.Action, proc)
		},
		OnError: func(err error) { fmt.Fprintln(os.Stderr, "consumer:", err) }})
	fmt.Fprintln(os.Stderr, "consumer: stopped without being killed:", err)
	return 3
}

// TestConsumerSIGKILL publishes 300 messages, each stored twice in the
// stream (the second publish of an id comes after the stream's 100 ms
// duplicate window), to a consumer process (a re-execution of this test
// binary) whose handler inserts a row per message into a PostgreSQL table
// without a unique constraint, in a transaction that commits with the
// ledger's record of the key. The test SIGKILLs the process twelve times,
// every 100 to 250 ms, starting a fresh one each time, and waits until
// every delivery is settled. Every message must have exactly one row: its
// effect applied once, none lost, whatever the duplicates, the
// redeliveries of what a killed process held, and the transactions the
// kills cut.
func TestConsumerSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash test starts consumer processes")
	}
	t.Parallel()
	ctx := context.Background()
	pool, pgURL, schema := pgcrashtest.Schema(t, "idem_natsjs")
	natsURL := servicetest.NATS.Need(t)
	s, err := pgstore.New(pool, &pgstore.Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	effects := pgx.Identifier{schema, "effects"}.Sanitize()
	if _, err := pool.Exec(ctx, `CREATE TABLE `+effects+` (msg_id text NOT NULL, proc text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	_, js := connect(t)
	stream := newStream(t, js, 100*time.Millisecond)
	cons, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable: "work", AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1, AckWait: crashAckWait})
	if err != nil {
		t.Fatal(err)
	}

	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 16))
	var out crashtest.Lines
	r := &crashtest.Runner{T: t, Prefix: "c", NameEnv: crashIDEnv, Out: &out,
		Env: []string{crashSchemaEnv + "=" + schema, crashStreamEnv + "=" + stream, crashPGEnv + "=" + pgURL, crashNATSEnv + "=" + natsURL}}
	proc := r.Start()
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
				id := fmt.Sprintf("m-%03d", i)
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

	for k := range crashKills {
		<-time.After(time.Duration(100+rng.IntN(150)) * time.Millisecond) // the chaos schedule
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
		if err := pool.QueryRow(ctx, `SELECT count(DISTINCT msg_id) FROM `+effects).Scan(&ids); err != nil {
			t.Fatal(err)
		}
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

	// Every message's effect, applied once.
	msgIDs := make([]string, crashMessages)
	for i := range msgIDs {
		msgIDs[i] = fmt.Sprintf("m-%03d", i)
	}
	pgcrashtest.CheckAppliedOnce(t, pool, effects, s, crashScope, msgIDs)

	// What the processes printed: attempts and settlements.
	all := out.All()
	runs, cut, redelivered := 0, 0, 0
	actions := map[string]int{}
	for _, l := range all {
		f := strings.Fields(l)
		switch {
		case len(f) == 4 && f[0] == "run":
			runs++
			if f[2] != "1" {
				redelivered++
			}
			if killed[f[3]] {
				cut++ // may also have committed just before the kill
			}
		case len(f) == 4 && f[0] == "settled":
			actions[f[2]]++
		default:
			t.Fatalf("a consumer printed %q", l)
		}
	}
	committedByKilled := 0
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+effects+` WHERE proc = ANY($1)`, r.KilledNames()).Scan(&committedByKilled); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d messages x 2 copies, %d SIGKILLs (%d processes) in %v; all settled after %v",
		crashMessages, len(killed), r.Started(), killsDone.Round(time.Millisecond), total.Round(time.Millisecond))
	t.Logf("%d handler runs (%d of them of a redelivery), %d of them in killed processes, which committed %d: %d runs were cut by a kill and rolled back",
		runs, redelivered, cut, committedByKilled, cut-committedByKilled)
	t.Logf("settled (as printed; a kill can eat a line): %v; JetStream consumer: %d deliveries in all for %d stream messages",
		actions, ci.Delivered.Consumer, 2*crashMessages)
	if actions["ack"] > crashMessages || actions["dead-letter"] > 0 {
		t.Errorf("settled %v: want at most %d acks (the handler's effect commits once per message) and no dead letter", actions, crashMessages)
	}
	if cut-committedByKilled == 0 {
		t.Error("no handler run was cut by a kill: the test proved nothing")
	}
	// A cut run's message may come back through its twin copy (delivery
	// 1) rather than its own redelivery, so count JetStream's deliveries:
	// every one past the 600 stored is a redelivery.
	if ci.Delivered.Consumer <= 2*crashMessages {
		t.Errorf("JetStream delivered %d times for %d stored messages: nothing was redelivered", ci.Delivered.Consumer, 2*crashMessages)
	}
}
