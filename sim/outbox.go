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

// The outbox half of the messages scenario: every order a consumer applies
// enqueues two outbox rows (reserve, ship) for its customer, in the step
// that commits the order's outcome, as pgstore.Enqueue in the caller's
// transaction would. Two relay processes, each a messaging.Relay over the
// in-memory outbox below, compete for the relay lease, crash (also between
// a publish and its mark) and pause past their lease; a simulated broker
// fails publishes before it has the message and loses acks after, dedups
// by message id within a window, and delivers to a downstream that
// dedups redeliveries by message id and applies the row's effect.

const (
	relayCount       = 2
	relayLease       = 3 * time.Second
	relayPoll        = time.Second
	relayBatch       = 4
	relayRetention   = 3 * time.Second
	brokerDedup      = time.Minute     // the broker's dedup window, by message id
	publishFail      = 0.05            // the broker is unavailable: it does not have the message
	publishAckLost   = 0.05            // the broker has the message, the ack is lost
	publishCrash     = 0.03            // the relay crashes after the publish, before the mark
	brokerRedeliver  = 0.2             // the downstream gets a message twice
	outboxGiveUpTime = 3 * time.Minute // relays stop at the latest then
)

// outboxRow is one row of the simulated outbox table.
type outboxRow struct {
	id        int64
	m         messaging.OutboxMessage
	attempts  int
	next      time.Time // not due before; zero: due
	sent      bool
	sentAt    time.Time
	published bool // the broker has had it, under some id
}

// outboxWorld is the outbox table, the broker and the downstream.
type outboxWorld struct {
	w     *World
	store *Store
	table []*outboxRow // unsent and unpruned rows, by id
	byID  map[string]*outboxRow
	all   []*outboxRow // every row ever enqueued, for the checks
	seqs  map[string]int64
	last  int64

	seen      map[string]time.Time // the broker's dedup window
	delivered map[string]bool      // the downstream's dedup of redeliveries
	firstSeq  map[string]int64     // per entity, the seq of the latest first delivery

	ctx     context.Context
	cancel  context.CancelFunc
	settled func() bool
	giveUp  *event
	stopped bool
}

var (
	errBrokerDown = errors.New("sim: broker unavailable")
	errAckLost    = errors.New("sim: publish ack lost")
)

// enqueue stages rows for entity, written when the running task's
// Complete commits. A row whose id is in the outbox is not written again.
func (o *outboxWorld) enqueue(entity string, ids ...string) {
	o.w.OnCommit(func() {
		for _, id := range ids {
			if o.byID[id] != nil {
				continue
			}
			o.seqs[entity]++
			o.last++
			r := &outboxRow{id: o.last, m: messaging.OutboxMessage{ID: id, Entity: entity, Subject: "shipments",
				Payload: []byte(id), Seq: o.seqs[entity]}}
			o.byID[id] = r
			o.table = append(o.table, r)
			o.all = append(o.all, r)
			o.w.Log("enqueue", id, fmt.Sprintf("entity %s seq %d", entity, r.m.Seq))
		}
	})
}

// Due implements messaging.Outbox.
func (o *outboxWorld) Due(ctx context.Context, now time.Time, limit int) (due []messaging.OutboxRow, next time.Time, err error) {
	err = o.store.call("outbox-due", "", func() error {
		blocked := map[string]int64{}
		for _, r := range o.table {
			if !r.sent && r.next.After(now) {
				if b, ok := blocked[r.m.Entity]; !ok || r.m.Seq < b {
					blocked[r.m.Entity] = r.m.Seq
				}
				if next.IsZero() || r.next.Before(next) {
					next = r.next
				}
			}
		}
		for _, r := range o.table {
			if b, ok := blocked[r.m.Entity]; r.sent || r.next.After(now) || ok && r.m.Seq >= b {
				continue
			}
			if len(due) == limit {
				break
			}
			m := r.m
			m.Attempt = r.attempts + 1
			due = append(due, messaging.OutboxRow{ID: r.id, Message: m})
		}
		return nil
	})
	return due, next, err
}

