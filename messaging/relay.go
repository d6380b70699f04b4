package messaging

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/msghook"
)

// OutboxMessage is a message in an outbox: what a producer writes in its
// transaction and what the Relay hands to the Publisher.
type OutboxMessage struct {
	// ID is the message id, the broker's dedup id: a publish of the same
	// ID twice must be delivered once (Nats-Msg-Id, a Kafka idempotent
	// key, an AMQP message-id checked downstream). Default (pgstore's
	// Enqueue): Parent + "/" + Step. At most 512 bytes, no NUL. One outbox
	// row per ID: an Enqueue of an ID that is in the outbox already writes
	// nothing.
	ID string
	// Parent is the key of the work that sends the message (a workflow
	// step's, an HTTP request's, an inbox message's). Default
	// idem.KeyFrom(ctx) of Enqueue's ctx. Only used to derive ID.
	Parent string
	// Step names the message among the ones its parent sends, so ID is
	// stable when the parent runs again: "reserve-stock", "email". Needed
	// when ID is not set.
	Step string
	// Entity orders messages: the relay publishes the messages of one
	// entity in the order their transactions committed, one at a time, and
	// a message that fails holds back the later ones of its entity (only).
	// Default ID: a message ordered with no other.
	Entity string
	// Subject is the subject, queue or topic to publish to. Required.
	Subject string
	Payload []byte
	Headers map[string]string

	// Seq is the message's place in its entity's order; Enqueue sets it
	// (0 when the ID was in the outbox already). Seqs of an entity start
	// at 1 and increase; an Enqueue of an ID already there leaves a gap.
	Seq int64
	// Attempt is the publish attempt, from 1: the row's failed attempts
	// plus one. The Outbox sets it when it reads the row.
	Attempt int
}

// Publisher publishes one outbox message to a broker. Publish returns
// nil only once the broker has the message (a NATS JetStream PubAck, a
// RabbitMQ publisher confirm, a Kafka ack), and must publish with m.ID as
// the broker's dedup id: the relay publishes a message again when it
// cannot tell whether an earlier publish got through (it died between the
// publish and marking the row sent), and the broker's dedup is what makes
// the downstream see it once. Broker adapters implement it.
type Publisher interface {
	Publish(ctx context.Context, m *OutboxMessage) error
}

// PublisherFunc is a function as a Publisher.
type PublisherFunc func(ctx context.Context, m *OutboxMessage) error

// Publish calls f.
func (f PublisherFunc) Publish(ctx context.Context, m *OutboxMessage) error { return f(ctx, m) }

// RelayScope is the ledger scope of the relay's lease; its key is
// RelayConfig.Key.
const RelayScope = "outbox-relay"

// Outbox is the table a Relay publishes: the seam between the relay, which
// knows nothing of databases or brokers, and a store. pgstore implements
// it over its outbox table; any database that can write a row in the
// producer's transaction and check the relay's lease in the statement that
// marks rows can back it.
//
// Every method that writes takes the relay's Fence and must write only
// while the fence holds: while the ledger record (scope RelayScope, key
// Fence.Key) is pending with token Fence.Token, checked in the same atomic
// step as the write (the same SQL statement). That is what keeps a relay
// that lost its lease from marking rows after another took over.
type Outbox interface {
	// Due returns up to limit unsent rows due at now, in the order they
	// were written (so each entity's in seq order): rows not waiting out a
	// backoff, and not behind an unsent row of their entity that is. next
	// is when the earliest row waiting out a backoff is due (zero: none).
	Due(ctx context.Context, now time.Time, limit int) (rows []OutboxRow, next time.Time, err error)
	// MarkSent marks the rows sent (ids ascending). When fewer than all of
	// them were marked because the fence no longer holds, it returns an
	// error wrapping idem.ErrLeaseLost.
	MarkSent(ctx context.Context, f Fence, ids []int64) error
	// MarkFailed records a failed publish of row id: one more attempt, the
	// error's text msg, and not due again before at. It may return an
	// error wrapping idem.ErrLeaseLost when the fence no longer holds.
	MarkFailed(ctx context.Context, f Fence, id int64, msg string, at time.Time) error
	// Prune deletes (some of the) rows sent more than olderThan ago; the
	// relay calls it every RelayConfig.PollInterval.
	Prune(ctx context.Context, olderThan time.Duration) error
}

// OutboxRow is one row Outbox.Due returns.
type OutboxRow struct {
	// ID identifies the row in its table; ascending in the order rows
	// were written.
	ID      int64
	Message OutboxMessage
}

// Fence is the relay's lease, which every write of the Outbox checks: the
// ledger record of scope RelayScope and key Key, pending with token Token.
type Fence struct {
	Key   string
	Token int64
}

