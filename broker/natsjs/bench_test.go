package natsjs

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/bench"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// countingStore is the pgstore ledger with its Begin and Complete calls
// counted, to tell what a duplicate costs.
type countingStore struct {
	*pgstore.Store
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

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// publishN publishes n messages with distinct Nats-Msg-Ids (prefix-i) to
// the stream's subject and waits for every PubAck; it returns how long
// that took.
func publishN(t testing.TB, js jetstream.JetStream, stream, prefix string, n int) time.Duration {
	t.Helper()
	start := time.Now()
	payload := make([]byte, 64)
	for i := range n {
		msg := nats.NewMsg(stream + ".m")
		msg.Data = payload
		msg.Header.Set(MsgIDHeader, prefix+"-"+strconv.Itoa(i))
		if _, err := js.PublishMsgAsync(msg); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		t.Fatal("publishing: no PubAck within a minute")
	}
	return time.Since(start)
}

// drain reads the stream with a new durable consumer through h on
// workers goroutines until n deliveries were settled with want, and
// returns the time from Consume's start to the n-th settle.
func drain(t testing.TB, js jetstream.JetStream, stream, durable string, h Handler, workers, n int, want messaging.Action) time.Duration {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cons, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable: durable, AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1, AckWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var seen, bad atomic.Int64
	done := make(chan struct{})
	opts := &Options{Workers: workers, OnDecision: func(m *messaging.Message, d messaging.Decision, err error) {
		if d.Action != want || err != nil {
			bad.Add(1)
		}
		if seen.Add(1) == int64(n) {
			close(done)
		}
	}}
	start := time.Now()
	ended := make(chan error, 1)
	go func() { ended <- Consume(ctx, cons, h, opts) }()
	select {
	case <-done:
	case err := <-ended:
		t.Fatalf("Consume ended early: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatalf("drain %s: %d of %d settled in 2 min", durable, seen.Load(), n)
	}
	elapsed := time.Since(start)
	cancel()
	<-ended
	if b := bad.Load(); b != 0 {
		t.Fatalf("drain %s: %d of %d deliveries were not %s or failed to settle", durable, b, n, want)
	}
	return elapsed
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return string(b[:len(b)-1])
}

// TestConsumerFigures measures the messages/s of natsjs.Consume draining a
// pre-published stream at 1 and 16 workers: through a handler with no
// dedup (plain, the baseline), and through messaging.Consumer on memstore
// and on PostgreSQL, by turns in one process, with each store's own
// Begin+Complete cycle rate at the same concurrency; then what a
// duplicate costs on PostgreSQL (a replay of the stream through the same
// ledger: Begin and Complete calls per duplicate, and a check that the
// replay rewrote no record and drew no token), and what JetStream's own
// Nats-Msg-Id dedup costs at publish.
// It runs only with IDEM_BENCH_FIGURES=1 (IDEM_BENCH_ROUNDS, default 5;
// IDEM_BENCH_MSGS messages per drain, default 5000); docs/performance.md
// quotes it.
func TestConsumerFigures(t *testing.T) {
	if os.Getenv("IDEM_BENCH_FIGURES") != "1" {
		t.Skip("set IDEM_BENCH_FIGURES=1 to measure the consumer figures")
	}
	rounds := envInt("IDEM_BENCH_ROUNDS", 5)
	n := envInt("IDEM_BENCH_MSGS", 5000)
	ctx := context.Background()
	pgURL := servicetest.Postgres.Need(t)
	_, js := connect(t)
	pool, err := pgxpool.New(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	schema := fmt.Sprintf("idem_natsbench_%d", time.Now().UnixNano()%1e9)
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
	pgLedger, err := idem.New(pg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pgLedger.Close() })
	noop := func(ctx context.Context, m *messaging.Message) error { return nil }
	pgCons, err := messaging.NewConsumer(pgLedger, noop, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain := HandlerFunc(func(ctx context.Context, m *messaging.Message) messaging.Decision {
		return messaging.Decision{Action: messaging.Ack, Key: m.ID}
	})
	t.Logf("load average before: %s", loadavg())

	type side struct {
		name string
		run  func(workers int) float64 // msgs/s (or cycles/s)
	}
	var seq atomic.Int64
	drainSide := func(h func() Handler) func(int) float64 {
		return func(workers int) float64 {
			stream := newStream(t, js, time.Minute)
			publishN(t, js, stream, stream, n)
			el := drain(t, js, stream, "work", h(), workers, n, messaging.Ack)
			_ = js.DeleteStream(ctx, stream)
			seq.Add(1)
			return float64(n) / el.Seconds()
		}
	}
	cycleSide := func(s func() idem.Store) func(int) float64 {
		return func(workers int) float64 {
			var left atomic.Int64
			left.Store(int64(n))
			r, err := bench.Drive(workers, func() bool { return left.Add(-1) >= 0 }, bench.CycleOp(s()))
			if err != nil {
				t.Fatal(err)
			}
			return r.Rate()
		}
	}
	sides := []side{
		{"plain", drainSide(func() Handler { return plain })},
		{"memstore", drainSide(func() Handler {
			c, err := messaging.NewConsumer(ledger(t), noop, nil)
			if err != nil {
				t.Fatal(err)
			}
			return c
		})},
		{"pgstore", drainSide(func() Handler { return pgCons })},
		{"memstore cycles", cycleSide(func() idem.Store { return memstore.New(nil) })},
		{"pgstore cycles", cycleSide(func() idem.Store { return ps })},
	}
	for _, workers := range []int{1, 16} {
		rates := make([][]float64, len(sides))
		ratios := make([][]float64, len(sides))
		for r := range rounds {
			got := make([]float64, len(sides))
			for i := range sides {
				k := (i + r) % len(sides) // rotate the order from round to round
				got[k] = sides[k].run(workers)
			}
			for k := range sides {
				rates[k] = append(rates[k], got[k])
				ratios[k] = append(ratios[k], got[k]/got[0])
			}
		}
		for k, s := range sides {
			t.Logf("workers=%2d %-16s %8.0f msgs/s  ratio to plain %.2f (%.2f–%.2f)", workers, s.name,
				median(rates[k]), median(ratios[k]), slices.Min(ratios[k]), slices.Max(ratios[k]))
		}
		// The target: the consumer on a store at >= 0.7 of the slower of
		// the plain consumer and the store's own cycle rate.
		for _, p := range [][2]int{{1, 3}, {2, 4}} {
			bound := min(median(rates[0]), median(rates[p[1]]))
			t.Logf("workers=%2d %-16s %.2f of min(plain, cycles)", workers, sides[p[0]].name, median(rates[p[0]])/bound)
		}
	}

	// A duplicate on PostgreSQL: drain a stream once (every message
	// handled), then replay it with a second durable consumer through the
	// same ledger: every delivery is a duplicate.
	// snapshot is the last token drawn and a digest of every record's
	// row version (xmin): a duplicate that wrote a row or drew a token
	// changes it.
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
			stream := newStream(t, js, time.Minute)
			publishN(t, js, stream, stream, n)
			el := drain(t, js, stream, "first", pgCons, workers, n, messaging.Ack)
			firsts = append(firsts, float64(n)/el.Seconds())
			b0, c0 := pg.begins.Load(), pg.completes.Load()
			before := snapshot()
			el = drain(t, js, stream, "replay", pgCons, workers, n, messaging.AckDuplicate)
			if after := snapshot(); after != before {
				t.Errorf("the replay wrote to the ledger: %q, then %q", before, after)
			}
			dups = append(dups, float64(n)/el.Seconds())
			beginsPer = float64(pg.begins.Load()-b0) / float64(n)
			completesPer = float64(pg.completes.Load()-c0) / float64(n)
			_ = js.DeleteStream(ctx, stream)
		}
		if completesPer != 0 {
			t.Errorf("a duplicate made %.2f Completes, want 0", completesPer)
		}
		t.Logf("workers=%2d pgstore first delivery %8.0f msgs/s, duplicate %8.0f msgs/s (%.2f×); per duplicate %.2f Begin, %.2f Complete, no row written, no token drawn",
			workers, median(firsts), median(dups), median(dups)/median(firsts), beginsPer, completesPer)
	}

	// JetStream's own dedup: publishing the same Nats-Msg-Ids again within
	// the stream's duplicate window is absorbed by the server.
	var fresh, again []float64
	for range rounds {
		stream := newStream(t, js, time.Minute)
		f := publishN(t, js, stream, "id", n)
		a := publishN(t, js, stream, "id", n)
		info, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.CachedInfo().State.Msgs; got != uint64(n) {
			t.Fatalf("stream holds %d messages after a republish of %d ids, want %d", got, n, n)
		}
		fresh = append(fresh, float64(n)/f.Seconds())
		again = append(again, float64(n)/a.Seconds())
		_ = js.DeleteStream(ctx, stream)
	}
	t.Logf("Nats-Msg-Id: publish %8.0f msgs/s new ids, %8.0f msgs/s duplicates within the window (%.2f×); stream keeps %d",
		median(fresh), median(again), median(again)/median(fresh), n)
	t.Logf("load average after: %s", loadavg())
}
