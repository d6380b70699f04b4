package pgcrashtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/crashtest"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The environment of a relay process.
const (
	schemaEnv = "IDEM_PGCRASHTEST_RELAY_SCHEMA" // set: this process is a relay
	pgEnv     = "IDEM_PGCRASHTEST_RELAY_PG"
	nameEnv   = "IDEM_PGCRASHTEST_RELAY_NAME" // its RelayConfig.Name
	brokerEnv = "IDEM_PGCRASHTEST_RELAY_BROKER"
)

// The headers the relay processes add to every message they publish, so
// the consumer can check each entity's order.
const (
	EntityHeader = "Outbox-Entity"
	SeqHeader    = "Outbox-Seq"
)

const (
	relays      = 2 // relay processes at a time
	kills       = 8
	entities    = 20
	roundTxs    = 30 // enqueue transactions before each kill
	relayLease  = time.Second
	downScope   = "downstream"
	childLimit  = 2 * time.Minute
	waitTimeout = 60 * time.Second
)

// PublishFunc publishes m to the broker and reports whether the broker
// took it for a duplicate of a message it holds (false where the broker
// cannot tell).
type PublishFunc func(ctx context.Context, m *pgstore.OutboxMessage) (dup bool, err error)

// IsRelayChild reports whether this process is a relay process started by RunRelay.
func IsRelayChild() bool { return os.Getenv(schemaEnv) != "" }

// RelayChild is the relay process's main; it returns the exit code. open
// makes the publisher from RelayTest.Broker (and a func to close it). The
// relay publishes the schema's outbox through it, adding EntityHeader and
// SeqHeader; after each publish it prints "pub ID PROC DUP" and holds the
// publish 5 to 25 ms more (a slow broker round trip), so that a kill lands
// between a publish and the relay's mark of the row as sent. It runs
// until it is killed or its stdin (the parent's pipe) closes.
func RelayChild(open func(ctx context.Context, broker string) (PublishFunc, func(), error)) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "relay:", err); return 2 }
	ctx, cancel := crashtest.ChildContext(childLimit)
	defer cancel()
	name := os.Getenv(nameEnv)
	pool, err := Pool(ctx, os.Getenv(pgEnv), 8)
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	s, err := pgstore.New(pool, &pgstore.Config{Schema: os.Getenv(schemaEnv)})
	if err != nil {
		return fail(err)
	}
	pub, closePub, err := open(ctx, os.Getenv(brokerEnv))
	if err != nil {
		return fail(err)
	}
	defer closePub()
	say := crashtest.Say()
	r := s.Relay(pgstore.PublisherFunc(func(ctx context.Context, m *pgstore.OutboxMessage) error {
		cp := *m
		cp.Headers = maps.Clone(m.Headers)
		if cp.Headers == nil {
			cp.Headers = map[string]string{}
		}
		cp.Headers[EntityHeader] = m.Entity
		cp.Headers[SeqHeader] = strconv.FormatInt(m.Seq, 10)
		dup, err := pub(ctx, &cp)
		if err != nil {
			return err
		}
		say("pub %s %s %t", m.ID, name, dup)
		select {
		case <-time.After(time.Duration(5+rand.IntN(20)) * time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}), &pgstore.RelayConfig{Name: name, Lease: relayLease, PollInterval: 50 * time.Millisecond, Batch: 20, Workers: 4,
		OnError: func(err error) { fmt.Fprintln(os.Stderr, "relay:", err) }})
	if err := r.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fail(err)
	}
	return 0
}

// Downstream is the count table the test's consumer applies messages to.
type Downstream struct {
	// Store is the pgstore of the test's schema, for a ledger.
	Store *pgstore.Store

	t       testing.TB
	pool    *pgxpool.Pool
	table   string
	mu      sync.Mutex
	settled map[string]int
}