// RelayConfig configures a Relay. A nil *RelayConfig means the defaults.
type RelayConfig struct {
	// Key is the relay lease's key in scope "outbox-relay": one relay per
	// key is active at a time, over the whole outbox. Default "outbox".
	Key string
	// Name identifies this relay in the lease's checkpoint (point
	// "owner"), where an operator sees which relay is active. Default
	// host name and process id.
	Name string
	// Lease is the relay's lease: how long after a relay dies another
	// takes over. It is extended every third of it while the relay runs.
	// Default 30 s.
	Lease time.Duration
	// Batch is how many due rows the relay reads per round. Default 100.
	Batch int
	// Workers is how many entities the relay publishes at once (each
	// entity's messages one after the other). Default 4.
	Workers int
	// PollInterval is how long an idle relay waits before it looks for
	// new rows again; also how often a waiting relay asks for the lease.
	// Default 1 s.
	PollInterval time.Duration
	// Backoff is the delay before a row is published again after its
	// attempt-th failure. Default 1 s, doubling, capped at 1 min.
	// Failed rows are retried without end: an outbox row is never given
	// up; its attempts and last error show in the table.
	Backoff func(attempt int) time.Duration
	// Retention is how long sent rows stay in the outbox (dedup of
	// Enqueue by ID included) before the relay deletes them. Default
	// 24 h; negative: never.
	Retention time.Duration
	// Clock schedules polls and backoff; a row's next attempt is on it.
	// Default idem.SystemClock. The lease is judged by the store's clock.
	Clock idem.Clock
	// Observer receives the events of the relay's ledger (its lease's
	// Begin, Extend, Release).
	Observer idem.Observer
	// OnError, when set, is called with every error of a round (a
	// failed publish, a database error); the relay goes on regardless.
	OnError func(err error)
	// OnRound, when set, is called after every round of the active relay
	// with what the round saw: the due rows it read and, when the Outbox
	// is an UnsentAger, when the oldest unsent row was written. For
	// metrics: module idemotel's OutboxRound makes idem.outbox.due and
	// idem.outbox.lag of it.
	OnRound func(ctx context.Context, round RelayRound)
}

// RelayRound is what one round of the active relay saw.
type RelayRound struct {
	// Due is the number of due rows the round read: at most
	// RelayConfig.Batch, and a full batch means more may be due. Rows
	// waiting out a backoff (and the rows of their entity behind them)
	// are not due.
	Due int
	// Oldest is when the oldest unsent row was written, due or waiting
	// out a backoff, by the Outbox's clock (pgstore: the database's);
	// zero when no row is unsent, or the Outbox is no UnsentAger, or
	// asking it failed (the error goes to OnError).
	Oldest time.Time
	// Now is the round's time on RelayConfig.Clock.
	Now time.Time
}

// Lag is how long the oldest unsent row has waited at the round: Now
// minus Oldest, 0 when Oldest is zero (or in the future, by a skew of the
// two clocks).
func (r RelayRound) Lag() time.Duration {
	if r.Oldest.IsZero() || r.Oldest.After(r.Now) {
		return 0
	}
	return r.Now.Sub(r.Oldest)
}

// UnsentAger is an optional capability of an Outbox: OldestUnsent returns
// when the oldest unsent row was written (the zero time when none is),
// the outbox's lag for metrics and alerts. A row that keeps failing
// stays the oldest, so the lag grows while it does. pgstore's outbox has
// it.
type UnsentAger interface {
	OldestUnsent(ctx context.Context) (time.Time, error)
}

// Relay publishes an Outbox's rows with a Publisher. Make one with
// NewRelay (or pgstore's Store.Relay) and call Run; any number of
// processes may run one over the same outbox and ledger: one at a time is
// active, the holder of the relay lease.
type Relay struct {
	outbox Outbox
	pub    Publisher
	cfg    RelayConfig
	ledger *idem.Ledger
	err    error               // NewRelay's, returned by Run
	hooks  *msghook.RelayHooks // the simulator's mutants only
}

func init() {
	msghook.InstallRelay = func(relay any, h *msghook.RelayHooks) { relay.(*Relay).hooks = h }
}

