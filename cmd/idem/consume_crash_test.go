package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem/broker/rabbitmq"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/internal/crashtest"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore/pgcrashtest"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
)

const (
	consumeCrashMessages = 200
	consumeCrashKills    = 6
)

// consumeCrashBroker is the broker side of runConsumeSIGKILL: the queue
// holding every message twice, as idem consume's --from.
type consumeCrashBroker struct {
	from string
	// drained reports that nothing is left to deliver or unacked, as far
	// as the broker tells.
	drained func() bool
	// leftover, once the sidecar stopped, returns how many messages the
	// broker holds again (what the stopped sidecar had prefetched).
	leftover func() int
	// deliveries describes the broker's delivery count, for the log.
	deliveries func() string
}

// TestConsumeSIGKILL kills the `idem consume` sidecar itself, over NATS
// JetStream and over RabbitMQ: 200 messages, each stored twice (NATS: the
// second copy past the stream's 100 ms duplicate window, with a durable
// consumer of 2 s AckWait made by the test; RabbitMQ: a quorum queue), are
// consumed by `idem consume` (the real binary, --store postgres with
// --lease 1s, 4 workers) into an HTTP service in the test. The service
// logs every request (its Idempotency-Key and the sidecar process that
// sent it) and applies the key's effect once, deduping by the
// Idempotency-Key, in one PostgreSQL transaction held 2 to 10 ms. Six
// times, once the current sidecar has had 10 to 40 requests, the service
// applies a request and SIGKILLs the sidecar before answering it (the
// service acted, the sidecar's ledger never recorded it: the one case the
// ledger cannot dedup), cutting the requests in flight with it, and the
// test starts a fresh sidecar. In the end every message's effect is
// applied exactly once, none lost; a key was requested again only after a
// request from a sidecar that was killed (never for a duplicate copy or a
// redelivery by a live one), and each forced key was requested again,
// deduped by the service.
func TestConsumeSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash test kills idem consume processes")
	}
	t.Parallel()
	t.Run("nats", func(t *testing.T) { runConsumeSIGKILL(t, consumeCrashNATS(t)) })
	t.Run("rabbitmq", func(t *testing.T) { runConsumeSIGKILL(t, consumeCrashRabbitMQ(t)) })
}

func consumeCrashIDs() []string {
	ids := make([]string, consumeCrashMessages)
	for i := range ids {
		ids[i] = fmt.Sprintf("m-%03d", i)
	}
	return ids
}

