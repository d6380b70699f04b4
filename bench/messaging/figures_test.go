package messaging

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	idemwatermill "github.com/idemkit/idem/broker/watermill"
	"github.com/idemkit/idem/internal/bench"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pebblestore"
	"github.com/idemkit/idem/store/pgstore"
)

// handleFunc is one delivery's decision: what both brokers' consume
// loops call per message.
type handleFunc = func(ctx context.Context, m *messaging.Message) messaging.Decision

// broker is what the figures need of a broker.
type broker struct {
	name string
	// msgs is the default number of messages per drain.
	msgs int
	// drain fills a fresh stream or queue with n messages whose ids are
	// ids-0 to ids-(n-1), consumes it through handle on workers
	// goroutines until n deliveries were settled with want, deletes it,
	// and returns the time from the consumer's start to the n-th settle.
	drain func(t testing.TB, ids string, handle handleFunc, workers, n int, want messaging.Action) time.Duration
}

// settles counts settled deliveries for a drain: onDecision is the
// consume loop's OnDecision, done closes at the n-th, bad counts those
// not decided want or that failed to settle.
type settles struct {
	n, want    int64
	action     messaging.Action
	seen, bad  atomic.Int64
	first      atomic.Value // string: the first bad delivery
	done       chan struct{}
	onDecision func(m *messaging.Message, d messaging.Decision, err error)
}

func newSettles(n int, want messaging.Action) *settles {
	s := &settles{n: int64(n), action: want, done: make(chan struct{})}
	s.onDecision = func(m *messaging.Message, d messaging.Decision, err error) {
		if d.Action != s.action || err != nil {
			if s.bad.Add(1) == 1 {
				s.first.Store(fmt.Sprintf("%s: %s (%v), settle error %v", m.ID, d.Action, d.Err, err))
			}
		}
		if s.seen.Add(1) == s.n {
			close(s.done)
		}
	}
	return s
}

// wait waits for the n-th settle, a consumer that ended (ended), or two
// minutes, and fails t unless every delivery settled as wanted.
func (s *settles) wait(t testing.TB, what string, ended <-chan error) {
	t.Helper()
	select {
	case <-s.done:
	case err := <-ended:
		t.Fatalf("%s: the consumer ended early: %v", what, err)
	case <-time.After(2 * time.Minute):
		t.Fatalf("%s: %d of %d settled in 2 min", what, s.seen.Load(), s.n)
	}
}

func (s *settles) check(t testing.TB, what string) {
	t.Helper()
	if b := s.bad.Load(); b != 0 {
		t.Fatalf("%s: %d of %d deliveries were not %s or failed to settle; the first: %v", what, b, s.n, s.action, s.first.Load())
	}
}

// countingStore is a store with its Begin and Complete calls counted, to
// tell what a duplicate costs.
type countingStore struct {
	idem.Store
	begins, completes atomic.Int64
}

func (s *countingStore) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	s.begins.Add(1)
	return s.Store.Begin(ctx, p)
}

func (s *countingStore) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	s.completes.Add(1)
	return s.Store.Complete(ctx, p)
}

