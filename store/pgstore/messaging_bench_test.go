package pgstore

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem/messaging"
	"github.com/jackc/pgx/v5"
)

// BenchmarkInboxHandle handles fresh messages one after another, each
// handler inserting one row: begin, BeginTx, the insert, CompleteTx,
// commit.
func BenchmarkInboxHandle(b *testing.B) {
	s := newStore(b)
	ctx := context.Background()
	rows := pgx.Identifier{s.Schema(), "rows"}.Sanitize()
	if _, err := s.Pool().Exec(ctx, `CREATE TABLE `+rows+` (id text)`); err != nil {
		b.Fatal(err)
	}
	in := s.Inbox(nil)
	h := func(ctx context.Context, tx pgx.Tx, m *messaging.Message) error {
		_, err := tx.Exec(ctx, `INSERT INTO `+rows+` (id) VALUES ($1)`, m.ID)
		return err
	}
	b.ResetTimer()
	for i := range b.N {
		if d := in.Handle(ctx, &messaging.Message{ID: fmt.Sprintf("m-%d", i), Payload: []byte("x")}, h); d.Action != messaging.Ack {
			b.Fatalf("%+v", d)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkEnqueue enqueues one message per transaction, over 16
// entities.
func BenchmarkEnqueue(b *testing.B) {
	s := newStore(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		tx, err := s.Pool().Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Enqueue(ctx, tx, &OutboxMessage{ID: fmt.Sprintf("m-%d", i), Entity: fmt.Sprintf("e%d", i%16), Subject: "s"}); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkRelay measures how fast the relay drains b.N rows over 64
// entities to a publisher that returns at once (the relay's own cost:
// reads and marks).
func BenchmarkRelay(b *testing.B) {
	s := newStore(b)
	ctx := context.Background()
	const perTx = 100
	for i := 0; i < b.N; i += perTx {
		tx, err := s.Pool().Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for j := i; j < min(i+perTx, b.N); j++ {
			if err := s.Enqueue(ctx, tx, &OutboxMessage{ID: fmt.Sprintf("m-%d", j), Entity: fmt.Sprintf("e%d", j%64), Subject: "s"}); err != nil {
				b.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
	var published atomic.Int64
	done := make(chan struct{})
	pub := PublisherFunc(func(context.Context, *OutboxMessage) error {
		if published.Add(1) == int64(b.N) {
			close(done)
		}
		return nil
	})
	b.ResetTimer()
	rctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		_ = s.Relay(pub, &RelayConfig{PollInterval: 10 * time.Millisecond, OnError: func(err error) { b.Log(err) }}).Run(rctx)
	}()
	<-done
	b.StopTimer()
	cancel()
	<-stopped
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
