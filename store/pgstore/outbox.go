package pgstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
	"github.com/jackc/pgx/v5"
)

// OutboxMessage is a message in the outbox: what Enqueue writes and what
// the relay hands to the Publisher.
type OutboxMessage struct {
	// ID is the message id, the broker's dedup id: a publish of the same
	// ID twice must be delivered once (Nats-Msg-Id, a Kafka idempotent
	// key, an AMQP message-id checked downstream). Default: Parent + "/" +
	// Step. At most 512 bytes, no NUL. One outbox row per ID: Enqueue of
	// an ID that is in the outbox already writes nothing.
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
	// Attempt is the publish attempt, from 1; set by the relay.
	Attempt int
}

// maxMessageID bounds an outbox message id.
const maxMessageID = 512

// enqueueSQL draws the entity's next seq (locking the entity's counter
// row until the caller's transaction ends, so an entity's messages commit
// in seq order) and inserts the message, unless its id is in the outbox.
const enqueueSQL = `WITH e AS (
	INSERT INTO {s}.outbox_entities AS e (entity, last_seq) VALUES ($1, 1)
	ON CONFLICT (entity) DO UPDATE SET last_seq = e.last_seq + 1
	RETURNING e.last_seq
)
INSERT INTO {s}.outbox (entity, seq, subject, message_id, payload, headers)
SELECT $1, e.last_seq, $2, $3, $4, $5 FROM e
ON CONFLICT (message_id) DO NOTHING
RETURNING seq`

// Enqueue writes m to the outbox inside the caller's transaction tx: the
// message exists if and only if tx commits, and the relay publishes it
// after the commit. It returns an error wrapping idem.ErrInvalid for a
// message without a subject, without an ID when Step (or the key in ctx)
// is missing, or with a NUL byte or invalid UTF-8 in its id, entity,
// subject or headers; a message whose ID is in the outbox already (the same
// step enqueued again) is not written again, and one with that ID but
// another subject or payload returns an error wrapping
// idem.ErrFingerprintMismatch. Both leave tx usable.
//
// Enqueue is one statement (two when the ID is in the outbox already). It
// locks m's entity in tx until tx ends: concurrent transactions
// enqueueing for one entity take turns, which is what orders them.
func (s *Store) Enqueue(ctx context.Context, tx pgx.Tx, m *OutboxMessage) error {
	if m == nil || tx == nil {
		return fmt.Errorf("%w: outbox: Enqueue needs a message and the caller's transaction", idem.ErrInvalid)
	}
	if err := s.check(); err != nil {
		return err
	}
	if m.ID == "" {
		parent := m.Parent
		if parent == "" {
			parent, _ = idem.KeyFrom(ctx)
		}
		if parent == "" || m.Step == "" {
			return fmt.Errorf("%w: outbox: a message needs an ID, or a Step and a parent key (OutboxMessage.Parent or idem.WithKey on ctx)", idem.ErrInvalid)
		}
		m.ID = parent + "/" + m.Step
	}
	switch {
	case len(m.ID) > maxMessageID:
		return fmt.Errorf("%w: outbox: message id of %d bytes, at most %d", idem.ErrInvalid, len(m.ID), maxMessageID)
	case m.Subject == "":
		return fmt.Errorf("%w: outbox: message %q has no subject", idem.ErrInvalid, m.ID)
	}
	// What PostgreSQL text cannot hold is refused here: a refused
	// statement would abort the caller's transaction.
	for _, v := range []string{m.ID, m.Entity, m.Subject} {
		if !storable(v) {
			return fmt.Errorf("%w: outbox: message %q: a NUL byte or invalid UTF-8 in its id, entity or subject", idem.ErrInvalid, m.ID)
		}
	}
	for k, v := range m.Headers {
		if !storable(k) || !storable(v) {
			return fmt.Errorf("%w: outbox: message %q: a NUL byte or invalid UTF-8 in header %q", idem.ErrInvalid, m.ID, k)
		}
	}
	entity := m.Entity
	if entity == "" {
		entity = m.ID
	}
	payload := m.Payload
	if payload == nil {
		payload = []byte{}
	}
	var headers []byte
	if len(m.Headers) > 0 {
		headers, _ = json.Marshal(m.Headers) // map[string]string always marshals
	}
	var seq int64
	err := tx.QueryRow(ctx, msgSQL(s, enqueueSQL), entity, m.Subject, m.ID, payload, headers).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		// The id is in the outbox: the same message, or another under
		// its id?
		var subject string
		var stored []byte
		err = tx.QueryRow(ctx, msgSQL(s, `SELECT subject, payload FROM {s}.outbox WHERE message_id = $1`), m.ID).Scan(&subject, &stored)
		if err == nil && (subject != m.Subject || !bytes.Equal(stored, payload)) {
			return fmt.Errorf("outbox: message %q: %w: the id is in the outbox with another subject or payload", m.ID, idem.ErrFingerprintMismatch)
		}
		if errors.Is(err, pgx.ErrNoRows) {
			err = nil // sent and pruned since
		}
		seq = 0
	}
	if err != nil {
		return wrapTxErr("outbox: enqueue", err)
	}
	if m.Entity == "" {
		m.Entity = entity
	}
	m.Seq = seq
	return nil
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
	// up; its attempts and last_error show in the table.
	Backoff func(attempt int) time.Duration
	// Retention is how long sent rows stay in the outbox (dedup of
	// Enqueue by ID included) before the relay deletes them. Default
	// 24 h; negative: never.
	Retention time.Duration
	// Clock schedules polls and backoff; a row's next_attempt_at is on
	// it. Default idem.SystemClock. The lease is judged by the database's
	// clock.
	Clock idem.Clock
	// Observer receives the events of the relay's ledger (its lease's
	// Begin, Extend, Release).
	Observer idem.Observer
	// OnError, when set, is called with every error of a round (a
	// failed publish, a database error); the relay goes on regardless.
	OnError func(err error)
}