// NewRelay returns a relay that publishes outbox's rows with pub, holding
// its lease in store: the store whose records the Outbox checks its Fence
// against (for pgstore, the same database). Invalid arguments (a nil store,
// outbox or pub) are reported by Run.
func NewRelay(store idem.Store, outbox Outbox, pub Publisher, cfg *RelayConfig) *Relay {
	var c RelayConfig
	if cfg != nil {
		c = *cfg
	}
	if c.Key == "" {
		c.Key = "outbox"
	}
	if c.Name == "" {
		host, _ := os.Hostname()
		c.Name = host + ":" + strconv.Itoa(os.Getpid())
	}
	if c.Lease <= 0 {
		c.Lease = idem.DefaultLease
	}
	if c.Batch <= 0 {
		c.Batch = 100
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.Backoff == nil {
		c.Backoff = DefaultBackoff
	}
	if c.Retention == 0 {
		c.Retention = 24 * time.Hour
	}
	if c.Clock == nil {
		c.Clock = idem.SystemClock{}
	}
	r := &Relay{outbox: outbox, pub: pub, cfg: c}
	r.ledger, r.err = idem.New(store, &idem.Config{Lease: c.Lease, Clock: c.Clock, Observer: c.Observer})
	return r
}

// Run relays until ctx ends, and then returns ctx's error. It waits for
// the relay lease (scope "outbox-relay", key RelayConfig.Key), asking
// every PollInterval while another relay holds it; holding it, it keeps
// it alive and publishes rounds of due rows: per entity in seq order, one
// at a time, each marked sent once the Publisher returned nil; a failed
// publish is recorded on its row (attempts, last error, next attempt
// after Backoff) and holds back the later rows of its entity until then.
// When the lease is lost (the store refused an extension, or the Outbox
// refused a mark) it stops publishing and waits for the lease again; when
// ctx ends it releases the lease, so another relay takes over at once.
//
// A relay that dies between a publish and the mark publishes the row
// again, with the same ID, when it (or another) takes over: the broker's
// dedup delivers it once.
func (r *Relay) Run(ctx context.Context) error {
	switch {
	case r.err != nil:
		return fmt.Errorf("outbox relay: %w", r.err)
	case r.outbox == nil:
		return fmt.Errorf("%w: outbox relay: nil Outbox", idem.ErrInvalid)
	case r.pub == nil:
		return fmt.Errorf("%w: outbox relay: nil Publisher", idem.ErrInvalid)
	}
	for {
		claim, err := r.ledger.Begin(ctx, RelayScope, r.cfg.Key, "relay")
		var inFlight *idem.InFlightError
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, &inFlight):
			wait := r.cfg.PollInterval
			if inFlight.RetryAfter > 0 {
				wait = min(wait, inFlight.RetryAfter)
			}
			if err := r.cfg.Clock.Sleep(ctx, wait); err != nil {
				return err
			}
			continue
		case err != nil:
			r.report(fmt.Errorf("outbox relay: lease: %w", err))
			if err := r.cfg.Clock.Sleep(ctx, r.cfg.PollInterval); err != nil {
				return err
			}
			continue
		case claim.Replayed():
			// Only a hand-made record can complete the lease.
			r.report(fmt.Errorf("outbox relay: the lease %s/%s is a completed record; delete it", RelayScope, r.cfg.Key))
			if err := r.cfg.Clock.Sleep(ctx, r.cfg.PollInterval); err != nil {
				return err
			}
			continue
		}
		if err := r.active(ctx, claim); err != nil {
			return err
		}
	}
}

// active publishes while claim holds the lease; nil when the lease was
// lost, ctx's error when ctx ended (the lease released).
func (r *Relay) active(ctx context.Context, claim *idem.Claim) error {
	lctx, lost := context.WithCancelCause(ctx)
	defer lost(nil)
	stop := claim.KeepAlive(ctx, r.cfg.Lease, func(err error) { lost(err) })
	defer stop()
	_ = claim.SetCheckpoint(lctx, "owner", []byte(r.cfg.Name)) // for operators only
	f := Fence{Key: r.cfg.Key, Token: claim.Token()}
	lastPrune := time.Time{}
	for {
		if ctx.Err() != nil {
			stop()
			_ = claim.Release(context.WithoutCancel(ctx))
			return ctx.Err()
		}
		if lctx.Err() != nil {
			r.report(fmt.Errorf("outbox relay: lost the lease: %w", context.Cause(lctx)))
			return nil
		}
		now := r.cfg.Clock.Now()
		if r.cfg.Retention > 0 && now.Sub(lastPrune) >= r.cfg.PollInterval {
			lastPrune = now
			if err := r.outbox.Prune(lctx, r.cfg.Retention); err != nil && lctx.Err() == nil {
				r.report(err)
			}
		}
		n, next, fenced, err := r.round(lctx, f, now)
		if err != nil && lctx.Err() == nil {
			r.report(err)
		}
		if r.cfg.OnRound != nil {
			r.cfg.OnRound(lctx, r.roundInfo(lctx, n, now))
		}
		if fenced {
			lost(errFenced) // seen at the top
			continue
		}
		if n > 0 && err == nil {
			continue // more may be due
		}
		// Idle, or a row failed (its backoff is in next): wait.
		wait := r.cfg.PollInterval
		if !next.IsZero() {
			wait = max(min(wait, next.Sub(now)), time.Millisecond)
		}
		_ = r.cfg.Clock.Sleep(lctx, wait) // an end of lctx is seen at the top
	}
}

