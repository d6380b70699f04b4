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
	schema                                                                               string // quoted
	begin, get, getNow, complete, release, extend, checkpoint, delete, sweep, list, size string
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

// beginSQL decides a Begin in one statement.
//
//   - ins inserts a fresh pending row unless the key is held in the
//     statement's snapshot (a pending row with another fingerprint or a
//     live lease, or a completed row within its window). So a replay, an
//     in-flight answer and a mismatch write nothing: no row lock, no
//     transaction id, no sequence value, no WAL.
//   - When the key has a row after all (released, expired, a lease run out,
//     or one committed by a concurrent Begin after the snapshot), ON
//     CONFLICT sees its latest version and takes it over only when the
//     rules allow, judged again on that version.
//   - The second SELECT returns the row as the snapshot holds it when ins
//     wrote nothing; Go decides from it (and drops the outcome of a
//     mismatch, which comes along: the whole row is cheaper to send than
//     its columns picked one by one). When ins met a row the snapshot
//     could not see, what comes back is stale or nothing, and Go reads the
//     row again with a fresh snapshot (the rare second round trip).
//
// The fresh key, the path that matters for throughput, costs one index
// probe and the insert: no CTE is materialized.
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
// to the pending row holding $3, and the row comes back without its
// outcome (Complete's caller has it). No row back means the token does
// not own the key; the caller reads the row to say why (the rare path).
func ownedSQL(set string) string {
	return `UPDATE {s}.records r SET ` + set + `
WHERE r.scope = $1 AND r.key = $2 AND r.token = $3 AND r.state = 'pending'
RETURNING ` + ownedRow
}

// ownedRow is the record an owner's update returns, without its outcome.
const ownedRow = `ROW(r.scope, r.key, r.fingerprint, r.state, r.token, r.attempts, r.lease_until, r.checkpoint_point,
	r.checkpoint_data, NULL::bytea, NULL::json, r.created, r.completed, r.expires, r.retain_until,
	r.window_us, r.retention_us, r.takeover)`

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
RETURNING b.i, ` + ownedRow

func newStatements(schema string) statements {
	q := statements{
		schema: schema,
		begin:  beginSQL,
		// get reads a record; getNow also the statement's time, after it.
		get:           `SELECT r` + getFrom,
		getNow:        `SELECT r, ` + stmtNow + getFrom,
		complete:      ownedSQL(completeSet("$4", "$5")),
		completeBatch: completeBatchSQL,
		release: ownedSQL(`state = 'released', fingerprint = '', lease_until = ` + stmtNow + `, expires = ` + stmtNow + `,
		retain_until = ` + stmtNow + ` + r.window_us` + us + `, checkpoint_point = NULL, checkpoint_data = NULL, takeover = false`),
		extend: ownedSQL(`lease_until = ` + stmtNow + ` + $4::bigint` + us + `,
		retain_until = ` + stmtNow + ` + ($4::bigint + r.window_us)` + us),
		checkpoint: ownedSQL(`checkpoint_point = $4, checkpoint_data = $5`),
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
		size: `SELECT count(*) FROM {s}.records WHERE state <> 'deleted'`,
	}
	for _, p := range []*string{&q.begin, &q.get, &q.getNow, &q.complete, &q.completeBatch, &q.release, &q.extend, &q.checkpoint, &q.delete, &q.sweep, &q.list, &q.size} {
		*p = strings.ReplaceAll(*p, "{s}", schema)
	}
	return q
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
