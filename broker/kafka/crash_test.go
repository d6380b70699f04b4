package kafka

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
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/idemkit/idem/store/pgstore/pgcrashtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The environment of a consumer process of TestConsumerSIGKILL.
const (
	crashSchemaEnv = "IDEM_KAFKA_CRASH_SCHEMA" // set: this process is a consumer
	crashPGEnv     = "IDEM_KAFKA_CRASH_PG"
	crashAddrsEnv  = "IDEM_KAFKA_CRASH_ADDRS"
	crashIDEnv     = "IDEM_KAFKA_CRASH_ID"
)

const (
	crashMessages = 300
	crashKills    = 8
	crashLease    = time.Second // the ledger's: a killed owner's keys free up after it
	crashScope    = "orders"
	crashTopic    = "orders"
	crashGroup    = "work"
	// crashInstance is the group.instance.id of every consumer process:
	// static membership lets a new process take the killed one's place at
	// once, instead of waiting for its session to time out.
	crashInstance = "crash-consumer"
)

func TestMain(m *testing.M) {
	if schema := os.Getenv(crashSchemaEnv); schema != "" {
		// Re-executed by TestConsumerSIGKILL: consume until killed.
		os.Exit(crashChild(schema))
	}
	if pgcrashtest.IsRelayChild() {
		// Re-executed by TestRelaySIGKILL: relay until killed.
		os.Exit(pgcrashtest.RelayChild(relayPublisher))
	}
	os.Exit(m.Run())
}

// crashChild runs in a consumer process: Consume over the parent's kfake
// cluster as the static member crashInstance of group "work", with a
// messaging.Consumer on a pgstore ledger, until it is killed (or its
// stdin, the parent's pipe, closes). The handler prints "run ID PROC",
// begins a transaction, inserts (ID, PROC) into effects (no unique
// constraint) and holds the transaction for 2 to 10 ms of pg_sleep; it
// commits with the key's outcome. Each decision prints "settled ID ACTION
// PROC".
func crashChild(schema string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "consumer:", err); return 2 }
	ctx, cancel := crashtest.ChildContext(2 * time.Minute)
	defer cancel()
	proc := os.Getenv(crashIDEnv)
	pool, err := pgxpool.New(ctx, os.Getenv(crashPGEnv))
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
		say("run %s %s", m.ID, proc)
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
	err = Consume(pgcrashtest.WithTxSlot(ctx, slot), cl, c, &Options{
		MaxPollRecords: 16,
		MaxRetryDelay:  crashLease,
		OnDecision: func(r *kgo.Record, m *messaging.Message, d messaging.Decision) {
			slot.RollbackOpen(ctx) // the handling left it open (the lease was lost)
			say("settled %s %s %s", m.ID, d.Action, proc)
		},
		OnError: func(err error) { fmt.Fprintln(os.Stderr, "consumer:", err) }})
	fmt.Fprintln(os.Stderr, "consumer: stopped without being killed:", err)
	return 3
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
	if testing.Short() {
		t.Skip("-short: the crash test starts consumer processes")
	}
	ctx := context.Background()
	pool, pgURL, schema := pgcrashtest.Schema(t, "idem_kafka")
	s, err := pgstore.New(pool, &pgstore.Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	effects := pgx.Identifier{schema, "effects"}.Sanitize()
	if _, err := pool.Exec(ctx, `CREATE TABLE `+effects+` (msg_id text NOT NULL, proc text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, crashTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	addrs := cluster.ListenAddrs()
	prod := producer(t, addrs)
	for range 2 { // every message twice, same id
		for i := range crashMessages {
			id := fmt.Sprintf("m-%03d", i)
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

	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 16))
	out := crashtest.Lines{Notify: make(chan string, 1024)}
	r := &crashtest.Runner{T: t, Prefix: "c", NameEnv: crashIDEnv, Out: &out,
		Env: []string{crashSchemaEnv + "=" + schema, crashPGEnv + "=" + pgURL, crashAddrsEnv + "=" + strings.Join(addrs, ",")}}
	proc := r.Start()
	began := time.Now()

	// The chaos schedule: each process is killed 20 to 150 ms after its
	// handler first ran, mid-batch (a batch is up to 16 records of 2 to
	// 10 ms each).
	for k := range crashKills {
		waitRun := time.After(20 * time.Second)
	wait:
		for {
			select {
			case l := <-out.Notify:
				if f := strings.Fields(l); len(f) == 3 && f[0] == "run" && f[2] == proc.Name {
					break wait
				}
			case <-waitRun:
				r.Log()
				t.Fatalf("consumer %s ran no handler in 20 s", proc.Name)
			}
		}
		<-time.After(time.Duration(20+rng.IntN(130)) * time.Millisecond)
		t.Logf("kill %d at %v: %s", k+1, time.Since(began).Round(time.Millisecond), proc.Name)
		proc = r.Restart(proc)
	}
	killed := r.Killed()
	killsDone := time.Since(began)

	// Wait until every message has a row and every offset is committed.
	var ids int
	var at int64
	crashtest.Until(t, 40*time.Second, "every message to have a row and every offset to be committed", func() bool {
		if err := pool.QueryRow(ctx, `SELECT count(DISTINCT msg_id) FROM `+effects).Scan(&ids); err != nil {
			t.Fatal(err)
		}
		at = committedAt()
		return ids == crashMessages && at == 2*crashMessages
	}, func() {
		r.Log()
		t.Logf("%d of %d messages have a row; committed offset %d of %d", ids, crashMessages, at, 2*crashMessages)
	})
	total := time.Since(began)
	proc.Kill()

	// Every message's effect, applied once.
	msgIDs := make([]string, crashMessages)
	for i := range msgIDs {
		msgIDs[i] = fmt.Sprintf("m-%03d", i)
	}
	pgcrashtest.CheckAppliedOnce(t, pool, effects, s, crashScope, msgIDs)

	// What the processes printed: attempts and settlements.
	all := out.All()
	runs, cut := 0, 0
	actions := map[string]int{}
	for _, l := range all {
		f := strings.Fields(l)
		switch {
		case len(f) == 3 && f[0] == "run":
			runs++
			if killed[f[2]] {
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
	t.Logf("%d messages x 2 copies, %d SIGKILLs (%d processes) in %v; all committed after %v",
		crashMessages, len(killed), r.Started(), killsDone.Round(time.Millisecond), total.Round(time.Millisecond))
	t.Logf("%d handler runs, %d of them in killed processes, which committed %d: %d runs were cut by a kill and rolled back",
		runs, cut, committedByKilled, cut-committedByKilled)
	t.Logf("settled (as printed; a kill can eat a line): %v", actions)
	if actions["ack"] > crashMessages || actions["dead-letter"] > 0 {
		t.Errorf("settled %v: want at most %d acks (the handler's effect commits once per message) and no dead letter", actions, crashMessages)
	}
	if cut-committedByKilled == 0 {
		t.Error("no handler run was cut by a kill: the test proved nothing")
	}
}
