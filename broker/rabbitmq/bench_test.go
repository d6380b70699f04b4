package rabbitmq

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
	amqp "github.com/rabbitmq/amqp091-go"
)

func benchEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func benchMedian(xs []float64) float64 {
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

// benchPublish publishes n messages with distinct message-ids to queue
// (default exchange) with publisher confirms, and waits for every confirm.
func benchPublish(t testing.TB, conn *amqp.Connection, queue string, n int) {
	t.Helper()
	ch := channel(t, conn)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	body := make([]byte, 64)
	confs := make([]*amqp.DeferredConfirmation, 0, n)
	for i := range n {
		c, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false,
			amqp.Publishing{MessageId: queue + "-" + strconv.Itoa(i), Body: body, DeliveryMode: amqp.Persistent})
		if err != nil {
			t.Fatal(err)
		}
		confs = append(confs, c)
	}
	for _, c := range confs {
		if ok, err := c.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("publish confirm: ok=%v err=%v", ok, err)
		}
	}
}

// benchDrain consumes queue through handle until n deliveries were acked
// and returns the time from ConsumeFunc's start to the n-th settle.
func benchDrain(t testing.TB, conn *amqp.Connection, queue string, handle HandleFunc, workers, prefetch, n int) time.Duration {
	t.Helper()
	ch := channel(t, conn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var seen, bad atomic.Int64
	done := make(chan struct{})
	opts := &Options{Workers: workers, Prefetch: prefetch, OnDecision: func(m *messaging.Message, d messaging.Decision, err error) {
		if d.Action != messaging.Ack || err != nil {
			bad.Add(1)
		}
		if seen.Add(1) == int64(n) {
			close(done)
		}
	}}
	start := time.Now()
	ended := make(chan error, 1)
	go func() { ended <- ConsumeFunc(ctx, ch, queue, handle, opts) }()
	select {
	case <-done:
	case err := <-ended:
		t.Fatalf("ConsumeFunc ended early: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatalf("drain %s: %d of %d settled in 2 min", queue, seen.Load(), n)
	}
	elapsed := time.Since(start)
	cancel()
	<-ended
	if b := bad.Load(); b != 0 {
		t.Fatalf("drain %s: %d of %d deliveries were not acked or failed to settle", queue, b, n)
	}
	return elapsed
}

// TestConsumerFigures measures the messages/s of ConsumeFunc draining a
// pre-filled quorum queue at 1 and 16 workers (prefetch 64 on every side):
// through a handler that only acks (plain, the baseline) and through
// messaging.Consumer on memstore and on PostgreSQL, beside each store's
// own Begin+Complete cycle rate at the same concurrency, by turns in
// rounds. It
// runs only with IDEM_BENCH_FIGURES=1 (IDEM_BENCH_ROUNDS, default 5;
// IDEM_BENCH_MSGS, default 2000); docs/performance.md quotes it.
func TestConsumerFigures(t *testing.T) {
	if os.Getenv("IDEM_BENCH_FIGURES") != "1" {
		t.Skip("set IDEM_BENCH_FIGURES=1 to measure the consumer figures")
	}
	rounds := benchEnvInt("IDEM_BENCH_ROUNDS", 5)
	n := benchEnvInt("IDEM_BENCH_MSGS", 2000)
	const prefetch = 64
	ctx := context.Background()
	pgURL := servicetest.Postgres.Need(t)
	conn := dial(t)
	pool, err := pgxpool.New(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	schema := fmt.Sprintf("idem_rmqbench_%d", time.Now().UnixNano()%1e9)
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	ps, err := pgstore.New(pool, &pgstore.Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	pgLedger, err := idem.New(ps, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pgLedger.Close() })
	noop := func(ctx context.Context, m *messaging.Message) error { return nil }
	pgCons, err := messaging.NewConsumer(pgLedger, noop, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		t.Logf("load average before: %s", b)
	}
	type side struct {
		name   string
		handle func() HandleFunc // nil: the store's own cycles
		store  idem.Store
	}
	sides := []side{
		{name: "plain", handle: func() HandleFunc {
			return func(ctx context.Context, m *messaging.Message) messaging.Decision {
				return messaging.Decision{Action: messaging.Ack, Key: m.ID}
			}
		}},
		{name: "memstore", handle: func() HandleFunc {
			c, err := messaging.NewConsumer(ledger(t, 0), noop, nil)
			if err != nil {
				t.Fatal(err)
			}
			return c.Handle
		}},
		{name: "pgstore", handle: func() HandleFunc { return pgCons.Handle }},
		{name: "memstore cycles", store: memstore.New(nil)},
		{name: "pgstore cycles", store: ps},
	}
	for _, workers := range []int{1, 16} {
		rates := make([][]float64, len(sides))
		ratios := make([][]float64, len(sides))
		for r := range rounds {
			got := make([]float64, len(sides))
			for i := range sides {
				k := (i + r) % len(sides)
				if sides[k].handle == nil {
					var left atomic.Int64
					left.Store(int64(n))
					rd, err := bench.Drive(workers, func() bool { return left.Add(-1) >= 0 }, bench.CycleOp(sides[k].store))
					if err != nil {
						t.Fatal(err)
					}
					got[k] = rd.Rate()
					continue
				}
				q := freshQueue(t, conn, nil)
				benchPublish(t, conn, q, n)
				got[k] = float64(n) / benchDrain(t, conn, q, sides[k].handle(), workers, prefetch, n).Seconds()
			}
			for k := range sides {
				rates[k] = append(rates[k], got[k])
				ratios[k] = append(ratios[k], got[k]/got[0])
			}
		}
		for k, s := range sides {
			t.Logf("workers=%2d %-16s %7.0f msgs/s  ratio to plain %.2f (%.2f–%.2f)", workers, s.name,
				benchMedian(rates[k]), benchMedian(ratios[k]), slices.Min(ratios[k]), slices.Max(ratios[k]))
		}
		for _, p := range [][2]int{{1, 3}, {2, 4}} {
			bound := min(benchMedian(rates[0]), benchMedian(rates[p[1]]))
			t.Logf("workers=%2d %-16s %.2f of min(plain, cycles)", workers, sides[p[0]].name, benchMedian(rates[p[0]])/bound)
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		t.Logf("load average after: %s", b)
	}
}
