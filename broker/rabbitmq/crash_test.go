package rabbitmq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
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
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
)

// The environment of a consuming process of TestCrashExactlyOnce.
const (
	crashQueueEnv  = "IDEM_RABBITMQ_CRASH_QUEUE" // set: this process is a consumer
	crashSchemaEnv = "IDEM_RABBITMQ_CRASH_SCHEMA"
	crashPGEnv     = "IDEM_RABBITMQ_CRASH_PG"
	crashAMQPEnv   = "IDEM_RABBITMQ_CRASH_AMQP"
	crashProcEnv   = "IDEM_RABBITMQ_CRASH_PROC" // the process's name in runs.proc
	crashModeEnv   = "IDEM_RABBITMQ_CRASH_MODE" // "ledger" or "inbox"
)

const (
	crashMessages = 300
	crashKills    = 4
	crashLease    = 2 * time.Second
	crashFlaky    = 10 // every 10th message fails its first delivery
)

// crashHandle is what consumes in TestCrashExactlyOnce, over schema:
//   - mode "ledger": messaging.Consumer over a pgstore ledger; the
//     handler writes its effect in a transaction of its own;
//   - mode "inbox": the transactional inbox (pgstore.Inbox): the effect
//     commits in the transaction of the message's dedup record.
//
// The handler prints "run ID PROC", then in one transaction inserts (ID,
// PROC) into runs and counts the run in counts (INSERT ... ON CONFLICT
// (msg_id) DO UPDATE SET n = n + 1), holding the transaction 5 to 15 ms. A
// message whose payload starts with "flaky" fails its first delivery.
func crashHandle(pool *pgxpool.Pool, schema, proc, mode string, printf func(format string, args ...any)) (HandleFunc, func(), error) {
	store, err := pgstore.New(pool, &pgstore.Config{Schema: schema})
	if err != nil {
		return nil, nil, err
	}
	sch := pgx.Identifier{schema}.Sanitize()
	effect := func(ctx context.Context, tx pgx.Tx, m *messaging.Message) error {
		if bytes.HasPrefix(m.Payload, []byte("flaky")) && m.Delivery == 1 {
			return errors.New("flaky: fails its first delivery")
		}
		printf("run %s %s\n", m.ID, proc)
		if _, err := tx.Exec(ctx, `INSERT INTO `+sch+`.runs (msg_id, proc) VALUES ($1, $2)`, m.ID, proc); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+sch+`.counts (msg_id, n) VALUES ($1, 1)
			ON CONFLICT (msg_id) DO UPDATE SET n = counts.n + 1`, m.ID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT pg_sleep($1)`, 0.005+0.01*rand.Float64())
		return err
	}
	backoff := func(int) time.Duration { return 20 * time.Millisecond }
	if mode == "inbox" {
		in := store.Inbox(&pgstore.InboxConfig{Scope: "crash", MaxAttempts: 20, Backoff: backoff})
		return func(ctx context.Context, m *messaging.Message) messaging.Decision {
			return in.Handle(ctx, m, effect)
		}, func() {}, nil
	}
	ledger, err := idem.New(store, &idem.Config{Lease: crashLease})
	if err != nil {
		return nil, nil, err
	}
	c, err := messaging.NewConsumer(ledger, func(ctx context.Context, m *messaging.Message) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return effect(ctx, tx, m) })
	}, &messaging.Config{Scope: "crash", MaxAttempts: 20, Backoff: backoff})
	if err != nil {
		ledger.Close()
		return nil, nil, err
	}
	return c.Handle, func() { ledger.Close() }, nil
}

// crashOptions are the consuming processes' Options; each settled delivery
// prints "settled ACTION ID DELIVERY".
func crashOptions(printf func(format string, args ...any)) *Options {
	return &Options{Workers: 4, Prefetch: 8, MaxRetryDelay: 500 * time.Millisecond,
		OnDecision: func(m *messaging.Message, d messaging.Decision, err error) {
			if err == nil {
				printf("settled %s %s %d\n", d.Action, m.ID, m.Delivery)
			}
		}}
}

// crashWorker runs in a consuming process: crashHandle fed by ConsumeFunc
// with 4 workers, until the process is killed or its stdin (the parent's
// pipe) closes.
func crashWorker(queue string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "worker:", err); return 2 }
	ctx, cancel := crashtest.ChildContext(2 * time.Minute)
	defer cancel()
	pool, err := pgcrashtest.Pool(ctx, os.Getenv(crashPGEnv), 8)
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	printf := crashtest.Say()
	handle, closeLedger, err := crashHandle(pool, os.Getenv(crashSchemaEnv), os.Getenv(crashProcEnv), os.Getenv(crashModeEnv), printf)
	if err != nil {
		return fail(err)
	}
	defer closeLedger()
	conn, err := amqp.Dial(os.Getenv(crashAMQPEnv))
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fail(err)
	}
	if err := ConsumeFunc(ctx, ch, queue, handle, crashOptions(printf)); !errors.Is(err, context.Canceled) {
		return fail(err)
	}
	return 0
}

// TestCrashExactlyOnce publishes 300 messages, each twice (every 10th
// fails its first delivery, so it is redelivered), to a quorum queue read
// by a consuming process (a re-execution of this test binary: ConsumeFunc
// with 4 workers). It SIGKILLs that process four times mid-batch, each
// time starting a fresh one, then waits until every message was handled
// and nothing is left in the queue. It runs twice:
//
//   - ledger: messaging.Consumer over a pgstore ledger, the handler's
//     effect in a transaction of its own;
//   - inbox: pgstore's transactional inbox, the effect in the transaction
//     of the dedup record.
//
// Every message must be applied (a row in counts; none lost, none
// dead-lettered); duplicates, redeliveries and retries must never run the
// handler again (AckDuplicate instead). With the inbox every message is
// applied exactly once (n = 1). With the ledger the one re-run it cannot
// prevent is a kill after the handler's transaction committed and before
// the ledger recorded the outcome: the test requires that every extra run
// of a message (n > 1) follows a run in a process that was killed, and
// reports how many there were.
func TestCrashExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash test starts consuming processes")
	}
	t.Parallel()
	for _, mode := range []string{"ledger", "inbox"} {
		t.Run(mode, func(t *testing.T) { testCrash(t, mode) })
	}
}

func testCrash(t *testing.T, mode string) {
	ctx := context.Background()
	amqpURL := servicetest.RabbitMQ.Need(t)
	began := time.Now()
	pool, pgURL, schema := pgcrashtest.Schema(t, "idem_rmq")
	sch := pgx.Identifier{schema}.Sanitize()
	if _, err := pgstore.New(pool, &pgstore.Config{Schema: schema, Migrate: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE `+sch+`.counts (msg_id text PRIMARY KEY, n int NOT NULL);
		CREATE TABLE `+sch+`.runs (seq bigserial PRIMARY KEY, msg_id text NOT NULL, proc text NOT NULL)`); err != nil {
		t.Fatal(err)
	}

	conn, q := dialQueue(t, &QueueOptions{DeadLetterQueue: "dead", DeliveryLimit: 1000})
	dlq := q + ".dead"

	rng := crashtest.Rand(t, 16)
	var lines crashtest.Lines
	r := &crashtest.Runner{T: t, NameEnv: crashProcEnv, Out: &lines,
		Env: []string{crashQueueEnv + "=" + q, crashSchemaEnv + "=" + schema, crashPGEnv + "=" + pgURL,
			crashAMQPEnv + "=" + amqpURL, crashModeEnv + "=" + mode}}
	proc := r.Start()

	// Publish every message, then every message again, while the
	// consumer runs.
	published := make(chan error, 1)
	go func() {
		ch, err := conn.Channel()
		if err != nil {
			published <- err
			return
		}
		defer ch.Close()
		pub, err := NewPublisher(ch)
		if err != nil {
			published <- err
			return
		}
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		for range 2 {
			for i := range crashMessages {
				body := "msg " + strconv.Itoa(i)
				if i%crashFlaky == 0 {
					body = "flaky " + strconv.Itoa(i)
				}
				if err := pub.Publish(pctx, "", &messaging.Message{ID: fmt.Sprintf("m-%03d", i), Subject: q, Payload: []byte(body)}); err != nil {
					published <- err
					return
				}
			}
		}
		published <- nil
	}()

	handled := func() int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+sch+`.counts`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	queueState := func(name string) (ready, consumers int) {
		t.Helper()
		ch := channel(t, conn)
		st, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil {
			t.Fatalf("inspect %s: %v", name, err)
		}
		_ = ch.Close()
		return st.Messages, st.Consumers
	}

	// The chaos: a SIGKILL each time another ~60 messages were applied.
	deadline := time.Now().Add(50 * time.Second)
	for k := range crashKills {
		threshold := 20 + k*60 + rng.IntN(30)
		crashtest.Until(t, time.Until(deadline), fmt.Sprintf("%d messages applied before kill %d", threshold, k+1),
			func() bool { return handled() >= threshold }, r.Log)
		t.Logf("kill %d at %v: %s, %d messages applied", k+1, time.Since(began).Round(time.Millisecond), proc.Name, handled())
		proc = r.Restart(proc)
	}
	killed := r.Killed()
	if err := <-published; err != nil {
		t.Fatalf("publish: %v", err)
	}

	// Let it finish: every message applied and none ready. Deliveries
	// may still be unacked in the consumer (duplicates in its prefetch,
	// retries waiting for a killed process's lease): stop it gently,
	// and once the broker has taken back what it held, consume the rest
	// in this process until each is acked.
	crashtest.Until(t, time.Until(deadline), "every message applied and none ready", func() bool {
		r, _ := queueState(q)
		return handled() >= crashMessages && r == 0
	}, func() {
		r.Log()
		rd, c := queueState(q)
		t.Logf("%d of %d messages applied, %d ready, %d consumers", handled(), crashMessages, rd, c)
	})
	if err := proc.Stop(); err != nil {
		t.Fatalf("worker %s: %v: %s", proc.Name, err, proc.Stderr.String())
	}
	stopped := maps.Clone(killed)
	stopped[proc.Name] = true
	var ready int
	crashtest.Until(t, time.Until(deadline), "the broker to see the stopped consumer go", func() bool { // its connection closes
		var consumers int
		ready, consumers = queueState(q)
		return consumers == 0
	})
	t.Logf("%d deliveries were still unacked at the gentle stop: consuming them in the test process", ready)
	if ready > 0 {
		handle, closeLedger, err := crashHandle(pool, schema, "parent", mode, lines.Printf)
		if err != nil {
			t.Fatal(err)
		}
		defer closeLedger()
		acked := make(chan struct{}, 2*crashMessages)
		o := crashOptions(lines.Printf)
		print := o.OnDecision
		o.OnDecision = func(m *messaging.Message, d messaging.Decision, err error) {
			print(m, d, err)
			if err == nil && d.Action.Acked() {
				acked <- struct{}{}
			}
		}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- ConsumeFunc(cctx, channel(t, conn), q, handle, o) }()
		for range ready {
			select {
			case <-acked:
			case <-time.After(time.Until(deadline)):
				t.Fatalf("the last %d deliveries were not all acked within 50 s", ready)
			}
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Consume: %v", err)
		}
		if r, _ := queueState(q); r != 0 {
			t.Fatalf("%d messages in %s after the last %d were acked", r, q, ready)
		}
	}
	total := time.Since(began)

	// Every message applied, none dead-lettered.
	counts := pgcrashtest.Counts(t, pool, `SELECT msg_id, n FROM `+sch+`.counts`)
	for i := range crashMessages {
		if id := fmt.Sprintf("m-%03d", i); counts[id] < 1 {
			t.Errorf("%s was never applied: lost", id)
		}
	}
	if len(counts) != crashMessages {
		t.Errorf("%d messages in counts, want %d", len(counts), crashMessages)
	}
	if r, _ := queueState(dlq); r != 0 {
		t.Errorf("%d messages dead-lettered, want 0", r)
	}

	// Every run, in commit order: an extra run must follow a run in a
	// process that was killed (a kill between the handler's commit and
	// the ledger's record); duplicates and redeliveries never run again.
	runs := map[string][]string{}
	rows, err := pool.Query(ctx, `SELECT msg_id, proc FROM `+sch+`.runs ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, p string
		if err := rows.Scan(&id, &p); err != nil {
			t.Fatal(err)
		}
		runs[id] = append(runs[id], p)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	once, twice := 0, 0
	var rerun []string
	for id, n := range counts {
		ps := runs[id]
		if len(ps) != n {
			t.Errorf("%s: n=%d but %d runs committed", id, n, len(ps))
		}
		if n == 1 {
			once++
			continue
		}
		twice++
		rerun = append(rerun, fmt.Sprintf("%s n=%d by %v", id, n, ps))
		if mode == "inbox" {
			t.Errorf("%s applied %d times (runs in %v), want exactly once: the inbox commits the effect with the record", id, n, ps)
		}
		for _, p := range ps[:len(ps)-1] {
			if !stopped[p] {
				t.Errorf("%s ran %d times (%v): its run in %s, which was not stopped, was not recorded as handled", id, n, ps, p)
			}
		}
	}
	sort.Strings(rerun)

	// What the consumers said.
	acts := map[string]int{}
	redelivered, interrupted := 0, 0
	seenAgain := map[string]bool{} // ids settled on a delivery count above 1
	committed := map[[2]string]bool{}
	for id, ps := range runs {
		for _, p := range ps {
			committed[[2]string{id, p}] = true
		}
	}
	for _, l := range lines.All() {
		f := strings.Fields(l)
		switch {
		case len(f) == 3 && f[0] == "run":
			if !committed[[2]string{f[1], f[2]}] {
				if !stopped[f[2]] {
					t.Errorf("a run of %s in %s, which was not stopped, left no row", f[1], f[2])
				}
				interrupted++
			}
		case len(f) == 4 && f[0] == "settled":
			acts[f[1]]++
			if f[3] != "1" {
				redelivered++
				seenAgain[f[2]] = true
			}
		default:
			t.Fatalf("a worker printed %q", l)
		}
	}
	if acts["ack-duplicate"] < crashMessages {
		t.Errorf("%d deliveries acked as duplicates, want at least %d (every message was sent twice)", acts["ack-duplicate"], crashMessages)
	}
	// A flaky message succeeds only on a redelivery (after its Retry, or
	// after a kill returned it before it failed), so one of its settled
	// deliveries has a count above 1.
	for i := 0; i < crashMessages; i += crashFlaky {
		if id := fmt.Sprintf("m-%03d", i); !seenAgain[id] {
			t.Errorf("flaky %s was never settled on a redelivery", id)
		}
	}
	if acts["retry"] == 0 {
		t.Error("no Retry decision: the flaky messages did not fail")
	}
	if acts["dead-letter"] != 0 {
		t.Errorf("%d dead-letter decisions, want 0", acts["dead-letter"])
	}
	if interrupted == 0 {
		t.Error("no kill landed inside a handler's transaction: the test proved nothing")
	}
	t.Logf("%d messages x2 through %d processes (%d SIGKILLs) in %v", crashMessages, r.Started(), len(killed), total.Round(time.Millisecond))
	t.Logf("decisions printed: %v; %d deliveries with a delivery count > 1", acts, redelivered)
	t.Logf("%s: applied once: %d; applied more than once (a stop between the effect's commit and the record's): %d %v", mode, once, twice, rerun)
	t.Logf("%d handler transactions rolled back by a kill (or the gentle stop)", interrupted)
}
