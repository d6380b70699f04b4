package pgstore

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/idemkit/idem"
)

// statements are the store's SQL with its schema filled in. Each is one
// round trip.
type statements struct {
	schema                                                                                           string // quoted
	begin, beginFresh, get, getNow, complete, release, extend, checkpoint, delete, sweep, list, size string
	// sizeByState counts the records of each state present, one row each.
	sizeByState string
	// completeBatch is complete for several owners at once (see batch.go).
	completeBatch string
}

// tombstoneGrace is how long a deleted record's tombstone stays: longer
// than any Begin statement waits for a row.
const tombstoneGrace = "1 hour"

// getFrom is where get and getNow read a record: the row of the key, unless
// it is Delete's tombstone.
const getFrom = ` FROM {s}.records r WHERE r.scope = $1 AND r.key = $2 AND r.state <> 'deleted'`

// us turns a microsecond count into an interval.
const us = ` * interval '1 microsecond'`

// stmtNow is the statement's one instant: the time the server received it. A
// statement reads it as often as it likes and always gets the same value;
// in a caller's transaction each statement gets its own. Leases are judged
// by it, never by the application's clock.
const stmtNow = `statement_timestamp()`

// beginFreshSQL is a Begin's first statement, the lean one: it inserts a
// fresh pending row when the key has no row at all in the statement's
// snapshot, and otherwise returns the row as the snapshot holds it.
//
//   - A fresh key costs an index probe and the insert, as the bare
//     INSERT … ON CONFLICT DO NOTHING does, and only the token and the
//     statement's time come back: Go knows the rest of the row it wrote
//     (freshRow).
//   - A replay, an in-flight answer and a mismatch write nothing: no row
//     lock, no transaction id, no sequence value, no WAL. Go decides from
//     the row (the whole row is cheaper to send than its columns picked
//     one by one).
//   - A row that may be taken over (released, deleted, its window or its
//     lease run out) comes back too, and Go runs beginSQL, which takes it
//     over when the rules allow on the row's latest version (a second
//     round trip, on that path only).
//   - When the insert meets a row a concurrent Begin committed after the
//     snapshot, nothing comes back, and Go reads the row with a fresh
//     snapshot (getNow).
//
// It has no DO UPDATE: the executor builds every clause of a statement
// each time it runs it, taken or not, and the takeover's projection and
// its RETURNING of the whole row cost a fresh key's Begin about 15 % of its
// server CPU (docs/performance.md).
const beginFreshSQL = `WITH ins AS (
	INSERT INTO {s}.records AS r (scope, key, fingerprint, state, token, attempts, lease_until, created,
		retain_until, window_us, retention_us, takeover)
	SELECT $1, $2, $3, 'pending', nextval('{s}.tokens'), 1, ` + stmtNow + ` + $4::bigint` + us + `, ` + stmtNow + `,
		` + stmtNow + ` + ($4::bigint + $5::bigint)` + us + `, $5::bigint, $6::bigint, false
	WHERE NOT EXISTS (SELECT 1 FROM {s}.records c WHERE c.scope = $1 AND c.key = $2)
	ON CONFLICT (scope, key) DO NOTHING
	RETURNING r.token
)
SELECT token, ` + stmtNow + `, NULL::{s}.records FROM ins
UNION ALL
SELECT NULL, ` + stmtNow + `, c FROM {s}.records c WHERE c.scope = $1 AND c.key = $2 AND NOT EXISTS (SELECT 1 FROM ins)`

