package sim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/msghook"
	"github.com/idemkit/idem/messaging"
)

// messages: a broker delivers orders at least once to competing consumers,
// each a messaging.Consumer whose Decision the adapter turns into an ack
// (Ack, AckDuplicate, DeadLetter) or no ack (Retry: redelivered after the
// ack timeout). Deliveries and acks are lost, duplicated and reordered;
// consumers crash and restart; handlers sometimes fail retryably (the key
// is released and the message redelivered, up to MaxAttempts) or for good
// (Permanent: dead-lettered); a producer bug reuses a message id for
// another order (a fingerprint mismatch, dead-lettered, never applied).
// Each order applied enqueues two outbox rows, which two competing
// messaging.Relay processes publish to a faulty broker (outbox.go).
var messages = &Scenario{
	Name: "messages",
	Doc:  "at-least-once delivery to competing consumers that use messaging.Consumer, and an outbox that competing messaging.Relays publish; crashes, pauses, lost and duplicated deliveries and acks",
	Faults: Faults{
		Crash: 0.004, RestartAfter: time.Second, Pause: 0.002, PauseFor: 3 * relayLease,
		Drop: 0.05, Duplicate: 0.15, MinDelay: time.Millisecond, MaxDelay: 40 * time.Millisecond,
	},
	Failpoints: Failpoints{BeforeCommit: 0.02, AfterCommit: 0.02, Latency: 3 * time.Millisecond},
	Setup:      setupMessages,
}

const (
	messageCount       = 6
	consumerCount      = 3
	messageLease       = time.Second
	ackTimeout         = 2 * time.Second
	maxDeliveries      = 40
	messagesScope      = "orders"
	messageMaxAttempts = 3
)

type message struct {
	id, payload string
	acked       bool
	deliveries  int
	// owned: a delivery was answered as the key's own (Ack, AckDuplicate,
	// or a DeadLetter that is not a mismatch); acks and dead: how.
	owned, handledAck, deadLettered, mismatched bool
	// letters are the attempts the dead-letter hook got for it.
	letters [][]messaging.Attempt
}

// deliveryCtx carries the message a consumer is handling, for the
// ack-before-commit mutant's early ack.
type deliveryCtx struct{}

var errTransient = errors.New("sim: transient failure")

