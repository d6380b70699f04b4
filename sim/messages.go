package sim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemkit/idem"
)

// messages: a broker delivers orders at least once to competing consumers
// that process each with Ledger.Do and ack afterwards. Deliveries and acks
// are lost, duplicated and reordered; consumers crash and restart; work
// sometimes fails retryably (released, redelivered) or for good (the
// failure is the stored outcome); a producer bug reuses a message id for
// another order (a fingerprint mismatch, dead-lettered).
var messages = &Scenario{
	Name: "messages",
	Doc:  "at-least-once delivery to competing consumers that use Ledger.Do; crashes, lost and duplicated deliveries and acks",
	Faults: Faults{
		Crash: 0.004, RestartAfter: time.Second,
		Drop: 0.05, Duplicate: 0.15, MinDelay: time.Millisecond, MaxDelay: 40 * time.Millisecond,
	},
	Failpoints: Failpoints{BeforeCommit: 0.02, AfterCommit: 0.02, Latency: 3 * time.Millisecond},
	Setup:      setupMessages,
}

const (
	messageCount  = 6
	consumerCount = 3
	messageLease  = time.Second
	ackTimeout    = 2 * time.Second
	maxDeliveries = 40
	messagesScope = "orders"
)

type message struct {
	id, payload string
	acked       bool
	deliveries  int
	outcomes    []string // every outcome a consumer got from Do for it
	dead        bool
}

var errTransient = errors.New("sim: transient failure")

func setupMessages(w *World, store *Store) func() {
	var consumers []*Process
	ledgers := make([]*idem.Ledger, consumerCount)
	for c := range consumerCount {
		p := w.NewProcess(fmt.Sprintf("consumer%d", c), func(*Process) {
			// A restart starts over with nothing but the durable store.
			l, err := idem.New(store, &idem.Config{Clock: w.Clock(), Lease: messageLease})
			if err != nil {
				panic(err)
			}
			ledgers[c] = l
		}).Crashable()
		p.Start()
		consumers = append(consumers, p)
	}

	var msgs []*message
	for i := range messageCount {
		msgs = append(msgs, &message{id: fmt.Sprintf("m%d", i), payload: fmt.Sprintf("order-%d", i)})
	}
	var dups []*message
	if w.Chance(0.3) {
		// A producer bug: another order under an id already in use.
		m := msgs[w.Rand().IntN(len(msgs))]
		dups = append(dups, &message{id: m.id, payload: m.payload + "-other"})
	}

	handle := func(c int, m *message) {
		ctx := context.Background()
		res, err := ledgers[c].Do(ctx, messagesScope, m.id, m.payload, func(ctx context.Context, claim *idem.Claim) (idem.Outcome, error) {
			if err := w.Sleep(w.Between(0, 1500*time.Millisecond)); err != nil {
				return idem.Outcome{}, err
			}
			switch x := w.Rand().IntN(20); {
			case x == 0:
				return idem.Outcome{}, idem.Retryable(errTransient)
			case x == 1:
				return idem.Outcome{}, fmt.Errorf("order %s rejected %08x", m.payload, w.Rand().Uint32())
			}
			out := fmt.Sprintf("applied %s as %08x", m.payload, w.Rand().Uint32())
			w.Stage(m.id, out)
			return idem.Outcome{Data: []byte(out)}, nil
		})
		var failed *idem.OutcomeError
		switch {
		case err == nil:
			m.outcomes = append(m.outcomes, string(res.Outcome.Data))
		case errors.As(err, &failed):
			m.outcomes = append(m.outcomes, "failed: "+failed.Message)
		case errors.Is(err, idem.ErrFingerprintMismatch):
			m.dead = true // dead-lettered: acked, never processed
		default:
			return // no ack: redelivered after the ack timeout
		}
		w.Send("ack "+m.id, func() {
			if !m.acked {
				w.Log("acked", m.id, "")
			}
			m.acked = true
		})
	}
	for _, m := range append(msgs, dups...) {
		w.After(w.Between(0, 500*time.Millisecond), func() {
			w.DeliverAtLeastOnce(m.id, consumers, ackTimeout, maxDeliveries,
				func() bool { return m.acked }, func(c int) { handle(c, m) })
		})
	}

	return func() {
		// Of two orders under one id, the first to arrive is the original;
		// the other must only ever see a mismatch.
		for _, d := range dups {
			for i, m := range msgs {
				if m.id != d.id || len(d.outcomes) == 0 {
					continue
				}
				if len(m.outcomes) > 0 {
					w.Violate("no-mismatch-replay", d.id, fmt.Sprintf("two orders under one id both got outcomes: %q and %q", m.outcomes[0], d.outcomes[0]))
				}
				msgs[i] = d
			}
		}
		var keys []string
		for _, m := range msgs {
			keys = append(keys, m.id)
			w.AtMostOnce(m.id)
			if !m.acked {
				w.Violate("ends-known", m.id, fmt.Sprintf("never acknowledged after %d deliveries", m.deliveries))
				continue
			}
			stored, ok := store.OutcomeOf(m.id)
			if !ok {
				w.Violate("no-lost-outcome", m.id, "acknowledged, but no outcome is stored")
				continue
			}
			// A failure is stored as an outcome without data.
			want, effects := string(stored.Data), 1
			if len(stored.Data) == 0 && len(m.outcomes) > 0 {
				want, effects = m.outcomes[0], 0
			}
			for _, got := range m.outcomes {
				if got != want {
					w.Violate("same-outcome", m.id, fmt.Sprintf("a consumer got %q, the stored outcome is %q", got, want))
					break
				}
			}
			if n := len(w.Effects(m.id)); n != effects {
				w.Violate("at-least-once", m.id, fmt.Sprintf("%d effects applied for a processed message, want %d", n, effects))
			}
		}
		store.Free(messageLease, keys...)
	}
}
