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

// RelayConfig.OnRound gets the due rows of each round and, from an
// UnsentAger, the oldest row still unsent after it.
func TestRelayOnRound(t *testing.T) {
	t.Parallel()
	store := memstore.New(nil)
	mem := &memOutbox{ledger: store}
	t0 := time.Now().Add(-time.Hour) // the relay's clock is the system's
	aged := &agedOutbox{memOutbox: mem}
	for i := range 3 {
		mem.rows = append(mem.rows, memRow{m: messaging.OutboxMessage{ID: string(rune('a' + i)), Subject: "s"}})
		aged.written = append(aged.written, t0.Add(time.Duration(i)*time.Second))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var rounds []messaging.RelayRound
	pub := messaging.PublisherFunc(func(context.Context, *messaging.OutboxMessage) error { return nil })
	r := messaging.NewRelay(store, aged, pub, &messaging.RelayConfig{Batch: 2, PollInterval: time.Millisecond,
		OnRound: func(_ context.Context, round messaging.RelayRound) {
			mu.Lock()
			defer mu.Unlock()
			rounds = append(rounds, round)
			if round.Due == 0 {
				cancel()
			}
		}})
	if err := r.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(rounds) < 3 {
		t.Fatalf("rounds %+v, want 3", rounds)
	}
	// After the first round a and b are sent: c, written at t0+2s, is the
	// oldest unsent row; after the second none is.
	for i, want := range []struct {
		due    int
		oldest time.Time
	}{{2, t0.Add(2 * time.Second)}, {1, time.Time{}}, {0, time.Time{}}} {
		got := rounds[i]
		if got.Due != want.due || !got.Oldest.Equal(want.oldest) || got.Now.IsZero() {
			t.Errorf("round %d: %+v, want due %d, oldest %v", i+1, got, want.due, want.oldest)
		}
	}
	if lag := rounds[0].Lag(); lag != rounds[0].Now.Sub(t0.Add(2*time.Second)) {
		t.Errorf("lag %v, want Now - Oldest", lag)
	}
	if lag := rounds[1].Lag(); lag != 0 {
		t.Errorf("lag with nothing unsent: %v, want 0", lag)
	}
}

// agedOutbox is a memOutbox that tells when its rows were written.
type agedOutbox struct {
	*memOutbox
	written []time.Time // by row
}

func (o *agedOutbox) OldestUnsent(context.Context) (time.Time, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, r := range o.rows {
		if !r.sent {
			return o.written[i], nil
		}
	}
	return time.Time{}, nil
}

// A relay round's Lag is zero without an Oldest, and never negative.
func TestRelayRoundLag(t *testing.T) {
	now := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		oldest time.Time
		want   time.Duration
	}{{time.Time{}, 0}, {now.Add(-90 * time.Second), 90 * time.Second}, {now.Add(time.Second), 0}} {
		if got := (messaging.RelayRound{Oldest: c.oldest, Now: now}).Lag(); got != c.want {
			t.Errorf("Lag with Oldest %v: %v, want %v", c.oldest, got, c.want)
		}
	}
}