// beginSQL decides a Begin in one statement, taking over a row when the
// rules allow; Begin runs it after beginFreshSQL met a row it may take
// over, or a concurrent writer.
const beginSQL = `WITH ins AS (
	INSERT INTO {s}.records AS r (scope, key, fingerprint, state, token, attempts, lease_until, created,
		retain_until, window_us, retention_us, takeover)
	SELECT $1, $2, $3, 'pending', nextval('{s}.tokens'), 1, ` + stmtNow + ` + $4::bigint` + us + `, ` + stmtNow + `,
		` + stmtNow + ` + ($4::bigint + $5::bigint)` + us + `, $5::bigint, $6::bigint, false
	WHERE NOT EXISTS (SELECT 1 FROM {s}.records c WHERE c.scope = $1 AND c.key = $2 AND (
		(c.state = 'pending' AND (c.fingerprint <> $3 OR c.lease_until > ` + stmtNow + `))
		OR (c.state = 'completed' AND c.expires > ` + stmtNow + `)))
	ON CONFLICT (scope, key) DO UPDATE SET
		fingerprint = EXCLUDED.fingerprint,
		state = 'pending',
		-- drawn now, holding the row: EXCLUDED.token was drawn before
		-- the statement waited for the row, perhaps before tokens a
		-- concurrent writer issued for the key.
		token = nextval('{s}.tokens'),
		attempts = CASE WHEN r.state IN ('completed', 'deleted') THEN 1 ELSE r.attempts + 1 END,
		created = CASE WHEN r.state IN ('completed', 'deleted') THEN EXCLUDED.created ELSE r.created END,
		checkpoint_point = CASE WHEN r.state = 'pending' THEN r.checkpoint_point END,
		checkpoint_data = CASE WHEN r.state = 'pending' THEN r.checkpoint_data END,
		outcome_data = NULL, outcome_meta = NULL, completed = NULL, expires = NULL,
		lease_until = EXCLUDED.lease_until, retain_until = EXCLUDED.retain_until,
		window_us = EXCLUDED.window_us, retention_us = EXCLUDED.retention_us,
		takeover = (r.state = 'pending')
	WHERE r.state IN ('released', 'deleted')
		OR (r.state = 'completed' AND r.expires <= EXCLUDED.created)
		OR (r.state = 'pending' AND r.lease_until <= EXCLUDED.created AND r.fingerprint = EXCLUDED.fingerprint)
	RETURNING r
)
SELECT true, ` + stmtNow + `, r FROM ins
UNION ALL
SELECT false, ` + stmtNow + `, c FROM {s}.records c WHERE c.scope = $1 AND c.key = $2 AND NOT EXISTS (SELECT 1 FROM ins)`

// ownedSQL is a conditional update on the owner's token: set applies only
// to the pending row holding $3, and ret comes back (ownedRow, or
// completedRow for Complete). No row back means the token does not own the
// key; the caller reads the row to say why (the rare path).
func ownedSQL(set, ret string) string {
	return `UPDATE {s}.records r SET ` + set + `
WHERE r.scope = $1 AND r.key = $2 AND r.token = $3 AND r.state = 'pending'
RETURNING ` + ret
}

// ownedRow is the record an owner's update returns, without its outcome:
// the whole row as one composite column (row.read).
const ownedRow = `ROW(r.scope, r.key, r.fingerprint, r.state, r.token, r.attempts, r.lease_until, r.checkpoint_point,
	r.checkpoint_data, NULL::bytea, NULL::json, r.created, r.completed, r.expires, r.retain_until,
	r.window_us, r.retention_us, r.takeover)`

// completedRow is what Complete's update returns: the columns of the
// record Complete's caller does not have, as plain columns (readCompleted).
// Building the whole row as a composite and sending it cost more server CPU
// than the columns a Complete needs.
const completedRow = `r.fingerprint, r.attempts, r.lease_until, r.created, r.completed, r.expires, r.retain_until,
	r.window_us, r.retention_us`

// completeSet is what Complete sets, given the outcome's data and
// metadata.
func completeSet(data, meta string) string {
	return `state = 'completed', completed = ` + stmtNow + `, expires = ` + stmtNow + ` + r.window_us` + us + `,
		retain_until = ` + stmtNow + ` + greatest(r.window_us, r.retention_us)` + us + `,
		checkpoint_point = NULL, checkpoint_data = NULL, outcome_data = ` + data + `, outcome_meta = ` + meta
}

// completeBatchSQL completes several keys in one statement: arrays of
// scopes, keys, tokens, outcome data and metadata, one element per
// Complete, each judged as complete judges it alone. Each row back carries
// the position of the Complete it answers (from 1); a Complete whose token
// does not own its key gets none.
var completeBatchSQL = `UPDATE {s}.records r SET ` + completeSet("b.data", "b.meta") + `
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[], $5::json[]) WITH ORDINALITY AS b(scope, key, token, data, meta, i)
WHERE r.scope = b.scope COLLATE "C" AND r.key = b.key COLLATE "C" AND r.token = b.token AND r.state = 'pending'
RETURNING b.i, ` + completedRow