// Apply applies m once more: the count of m.ID goes up by one (the first
// application records the entity and seq of the message's EntityHeader
// and SeqHeader, and its place in the order of first applications).
func (d *Downstream) Apply(ctx context.Context, m *messaging.Message) error {
	seq, err := strconv.ParseInt(m.Headers[SeqHeader], 10, 64)
	if err != nil {
		return messaging.Permanent(fmt.Errorf("message %q: header %s: %w", m.ID, SeqHeader, err))
	}
	_, err = d.pool.Exec(ctx, `INSERT INTO `+d.table+` (msg_id, entity, seq, n) VALUES ($1, $2, $3, 1)
		ON CONFLICT (msg_id) DO UPDATE SET n = `+d.table+`.n + 1`, m.ID, m.Headers[EntityHeader], seq)
	return err
}

// Consumer returns a messaging.Consumer whose handler is Apply, over a
// pgstore ledger in the test's schema (scope "downstream"): the consumer
// dedups what the broker delivers more than once.
func (d *Downstream) Consumer() *messaging.Consumer {
	ledger, err := idem.New(d.Store, nil)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { ledger.Close() })
	c, err := messaging.NewConsumer(ledger, d.Apply, &messaging.Config{Scope: downScope})
	if err != nil {
		d.t.Fatal(err)
	}
	return c
}

// Settled counts a decision of the consumer (call it from the adapter's
// OnDecision); RelayResult.Settled reports the counts by action.
func (d *Downstream) Settled(dec messaging.Decision) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.settled[dec.Action.String()]++
}

func (d *Downstream) settledTotal() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, v := range d.settled {
		n += v
	}
	return n
}

// RelayTest describes the broker side of RunRelay.
type RelayTest struct {
	// Broker is handed to RelayChild's open in every relay process (a URL, a
	// stream or queue name...).
	Broker string
	// Subject is every message's OutboxMessage.Subject.
	Subject string
	// Consume runs the consumer in the test process until ctx ends,
	// applying each delivered message through d (d.Apply, or
	// d.Consumer() to dedup through the ledger). Deliveries must be
	// handled one at a time, in the broker's order.
	Consume func(ctx context.Context, d *Downstream) error
	// Drained reports that the broker has nothing left for the consumer
	// to settle.
	Drained func() bool
	// Leftover, if set, is called once the consumer stopped: it returns
	// how many deliveries the broker holds again that the stopped
	// consumer had received and not settled (prefetched), and RunRelay
	// consumes again until that many more are settled, before it checks
	// the counts. For a broker whose Drained cannot see them.
	Leftover func() int
	// ChildTest, when set, names the test function that calls
	// RelayChild in the relay processes (for a package whose TestMain
	// cannot: pgstore's own external tests); empty means TestMain does.
	ChildTest string
	// BrokerDedup says the broker drops a republished copy (a JetStream
	// duplicate window): every publish of an id after its first printed
	// one must be reported a duplicate by the broker.
	BrokerDedup bool
}

// RelayResult is what RunRelay counted.
type RelayResult struct {
	// Messages is the number of messages committed to the outbox;
	// RolledBack, of messages enqueued in transactions rolled back.
	Messages, RolledBack int
	// Kills is the number of SIGKILLs, MidRound of those that left
	// rows unsent, Started the relay processes started.
	Kills, MidRound, Started int
	// Publishes is the number of publishes the relays printed (a kill can
	// eat the line of the publish it cut short).
	Publishes int
	// Repeated is the number of message ids published more than once,
	// Republishes the number of publishes of an id after its first.
	Repeated, Republishes int
	// BrokerDups is the number of publishes the broker reported as
	// duplicates.
	BrokerDups int
	// Settled counts the consumer's decisions by action, as reported
	// through Downstream.Settled.
	Settled map[string]int
	// Elapsed is the time from the first enqueue to the last application.
	Elapsed time.Duration
}

