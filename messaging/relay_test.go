package messaging_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
)

func TestRelayRunRefusesMissingParts(t *testing.T) {
	t.Parallel()
	store := memstore.New(nil)
	outbox := &memOutbox{ledger: store}
	pub := messaging.PublisherFunc(func(context.Context, *messaging.OutboxMessage) error { return nil })
	for name, r := range map[string]*messaging.Relay{
		"store":     messaging.NewRelay(nil, outbox, pub, nil),
		"outbox":    messaging.NewRelay(store, nil, pub, nil),
		"publisher": messaging.NewRelay(store, outbox, nil, nil),
	} {
		if err := r.Run(context.Background()); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("no %s: Run returned %v, want idem.ErrInvalid", name, err)
		}
	}
}

// sentHook is a memOutbox that calls after once every MarkSent returned.
type sentHook struct {
	*memOutbox
	after func(err error)
}

func (o sentHook) MarkSent(ctx context.Context, f messaging.Fence, ids []int64) error {
	err := o.memOutbox.MarkSent(ctx, f, ids)
	o.after(err)
	return err
}

// Eight entities of five rows each, four workers: each entity's rows are
// published in seq order, every row once, and all are marked sent.
func TestRelayWorkersKeepEachEntitysOrder(t *testing.T) {
	t.Parallel()
	store := memstore.New(nil)
	mem := &memOutbox{ledger: store}
	for seq := 1; seq <= 5; seq++ {
		for e := range 8 {
			mem.rows = append(mem.rows, memRow{m: messaging.OutboxMessage{ID: fmt.Sprintf("e%d/%d", e, seq),
				Entity: fmt.Sprintf("e%d", e), Subject: "s", Seq: int64(seq)}})
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outbox := sentHook{mem, func(error) {
		mem.mu.Lock()
		defer mem.mu.Unlock()
		if !slices.ContainsFunc(mem.rows, func(r memRow) bool { return !r.sent }) {
			cancel()
		}
	}}
	var mu sync.Mutex
	got := map[string][]int64{}
	pub := messaging.PublisherFunc(func(_ context.Context, m *messaging.OutboxMessage) error {
		mu.Lock()
		defer mu.Unlock()
		got[m.Entity] = append(got[m.Entity], m.Seq)
		return nil
	})
	r := messaging.NewRelay(store, outbox, pub, &messaging.RelayConfig{Workers: 4, Batch: 7, PollInterval: time.Millisecond})
	if err := r.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	if len(got) != 8 {
		t.Fatalf("published for %d entities, want 8: %v", len(got), got)
	}
	for e, seqs := range got {
		if !slices.Equal(seqs, []int64{1, 2, 3, 4, 5}) {
			t.Errorf("entity %s published seqs %v, want 1..5 once each", e, seqs)
		}
	}
	// The lease is released: another relay would take over at once.
	rec, err := store.Get(context.Background(), &idem.KeyParams{Scope: messaging.RelayScope, Key: "outbox"})
	if err != nil || rec.State != idem.StateReleased {
		t.Fatalf("relay lease after Run: %+v, %v; want released", rec, err)
	}
}

// A mark the Outbox refuses for the fence (another relay holds the lease)
// stops the relay: it reports the lost lease and publishes nothing more.
func TestRelayStopsWhenAMarkIsFenced(t *testing.T) {
	t.Parallel()
	store := memstore.New(nil)
	mem := &memOutbox{ledger: store}
	for i := range 3 {
		mem.rows = append(mem.rows, memRow{m: messaging.OutboxMessage{ID: fmt.Sprintf("m%d", i), Entity: "e", Subject: "s", Seq: int64(i + 1)}})
	}
	outbox := sentHook{mem, func(error) {}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var fenced sync.Once
	outbox.after = func(error) {
		// Another relay took the lease: the next mark is refused.
		fenced.Do(func() {
			if err := store.Delete(context.Background(), &idem.KeyParams{Scope: messaging.RelayScope, Key: "outbox"}); err != nil {
				t.Error(err)
			}
		})
	}
	var mu sync.Mutex
	var published []string
	var reported []error
	pub := messaging.PublisherFunc(func(_ context.Context, m *messaging.OutboxMessage) error {
		mu.Lock()
		defer mu.Unlock()
		published = append(published, m.ID)
		return nil
	})
	r := messaging.NewRelay(store, outbox, pub, &messaging.RelayConfig{Batch: 1, Workers: 1, PollInterval: time.Millisecond,
		OnError: func(err error) {
			mu.Lock()
			defer mu.Unlock()
			reported = append(reported, err)
			if errors.Is(err, idem.ErrLeaseLost) && len(reported) >= 2 {
				cancel() // the refused mark, then the lost lease
			}
		}})
	if err := r.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	// Round 1 marks m0 (then the lease goes), round 2 publishes m1 and
	// its mark is refused; the relay stops before m2.
	if !slices.Equal(published, []string{"m0", "m1"}) {
		t.Fatalf("published %v, want [m0 m1]", published)
	}
	if len(reported) != 2 || !errors.Is(reported[0], idem.ErrLeaseLost) || !errors.Is(reported[1], idem.ErrLeaseLost) {
		t.Fatalf("reported %v, want the refused mark and the lost lease", reported)
	}
	if !mem.rows[0].sent || mem.rows[1].sent || mem.rows[2].sent {
		t.Fatalf("sent: %v %v %v, want only m0", mem.rows[0].sent, mem.rows[1].sent, mem.rows[2].sent)
	}
}
