package pgstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
	"github.com/jackc/pgx/v5"
)

// OutboxMessage is a message in the outbox: what Enqueue writes and what
// the relay hands to the Publisher. It is messaging.OutboxMessage.
type OutboxMessage = messaging.OutboxMessage

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

// Publisher publishes one outbox message to a broker: a
// messaging.Publisher (see there what Publish must do).
type Publisher = messaging.Publisher

// PublisherFunc is a function as a Publisher.
type PublisherFunc = messaging.PublisherFunc

// RelayScope is the ledger scope of the relay's lease; its key is
// RelayConfig.Key.
const RelayScope = messaging.RelayScope

// RelayConfig configures a Relay: a messaging.RelayConfig. A nil
// *RelayConfig means the defaults. A row's next_attempt_at is on its Clock;
// the lease is judged by the database's clock.
type RelayConfig = messaging.RelayConfig

// Relay publishes the outbox's rows: a messaging.Relay over the store's
// outbox table. Make one with Store.Relay and call Run; any number of
// processes may run one: one at a time is active.
type Relay = messaging.Relay

// Relay returns a relay that publishes the store's outbox with pub, its
// lease in the store's records table, which every mark checks in its SQL.
func (s *Store) Relay(pub Publisher, cfg *RelayConfig) *Relay {
	return messaging.NewRelay(s, s.Outbox(), pub, cfg)
}

// Outbox returns the store's outbox table as a messaging.Outbox, for a
// messaging.Relay built by hand (Store.Relay builds one). Its marks check
// the relay's fence against the store's records table in the same
// statement.
func (s *Store) Outbox() messaging.Outbox { return outboxTable{s} }

// outboxTable is the outbox table as a messaging.Outbox.
type outboxTable struct{ s *Store }

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

// Due implements messaging.Outbox.
func (o outboxTable) Due(ctx context.Context, now time.Time, limit int) ([]messaging.OutboxRow, time.Time, error) {
	s := o.s
	rows, err := s.pool.Query(ctx, msgSQL(s, dueSQL), now, limit)
	if err != nil {
		return nil, time.Time{}, wrapErr("outbox relay: read", err)
	}
	var due []messaging.OutboxRow
	for rows.Next() {
		var r messaging.OutboxRow
		var headers []byte
		var attempts int32
		if err := rows.Scan(&r.ID, &r.Message.Entity, &r.Message.Seq, &r.Message.Subject, &r.Message.ID, &r.Message.Payload, &headers, &attempts); err != nil {
			rows.Close()
			return nil, time.Time{}, wrapErr("outbox relay: read", err)
		}
		if len(headers) > 0 {
			_ = json.Unmarshal(headers, &r.Message.Headers) // written by Enqueue: a JSON object of strings
		}
		r.Message.Attempt = int(attempts) + 1
		due = append(due, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, time.Time{}, wrapErr("outbox relay: read", err)
	}
	var next time.Time
	var nextDue *time.Time
	if err := s.pool.QueryRow(ctx, msgSQL(s, nextDueSQL), now).Scan(&nextDue); err != nil {
		return nil, time.Time{}, wrapErr("outbox relay: read", err)
	} else if nextDue != nil {
		next = *nextDue
	}
	return due, next, nil
}

// oldestUnsentSQL reads the created time of the first unsent row by id
// (the outbox_unsent index): ids are drawn as rows are written, so that row
// is the oldest, up to rows written at the same moment.
const oldestUnsentSQL = `SELECT created FROM {s}.outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1`

// OldestUnsent implements messaging.UnsentAger: when the oldest unsent
// row was written (its created column, the database's clock), the zero
// time when every row is sent.
func (o outboxTable) OldestUnsent(ctx context.Context) (time.Time, error) {
	var created time.Time
	err := o.s.pool.QueryRow(ctx, msgSQL(o.s, oldestUnsentSQL)).Scan(&created)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return time.Time{}, nil
	case err != nil:
		return time.Time{}, wrapErr("outbox relay: oldest unsent row", err)
	}
	return created, nil
}

// errFenced: a mark found the relay's lease another's.
var errFenced = fmt.Errorf("%w: outbox relay: the relay lease is another's", idem.ErrLeaseLost)

// MarkSent implements messaging.Outbox.
func (o outboxTable) MarkSent(ctx context.Context, f messaging.Fence, ids []int64) error {
	tag, err := o.s.pool.Exec(ctx, msgSQL(o.s, markSentSQL), f.Key, f.Token, ids)
	switch {
	case err != nil:
		return wrapErr("outbox relay: mark sent", err)
	case tag.RowsAffected() < int64(len(ids)):
		return fmt.Errorf("%w: marked %d of %d rows sent", errFenced, tag.RowsAffected(), len(ids))
	}
	return nil
}

// MarkFailed implements messaging.Outbox; it keeps the first 2000 bytes of
// msg. A mark the fence refused writes nothing and returns nil.
func (o outboxTable) MarkFailed(ctx context.Context, f messaging.Fence, id int64, msg string, at time.Time) error {
	if len(msg) > maxErrorText {
		msg = msg[:maxErrorText]
	}
	if _, err := o.s.pool.Exec(ctx, msgSQL(o.s, markFailedSQL), f.Key, f.Token, id, msg, at); err != nil {
		return wrapErr("outbox relay: mark failed", err)
	}
	return nil
}

// Prune implements messaging.Outbox: it deletes up to 1000 rows sent more
// than olderThan ago, by the database's clock.
func (o outboxTable) Prune(ctx context.Context, olderThan time.Duration) error {
	if _, err := o.s.pool.Exec(ctx, msgSQL(o.s, pruneSQL), micros(olderThan)); err != nil {
		return wrapErr("outbox relay: prune", err)
	}
	return nil
}

// storable says whether PostgreSQL text (and jsonb) can hold v: valid
// UTF-8 without a NUL.
func storable(v string) bool {
	return utf8.ValidString(v) && strings.IndexByte(v, 0) < 0
}