func newStatements(schema string) statements {
	q := statements{
		schema:     schema,
		begin:      beginSQL,
		beginFresh: beginFreshSQL,
		// get reads a record; getNow also the statement's time, after it.
		get:           `SELECT r` + getFrom,
		getNow:        `SELECT r, ` + stmtNow + getFrom,
		complete:      ownedSQL(completeSet("$4", "$5"), completedRow),
		completeBatch: completeBatchSQL,
		release: ownedSQL(`state = 'released', fingerprint = '', lease_until = `+stmtNow+`, expires = `+stmtNow+`,
		retain_until = `+stmtNow+` + r.window_us`+us+`, checkpoint_point = NULL, checkpoint_data = NULL, takeover = false`, ownedRow),
		extend: ownedSQL(`lease_until = `+stmtNow+` + $4::bigint`+us+`,
		retain_until = `+stmtNow+` + ($4::bigint + r.window_us)`+us, ownedRow),
		checkpoint: ownedSQL(`checkpoint_point = $4, checkpoint_data = $5`, ownedRow),
		// Delete leaves a tombstone that Sweep removes after
		// tombstoneGrace, so a Begin of the key that drew its token
		// before the delete and waited meanwhile conflicts with it and
		// draws a fresh token, instead of inserting one lower than
		// tokens the deleted row had.
		delete: `UPDATE {s}.records SET state = 'deleted', fingerprint = '', checkpoint_point = NULL, checkpoint_data = NULL,
	outcome_data = NULL, outcome_meta = NULL, lease_until = ` + stmtNow + `, expires = ` + stmtNow + `,
	retain_until = ` + stmtNow + ` + interval '` + tombstoneGrace + `', takeover = false
WHERE scope = $1 AND key = $2 AND state <> 'deleted'`,
		// A pending row is sweepable only with its lease over; its
		// retain_until (lease end + window) already says so, the second
		// condition keeps the rule explicit.
		sweep: `WITH doomed AS (
	SELECT scope, key FROM {s}.records
	WHERE retain_until <= ` + stmtNow + ` AND NOT (state = 'pending' AND lease_until > ` + stmtNow + `)
	ORDER BY retain_until LIMIT $1
	FOR UPDATE OF records SKIP LOCKED
),
del AS (DELETE FROM {s}.records r USING doomed d WHERE r.scope = d.scope AND r.key = d.key RETURNING r.state)
SELECT count(*), count(*) FILTER (WHERE state <> 'deleted') FROM del`,
		list: `SELECT r FROM {s}.records r
WHERE r.scope = $1 AND r.key > $2 AND ($3 = '' OR r.state = $3) AND r.state <> 'deleted' ORDER BY r.key LIMIT $4`,
		size:        `SELECT count(*) FROM {s}.records WHERE state <> 'deleted'`,
		sizeByState: `SELECT state, count(*) FROM {s}.records WHERE state <> 'deleted' GROUP BY state`,
	}
	for _, p := range []*string{&q.begin, &q.beginFresh, &q.get, &q.getNow, &q.complete, &q.completeBatch, &q.release, &q.extend, &q.checkpoint, &q.delete, &q.sweep, &q.list, &q.size, &q.sizeByState} {
		*p = strings.ReplaceAll(*p, "{s}", schema)
	}
	return q
}

// freshRow is the row beginFreshSQL inserted for p with token at now, as
// the statement computed it: the times are now plus whole microseconds.
func freshRow(p *idem.BeginParams, token int64, now time.Time) row {
	lease, window := micros(p.Lease), micros(p.Window)
	return row{
		scope: p.Scope, key: p.Key, fingerprint: p.Fingerprint, state: string(idem.StatePending),
		token: token, attempts: 1, created: now,
		leaseUntil: now.Add(time.Duration(lease) * time.Microsecond),
		retain:     now.Add(time.Duration(lease+window) * time.Microsecond),
		window:     window, retention: micros(p.Retention),
	}
}

// row is a record as the statements return it.
type row struct {
	scope, key, fingerprint, state string
	token                          int64
	attempts                       int32
	leaseUntil, created, retain    time.Time
	completed, expires             *time.Time
	point                          *string
	checkpoint, data, meta         []byte
	window, retention              int64
	takeover                       bool
}

func (r *row) record() *idem.Record {
	rec := &idem.Record{
		Scope: r.scope, Key: r.key, Fingerprint: r.fingerprint, State: idem.State(r.state),
		Token: r.token, Attempts: int(r.attempts), LeaseUntil: r.leaseUntil, Created: r.created,
		RetainUntil: r.retain, Window: time.Duration(r.window) * time.Microsecond,
		Retention: time.Duration(r.retention) * time.Microsecond,
	}
	if r.completed != nil {
		rec.Completed = *r.completed
	}
	if r.expires != nil {
		rec.Expires = *r.expires
	}
	if r.point != nil {
		rec.Checkpoint = &idem.Checkpoint{Point: *r.point, Data: r.checkpoint}
		if rec.Checkpoint.Data == nil {
			rec.Checkpoint.Data = []byte{}
		}
	}
	if rec.State == idem.StateCompleted && r.data != nil {
		rec.Outcome = &idem.Outcome{Data: r.data, Meta: decodeMeta(r.meta)}
	}
	return rec
}

// decodeMeta reads outcome metadata as the store wrote it (a JSON object
// of strings). What it cannot read it drops rather than fail a replay:
// only a hand-edited row can hold it.
func decodeMeta(b []byte) map[string]string {
	if len(b) == 0 {
		return nil
	}
	var m map[string]string
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return m
}