// consumeCrashNATS makes the stream, publishes every message twice and
// makes the durable consumer "crash".
func consumeCrashNATS(t *testing.T) *consumeCrashBroker {
	ctx := context.Background()
	raw, js, stream := natsStream(t, "IDEMCONSUMECRASH", 100*time.Millisecond)
	cons, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{Durable: "crash",
		AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1, AckWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(todo []string) (again []string) {
		for _, id := range todo {
			ack, err := js.Publish(ctx, stream+".orders", []byte("order "+id), jetstream.WithMsgID(id))
			if err != nil {
				t.Fatal(err)
			}
			if ack.Duplicate {
				again = append(again, id)
			}
		}
		return again
	}
	ids := consumeCrashIDs()
	if dup := publish(ids); len(dup) > 0 {
		t.Fatalf("first publishes taken for duplicates: %v", dup)
	}
	for again := ids; len(again) > 0; { // the second copies, past the duplicate window
		<-time.After(150 * time.Millisecond)
		again = publish(again)
	}
	info := func() *jetstream.ConsumerInfo {
		ci, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ci
	}
	return &consumeCrashBroker{
		from:     raw + "?stream=" + stream + "&consumer=crash",
		drained:  func() bool { ci := info(); return ci.NumPending == 0 && ci.NumAckPending == 0 },
		leftover: func() int { ci := info(); return int(ci.NumPending) + ci.NumAckPending },
		deliveries: func() string {
			return fmt.Sprintf("JetStream delivered %d times for %d stored messages", info().Delivered.Consumer, 2*consumeCrashMessages)
		},
	}
}

// consumeCrashRabbitMQ declares a quorum queue and publishes every
// message to it twice.
func consumeCrashRabbitMQ(t *testing.T) *consumeCrashBroker {
	ctx := context.Background()
	raw := servicetest.RabbitMQ.Need(t)
	conn, err := amqp.Dial(raw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	queue := fmt.Sprintf("idem-consume-crash-%d", time.Now().UnixNano())
	if err := rabbitmq.DeclareQueue(ch, queue, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = ch.QueueDelete(queue, false, false, false) })
	pub, err := rabbitmq.NewPublisher(ch)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		for _, id := range consumeCrashIDs() {
			if err := pub.Publish(ctx, "", &messaging.Message{ID: id, Subject: queue, Payload: []byte("order " + id)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	state := func() (ready, consumers int) {
		c, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		q, err := c.QueueDeclarePassive(queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
		if err != nil {
			t.Fatal(err)
		}
		return q.Messages, q.Consumers
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.RawQuery = "queue=" + url.QueryEscape(queue)
	return &consumeCrashBroker{
		from:    u.String(),
		drained: func() bool { ready, _ := state(); return ready == 0 },
		leftover: func() int {
			var ready int
			crashtest.Until(t, 30*time.Second, "the stopped sidecar to leave the queue", func() bool {
				var consumers int
				ready, consumers = state()
				return consumers == 0
			})
			return ready
		},
		deliveries: func() string { return "RabbitMQ does not count deliveries" },
	}
}

func runConsumeSIGKILL(t *testing.T, b *consumeCrashBroker) {
	ctx := context.Background()
	// The service's tables, in a schema of their own.
	pool, _, svc := pgcrashtest.Schema(t, "idem_consume_svc")
	sch := pgx.Identifier{svc}.Sanitize()
	if _, err := pool.Exec(ctx, `CREATE SCHEMA `+sch+`;
		CREATE TABLE `+sch+`.requests (seq bigserial PRIMARY KEY, key text NOT NULL, proc text NOT NULL);
		CREATE TABLE `+sch+`.effects (key text PRIMARY KEY, proc text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	store := pgSchemaURL(t, fmt.Sprintf("idem_consume_crash_%d", time.Now().UnixNano()%1e9))
	ids := consumeCrashIDs()

	// The service. A sidecar's requests go to /handle/NAME.
	var out crashtest.Lines
	r := &crashtest.Runner{T: t, Path: idemBin, Prefix: "s", Out: &out}
	var mu sync.Mutex
	var cur *crashtest.Proc
	perProc := map[string]int{} // requests answered 2xx, by sidecar
	armed := ""                 // the sidecar the next request kills
	forced := map[string]bool{} // keys applied by a request whose sidecar was then killed
	forcedKills := 0            // such kills; one key can be forced twice (redelivered to the next victim)
	killedOne := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.ReadAll(req.Body)
		proc := strings.TrimPrefix(req.URL.Path, "/handle/")
		key, present, err := idemhttp.ParseKey(req.Header)
		if !present || err != nil {
			http.Error(w, "no Idempotency-Key", http.StatusBadRequest)
			return
		}
		err = pgx.BeginFunc(req.Context(), pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(req.Context(), `INSERT INTO `+sch+`.requests (key, proc) VALUES ($1, $2)`, key, proc); err != nil {
				return err
			}
			if _, err := tx.Exec(req.Context(), `INSERT INTO `+sch+`.effects (key, proc) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, key, proc); err != nil {
				return err
			}
			_, err := tx.Exec(req.Context(), `SELECT pg_sleep($1)`, 0.002+0.008*rand.Float64())
			return err
		})
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		mu.Lock()
		perProc[proc]++
		if armed != "" && armed == proc && cur != nil && cur.Name == proc {
			// Applied; the sidecar dies before it hears so.
			armed = ""
			forced[key] = true
			forcedKills++
			victim := cur
			mu.Unlock()
			r.Kill(victim)
			killedOne <- struct{}{}
			return
		}
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)

	from := b.from
	start := func() {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		n := r.Started() + 1
		r.Args = []string{"consume", "--from", from, "--to", srv.URL + "/handle/s" + strconv.Itoa(n), "--store", store,
			"--migrate", "--lease", "1s", "--workers", "4", "--timeout", "5s", "--admin", "127.0.0.1:0"}
		cur = r.Start()
		if cur.Name != "s"+strconv.Itoa(n) {
			t.Fatalf("started %s, want s%d", cur.Name, n)
		}
	}
	started := func(n int) func() bool { // the n-th sidecar printed its consuming line
		return func() bool {
			c := 0
			for _, l := range out.All() {
				if strings.HasPrefix(l, "idem consume: consuming ") {
					c++
				}
			}
			return c >= n
		}
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 23))
	began := time.Now()
	start()
	for k := range consumeCrashKills {
		crashtest.Until(t, 30*time.Second, "the sidecar to start", started(k+1), r.Log)
		name := cur.Name
		threshold := 10 + rng.IntN(30)
		crashtest.Until(t, 30*time.Second, fmt.Sprintf("%d requests from %s", threshold, name), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return perProc[name] >= threshold
		}, r.Log)
		mu.Lock()
		armed = name
		mu.Unlock()
		select {
		case <-killedOne:
		case <-time.After(30 * time.Second):
			r.Log()
			t.Fatalf("kill %d: no request from %s after it was armed", k+1, name)
		}
		mu.Lock()
		t.Logf("kill %d at %v: %s, after %d requests", k+1, time.Since(began).Round(time.Millisecond), name, perProc[name])
		mu.Unlock()
		start()
	}
	crashtest.Until(t, 30*time.Second, "the last sidecar to start", started(consumeCrashKills+1), r.Log)

	// Wait until every message has its effect and the broker is drained.
	count := func(sql string) int {
		var n int
		if err := pool.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	applied := func() bool {
		return count(`SELECT count(*) FROM `+sch+`.effects`) >= consumeCrashMessages && b.drained()
	}
	crashtest.Until(t, 60*time.Second, "every effect applied and the broker drained", applied, r.Log)
	total := time.Since(began)
	// Stop the sidecar gently; what it had prefetched goes back to the
	// broker, and a fresh (never killed) one settles it.
	for round := 0; ; round++ {
		mu.Lock()
		last := cur
		mu.Unlock()
		if err := last.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := last.Stop(); err != nil {
			t.Errorf("idem consume %s: %v after SIGTERM, want exit 0; stderr:\n%s", last.Name, err, last.Stderr.String())
		}
		n := b.leftover()
		if n == 0 {
			break
		}
		if round == 3 {
			t.Fatalf("%d messages still in the broker after %d gentle stops", n, round+1)
		}
		t.Logf("%d deliveries back in the broker after the stop of %s: consuming them", n, last.Name)
		start()
		crashtest.Until(t, 30*time.Second, "the sidecar to start", started(r.Started()), r.Log)
		admin := ""
		for _, l := range out.All() { // the latest sidecar's admin line
			if a, ok := strings.CutPrefix(l, "idem consume: admin on http://"); ok {
				admin, _, _ = strings.Cut(a, " ")
			}
		}
		fresh := &consumeProc{admin: admin}
		crashtest.Until(t, 60*time.Second, fmt.Sprintf("the fresh sidecar to settle %d deliveries", n), func() bool {
			d := fresh.decisions(t)
			return d["ack"]+d["ack-duplicate"]+d["dead-letter"] >= n && applied()
		}, r.Log)
	}

	// Every effect applied once, for exactly the published ids.
	effects := map[string]bool{}
	rows, err := pool.Query(ctx, `SELECT key FROM `+sch+`.effects`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		effects[k] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if !effects[id] {
			t.Errorf("%s: never applied (lost)", id)
		}
	}
	if len(effects) != len(ids) {
		t.Errorf("%d keys applied, want %d", len(effects), len(ids))
	}

	// Every request, in commit order: a key comes back only after a
	// request from a killed sidecar.
	killed := r.Killed()
	reqs := map[string][]string{}
	rows, err = pool.Query(ctx, `SELECT key, proc FROM `+sch+`.requests ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var k, p string
		if err := rows.Scan(&k, &p); err != nil {
			t.Fatal(err)
		}
		reqs[k] = append(reqs[k], p)
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	repeated := 0
	for k, ps := range reqs {
		if len(ps) > 1 {
			repeated++
		}
		for _, p := range ps[:len(ps)-1] {
			if !killed[p] {
				t.Errorf("%s requested %d times (%v): after its request from %s, which was not killed", k, len(ps), ps, p)
			}
		}
	}
	for k := range forced {
		if len(reqs[k]) < 2 {
			t.Errorf("%s was applied by a sidecar killed before its answer, but was not requested again: %v", k, reqs[k])
		}
	}
	if forcedKills != consumeCrashKills {
		t.Errorf("%d kills forced between the service's effect and the sidecar's record, want %d", forcedKills, consumeCrashKills)
	}
	t.Logf("%d messages x 2 copies, %d SIGKILLs (%d sidecars) in %v", consumeCrashMessages, len(killed), r.Started(), total.Round(time.Millisecond))
	t.Logf("%d requests committed: %d keys requested more than once (each after a kill; %d of them killed between the effect and the record, deduped by the service's Idempotency-Key); %s",
		n, repeated, len(forced), b.deliveries())
}
