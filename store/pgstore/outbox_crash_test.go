package pgstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/crashtest"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The environment of a relay process of TestRelaySIGKILL.
const (
	relayChildSchemaEnv = "IDEM_PGSTORE_RELAY_SCHEMA" // set: this process is a relay
	relayChildURLEnv    = "IDEM_PGSTORE_RELAY_URL"
	relayChildIDEnv     = "IDEM_PGSTORE_RELAY_ID" // its RelayConfig.Name
)

const (
	relayCrashProcs    = 2 // relay processes at a time
	relayCrashKills    = 8
	relayCrashEntities = 20
	relayCrashTxs      = 30 // enqueue transactions per round of the chaos schedule
	relayCrashLease    = time.Second
)

// TestRelayChild is a relay process of TestRelaySIGKILL (this test binary
// re-executed with the relay environment); it skips otherwise. It relays
// the shared schema's outbox to the downstream table, an INSERT ... ON
// CONFLICT on its unique message_id that counts a conflict as a deduped
// duplicate (as a broker's dedup window does), then holds the publish for
// 5 to 25 ms of server time (a broker's round trip), until it is killed or
// its stdin (the parent's pipe) closes.
func TestRelayChild(t *testing.T) {
	schema := os.Getenv(relayChildSchemaEnv)
	if schema == "" {
		t.Skip("a relay process of TestRelaySIGKILL; runs only re-executed by it")
	}
	ctx, cancel := crashtest.ChildContext(2 * time.Minute)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(os.Getenv(relayChildURLEnv))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	s, err := New(pool, &Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	id := os.Getenv(relayChildIDEnv)
	downstream := s.q.schema + ".downstream"
	pub := PublisherFunc(func(ctx context.Context, m *OutboxMessage) error {
		if _, err := pool.Exec(ctx, `INSERT INTO `+downstream+` (message_id, entity, seq, relay) VALUES ($1, $2, $3, $4)
			ON CONFLICT (message_id) DO UPDATE SET dups = `+downstream+`.dups + 1`, m.ID, m.Entity, m.Seq, id); err != nil {
			return err
		}
		_, err := pool.Exec(ctx, `SELECT pg_sleep($1)`, 0.005+0.02*rand.Float64())
		return err
	})
	r := s.Relay(pub, &RelayConfig{Name: id, Lease: relayCrashLease, PollInterval: 50 * time.Millisecond, Batch: 20, Workers: 4,
		OnError: func(err error) { fmt.Fprintln(os.Stderr, "relay:", err) }})
	_ = r.Run(ctx)
	fmt.Fprintln(os.Stderr, "relay: stopped without being killed:", ctx.Err())
}

// TestRelaySIGKILL runs the relay in two processes (re-executions of this
// test binary, TestRelayChild) publishing to a downstream table with a
// unique message id, while the parent enqueues messages for 20 entities in
// transactions (every sixth rolled back). Eight times, as soon as the
// downstream grows (the active relay is mid-round), it SIGKILLs the
// process that holds the relay lease and starts a fresh one. In the end
// every committed message is downstream exactly once, no rolled-back one
// is, each entity's messages arrived in seq order, and the republished
// ones (published, not yet marked sent when their relay died) were
// absorbed as duplicates.
func TestRelaySIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash test starts relay processes")
	}
	t.Parallel()
	ctx := context.Background()
	url := servicetest.Postgres.Need(t)
	pool := sharedPool(t)
	schema := freshSchema(t, pool)
	s, err := New(pool, &Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	downstream := s.q.schema + ".downstream"
	if _, err := pool.Exec(ctx, `CREATE TABLE `+downstream+` (arrival bigserial PRIMARY KEY, message_id text NOT NULL UNIQUE,
		entity text NOT NULL, seq bigint NOT NULL, relay text NOT NULL, dups integer NOT NULL DEFAULT 0)`); err != nil {
		t.Fatal(err)
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 16))

	r := &crashtest.Runner{T: t, Prefix: "relay-", NameEnv: relayChildIDEnv, Args: []string{"-test.run=^TestRelayChild$"},
		Env: []string{relayChildSchemaEnv + "=" + schema, relayChildURLEnv + "=" + url}}
	procs := make([]*crashtest.Proc, relayCrashProcs)
	for i := range procs {
		procs[i] = r.Start()
	}
	count := func(sql string) int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	owner := func() string {
		rec, err := s.Get(ctx, &idem.KeyParams{Scope: RelayScope, Key: "outbox"})
		if err != nil || rec.State != idem.StatePending || rec.Checkpoint == nil {
			return ""
		}
		return string(rec.Checkpoint.Data)
	}

	committed := map[string]string{} // message id -> entity
	rolledBack := map[string]bool{}
	tx := 0
	enqueueRound := func() {
		for range relayCrashTxs {
			tx++
			commit := tx%6 != 0
			var ms []*OutboxMessage
			for j := range 1 + rng.IntN(3) {
				e := fmt.Sprintf("e%02d", rng.IntN(relayCrashEntities))
				ms = append(ms, &OutboxMessage{Parent: fmt.Sprintf("tx-%d", tx), Step: fmt.Sprintf("m%d", j), Entity: e, Subject: "orders"})
			}
			enqueue(t, s, commit, ms...)
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
	midRound := 0 // kills that left published rows unmarked or unsent rows behind
	for k := range relayCrashKills {
		before := count(`SELECT count(*) FROM ` + downstream)
		enqueueRound()
		// Wait for the active relay to be publishing this round, then kill it.
		grown := before + rng.IntN(5)
		crashtest.Until(t, 20*time.Second, fmt.Sprintf("round %d to be publishing", k+1),
			func() bool { return count(`SELECT count(*) FROM `+downstream) > grown }, r.Log)
		holder := owner()
		victim := rng.IntN(len(procs))
		for i, p := range procs {
			if p.Name == holder {
				victim = i
			}
		}
		r.Kill(procs[victim])
		unsent := count(`SELECT count(*) FROM ` + s.q.schema + `.outbox WHERE sent_at IS NULL`)
		if unsent > 0 {
			midRound++
		}
		t.Logf("kill %d at %v: %s (lease holder %q), %d rows unsent", k+1, time.Since(began).Round(time.Millisecond), procs[victim].Name, holder, unsent)
		procs[victim] = r.Start()
	}
	killsDone := time.Since(began)

	// Let the relays finish.
	crashtest.Until(t, 60*time.Second, "every row to be sent", func() bool {
		return count(`SELECT count(*) FROM `+s.q.schema+`.outbox WHERE sent_at IS NULL`) == 0
	}, r.Log)
	total := time.Since(began)

	// Downstream: each committed message once, in seq order per entity.
	rows, err := pool.Query(ctx, `SELECT message_id, entity, seq, dups FROM `+downstream+` ORDER BY arrival`)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	last := map[string]int64{}
	dups, republished := 0, 0
	for rows.Next() {
		var id, entity string
		var seq int64
		var d int
		if err := rows.Scan(&id, &entity, &seq, &d); err != nil {
			t.Fatal(err)
		}
		switch {
		case rolledBack[id]:
			t.Errorf("%s was rolled back but reached the downstream", id)
		case committed[id] != entity:
			t.Errorf("%s reached the downstream as entity %q, enqueued as %q", id, entity, committed[id])
		}
		if seq <= last[entity] {
			t.Errorf("entity %s: seq %d arrived after seq %d", entity, seq, last[entity])
		}
		last[entity] = seq
		seen[id] = true
		dups += d
		if d > 0 {
			republished++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for id := range committed {
		if !seen[id] {
			t.Errorf("%s committed but never reached the downstream", id)
		}
	}
	if len(seen) != len(committed) {
		t.Errorf("%d messages downstream, want the %d committed", len(seen), len(committed))
	}
	// The outbox agrees: every row sent, seqs of an entity 1..n.
	if n := count(`SELECT count(*) FROM ` + s.q.schema + `.outbox WHERE sent_at IS NOT NULL`); n != len(committed) {
		t.Errorf("%d outbox rows sent, want %d", n, len(committed))
	}
	if n := count(`SELECT count(*) FROM (SELECT entity FROM ` + s.q.schema + `.outbox GROUP BY entity HAVING max(seq) <> count(*)) g`); n != 0 {
		t.Errorf("%d entities have gaps in their seqs", n)
	}
	lease, err := s.Get(ctx, &idem.KeyParams{Scope: RelayScope, Key: "outbox"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d messages (%d rolled back) over %d entities, %d relay processes, %d SIGKILLs (%d mid-round, %d processes started) in %v; all sent after %v",
		len(committed), len(rolledBack), relayCrashEntities, relayCrashProcs, relayCrashKills, midRound, r.Started(),
		killsDone.Round(time.Millisecond), total.Round(time.Millisecond))
	t.Logf("%d messages published again after a kill (%d duplicate publishes in all), each absorbed by the downstream's unique id; the lease went through %d attempts",
		republished, dups, lease.Attempts)
	if dups == 0 {
		t.Error("no message was published twice: no kill landed between a publish and its mark, the test proved nothing")
	}
}