func setupMessages(w *World, store *Store) func() {
	var msgs []*message
	customer := map[string]string{}
	for i := range messageCount {
		msgs = append(msgs, &message{id: fmt.Sprintf("m%d", i), payload: fmt.Sprintf("order-%d", i)})
		customer[msgs[i].id] = fmt.Sprintf("c%d", i%2)
	}
	var dups []*message
	if w.Chance(0.3) {
		// A producer bug: another order under an id already in use.
		m := msgs[w.Rand().IntN(len(msgs))]
		dups = append(dups, &message{id: m.id, payload: m.payload + "-other"})
	}
	outbox, checkOutbox := setupOutbox(w, store, func() bool {
		for _, m := range msgs {
			if !m.acked {
				return false
			}
		}
		for _, m := range dups {
			if !m.acked {
				return false
			}
		}
		return true
	})
	byDelivery := func(ctx context.Context) *message { m, _ := ctx.Value(deliveryCtx{}).(*message); return m }
	ack := func(m *message) {
		w.Send("ack "+m.id, func() {
			if !m.acked {
				w.Log("acked", m.id, "")
			}
			m.acked = true
			outbox.maybeStop()
		})
	}

	handler := func(ctx context.Context, msg *messaging.Message) error {
		if err := w.Sleep(w.Between(0, 1500*time.Millisecond)); err != nil {
			return err
		}
		switch x := w.Rand().IntN(20); {
		case x == 0:
			return errTransient
		case x == 1:
			return messaging.Permanent(fmt.Errorf("order %s rejected %08x", msg.Payload, w.Rand().Uint32()))
		}
		w.Stage(msg.ID, fmt.Sprintf("applied %s as %08x", msg.Payload, w.Rand().Uint32()))
		outbox.enqueue(customer[msg.ID], msg.ID+"/reserve", msg.ID+"/ship")
		return nil
	}
	deadLetter := func(ctx context.Context, msg *messaging.Message, attempts []messaging.Attempt, err error) error {
		if m := byDelivery(ctx); m != nil && !errors.Is(err, idem.ErrFingerprintMismatch) {
			m.letters = append(m.letters, attempts)
		}
		return nil
	}

	var procs []*Process
	consumers := make([]*messaging.Consumer, consumerCount)
	for c := range consumerCount {
		p := w.NewProcess(fmt.Sprintf("consumer%d", c), func(*Process) {
			// A restart starts over with nothing but the durable store.
			l, err := idem.New(store, &idem.Config{Clock: w.Clock(), Lease: messageLease})
			if err != nil {
				panic(err)
			}
			con, err := messaging.NewConsumer(l, handler, &messaging.Config{Scope: messagesScope,
				MaxAttempts: messageMaxAttempts, DeadLetter: deadLetter})
			if err != nil {
				panic(err)
			}
			if w.consumerMutant != nil {
				h := w.consumerMutant(func(ctx context.Context, key string) {
					if m := byDelivery(ctx); m != nil {
						ack(m)
					}
				})
				msghook.Install(con, &h)
			}
			consumers[c] = con
		}).Crashable()
		p.Start()
		procs = append(procs, p)
	}

	handle := func(c int, m *message) {
		m.deliveries++
		ctx := context.WithValue(context.Background(), deliveryCtx{}, m)
		d := consumers[c].Handle(ctx, &messaging.Message{ID: m.id, Subject: messagesScope, Payload: []byte(m.payload), Delivery: m.deliveries})
		w.Log("decision", m.id, d.Action.String())
		switch d.Action {
		case messaging.Ack, messaging.AckDuplicate:
			m.owned = true
			m.handledAck = m.handledAck || d.Action == messaging.Ack
			if d.Action == messaging.AckDuplicate && d.Err != nil {
				m.deadLettered = true // a duplicate of a dead letter
			}
		case messaging.DeadLetter:
			if errors.Is(d.Err, idem.ErrFingerprintMismatch) {
				m.mismatched = true // acked, never processed
			} else {
				m.owned, m.deadLettered = true, true
			}
		default:
			return // Retry: no ack, redelivered after the ack timeout
		}
		ack(m)
	}
	for _, m := range append(msgs, dups...) {
		w.After(w.Between(0, 500*time.Millisecond), func() {
			w.DeliverAtLeastOnce(m.id, procs, ackTimeout, maxDeliveries,
				func() bool { return m.acked }, func(c int) { handle(c, m) })
		})
	}

	return func() {
		// Of two orders under one id, the one that took the key is its
		// owner; the other must only ever see a mismatch.
		for _, d := range dups {
			for i, m := range msgs {
				if m.id != d.id {
					continue
				}
				if m.owned && d.owned {
					w.Violate("no-mismatch-replay", d.id, "two orders under one id were both taken as the key's own")
				}
				if !d.acked || !m.acked {
					w.Violate("ends-known", d.id, "of two orders under one id, one was never acknowledged")
				}
				if d.owned {
					msgs[i] = d
				}
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
			_, failed := stored.Meta["idem.error"]
			effects := 1
			if failed {
				effects = 0
			}
			switch {
			case failed && m.handledAck:
				w.Violate("same-outcome", m.id, "a delivery was acked as handled, the stored outcome is a failure")
			case !failed && m.deadLettered:
				w.Violate("same-outcome", m.id, "a delivery was dead-lettered, the stored outcome is a success")
			case failed && len(m.letters) == 0:
				w.Violate("same-outcome", m.id, "completed as failed, but the dead-letter hook never got it")
			}
			for _, attempts := range m.letters {
				if len(attempts) == 0 {
					w.Violate("same-outcome", m.id, "the dead-letter hook got no attempts")
				}
			}
			if n := len(w.Effects(m.id)); n != effects {
				inv := "at-least-once"
				if n > effects {
					inv = "at-most-once"
				}
				w.Violate(inv, m.id, fmt.Sprintf("%d effects applied for an acknowledged message, want %d", n, effects))
			}
		}
		store.Free(messageLease, keys...)
		checkOutbox()
	}
}