// holds checks the fence as the mark's SQL would, against the ledger's
// record, and checks that only the holder gets through.
func (o *outboxWorld) holds(op string, f messaging.Fence) error {
	rec, err := o.store.inner.Get(context.Background(), &idem.KeyParams{Scope: messaging.RelayScope, Key: f.Key})
	if err != nil || rec.State != idem.StatePending || rec.Token != f.Token {
		o.w.Log(op, f.Key, fmt.Sprintf("fenced: token %d is not the lease's", f.Token))
		return fmt.Errorf("sim: %s: %w", op, idem.ErrLeaseLost)
	}
	if t := o.store.truth(messaging.RelayScope, f.Key); t.token != f.Token {
		o.w.Violate("relay-fenced", f.Key, fmt.Sprintf("%s with token %d while token %d holds the relay lease", op, f.Token, t.token))
	}
	return nil
}

// MarkSent implements messaging.Outbox.
func (o *outboxWorld) MarkSent(ctx context.Context, f messaging.Fence, ids []int64) error {
	return o.store.call("outbox-mark-sent", "", func() error {
		if err := o.holds("outbox-mark-sent", f); err != nil {
			return err
		}
		n := 0
		for _, id := range ids {
			r := o.row(id)
			if r == nil || r.sent {
				continue
			}
			if !r.published {
				o.w.Violate("sent-was-published", r.m.ID, "marked sent, but the broker never had it")
			}
			r.sent, r.sentAt = true, o.w.now
			o.w.Log("outbox-sent", r.m.ID, fmt.Sprintf("token %d", f.Token))
			n++
		}
		o.maybeStop()
		if n < len(ids) {
			return fmt.Errorf("sim: marked %d of %d rows sent: %w", n, len(ids), idem.ErrLeaseLost)
		}
		return nil
	})
}

// MarkFailed implements messaging.Outbox.
func (o *outboxWorld) MarkFailed(ctx context.Context, f messaging.Fence, id int64, msg string, at time.Time) error {
	return o.store.call("outbox-mark-failed", "", func() error {
		if err := o.holds("outbox-mark-failed", f); err != nil {
			return err
		}
		if r := o.row(id); r != nil && !r.sent {
			r.attempts++
			r.next = at
		}
		return nil
	})
}

// Prune implements messaging.Outbox. It is no yield point: when rows go
// changes nothing the checks see.
func (o *outboxWorld) Prune(ctx context.Context, olderThan time.Duration) error {
	kept := o.table[:0]
	for _, r := range o.table {
		if !r.sent || o.w.now.Sub(r.sentAt) <= olderThan {
			kept = append(kept, r)
		}
	}
	clear(o.table[len(kept):])
	o.table = kept
	return nil
}

func (o *outboxWorld) row(id int64) *outboxRow {
	for _, r := range o.table {
		if r.id == id {
			return r
		}
	}
	return nil
}

// publish is the broker: it may fail before it has m, lose the ack after,
// or (with the relay's process p) crash the relay before it marks the row.
func (o *outboxWorld) publish(p *Process, m *messaging.OutboxMessage) error {
	w := o.w
	if err := w.Sleep(w.Between(0, 2*time.Millisecond)); err != nil {
		return err
	}
	if w.Chance(publishFail) {
		w.Log("publish", m.ID, "failpoint broker/unavailable")
		return errBrokerDown
	}
	r := o.byID[string(m.Payload)]
	r.published = true
	if t, ok := o.seen[m.ID]; ok && w.now.Sub(t) < brokerDedup {
		w.Log("publish", m.ID, "broker dedup: a duplicate")
	} else {
		o.seen[m.ID] = w.now
		w.Log("publish", m.ID, "broker has it")
		o.deliver(r, m.ID)
		if w.Chance(brokerRedeliver) {
			id := m.ID
			w.After(w.Between(time.Millisecond, 500*time.Millisecond), func() { o.deliver(r, id) })
		}
	}
	switch {
	case w.Chance(publishAckLost):
		w.Log("publish", m.ID, "failpoint broker/ack-lost")
		return errAckLost
	case w.Chance(publishCrash):
		w.Log("publish", m.ID, "failpoint relay/crash-before-mark")
		w.After(0, func() {
			if p.alive {
				p.Crash()
				w.After(w.Between(0, w.faults.RestartAfter), p.Start)
			}
		})
		return w.Sleep(time.Millisecond) // the crash comes first
	}
	return nil
}

