package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem/broker/rabbitmq"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
)

// idem relay publishes rows enqueued in PostgreSQL transactions to NATS:
// each row reaches the stream once with its id as Nats-Msg-Id (one was
// published before, as by a relay that died before marking it: the
// stream's dedup drops the republish), in seq order per entity; every row
// is marked sent; SIGTERM exits 0.
func TestRelayNATS(t *testing.T) {
	natsURL := servicetest.NATS.Need(t)
	storeURL, schema, pool, store := outboxStore(t, "idem_relay")
	ctx := context.Background()

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream := fmt.Sprintf("IDEMRELAY_%d", time.Now().UnixNano())
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{stream + ".>"},
		Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), stream) })

	// Three entities, five messages each, interleaved over five
	// transactions.
	const entities, perEntity = 3, 5
	for seq := range perEntity {
		var msgs []*pgstore.OutboxMessage
		for e := range entities {
			id := fmt.Sprintf("e%d/%d", e, seq)
			msgs = append(msgs, &pgstore.OutboxMessage{ID: id, Entity: fmt.Sprintf("e%d", e),
				Subject: fmt.Sprintf("%s.e%d", stream, e), Payload: []byte(id), Headers: map[string]string{"Entity": fmt.Sprint(e)}})
		}
		enqueue(t, pool, store, msgs...)
	}
	// e1/0 reached the stream already, unmarked.
	early := nats.NewMsg(stream + ".e1")
	early.Data = []byte("e1/0")
	early.Header.Set("Entity", "1")
	if _, err := js.PublishMsg(ctx, early, jetstream.WithMsgID("e1/0")); err != nil {
		t.Fatal(err)
	}

	p, err := spawn(t, t.TempDir(), "relay", "--store", storeURL, "--to", natsURL, "--interval", "50ms", "--log-level", "debug")
	if err != nil {
		t.Fatal(err)
	}
	if line := p.next(t); !strings.HasPrefix(line, "idem relay: relaying the outbox of ") {
		t.Fatalf("first line %q; stderr:\n%s", line, p.stderr)
	}

	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	total := entities * perEntity
	var got []jetstream.Msg
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < total && time.Now().Before(deadline) {
		batch, err := cons.Fetch(total-len(got), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			got = append(got, m)
		}
	}
	if len(got) != total {
		t.Fatalf("%d messages in the stream after 30s, want %d; stderr:\n%s", len(got), total, p.stderr)
	}
	next := map[string]int{} // entity -> next seq expected
	for _, m := range got {
		id := m.Headers().Get(jetstream.MsgIDHeader)
		if string(m.Data()) != id {
			t.Errorf("message %q has payload %q", id, m.Data())
		}
		entity, seq, _ := strings.Cut(id, "/")
		if seq != fmt.Sprint(next[entity]) {
			t.Errorf("entity %s: got %s, want seq %d next (per-entity order)", entity, id, next[entity])
		}
		next[entity]++
		if m.Subject() != stream+"."+entity || m.Headers().Get("Entity") != strings.TrimPrefix(entity, "e") {
			t.Errorf("message %s: subject %s, headers %v", id, m.Subject(), m.Headers())
		}
	}

	// Every row marked sent.
	waitAllSent(t, pool, schema, p)
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("idem relay exited %d after SIGTERM; stderr:\n%s", code, p.stderr)
	}
	var last string
	for line := range p.lines {
		last = line
	}
	if !strings.Contains(last, "stopped") {
		t.Errorf("last line %q, want the stop line", last)
	}
	info, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	if n := info.CachedInfo().State.Msgs; n != uint64(total) {
		t.Errorf("stream holds %d messages, want %d (the republish of e1/0 dropped)", n, total)
	}
	if n := strings.Count(p.stderr.String(), "msg=published"); n != total || !strings.Contains(p.stderr.String(), "msg=published id=e1/0 ") {
		t.Errorf("%d debug lines of a publish, want %d, e1/0 among them (published again); stderr:\n%s", n, total, p.stderr)
	}
}