func newLedger(t testing.TB, s idem.Store) *idem.Ledger {
	t.Helper()
	l, err := idem.New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func noop(ctx context.Context, m *messaging.Message) error { return nil }

func newConsumer(t testing.TB, l *idem.Ledger) *messaging.Consumer {
	t.Helper()
	c, err := messaging.NewConsumer(l, noop, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// viaWatermill runs each delivery through a Watermill handler middleware
// around a no-op handler, as a Watermill router would: the broker message
// becomes a *message.Message (UUID the message id, payload, headers as
// metadata, the delivery's context), and a nil error acks it.
func viaWatermill(mw message.HandlerMiddleware) handleFunc {
	h := mw(func(*message.Message) ([]*message.Message, error) { return nil, nil })
	return func(ctx context.Context, m *messaging.Message) messaging.Decision {
		wm := message.NewMessage(m.ID, m.Payload)
		for k, v := range m.Headers {
			wm.Metadata.Set(k, v)
		}
		wm.SetContext(ctx)
		if _, err := h(wm); err != nil {
			return messaging.Decision{Action: messaging.Retry, Key: m.ID, Err: err}
		}
		return messaging.Decision{Action: messaging.Ack, Key: m.ID}
	}
}

// byUUID is Watermill's Deduplicator keyed by the message id, as idem's
// consumer is (its default key, an Adler-32 of the payload, would take the
// bench's equal payloads for duplicates).
func byUUID(m *message.Message) (string, error) { return m.UUID, nil }

// timedHandle is handle with the time spent in it summed, to split a
// message's wall time into the handler's (the store's Begin and Complete)
// and the rest (delivery, ack, the consume loop).
type timedHandle struct {
	handle handleFunc
	nanos  atomic.Int64
}

func (h *timedHandle) Handle(ctx context.Context, m *messaging.Message) messaging.Decision {
	start := time.Now()
	d := h.handle(ctx, m)
	h.nanos.Add(int64(time.Since(start)))
	return d
}

// side is one contender of the figures: a drain through handle, or (handle
// nil) the store's own Begin+Complete cycles.
type side struct {
	name   string
	handle func() handleFunc
	store  idem.Store
}

// consumerFigures measures b's consume loop at 1 and 16 workers, by turns
// in rounds (the order rotates), through a handler that only acks
// (plain, the baseline), messaging.Consumer on memstore, pebblestore and
// PostgreSQL, Watermill's Deduplicator (its in-memory key repository) and
// idem's Watermill middleware on memstore, beside each store's own
// Begin+Complete cycle rate at the same concurrency; then what a
// duplicate costs on PostgreSQL: a replay of the same ids through the same
// ledger, counting Begin and Complete calls and checking the replay wrote
// no record and drew no token.
func consumerFigures(t *testing.T, b broker) {
	if os.Getenv("IDEM_BENCH_FIGURES") != "1" {
		t.Skip("set IDEM_BENCH_FIGURES=1 to measure the consumer figures")
	}
	rounds := bench.EnvInt("IDEM_BENCH_ROUNDS", 5)
	n := bench.EnvInt("IDEM_BENCH_MSGS", b.msgs)
	ctx := context.Background()
	pgURL := servicetest.Postgres.Need(t)
	pool, err := pgxpool.New(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	schema := fmt.Sprintf("idem_%sbench_%d", b.name, time.Now().UnixNano()%1e9)
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	ps, err := pgstore.New(pool, &pgstore.Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	pg := &countingStore{Store: ps}
	pgCons := newConsumer(t, newLedger(t, pg))
	pgTimed := &timedHandle{handle: pgCons.Handle}
	pb, err := pebblestore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pb.Close() })
	pbCons := newConsumer(t, newLedger(t, pb))
	t.Logf("%s: %d messages per drain, %d rounds; load average before: %s", b.name, n, rounds, bench.LoadAvg())

	sides := []side{
		{name: "plain", handle: func() handleFunc {
			return func(ctx context.Context, m *messaging.Message) messaging.Decision {
				return messaging.Decision{Action: messaging.Ack, Key: m.ID}
			}
		}},
		{name: "memstore", handle: func() handleFunc { return newConsumer(t, newLedger(t, memstore.New(nil))).Handle }},
		{name: "pebblestore", handle: func() handleFunc { return pbCons.Handle }},
		{name: "pgstore", handle: func() handleFunc { return pgTimed.Handle }},
		{name: "watermill dedup", handle: func() handleFunc {
			repo, err := middleware.NewMapExpiringKeyRepository(time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			d := &middleware.Deduplicator{KeyFactory: byUUID, Repository: repo}
			return viaWatermill(d.Middleware)
		}},
		{name: "idem watermill", handle: func() handleFunc {
			mw, err := idemwatermill.Middleware(newLedger(t, memstore.New(nil)), nil)
			if err != nil {
				t.Fatal(err)
			}
			return viaWatermill(mw)
		}},
		{name: "memstore cycles", store: memstore.New(nil)},
		{name: "pebblestore cycles", store: pb},
		{name: "pgstore cycles", store: ps},
	}
	// Each store side's cycles side: the consumer's other bound.
	cyclesOf := map[string]string{"memstore": "memstore cycles", "pebblestore": "pebblestore cycles",
		"pgstore": "pgstore cycles", "idem watermill": "memstore cycles"}
	index := func(name string) int {
		return slices.IndexFunc(sides, func(s side) bool { return s.name == name })
	}
	var drains atomic.Int64
	ids := func() string { return fmt.Sprintf("%s%d-%d", b.name, time.Now().UnixNano()%1e9, drains.Add(1)) }
	for _, workers := range []int{1, 16} {
		var inHandler, rest []float64 // µs per PostgreSQL message, by round
		rates, err := bench.Rotated(rounds, len(sides), func(k int) (float64, error) {
			if sides[k].handle == nil {
				var left atomic.Int64
				left.Store(int64(n))
				r, err := bench.Drive(workers, func() bool { return left.Add(-1) >= 0 }, bench.CycleOp(sides[k].store))
				return r.Rate(), err
			}
			pgTimed.nanos.Store(0)
			el := b.drain(t, ids(), sides[k].handle(), workers, n, messaging.Ack)
			if sides[k].name == "pgstore" {
				h := float64(pgTimed.nanos.Load()) / 1e3 / float64(n)
				inHandler = append(inHandler, h)
				rest = append(rest, float64(el.Microseconds())/float64(n)-h)
			}
			return float64(n) / el.Seconds(), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for k, s := range sides {
			r := bench.Ratios(rates[k], rates[0])
			line := fmt.Sprintf("%s workers=%2d %-18s %8.0f msgs/s  vs plain %.2f (%.2f–%.2f)", b.name, workers, s.name,
				bench.Median(rates[k]), bench.Median(r), slices.Min(r), slices.Max(r))
			if c, ok := cyclesOf[s.name]; ok {
				// The round's rate over the slower of the round's plain
				// consumer and the store's cycles; the median of those,
				// and the medians' ratio.
				bound := make([]float64, rounds)
				for r := range bound {
					bound[r] = min(rates[0][r], rates[index(c)][r])
				}
				line += fmt.Sprintf("  vs min(plain, %s) %.2f (medians' ratio %.2f)", c, bench.Median(bench.Ratios(rates[k], bound)),
					bench.Median(rates[k])/min(bench.Median(rates[0]), bench.Median(rates[index(c)])))
			}
			t.Log(line)
		}
		// Where a PostgreSQL message's time goes at 1 worker: the
		// consumer's Begin and Complete (the handler) against the rest
		// (delivery, ack, the consume loop).
		if workers == 1 {
			t.Logf("%s workers= 1 pgstore per message: %.0f µs wall, %.0f µs in the handler (a bare cycle %.0f µs), %.0f µs the rest (a plain message %.0f µs)",
				b.name, 1e6/bench.Median(rates[index("pgstore")]), bench.Median(inHandler),
				1e6/bench.Median(rates[index("pgstore cycles")]), bench.Median(rest), 1e6/bench.Median(rates[0]))
		}
	}

	// A duplicate on PostgreSQL: drain the ids once (every message
	// handled), then again through the same ledger: every delivery is a
	// duplicate. snapshot is the last token drawn and a digest of every
	// record's row version (xmin): a duplicate that wrote a row or drew a
	// token changes it.
	snapshot := func() string {
		var out string
		err := pool.QueryRow(ctx, fmt.Sprintf(`SELECT (SELECT last_value FROM %[1]s.tokens)::text || '/' ||
			(SELECT md5(string_agg(key || ':' || xmin::text, ',' ORDER BY key)) FROM %[1]s.records)`,
			pgx.Identifier{schema}.Sanitize())).Scan(&out)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, workers := range []int{1, 16} {
		var firsts, dups []float64
		var beginsPer, completesPer float64
		for range rounds {
			id := ids()
			el := b.drain(t, id, pgCons.Handle, workers, n, messaging.Ack)
			firsts = append(firsts, float64(n)/el.Seconds())
			b0, c0 := pg.begins.Load(), pg.completes.Load()
			before := snapshot()
			el = b.drain(t, id, pgCons.Handle, workers, n, messaging.AckDuplicate)
			if after := snapshot(); after != before {
				t.Errorf("the replay wrote to the ledger: %q, then %q", before, after)
			}
			dups = append(dups, float64(n)/el.Seconds())
			beginsPer = float64(pg.begins.Load()-b0) / float64(n)
			completesPer = float64(pg.completes.Load()-c0) / float64(n)
			if completesPer != 0 {
				t.Errorf("a duplicate made %.2f Completes, want 0", completesPer)
			}
		}
		t.Logf("%s workers=%2d pgstore first delivery %8.0f msgs/s, duplicate %8.0f msgs/s (%.2f×); per duplicate %.2f Begin, %.2f Complete, no row written, no token drawn",
			b.name, workers, bench.Median(firsts), bench.Median(dups), bench.Median(dups)/bench.Median(firsts), beginsPer, completesPer)
	}
}

// idOf is the id of the i-th message of a drain.
func idOf(ids string, i int) string { return ids + "-" + strconv.Itoa(i) }
