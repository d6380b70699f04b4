// Package pgcrashtest is the PostgreSQL side of the real-process crash
// tests that several modules share (the process side is the root module's
// internal/crashtest): a fresh schema per test, a ledger store that
// commits a handler's business transaction with the key's outcome, and the
// outbox relay SIGKILL test that each broker adapter runs against its
// broker (RunRelay). It is test support, with no use in production.
//
// A broker's test package wires the relay test up in two places:
//
//	func TestMain(m *testing.M) {
//		if pgcrashtest.IsRelayChild() {
//			os.Exit(pgcrashtest.RelayChild(openPublisher)) // a relay process
//		}
//		os.Exit(m.Run())
//	}
//
//	res := pgcrashtest.RunRelay(t, &pgcrashtest.RelayTest{Broker: ..., Subject: ..., Consume: ..., Drained: ...})
//
// The consumer SIGKILL test of a broker adapter runs the adapter's Consume
// in processes that the test SIGKILLs again and again, feeding a
// messaging.Consumer whose handler writes a row per run into an effects
// table, in the transaction that commits with the key's outcome
// (ConsumerProcess). The PostgreSQL side is here; the broker's test
// publishes, schedules the kills and waits for its broker to settle:
//
//	func TestMain(m *testing.M) {
//		if pgcrashtest.IsConsumerChild() {
//			os.Exit(crashChild()) // NewConsumerProcess, then the adapter's Consume
//		}
//		...
//	}
//
//	ct := pgcrashtest.NewConsumerTest(t, "idem_broker", messages)
//	proc := ct.Start(brokerEnv...) // publish; proc = ct.Runner.Restart(proc); wait on ct.Applied()
//	ct.Check()
package pgcrashtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/crashtest"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var schemaSeq atomic.Int64

// Schema returns a pool on the test PostgreSQL (servicetest.Postgres: the
// test skips without it), its URL and the name of a fresh schema, PREFIX
// followed by numbers, that t's cleanup drops (with CASCADE; the pool
// closes after). The schema is not created: pgstore.New with Migrate, or
// the caller, does.
func Schema(t testing.TB, prefix string) (pool *pgxpool.Pool, url, schema string) {
	t.Helper()
	url = servicetest.Postgres.Need(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close) // after the schema's drop
	schema = fmt.Sprintf("%s_%d_%d", prefix, time.Now().UnixNano()%1e9, schemaSeq.Add(1))
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return pool, url, schema
}

// TxSlot carries a delivery's business transaction from the handler to
// the ledger's Complete, so that the effect and the record commit
// together. Put one in the delivery's context with WithTxSlot; the handler
// sets Tx to the transaction it began and leaves open.
type TxSlot struct{ Tx pgx.Tx }

type slotKey struct{}

// WithTxSlot returns ctx carrying slot.
func WithTxSlot(ctx context.Context, slot *TxSlot) context.Context {
	return context.WithValue(ctx, slotKey{}, slot)
}

// TxSlotFrom returns the slot ctx carries, or nil.
func TxSlotFrom(ctx context.Context) *TxSlot {
	slot, _ := ctx.Value(slotKey{}).(*TxSlot)
	return slot
}

// RollbackOpen rolls back a transaction the handling left in slot (its
// lease was lost, so the ledger never completed it) and empties the slot.
func (slot *TxSlot) RollbackOpen(ctx context.Context) {
	if slot != nil && slot.Tx != nil {
		_ = slot.Tx.Rollback(ctx)
		slot.Tx = nil
	}
}

// TxStore is the pgstore ledger with one change: a Complete made while
// the context's TxSlot holds an open business transaction runs in it
// (CompleteTx) and commits it; a Release rolls it back first. So the
// handler's writes commit iff the key's outcome does: exactly once.
type TxStore struct{ *pgstore.Store }

// Complete records the outcome, in the slot's transaction if there is one,
// and commits it.
func (s TxStore) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	slot := TxSlotFrom(ctx)
	if slot == nil || slot.Tx == nil {
		return s.Store.Complete(ctx, p)
	}
	tx := slot.Tx
	slot.Tx = nil
	rec, err := s.Store.CompleteTx(ctx, tx, p)
	if err != nil {
		_ = tx.Rollback(ctx)
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	return rec, nil
}

