package messaging_test

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
)

type ctxMark struct{}

// Config.Observe wraps every Handle: the handler runs with the context it
// returns, and done gets the Decision Handle returns.
func TestConsumerObserve(t *testing.T) {
	l, _ := newLedger(t)
	var seen []string
	var decisions []messaging.Decision
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		if ctx.Value(ctxMark{}) != "observed" {
			t.Error("the handler's context is not the one Observe returned")
		}
		return nil
	}, &messaging.Config{Observe: func(ctx context.Context, m *messaging.Message) (context.Context, func(*messaging.Decision)) {
		seen = append(seen, m.ID)
		return context.WithValue(ctx, ctxMark{}, "observed"), func(d *messaging.Decision) { decisions = append(decisions, *d) }
	}})
	ctx := context.Background()
	d1 := c.Handle(ctx, msg("m1", "x"))
	d2 := c.Handle(ctx, msg("m1", "x"))
	if len(seen) != 2 || len(decisions) != 2 {
		t.Fatalf("observed %v, decisions %v", seen, decisions)
	}
	if decisions[0].Action != messaging.Ack || decisions[1].Action != messaging.AckDuplicate ||
		!reflect.DeepEqual(decisions[0], d1) || !reflect.DeepEqual(decisions[1], d2) {
		t.Fatalf("decisions %+v, Handle returned %+v %+v", decisions, d1, d2)
	}
}

// RelayConfig.OnRound gets the due rows of each round.
func TestRelayOnRound(t *testing.T) {
	t.Parallel()
	store := memstore.New(nil)
	mem := &memOutbox{ledger: store}
	for i := range 3 {
		mem.rows = append(mem.rows, memRow{m: messaging.OutboxMessage{ID: string(rune('a' + i)), Subject: "s"}})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var rounds []int
	pub := messaging.PublisherFunc(func(context.Context, *messaging.OutboxMessage) error { return nil })
	r := messaging.NewRelay(store, mem, pub, &messaging.RelayConfig{Batch: 2, PollInterval: time.Millisecond,
		OnRound: func(_ context.Context, due int) {
			mu.Lock()
			defer mu.Unlock()
			rounds = append(rounds, due)
			if due == 0 {
				cancel()
			}
		}})
	if err := r.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(rounds) < 3 || rounds[0] != 2 || rounds[1] != 1 || rounds[2] != 0 {
		t.Fatalf("rounds %v, want 2, 1, 0", rounds)
	}
}
