package pgstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
	"github.com/jackc/pgx/v5"
)

// DefaultInboxScope is the ledger scope of an Inbox whose config names
// none: the scope messaging.Consumer uses by default, so the two share
// their keys.
const DefaultInboxScope = "messages"

// failedMeta marks a completed record whose work failed for good: the
// ledger's own marker (idem.Ledger.Do replays it as an *idem.OutcomeError).
const failedMeta = "idem.error"

// inboxFailures is the checkpoint point under which a released inbox
// record keeps its failed attempts, one JSON line each.
const inboxFailures = "inbox.failures"

// maxErrorText is how much of a handler error an attempt keeps.
const maxErrorText = 2000

// InboxConfig configures an Inbox. A nil *InboxConfig means the defaults.
// The fields mean what messaging.Config's of the same names mean.
type InboxConfig struct {
	// Scope is the ledger scope of the dedup records. Default "messages".
	Scope string
	// Key is the dedup key of a message. Default m.ID; a message whose key
	// is empty (or not a valid idem key) is dead-lettered with
	// idem.ErrInvalid.
	Key func(m *messaging.Message) string
	// Fingerprint is what the key must mean. Default: hex SHA-256 of the
	// payload. A message whose key was handled with another fingerprint
	// is never applied: OnMismatch decides.
	Fingerprint func(m *messaging.Message) string
	// MaxAttempts is how many times the handler may fail (each failure is
	// counted in the database, so restarts and other consumers count
	// too) before the message is dead-lettered. Default 5.
	MaxAttempts int
	// Backoff is the Retry delay after the attempt-th failure. Default 1 s,
	// doubling, capped at 1 min.
	Backoff func(attempt int) time.Duration
	// DeadLetter is called once a message is given up (MaxAttempts
	// failures or a messaging.Permanent error), with every failed attempt;
	// its error makes the decision a Retry instead, and it is called again
	// on the next delivery. Default: none.
	DeadLetter func(ctx context.Context, m *messaging.Message, attempts []messaging.Attempt, err error) error
	// OnMismatch is called for a message whose key was handled with
	// another fingerprint; nil from it dead-letters the delivery (acked
	// without handling), an error retries it. Default: DeadLetter with an
	// error wrapping idem.ErrFingerprintMismatch.
	OnMismatch func(ctx context.Context, m *messaging.Message) error
	// Window is how long after it was handled a message's key still
	// dedups. Default 24 h.
	Window time.Duration
	// Retention keeps the record for lookup after Window. Default: Window.
	Retention time.Duration
	// Lease is the lease of the in-transaction claim. It is never seen by
	// another consumer (the claim commits completed), so it only matters
	// to a key shared with a ledger outside transactions. Default 30 s.
	Lease time.Duration
}

// Inbox is the transactional inbox: it runs a message's handler in a
// PostgreSQL transaction that also holds the message's dedup record, so
// the handler's writes and "handled" commit together. Make one with
// Store.Inbox; it is safe for concurrent use.
type Inbox struct {
	s   *Store
	cfg InboxConfig
}

// InboxHandler handles one message in tx: its writes commit with the
// message's dedup record, or roll back with it. It must not commit or roll
// back tx, and must use it from its own goroutine only. Its ctx carries
// the message's key (idem.KeyFrom), so Enqueue derives the ids of the
// messages it sends from it, and idemhttp.Transport sends it as the
// Idempotency-Key of its requests.
type InboxHandler func(ctx context.Context, tx pgx.Tx, m *messaging.Message) error