// Release rolls back the slot's transaction, if any, and releases the key.
func (s TxStore) Release(ctx context.Context, p *idem.ReleaseParams) error {
	TxSlotFrom(ctx).RollbackOpen(ctx)
	return s.Store.Release(ctx, p)
}

// Pool opens a pool of at most maxConns connections on url, for a child
// process (which has no testing.T to fail).
func Pool(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = maxConns
	return pgxpool.NewWithConfig(ctx, cfg)
}

// Counts runs query, whose rows are (text, integer), and returns them as a
// map.
func Counts(t testing.TB, pool *pgxpool.Pool, query string) map[string]int {
	t.Helper()
	rs, err := pool.Query(context.Background(), query)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	m := map[string]int{}
	for rs.Next() {
		var k string
		var n int
		if err := rs.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		m[k] = n
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

// CheckAppliedOnce checks a consumer crash test's outcome: the effects
// table (columns msg_id, one row per application) holds exactly one row
// for each of ids and none for any other id, and the ledger over s has
// each id's key in scope completed by messaging.Consumer ("handled").
func CheckAppliedOnce(t testing.TB, pool *pgxpool.Pool, effects string, s idem.Store, scope string, ids []string) {
	t.Helper()
	ctx := context.Background()
	rows := Counts(t, pool, `SELECT msg_id, count(*) FROM `+effects+` GROUP BY msg_id`)
	ledger, err := idem.New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if rows[id] != 1 {
			t.Errorf("%s: %d rows, want exactly 1", id, rows[id])
		}
		rec, err := ledger.Get(ctx, scope, id)
		if err != nil || rec.State != idem.StateCompleted || rec.Outcome == nil || rec.Outcome.Meta["messaging"] != "handled" {
			t.Errorf("%s: ledger record %+v (%v), want completed as handled", id, rec, err)
		}
	}
	if len(rows) != len(ids) {
		t.Errorf("%d distinct ids in effects, want %d", len(rows), len(ids))
	}
}

// The PostgreSQL part of the environment of a consumer process of a
// ConsumerTest (the broker adds its own).
const (
	consumerSchemaEnv = "IDEM_PGCRASHTEST_CONSUMER_SCHEMA" // set: this process is a consumer
	consumerPGEnv     = "IDEM_PGCRASHTEST_CONSUMER_PG"
	consumerNameEnv   = "IDEM_PGCRASHTEST_CONSUMER_NAME" // its Runner name, in effects.proc
)

const (
	// ConsumerScope is the scope of the consumer processes' keys.
	ConsumerScope = "orders"
	// ConsumerLease is the lease of the consumer processes' ledger: a
	// killed owner's keys free up after it.
	ConsumerLease = time.Second
)

// IsConsumerChild reports whether this process is a consumer process
// started by ConsumerTest.Start (or a Restart of its Runner).
func IsConsumerChild() bool { return os.Getenv(consumerSchemaEnv) != "" }

// MessageID is the id of the test's message i: "m-" and i in three digits.
func MessageID(i int) string { return fmt.Sprintf("m-%03d", i) }

// ConsumerProcess is the PostgreSQL side of a consumer process.
type ConsumerProcess struct {
	// Name is the process's name (its Runner name).
	Name string
	// Consumer is the messaging.Consumer to feed: scope ConsumerScope,
	// up to 50 attempts 100 ms apart, over a TxStore ledger (lease
	// ConsumerLease) in the test's schema. Its handler needs a TxSlot in
	// the delivery's context (WithTxSlot; a missing one is a permanent
	// error): it prints "run ID DELIVERY NAME", begins a transaction,
	// inserts (ID, NAME) into effects and holds the transaction for 2 to
	// 10 ms of pg_sleep, and leaves it in the slot for the ledger's
	// Complete to commit. A transaction a handling leaves in the slot
	// (its lease was lost) is the caller's to roll back
	// (TxSlot.RollbackOpen).
	Consumer *messaging.Consumer
	// Say prints a whole line on the process's stdout, which the test
	// collects: the adapter's OnDecision prints "settled ID ACTION NAME".
	Say func(format string, args ...any)
}

// NewConsumerProcess sets up a consumer process from its environment, over
// a pool of at most maxConns connections (0: pgx's default).
func NewConsumerProcess(ctx context.Context, maxConns int32) (*ConsumerProcess, error) {
	schema := os.Getenv(consumerSchemaEnv)
	var pool *pgxpool.Pool
	var err error
	if maxConns > 0 {
		pool, err = Pool(ctx, os.Getenv(consumerPGEnv), maxConns)
	} else {
		pool, err = pgxpool.New(ctx, os.Getenv(consumerPGEnv))
	}
	if err != nil {
		return nil, err
	}
	s, err := pgstore.New(pool, &pgstore.Config{Schema: schema})
	if err != nil {
		return nil, err
	}
	ledger, err := idem.New(TxStore{Store: s}, &idem.Config{Lease: ConsumerLease})
	if err != nil {
		return nil, err
	}
	p := &ConsumerProcess{Name: os.Getenv(consumerNameEnv), Say: crashtest.Say()}
	effects := pgx.Identifier{schema, "effects"}.Sanitize()
	p.Consumer, err = messaging.NewConsumer(ledger, func(ctx context.Context, m *messaging.Message) error {
		slot := TxSlotFrom(ctx)
		if slot == nil {
			return messaging.Permanent(fmt.Errorf("no transaction slot"))
		}
		p.Say("run %s %d %s", m.ID, m.Delivery, p.Name)
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+effects+` (msg_id, proc) VALUES ($1, $2)`, m.ID, p.Name); err != nil {
			_ = tx.Rollback(ctx)
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_sleep($1)`, 0.002+0.008*rand.Float64()); err != nil {
			_ = tx.Rollback(ctx)
			return err
		}
		slot.Tx = tx // committed by the ledger's Complete
		return nil
	}, &messaging.Config{Scope: ConsumerScope, MaxAttempts: 50, Backoff: func(int) time.Duration { return 100 * time.Millisecond }})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// OnError prints a consumer's error on stderr, for the adapter's
// Options.OnError.
func (p *ConsumerProcess) OnError(err error) { fmt.Fprintln(os.Stderr, "consumer:", err) }

// Stopped reports on stderr that the adapter's Consume returned err
// although the process was not killed, and returns the exit code 3.
func (p *ConsumerProcess) Stopped(err error) int {
	fmt.Fprintln(os.Stderr, "consumer: stopped without being killed:", err)
	return 3
}

// ConsumerTest is the test side of a consumer SIGKILL test: a fresh
// schema with the ledger and the effects table (msg_id, proc; no unique
// constraint), and the Runner of the consumer processes.
type ConsumerTest struct {
	Pool  *pgxpool.Pool
	Store *pgstore.Store
	// Effects is the effects table's name, sanitized.
	Effects string
	// Out collects what the processes print; set Out.Notify before Start
	// to see the lines as they come.
	Out crashtest.Lines
	// Runner starts the consumer processes, c1, c2...: Start the first
	// with ConsumerTest.Start, then Restart.
	Runner *crashtest.Runner

	t        testing.TB
	url      string
	schema   string
	messages int
}

// NewConsumerTest makes the schema (named after prefix) for a test of
// messages messages, MessageID(0) to MessageID(messages-1). It skips the
// test with -short.
func NewConsumerTest(t testing.TB, prefix string, messages int) *ConsumerTest {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the crash test starts consumer processes")
	}
	pool, url, schema := Schema(t, prefix)
	s, err := pgstore.New(pool, &pgstore.Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	effects := pgx.Identifier{schema, "effects"}.Sanitize()
	if _, err := pool.Exec(context.Background(), `CREATE TABLE `+effects+` (msg_id text NOT NULL, proc text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	ct := &ConsumerTest{Pool: pool, Store: s, Effects: effects, t: t, url: url, schema: schema, messages: messages}
	ct.Runner = &crashtest.Runner{T: t, Prefix: "c", NameEnv: consumerNameEnv, Out: &ct.Out}
	return ct
}

// Start starts the first consumer process; env is the broker's part of
// the environment of every consumer process.
func (ct *ConsumerTest) Start(env ...string) *crashtest.Proc {
	ct.t.Helper()
	ct.Runner.Env = append([]string{consumerSchemaEnv + "=" + ct.schema, consumerPGEnv + "=" + ct.url}, env...)
	return ct.Runner.Start()
}

// Applied returns how many distinct messages have a row in effects.
func (ct *ConsumerTest) Applied() int {
	ct.t.Helper()
	var n int
	if err := ct.Pool.QueryRow(context.Background(), `SELECT count(DISTINCT msg_id) FROM `+ct.Effects).Scan(&n); err != nil {
		ct.t.Fatal(err)
	}
	return n
}

// AwaitRun waits, for at most timeout, until the consumer process proc has
// run its handler (it printed a "run" line), so that a kill after it can
// cut a run: on a busy machine a kill on a fixed schedule can land on a
// process still connecting. It returns false, without waiting longer, when
// every message has a row before proc ran one (nothing is left for it).
func (ct *ConsumerTest) AwaitRun(proc *crashtest.Proc, timeout time.Duration) bool {
	ct.t.Helper()
	ran := false
	crashtest.Until(ct.t, timeout, proc.Name+"'s handler to run", func() bool {
		ran = slices.ContainsFunc(ct.Out.All(), func(l string) bool {
			f := strings.Fields(l)
			return len(f) == 4 && f[0] == "run" && f[3] == proc.Name
		})
		return ran || ct.Applied() == ct.messages
	}, ct.Runner.Log)
	return ran
}

// ConsumerResult is what ConsumerTest.Check counted in the processes'
// lines.
type ConsumerResult struct {
	// Runs is the number of handler runs printed, Redelivered of those
	// on a delivery count above 1, Cut of those in killed processes.
	Runs, Redelivered, Cut int
	// CommittedByKilled is the number of effects rows the killed
	// processes committed.
	CommittedByKilled int
	// Actions counts the settled lines by action.
	Actions map[string]int
}

// Check checks the outcome, once the last consumer process is gone: every
// message's effect applied once (CheckAppliedOnce), every line printed a
// run or a settlement, at most one ack per message and no dead letter, and
// at least one run cut by a kill and rolled back. It logs the counts.
func (ct *ConsumerTest) Check() *ConsumerResult {
	t := ct.t
	t.Helper()
	ids := make([]string, ct.messages)
	for i := range ids {
		ids[i] = MessageID(i)
	}
	CheckAppliedOnce(t, ct.Pool, ct.Effects, ct.Store, ConsumerScope, ids)

	killed := ct.Runner.Killed()
	res := &ConsumerResult{Actions: map[string]int{}}
	for _, l := range ct.Out.All() {
		f := strings.Fields(l)
		switch {
		case len(f) == 4 && f[0] == "run":
			res.Runs++
			d, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatalf("a consumer printed %q", l)
			}
			if d > 1 {
				res.Redelivered++
			}
			if killed[f[3]] {
				res.Cut++ // may also have committed just before the kill
			}
		case len(f) == 4 && f[0] == "settled":
			res.Actions[f[2]]++
		default:
			t.Fatalf("a consumer printed %q", l)
		}
	}
	if err := ct.Pool.QueryRow(context.Background(), `SELECT count(*) FROM `+ct.Effects+` WHERE proc = ANY($1)`,
		ct.Runner.KilledNames()).Scan(&res.CommittedByKilled); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d handler runs (%d of them of a redelivery), %d of them in killed processes, which committed %d: %d runs were cut by a kill and rolled back",
		res.Runs, res.Redelivered, res.Cut, res.CommittedByKilled, res.Cut-res.CommittedByKilled)
	t.Logf("settled (as printed; a kill can eat a line): %v", res.Actions)
	if res.Actions["ack"] > ct.messages || res.Actions["dead-letter"] > 0 {
		t.Errorf("settled %v: want at most %d acks (the handler's effect commits once per message) and no dead letter", res.Actions, ct.messages)
	}
	if res.Cut-res.CommittedByKilled == 0 {
		t.Error("no handler run was cut by a kill: the test proved nothing")
	}
	return res
}