// Relay publishes the outbox's rows. Make one with Store.Relay and call
// Run; any number of processes may run one: one at a time is active.
type Relay struct {
	s      *Store
	pub    Publisher
	cfg    RelayConfig
	ledger *idem.Ledger
}

// Relay returns a relay that publishes the store's outbox with pub.
func (s *Store) Relay(pub Publisher, cfg *RelayConfig) *Relay {
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
		c.Backoff = messaging.DefaultBackoff
	}
	if c.Retention == 0 {
		c.Retention = 24 * time.Hour
	}
	if c.Clock == nil {
		c.Clock = idem.SystemClock{}
	}
	r := &Relay{s: s, pub: pub, cfg: c}
	r.ledger, _ = idem.New(s, &idem.Config{Lease: c.Lease, Clock: c.Clock, Observer: c.Observer}) // valid by construction
	return r
}

// Run relays until ctx ends, and then returns ctx's error. It waits for
// the relay lease (scope "outbox-relay", key RelayConfig.Key), asking
// every PollInterval while another relay holds it; holding it, it keeps
// it alive and publishes rounds of due rows: per entity in seq order, one
// at a time, each marked sent once the Publisher returned nil; a failed
// publish is recorded on its row (attempts, last_error, next_attempt_at
// after Backoff) and holds back the later rows of its entity until then.
// When the lease is lost (the database refused an extension) it stops
// publishing and waits for the lease again; when ctx ends it releases the
// lease, so another relay takes over at once.
//
// A relay that dies between a publish and the mark publishes the row
// again, with the same ID, when it (or another) takes over: the broker's
// dedup delivers it once.
func (r *Relay) Run(ctx context.Context) error {
	if r.pub == nil {
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
	fence := fence{key: r.cfg.Key, token: claim.Token()}
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
			r.prune(lctx)
		}
		n, next, err := r.round(lctx, fence, now)
		if err != nil && lctx.Err() == nil {
			r.report(err)
		}
		if errors.Is(err, errFenced) {
			lost(err) // seen at the top
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

// fence is the relay's lease: rows are marked only while it holds.
type fence struct {
	key   string
	token int64
}

// holds is the condition of every mark: the lease is still this relay's.
const holds = `EXISTS (SELECT 1 FROM {s}.records l WHERE l.scope = '` + RelayScope + `' AND l.key = $1 AND l.token = $2 AND l.state = 'pending')`

// dueSQL reads the due unsent rows: not waiting out a backoff, and not
// behind a row of their entity that is (blocked: the lowest such seq per
// entity, from the few rows in backoff). By id, which within an entity is
// seq order.
const dueSQL = `WITH blocked AS (
	SELECT entity, min(seq) AS seq FROM {s}.outbox
	WHERE sent_at IS NULL AND next_attempt_at IS NOT NULL AND next_attempt_at > $1 GROUP BY entity
)
SELECT o.id, o.entity, o.seq, o.subject, o.message_id, o.payload, o.headers, o.attempts
FROM {s}.outbox o LEFT JOIN blocked bl ON bl.entity = o.entity
WHERE o.sent_at IS NULL AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= $1) AND (bl.seq IS NULL OR o.seq < bl.seq)
ORDER BY o.id LIMIT $2`

// nextDueSQL is when the earliest row waiting out a backoff is due.
const nextDueSQL = `SELECT min(next_attempt_at) FROM {s}.outbox WHERE sent_at IS NULL AND next_attempt_at IS NOT NULL AND next_attempt_at > $1`

const markSentSQL = `UPDATE {s}.outbox SET sent_at = ` + stmtNow + `, attempts = attempts + 1, last_error = NULL
WHERE id = ANY($3) AND sent_at IS NULL AND ` + holds

const markFailedSQL = `UPDATE {s}.outbox SET attempts = attempts + 1, last_error = $4, next_attempt_at = $5
WHERE id = $3 AND sent_at IS NULL AND ` + holds

const pruneSQL = `DELETE FROM {s}.outbox WHERE id IN (
	SELECT id FROM {s}.outbox WHERE sent_at IS NOT NULL AND sent_at < ` + stmtNow + ` - $1::bigint` + us + ` ORDER BY sent_at LIMIT 1000)`

// outboxRow is a due row.
type outboxRow struct {
	id int64
	m  OutboxMessage
}

// round publishes one batch of due rows and marks them; n is how many it
// read, next when the earliest held-back row is due (zero: none).
func (r *Relay) round(ctx context.Context, f fence, now time.Time) (n int, next time.Time, err error) {
	rows, err := r.s.pool.Query(ctx, msgSQL(r.s, dueSQL), now, r.cfg.Batch)
	if err != nil {
		return 0, time.Time{}, wrapErr("outbox relay: read", err)
	}
	var due []outboxRow
	for rows.Next() {
		var o outboxRow
		var headers []byte
		var attempts int32
		if err := rows.Scan(&o.id, &o.m.Entity, &o.m.Seq, &o.m.Subject, &o.m.ID, &o.m.Payload, &headers, &attempts); err != nil {
			rows.Close()
			return 0, time.Time{}, wrapErr("outbox relay: read", err)
		}
		if len(headers) > 0 {
			_ = json.Unmarshal(headers, &o.m.Headers) // written by Enqueue: a JSON object of strings
		}
		o.m.Attempt = int(attempts) + 1
		due = append(due, o)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, time.Time{}, wrapErr("outbox relay: read", err)
	}
	// Entities in the order of their first row, each's rows in seq order.
	var order []string
	byEntity := map[string][]outboxRow{}
	for _, o := range due {
		if _, ok := byEntity[o.m.Entity]; !ok {
			order = append(order, o.m.Entity)
		}
		byEntity[o.m.Entity] = append(byEntity[o.m.Entity], o)
	}
	var mu sync.Mutex
	var sent []int64
	var errs []error
	work := make(chan string)
	var wg sync.WaitGroup
	for range min(r.cfg.Workers, len(order)) {
		wg.Go(func() {
			for e := range work {
				ok, err := r.publishEntity(ctx, f, byEntity[e], now)
				mu.Lock()
				sent = append(sent, ok...)
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}
	for _, e := range order {
		work <- e
	}
	close(work)
	wg.Wait()
	if len(sent) > 0 {
		slices.Sort(sent)
		tag, err := r.s.pool.Exec(context.WithoutCancel(ctx), msgSQL(r.s, markSentSQL), f.key, f.token, sent)
		switch {
		case err != nil:
			errs = append(errs, wrapErr("outbox relay: mark sent", err))
		case tag.RowsAffected() < int64(len(sent)):
			// Only the lease's holder marks rows, so another relay holds
			// it now: stop.
			errs = append(errs, fmt.Errorf("%w: marked %d of %d rows sent", errFenced, tag.RowsAffected(), len(sent)))
		}
	}
	var nextDue *time.Time
	if err := r.s.pool.QueryRow(ctx, msgSQL(r.s, nextDueSQL), now).Scan(&nextDue); err != nil {
		errs = append(errs, wrapErr("outbox relay: read", err))
	} else if nextDue != nil {
		next = *nextDue
	}
	return len(due), next, errors.Join(errs...)
}

// publishEntity publishes one entity's due rows in seq order, stopping at
// the first failure, which it records on the row. It returns the ids
// published.
func (r *Relay) publishEntity(ctx context.Context, f fence, rows []outboxRow, now time.Time) ([]int64, error) {
	var ok []int64
	for _, o := range rows {
		if ctx.Err() != nil {
			return ok, nil
		}
		err := r.pub.Publish(ctx, &o.m)
		if err == nil {
			ok = append(ok, o.id)
			continue
		}
		if ctx.Err() != nil {
			return ok, nil // the lease was lost or the relay stops: not the row's failure
		}
		msg := err.Error()
		if len(msg) > maxErrorText {
			msg = msg[:maxErrorText]
		}
		at := now.Add(r.cfg.Backoff(o.m.Attempt))
		if _, merr := r.s.pool.Exec(ctx, msgSQL(r.s, markFailedSQL), f.key, f.token, o.id, msg, at); merr != nil {
			err = errors.Join(err, wrapErr("outbox relay: mark failed", merr))
		}
		return ok, fmt.Errorf("outbox relay: publish %q (entity %q seq %d, attempt %d): %w", o.m.ID, o.m.Entity, o.m.Seq, o.m.Attempt, err)
	}
	return ok, nil
}

// prune deletes up to 1000 rows sent longer than Retention ago.
func (r *Relay) prune(ctx context.Context) {
	if _, err := r.s.pool.Exec(ctx, msgSQL(r.s, pruneSQL), micros(r.cfg.Retention)); err != nil && ctx.Err() == nil {
		r.report(wrapErr("outbox relay: prune", err))
	}
}

// storable says whether PostgreSQL text (and jsonb) can hold v: valid
// UTF-8 without a NUL.
func storable(v string) bool {
	return utf8.ValidString(v) && strings.IndexByte(v, 0) < 0
}