// idem relay to RabbitMQ: rows go through the default exchange to the
// queue their subject names, with their id as message-id and their
// headers, in seq order per entity, persistent.
func TestRelayRabbitMQ(t *testing.T) {
	amqpURL, _, ch, queue := rabbitQueue(t, "idem-relay", false)
	storeURL, schema, pool, store := outboxStore(t, "idem_relayq")

	const total = 6
	var msgs []*pgstore.OutboxMessage
	for i := range total {
		msgs = append(msgs, &pgstore.OutboxMessage{ID: fmt.Sprintf("q/%d", i), Entity: "acct-1", Subject: queue,
			Payload: []byte(fmt.Sprint(i)), Headers: map[string]string{"Account": "1"}})
	}
	enqueue(t, pool, store, msgs...)

	p, err := spawn(t, t.TempDir(), "relay", "--store", storeURL, "--to", amqpURL+"?exchange=", "--interval", "50ms")
	if err != nil {
		t.Fatal(err)
	}
	if line := p.next(t); !strings.HasPrefix(line, "idem relay: relaying the outbox of ") {
		t.Fatalf("first line %q; stderr:\n%s", line, p.stderr)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range total {
		select {
		case d := <-deliveries:
			if want := fmt.Sprintf("q/%d", i); d.MessageId != want || string(d.Body) != fmt.Sprint(i) ||
				d.Headers["Account"] != "1" || d.DeliveryMode != amqp.Persistent {
				t.Errorf("delivery %d: id %q body %q headers %v mode %d; want %s in order, persistent", i, d.MessageId, d.Body, d.Headers, d.DeliveryMode, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d messages after 30s; stderr:\n%s", i, total, p.stderr)
		}
	}
	waitAllSent(t, pool, schema, p)
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("idem relay exited %d after SIGTERM; stderr:\n%s", code, p.stderr)
	}
	select {
	case d := <-deliveries:
		t.Errorf("an extra delivery %q", d.MessageId)
	default:
	}
}

// outboxStore makes a fresh schema on the test PostgreSQL (the test skips
// without it), PREFIX and a number, dropped when t ends, with the store
// migrated into it. It returns the schema's store URL for idem, the
// schema, a pool (closed when t ends) and the pgstore over it.
func outboxStore(t *testing.T, prefix string) (storeURL, schema string, pool *pgxpool.Pool, store *pgstore.Store) {
	t.Helper()
	schema = fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano()%1e9)
	storeURL = pgSchemaURL(t, schema)
	pool, err := pgxpool.New(context.Background(), servicetest.Postgres.Need(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err = pgstore.New(pool, &pgstore.Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	return storeURL, schema, pool, store
}

// enqueue commits msgs to store's outbox in one transaction.
func enqueue(t *testing.T, pool *pgxpool.Pool, store *pgstore.Store, msgs ...*pgstore.OutboxMessage) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if err := store.Enqueue(ctx, tx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// rabbitQueue dials the test RabbitMQ (the test skips without it), opens
// a channel and declares a fresh quorum queue, PREFIX and a number (with
// dead, and a dead-letter queue, its name and ".dead"). When t ends it
// deletes them and closes the connection. It returns the broker's URL.
func rabbitQueue(t *testing.T, prefix string, dead bool) (raw string, conn *amqp.Connection, ch *amqp.Channel, queue string) {
	t.Helper()
	raw = servicetest.RabbitMQ.Need(t)
	conn, err := amqp.Dial(raw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err = conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	queue = fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
	var opts *rabbitmq.QueueOptions
	if dead {
		opts = &rabbitmq.QueueOptions{DeadLetterQueue: queue + ".dead"}
	}
	if err := rabbitmq.DeclareQueue(ch, queue, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = ch.QueueDelete(queue, false, false, false)
		if dead {
			_, _ = ch.QueueDelete(queue+".dead", false, false, false)
		}
		_ = ch.Close()
	})
	return raw, conn, ch, queue
}

// waitAllSent waits until every outbox row of schema is marked sent.
func waitAllSent(t *testing.T, pool *pgxpool.Pool, schema string, p *proc) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		var unsent int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM `+schema+`.outbox WHERE sent_at IS NULL`).Scan(&unsent); err != nil {
			t.Fatal(err)
		}
		if unsent == 0 {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%d rows still unsent after 30s; stderr:\n%s", unsent, p.stderr)
		}
	}
}
