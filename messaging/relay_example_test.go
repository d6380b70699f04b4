package messaging_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
)

// memOutbox is an outbox table in memory. A real one is a table written in
// the producer's transaction, whose marks check the Fence in the same
// statement (pgstore's does).
type memOutbox struct {
	mu     sync.Mutex
	ledger idem.Store // where the relay's lease is
	rows   []memRow
}

type memRow struct {
	m    messaging.OutboxMessage
	sent bool
	next time.Time
	fail int
}

// holds reports whether f is still the relay lease's.
func (o *memOutbox) holds(ctx context.Context, f messaging.Fence) bool {
	rec, err := o.ledger.Get(ctx, &idem.KeyParams{Scope: messaging.RelayScope, Key: f.Key})
	return err == nil && rec.State == idem.StatePending && rec.Token == f.Token
}

func (o *memOutbox) Due(ctx context.Context, now time.Time, limit int) ([]messaging.OutboxRow, time.Time, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var due []messaging.OutboxRow
	var next time.Time
	waiting := map[string]bool{} // entities behind a row in backoff
	for i, r := range o.rows {
		switch {
		case r.sent:
		case r.next.After(now):
			waiting[r.m.Entity] = true
			if next.IsZero() || r.next.Before(next) {
				next = r.next
			}
		case !waiting[r.m.Entity] && len(due) < limit:
			m := r.m
			m.Attempt = r.fail + 1
			due = append(due, messaging.OutboxRow{ID: int64(i), Message: m})
		}
	}
	return due, next, nil
}

func (o *memOutbox) MarkSent(ctx context.Context, f messaging.Fence, ids []int64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.holds(ctx, f) {
		return fmt.Errorf("outbox: %w", idem.ErrLeaseLost)
	}
	for _, id := range ids {
		o.rows[id].sent = true
	}
	return nil
}

func (o *memOutbox) MarkFailed(ctx context.Context, f messaging.Fence, id int64, msg string, at time.Time) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.holds(ctx, f) {
		o.rows[id].fail++
		o.rows[id].next = at
	}
	return nil
}

func (o *memOutbox) Prune(context.Context, time.Duration) error { return nil }

// A relay publishes an outbox: each entity's messages in order, a failed
// publish retried after a backoff and holding back the rest of its entity
// only.
func ExampleRelay() {
	store := memstore.New(nil)
	outbox := &memOutbox{ledger: store}
	for _, m := range []struct{ id, entity string }{{"o1/reserve", "order-1"}, {"o1/ship", "order-1"}, {"o2/reserve", "order-2"}} {
		outbox.rows = append(outbox.rows, memRow{m: messaging.OutboxMessage{ID: m.id, Entity: m.entity, Subject: "shipping"}})
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	published := 0
	pub := messaging.PublisherFunc(func(ctx context.Context, m *messaging.OutboxMessage) error {
		if m.ID == "o1/reserve" && m.Attempt == 1 {
			return fmt.Errorf("broker unavailable")
		}
		fmt.Printf("published %s (%s, attempt %d)\n", m.ID, m.Entity, m.Attempt)
		if published++; published == 3 {
			cancel() // the row is still marked: a mark does not heed ctx
		}
		return nil
	})
	relay := messaging.NewRelay(store, outbox, pub, &messaging.RelayConfig{Name: "example", Workers: 1,
		PollInterval: 10 * time.Millisecond, Backoff: func(int) time.Duration { return 10 * time.Millisecond }})
	fmt.Println(relay.Run(ctx))
	for _, r := range outbox.rows {
		fmt.Println(r.m.ID, "sent:", r.sent)
	}
	// Output:
	// published o2/reserve (order-2, attempt 1)
	// published o1/reserve (order-1, attempt 2)
	// published o1/ship (order-1, attempt 1)
	// context canceled
	// o1/reserve sent: true
	// o1/ship sent: true
	// o2/reserve sent: true
}