func (r *Relay) report(err error) {
	if r.cfg.OnError != nil {
		r.cfg.OnError(err)
	}
}

// errFenced: a mark found the relay's lease another's.
var errFenced = fmt.Errorf("%w: outbox relay: the relay lease is another's", idem.ErrLeaseLost)

// round publishes one batch of due rows and marks them; n is how many it
// read, next when the earliest held-back row is due (zero: none), fenced
// whether the Outbox refused a mark because another relay holds the lease.
// roundInfo is OnRound's view of a round that read due rows at now.
func (r *Relay) roundInfo(ctx context.Context, due int, now time.Time) RelayRound {
	info := RelayRound{Due: due, Now: now}
	if a, ok := r.outbox.(UnsentAger); ok {
		oldest, err := a.OldestUnsent(ctx)
		if err != nil {
			if ctx.Err() == nil {
				r.report(fmt.Errorf("outbox relay: oldest unsent row: %w", err))
			}
		} else {
			info.Oldest = oldest
		}
	}
	return info
}

func (r *Relay) round(ctx context.Context, f Fence, now time.Time) (n int, next time.Time, fenced bool, err error) {
	due, next, err := r.outbox.Due(ctx, now, r.cfg.Batch)
	if err != nil {
		return 0, time.Time{}, false, err
	}
	// Entities in the order of their first row, each's rows in seq order.
	var order []string
	byEntity := map[string][]OutboxRow{}
	for _, o := range due {
		if _, ok := byEntity[o.Message.Entity]; !ok {
			order = append(order, o.Message.Entity)
		}
		byEntity[o.Message.Entity] = append(byEntity[o.Message.Entity], o)
	}
	var mu sync.Mutex
	var sent []int64
	var errs []error
	done := func(e entityResult) {
		mu.Lock()
		defer mu.Unlock()
		sent = append(sent, e.sent...)
		if e.err != nil {
			errs = append(errs, e.err)
		}
		fenced = fenced || e.fenced
		if !e.retry.IsZero() && (next.IsZero() || e.retry.Before(next)) {
			next = e.retry
		}
	}
	if workers := min(r.cfg.Workers, len(order)); workers <= 1 {
		for _, e := range order { // in this goroutine: one worker needs no other
			done(r.publishEntity(ctx, f, byEntity[e], now))
		}
	} else {
		work := make(chan string)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for e := range work {
					done(r.publishEntity(ctx, f, byEntity[e], now))
				}
			})
		}
		for _, e := range order {
			work <- e
		}
		close(work)
		wg.Wait()
	}
	if len(sent) > 0 {
		slices.Sort(sent)
		if err := r.outbox.MarkSent(context.WithoutCancel(ctx), f, sent); err != nil {
			errs = append(errs, err)
			if errors.Is(err, idem.ErrLeaseLost) {
				// Only the lease's holder marks rows, so another relay
				// holds it now: stop.
				fenced = true
			}
		}
	}
	return len(due), next, fenced, errors.Join(errs...)
}

// entityResult is what publishing one entity's due rows came to.
type entityResult struct {
	sent   []int64   // the rows published
	retry  time.Time // when the row that failed is due again; zero: none failed
	fenced bool      // the Outbox refused a mark: the lease is another's
	err    error
}

// publishEntity publishes one entity's due rows in seq order, stopping at
// the first failure, which it records on the row.
func (r *Relay) publishEntity(ctx context.Context, f Fence, rows []OutboxRow, now time.Time) (res entityResult) {
	for _, o := range rows {
		if ctx.Err() != nil {
			return res
		}
		m := &o.Message
		if h := r.hooks; h != nil {
			if h.MessageID != nil {
				m.ID = h.MessageID(m.ID)
			}
			if h.MarkBeforePublish {
				if err := r.outbox.MarkSent(ctx, f, []int64{o.ID}); err != nil {
					res.fenced, res.err = errors.Is(err, idem.ErrLeaseLost), err
					return res
				}
			}
		}
		err := r.pub.Publish(ctx, m)
		if err == nil {
			res.sent = append(res.sent, o.ID)
			continue
		}
		if ctx.Err() != nil {
			return res // the lease was lost or the relay stops: not the row's failure
		}
		res.retry = now.Add(r.cfg.Backoff(m.Attempt))
		if merr := r.outbox.MarkFailed(ctx, f, o.ID, err.Error(), res.retry); merr != nil {
			res.fenced = errors.Is(merr, idem.ErrLeaseLost)
			err = errors.Join(err, merr)
		}
		res.err = fmt.Errorf("outbox relay: publish %q (entity %q seq %d, attempt %d): %w", m.ID, m.Entity, m.Seq, m.Attempt, err)
		if r.hooks == nil || !r.hooks.PublishPastFailure {
			return res
		}
	}
	return res
}