// Inbox returns the store's transactional inbox with cfg (nil: defaults).
// Out-of-range values (MaxAttempts, Window, Retention, Lease not
// positive) take their defaults.
func (s *Store) Inbox(cfg *InboxConfig) *Inbox {
	var c InboxConfig
	if cfg != nil {
		c = *cfg
	}
	if c.Scope == "" {
		c.Scope = DefaultInboxScope
	}
	if c.Key == nil {
		c.Key = func(m *messaging.Message) string { return m.ID }
	}
	if c.Fingerprint == nil {
		c.Fingerprint = messaging.PayloadFingerprint
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.Backoff == nil {
		c.Backoff = messaging.DefaultBackoff
	}
	if c.Window <= 0 {
		c.Window = idem.DefaultWindow
	}
	if c.Retention < 0 {
		c.Retention = 0
	}
	if c.Lease <= 0 {
		c.Lease = idem.DefaultLease
	}
	return &Inbox{s: s, cfg: c}
}

// Handle handles one delivery of m at most once per key, in one
// transaction with its dedup record:
//
//   - it begins a transaction and claims the key in it (Store.BeginTx);
//     a key already handled is answered AckDuplicate without running h
//     (also when the earlier delivery's commit came just before a crash
//     that kept it from being acked); a concurrent delivery of the same
//     key waits for this one's transaction, then is a duplicate;
//   - it runs h with the transaction; when h returns nil it completes the
//     key in the transaction and commits: Ack. The adapter acks only after
//     the commit, so a crash before the commit leaves nothing done and
//     the broker redelivers;
//   - when h fails, everything h wrote rolls back with the claim; the
//     failure is then counted in the key's record (released, so the next
//     delivery runs h again): Retry after Backoff, or, at MaxAttempts or
//     for a messaging.Permanent error, the DeadLetter hook runs and the key
//     is completed as failed (later duplicates are acked as duplicates):
//     DeadLetter;
//   - a database error is a Retry: nothing of h's was committed, or (a
//     commit whose answer was lost) the next delivery finds the key
//     handled.
//
// A context that ends while h runs rolls back and retries without counting
// a failure. If h panics, the transaction rolls back and the panic goes on.
func (in *Inbox) Handle(ctx context.Context, m *messaging.Message, h InboxHandler) messaging.Decision {
	if m == nil {
		return messaging.Decision{Action: messaging.DeadLetter, Err: fmt.Errorf("%w: inbox: nil message", idem.ErrInvalid)}
	}
	key := in.cfg.Key(m)
	if h == nil {
		return messaging.Decision{Action: messaging.Retry, Delay: in.cfg.Backoff(1), Key: key,
			Err: fmt.Errorf("%w: inbox: nil handler", idem.ErrInvalid)}
	}
	hctx := idem.WithKey(ctx, key)
	if err := idem.ValidateKey(in.cfg.Scope, key); err != nil {
		err = fmt.Errorf("inbox: message %q: %w", m.ID, err)
		return in.deadLetter(hctx, m, key, nil, err, false)
	}
	fp := in.cfg.Fingerprint(m)
	retry := func(attempt int, err error) messaging.Decision {
		return messaging.Decision{Action: messaging.Retry, Delay: in.cfg.Backoff(attempt), Key: key, Err: err}
	}

	tx, err := in.s.pool.Begin(ctx)
	if err != nil {
		return retry(1, wrapTxErr("inbox: begin", err))
	}
	done := false
	defer func() {
		if !done {
			// Also on a panic of h: the connection goes back to the pool
			// only once rolled back.
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	rollback := func() {
		done = true
		_ = tx.Rollback(context.WithoutCancel(ctx))
	}
	res, err := in.s.BeginTx(ctx, tx, &idem.BeginParams{Scope: in.cfg.Scope, Key: key, Fingerprint: fp,
		Lease: in.cfg.Lease, Window: in.cfg.Window, Retention: in.cfg.Retention})
	if err != nil {
		rollback()
		if errors.Is(err, idem.ErrInvalid) {
			// A key PostgreSQL cannot hold (a NUL byte): never handled.
			return in.deadLetter(hctx, m, key, nil, fmt.Errorf("inbox: message %q: %w", m.ID, err), false)
		}
		return retry(1, fmt.Errorf("inbox: %w", err))
	}
	switch res.Decision {
	case idem.Replay:
		rollback()
		d := messaging.Decision{Action: messaging.AckDuplicate, Key: key}
		if out := res.Record.Outcome; out != nil {
			if msg, failed := out.Meta[failedMeta]; failed {
				d.Err = &idem.OutcomeError{Message: msg} // dead-lettered before
			}
		}
		return d
	case idem.InFlight:
		// A claim outside a transaction (a ledger sharing the scope).
		rollback()
		return messaging.Decision{Action: messaging.Retry, Delay: res.RetryAfter, Key: key, Err: idem.ErrInFlight}
	case idem.Mismatch:
		rollback()
		return in.mismatch(hctx, m, key)
	}
	herr := h(hctx, tx, m)
	if herr == nil {
		if _, err := in.s.CompleteTx(ctx, tx, &idem.CompleteParams{Scope: in.cfg.Scope, Key: key, Token: res.Record.Token}); err != nil {
			rollback()
			return retry(res.Record.Attempts, fmt.Errorf("inbox: %w", err))
		}
		done = true
		if err := tx.Commit(ctx); err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			return retry(res.Record.Attempts, wrapTxErr("inbox: commit", err))
		}
		return messaging.Decision{Action: messaging.Ack, Key: key}
	}
	rollback()
	if ctx.Err() != nil {
		return retry(res.Record.Attempts, herr)
	}
	return in.fail(hctx, m, key, herr)
}

// fail counts a failed attempt of m in its record (after the rollback of
// the attempt's transaction) and decides between Retry and DeadLetter.
func (in *Inbox) fail(ctx context.Context, m *messaging.Message, key string, herr error) messaging.Decision {
	msg := herr.Error()
	if len(msg) > maxErrorText {
		msg = msg[:maxErrorText]
	}
	line, _ := json.Marshal(failureLine{At: time.Now().UTC(), Error: msg})
	line = append(line, '\n')
	var attempts int32
	var history []byte
	err := in.s.pool.QueryRow(ctx, msgSQL(in.s, inboxFailSQL), in.cfg.Scope, key,
		micros(in.cfg.Window), micros(in.cfg.Retention), line).Scan(&attempts, &history)
	found := err == nil
	if errors.Is(err, pgx.ErrNoRows) {
		err = nil
	}
	if err != nil {
		return messaging.Decision{Action: messaging.Retry, Delay: in.cfg.Backoff(1), Key: key,
			Err: errors.Join(herr, wrapErr("inbox: count the failure", err))}
	}
	if !found {
		// Another delivery of the key holds or handled it meanwhile.
		rec, err := in.s.Get(ctx, &idem.KeyParams{Scope: in.cfg.Scope, Key: key})
		if err == nil && rec.State == idem.StateCompleted {
			return messaging.Decision{Action: messaging.AckDuplicate, Key: key}
		}
		return messaging.Decision{Action: messaging.Retry, Delay: in.cfg.Backoff(1), Key: key, Err: herr}
	}
	if messaging.IsPermanent(herr) || int(attempts) >= in.cfg.MaxAttempts {
		return in.deadLetter(ctx, m, key, parseFailures(history), herr, true)
	}
	return messaging.Decision{Action: messaging.Retry, Delay: in.cfg.Backoff(int(attempts)), Key: key, Err: herr}
}

// deadLetter runs the DeadLetter hook and, when complete, completes the
// key as failed, so later deliveries are acked as duplicates.
func (in *Inbox) deadLetter(ctx context.Context, m *messaging.Message, key string, attempts []messaging.Attempt, herr error, complete bool) messaging.Decision {
	if in.cfg.DeadLetter != nil {
		if err := in.cfg.DeadLetter(ctx, m, attempts, herr); err != nil {
			return messaging.Decision{Action: messaging.Retry, Delay: in.cfg.Backoff(max(len(attempts), 1)), Key: key,
				Err: errors.Join(herr, fmt.Errorf("inbox: dead-letter hook: %w", err))}
		}
	}
	if complete {
		res, err := in.s.Begin(ctx, &idem.BeginParams{Scope: in.cfg.Scope, Key: key, Fingerprint: in.cfg.Fingerprint(m),
			Lease: in.cfg.Lease, Window: in.cfg.Window, Retention: in.cfg.Retention})
		if err == nil && res.Decision == idem.Acquired {
			_, err = in.s.Complete(ctx, &idem.CompleteParams{Scope: in.cfg.Scope, Key: key, Token: res.Record.Token,
				Outcome: idem.Outcome{Meta: map[string]string{failedMeta: herr.Error()}}})
		}
		if err != nil {
			// The hook ran; the next delivery fails again and runs it
			// again (at least once).
			return messaging.Decision{Action: messaging.Retry, Delay: in.cfg.Backoff(max(len(attempts), 1)), Key: key,
				Err: errors.Join(herr, fmt.Errorf("inbox: record the dead letter: %w", err))}
		}
	}
	return messaging.Decision{Action: messaging.DeadLetter, Key: key, Err: herr}
}

// mismatch answers a message whose key was handled with another
// fingerprint: never applied.
func (in *Inbox) mismatch(ctx context.Context, m *messaging.Message, key string) messaging.Decision {
	err := fmt.Errorf("inbox: message %q: %w: the key was handled with another payload", m.ID, idem.ErrFingerprintMismatch)
	if in.cfg.OnMismatch == nil {
		return in.deadLetter(ctx, m, key, nil, err, false)
	}
	if herr := in.cfg.OnMismatch(ctx, m); herr != nil {
		return messaging.Decision{Action: messaging.Retry, Delay: in.cfg.Backoff(1), Key: key, Err: errors.Join(err, herr)}
	}
	return messaging.Decision{Action: messaging.DeadLetter, Key: key, Err: err}
}

// Attempts returns the failed attempts counted for key since it was last
// handled: what the DeadLetter hook would get. Nil for a key with none.
func (in *Inbox) Attempts(ctx context.Context, key string) ([]messaging.Attempt, error) {
	rec, err := in.s.Get(ctx, &idem.KeyParams{Scope: in.cfg.Scope, Key: key})
	if errors.Is(err, idem.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if rec.State != idem.StateReleased || rec.Checkpoint == nil || rec.Checkpoint.Point != inboxFailures {
		return nil, nil
	}
	return parseFailures(rec.Checkpoint.Data), nil
}

// failureLine is one failed attempt as a record keeps it.
type failureLine struct {
	At    time.Time `json:"at"`
	Error string    `json:"error"`
}

// parseFailures reads a record's failure lines; unreadable ones are
// skipped.
func parseFailures(b []byte) []messaging.Attempt {
	var out []messaging.Attempt
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		var f failureLine
		if len(line) == 0 || json.Unmarshal(line, &f) != nil {
			continue
		}
		out = append(out, messaging.Attempt{At: f.At, Error: f.Error})
	}
	return out
}

// inboxFailSQL counts a failed attempt in the key's record, after the
// attempt's transaction rolled back: a fresh released record, or one more
// attempt and failure line on the released record of earlier failures (a
// released record is free: the next delivery's BeginTx takes it, with
// attempts one higher, and clears the lines when it commits). A record
// that is pending or completed (another delivery of the key holds or
// handled it meanwhile) is left alone, and no row comes back.
const inboxFailSQL = `INSERT INTO {s}.records AS r (scope, key, fingerprint, state, token, attempts, lease_until, created,
	retain_until, window_us, retention_us, takeover, checkpoint_point, checkpoint_data)
VALUES ($1, $2, '', 'released', nextval('{s}.tokens'), 1, ` + stmtNow + `, ` + stmtNow + `,
	` + stmtNow + ` + greatest($3::bigint, $4::bigint)` + us + `, $3::bigint, $4::bigint, false, '` + inboxFailures + `', $5::bytea)
ON CONFLICT (scope, key) DO UPDATE SET
	attempts = CASE WHEN r.state IN ('deleted', 'completed') THEN 1 ELSE r.attempts + 1 END,
	state = 'released', fingerprint = '', lease_until = EXCLUDED.lease_until, retain_until = EXCLUDED.retain_until,
	window_us = EXCLUDED.window_us, retention_us = EXCLUDED.retention_us, takeover = false,
	checkpoint_point = EXCLUDED.checkpoint_point,
	checkpoint_data = CASE WHEN r.state = 'released' AND r.checkpoint_point = '` + inboxFailures + `'
		THEN r.checkpoint_data || EXCLUDED.checkpoint_data ELSE EXCLUDED.checkpoint_data END
WHERE r.state IN ('released', 'deleted')
	OR (r.state = 'completed' AND r.expires <= ` + stmtNow + `)
	OR (r.state = 'pending' AND r.lease_until <= ` + stmtNow + `)
RETURNING r.attempts, r.checkpoint_data`

// msgSQLCache holds the inbox's and outbox's statements per schema.
var msgSQLCache sync.Map // of [2]string{schema, template} -> string

// msgSQL is template with the store's schema in place of {s}.
func msgSQL(s *Store, template string) string {
	k := [2]string{s.q.schema, template}
	if v, ok := msgSQLCache.Load(k); ok {
		return v.(string)
	}
	q := strings.ReplaceAll(template, "{s}", s.q.schema)
	msgSQLCache.Store(k, q)
	return q
}