// RunRelay runs the relay crash test: a fresh PostgreSQL schema with the outbox and the
// count table, the consumer (RelayTest.Consume) in this process, two relay
// processes. Eight times it enqueues 30 transactions of 1 to 3 messages
// for 20 entities (every sixth rolled back), waits until a relay prints a
// publish of that round, and SIGKILLs that relay 0 to 15 ms later,
// starting a fresh one in its place. Then it waits until every outbox row
// is sent, every committed message applied and the broker drained, and
// checks: every committed message applied exactly once (count 1), none
// rolled back applied, each entity's first applications in seq order,
// every outbox row sent with seqs 1..n per entity, at least one message
// published again after a kill (with BrokerDedup, each such publish
// reported a duplicate by the broker).
func RunRelay(t *testing.T, cfg *RelayTest) *RelayResult {
	t.Helper()
	ctx := context.Background()
	pool, pgURL, schema := Schema(t, "idem_relaycrash")
	sch := pgx.Identifier{schema}.Sanitize()
	s, err := pgstore.New(pool, &pgstore.Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	d := &Downstream{Store: s, t: t, pool: pool, table: sch + ".counts", settled: map[string]int{}}
	if _, err := pool.Exec(ctx, `CREATE TABLE `+d.table+` (arrival bigserial PRIMARY KEY, msg_id text NOT NULL UNIQUE,
		entity text NOT NULL, seq bigint NOT NULL, n integer NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	count := func(sql string) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	unsent := func() int { return count(`SELECT count(*) FROM ` + sch + `.outbox WHERE sent_at IS NULL`) }

	consume := func() (stop func()) {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- cfg.Consume(cctx, d) }()
		var once sync.Once
		stop = func() {
			once.Do(func() {
				cancel()
				if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
					t.Errorf("the consumer returned %v", err)
				}
			})
		}
		t.Cleanup(stop)
		return stop
	}
	stopConsumer := consume()

	rng := crashtest.Rand(t, 17)
	out := crashtest.Lines{Notify: make(chan string, 4096)}
	var args []string
	if cfg.ChildTest != "" {
		args = []string{"-test.run=^" + cfg.ChildTest + "$"}
	}
	r := &crashtest.Runner{T: t, Prefix: "relay-", NameEnv: nameEnv, Out: &out, Args: args,
		Env: []string{schemaEnv + "=" + schema, pgEnv + "=" + pgURL, brokerEnv + "=" + cfg.Broker}}
	procs := make([]*crashtest.Proc, relays)
	for i := range procs {
		procs[i] = r.Start()
	}

	res := &RelayResult{}
	committed := map[string]string{} // message id -> entity
	rolledBack := map[string]bool{}
	tx := 0
	enqueueRound := func() {
		for range roundTxs {
			tx++
			commit := tx%6 != 0
			btx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var ms []*pgstore.OutboxMessage
			for j := range 1 + rng.IntN(3) {
				m := &pgstore.OutboxMessage{Parent: fmt.Sprintf("tx-%d", tx), Step: fmt.Sprintf("m%d", j),
					Entity: fmt.Sprintf("e%02d", rng.IntN(entities)), Subject: cfg.Subject, Payload: []byte(fmt.Sprintf("tx %d message %d", tx, j))}
				if err := s.Enqueue(ctx, btx, m); err != nil {
					t.Fatal(err)
				}
				ms = append(ms, m)
			}
			if commit {
				err = btx.Commit(ctx)
			} else {
				err = btx.Rollback(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				if commit {
					committed[m.ID] = m.Entity
				} else {
					rolledBack[m.ID] = true
				}
			}
		}
	}
	began := time.Now()
	for k := range kills {
		for len(out.Notify) > 0 { // lines of earlier rounds
			<-out.Notify
		}
		enqueueRound()
		// Wait for a relay to publish a message of this round, then kill it.
		victim := -1
		timeout := time.After(20 * time.Second)
		for victim < 0 {
			select {
			case l := <-out.Notify:
				f := strings.Fields(l)
				if len(f) != 4 || f[0] != "pub" {
					continue
				}
				for i, p := range procs {
					if p.Name == f[2] {
						victim = i
					}
				}
			case <-timeout:
				r.Log()
				t.Fatalf("round %d: no relay published within 20 s", k+1)
			}
		}
		<-time.After(time.Duration(rng.IntN(15)) * time.Millisecond) // mid-publish
		r.Kill(procs[victim])
		n := unsent()
		if n > 0 {
			res.MidRound++
		}
		t.Logf("kill %d at %v: %s, %d rows unsent", k+1, time.Since(began).Round(time.Millisecond), procs[victim].Name, n)
		procs[victim] = r.Start()
	}
	res.Kills = kills

	// Let the relays and the consumer finish.
	crashtest.Until(t, waitTimeout, "every outbox row to be sent", func() bool { return unsent() == 0 }, r.Log)
	crashtest.Until(t, waitTimeout, "every committed message to be applied and the broker drained", func() bool {
		return count(`SELECT count(*) FROM `+d.table) >= len(committed) && cfg.Drained()
	}, r.Log)
	for _, p := range procs {
		if err := p.Stop(); err != nil {
			t.Errorf("relay %s: %v: %s", p.Name, err, p.Stderr.String())
		}
	}
	stopConsumer()
	if cfg.Leftover != nil {
		if n := cfg.Leftover(); n > 0 {
			// What the stopped consumer held, back in the broker: settle it.
			t.Logf("%d deliveries left when the consumer stopped: consuming them", n)
			before := d.settledTotal()
			stop := consume()
			crashtest.Until(t, waitTimeout, "the leftover deliveries to be settled", func() bool { return d.settledTotal() >= before+n })
			stop()
		}
	}
	res.Elapsed = time.Since(began)

	// The count table: each committed message once, in seq order per entity.
	rows, err := pool.Query(ctx, `SELECT msg_id, entity, seq, n FROM `+d.table+` ORDER BY arrival`)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	last := map[string]int64{}
	for rows.Next() {
		var id, entity string
		var seq int64
		var n int
		if err := rows.Scan(&id, &entity, &seq, &n); err != nil {
			t.Fatal(err)
		}
		switch {
		case rolledBack[id]:
			t.Errorf("%s was rolled back but was applied", id)
		case committed[id] != entity:
			t.Errorf("%s applied as entity %q, enqueued as %q", id, entity, committed[id])
		}
		if n != 1 {
			t.Errorf("%s applied %d times, want exactly once", id, n)
		}
		if seq <= last[entity] {
			t.Errorf("entity %s: seq %d first applied after seq %d", entity, seq, last[entity])
		}
		last[entity] = seq
		seen[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for id := range committed {
		if !seen[id] {
			t.Errorf("%s committed but never applied: lost", id)
		}
	}
	if n := count(`SELECT count(*) FROM ` + sch + `.outbox WHERE sent_at IS NOT NULL`); n != len(committed) {
		t.Errorf("%d outbox rows sent, want %d", n, len(committed))
	}
	if n := count(`SELECT count(*) FROM (SELECT entity FROM ` + sch + `.outbox GROUP BY entity HAVING max(seq) <> count(*)) g`); n != 0 {
		t.Errorf("%d entities have gaps in their outbox seqs", n)
	}

	// What the relays printed: every publish, in order.
	pubs := map[string]int{}
	for _, l := range out.All() {
		f := strings.Fields(l)
		if len(f) != 4 || f[0] != "pub" {
			t.Fatalf("a relay printed %q", l)
		}
		res.Publishes++
		pubs[f[1]]++
		dup := f[3] == "true"
		if dup {
			res.BrokerDups++
		}
		if pubs[f[1]] > 1 {
			res.Republishes++
			if pubs[f[1]] == 2 {
				res.Repeated++
			}
			if cfg.BrokerDedup && !dup {
				t.Errorf("%s published again by %s and the broker did not report a duplicate", f[1], f[2])
			}
		}
	}
	d.mu.Lock()
	res.Settled = maps.Clone(d.settled)
	d.mu.Unlock()
	res.Messages, res.RolledBack, res.Started = len(committed), len(rolledBack), r.Started()
	t.Logf("%d messages (%d rolled back) over %d entities, %d relay processes, %d SIGKILLs (%d mid-round, %d processes started); all applied after %v",
		res.Messages, res.RolledBack, entities, relays, res.Kills, res.MidRound, res.Started, res.Elapsed.Round(time.Millisecond))
	t.Logf("%d publishes printed: %d messages published again after a kill (%d repeated publishes), %d reported duplicate by the broker; consumer decisions %v",
		res.Publishes, res.Repeated, res.Republishes, res.BrokerDups, res.Settled)
	if res.Republishes == 0 {
		t.Error("no message was published again after a kill: no kill landed between a publish and its mark, the test proved nothing")
	}
	return res
}