// deliver hands message id (of row r) to the downstream, which applies
// each message id once; the first delivery of each row must come in its
// entity's seq order.
func (o *outboxWorld) deliver(r *outboxRow, id string) {
	if o.delivered[id] {
		return
	}
	o.delivered[id] = true
	key := r.m.ID
	if len(o.w.Effects(key)) == 0 {
		if last := o.firstSeq[r.m.Entity]; r.m.Seq < last {
			o.w.Violate("entity-order", key, fmt.Sprintf("entity %s: seq %d delivered first after seq %d", r.m.Entity, r.m.Seq, last))
		}
		o.firstSeq[r.m.Entity] = max(o.firstSeq[r.m.Entity], r.m.Seq)
	}
	o.w.apply(key, "delivered as "+id)
}

// setupOutbox starts the relays, which stop once settled reports true and
// every row is sent (checked by maybeStop), or at outboxGiveUpTime; it
// returns the outbox and its checks.
func setupOutbox(w *World, store *Store, settled func() bool) (*outboxWorld, func()) {
	o := &outboxWorld{w: w, store: store, byID: map[string]*outboxRow{}, seqs: map[string]int64{},
		seen: map[string]time.Time{}, delivered: map[string]bool{}, firstSeq: map[string]int64{}, settled: settled}
	o.ctx, o.cancel = context.WithCancel(context.Background())
	for i := range relayCount {
		var p *Process
		p = w.NewProcess(fmt.Sprintf("relay%d", i), func(p *Process) {
			if o.stopped {
				return
			}
			pub := messaging.PublisherFunc(func(_ context.Context, m *messaging.OutboxMessage) error { return o.publish(p, m) })
			r := messaging.NewRelay(store, o, pub, &messaging.RelayConfig{Name: p.Name(), Lease: relayLease,
				Batch: relayBatch, Workers: 1, PollInterval: relayPoll, Retention: relayRetention, Clock: w.Clock(),
				Backoff: func(attempt int) time.Duration { return time.Duration(min(attempt, 5)) * 50 * time.Millisecond }})
			if w.relayMutant != nil {
				h := w.relayMutant(w)
				msghook.InstallRelay(r, &h)
			}
			p.Go("relay", func() { _ = r.Run(o.ctx) })
		}).Crashable().Pausable()
		p.Start()
	}
	o.giveUp = w.at(outboxGiveUpTime, o.stop)
	return o, o.check
}

// maybeStop stops the relays once the producers are settled and every row
// is sent: a relay sees its context end at its next wake-up.
func (o *outboxWorld) maybeStop() {
	if o.stopped || !o.settled() {
		return
	}
	for _, r := range o.table {
		if !r.sent {
			return
		}
	}
	o.stop()
}

func (o *outboxWorld) stop() {
	o.stopped = true
	o.giveUp.cancel()
	o.cancel()
}

// check: every row enqueued was sent and delivered, once.
func (o *outboxWorld) check() {
	for _, r := range o.all {
		switch n := len(o.w.Effects(r.m.ID)); {
		case n == 0:
			o.w.Violate("outbox-delivered", r.m.ID, fmt.Sprintf("enqueued (entity %s seq %d), never delivered; sent=%v", r.m.Entity, r.m.Seq, r.sent))
		case n > 1:
			o.w.AtMostOnce(r.m.ID)
		case !r.sent:
			o.w.Violate("outbox-delivered", r.m.ID, "delivered, but never marked sent")
		}
	}
}
