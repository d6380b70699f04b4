package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/batch"
	"github.com/idemkit/idem/workflow"
	"github.com/jackc/pgx/v5"
)

// Journal is the durable workflow.Journal of a Store, in the tables
// wf_instances and wf_history of the store's schema (migration 0002). Each
// Create, Append and Delete is one statement, so one transaction: Append
// is an UPDATE ... WHERE seq = $old whose RETURNING feeds the INSERT of the
// history rows, so the instance and its entries commit together, and of
// concurrent Appends at one Seq exactly one updates a row. Get it with
// Store.Journal; any number of processes may share the tables.
//
// It is a workflow.TxJournal: InTx runs the engine's units of actions
// marked InTx in one transaction, and every method called with such a
// unit's context runs in it, so the action's writes (on StepTx) and the
// Append that records the step commit together.
type Journal struct {
	s *Store
	q journalStatements

	batchOnce sync.Once
	batcher   *batch.Batcher[*appendOp] // Appends on the pool (journalbatch.go)
	// appendBatches and batchedAppends count the batches of more than
	// one Append, and their Appends, for tests.
	appendBatches, batchedAppends atomic.Int64
}

var _ workflow.Journal = (*Journal)(nil)

// Journal returns the store's workflow journal (the same one every
// call). Its tables come with the store's migrations.
func (s *Store) Journal() *Journal {
	s.journalOnce.Do(func() { s.journal = &Journal{s: s, q: newJournalStatements(s.q.schema)} })
	return s.journal
}

type journalStatements struct {
	create, replace, get, append, exists, list, delete string
}

// newJournalStatements builds the statements for the schema, already
// quoted. Entries come as two arrays (kinds, JSON bodies), numbered after
// the instance's entries by their ordinality.
func newJournalStatements(q string) journalStatements {
	inst, hist := q+".wf_instances", q+".wf_history"
	// withEntries runs head (which returns the row's id, seq and entries)
	// and inserts the entries in arrays $k (kinds) and $k+1 (bodies).
	withEntries := func(head string, k int) string {
		return fmt.Sprintf(`WITH u AS (`+head+`), h AS (INSERT INTO %[2]s (id, seq, kind, body)
			SELECT u.id, u.entries - cardinality($%[3]d::text[]) + e.o, e.kind, e.body
			FROM u, unnest($%[3]d::text[], $%[4]d::jsonb[]) WITH ORDINALITY AS e(kind, body, o))
			SELECT seq FROM u`, inst, hist, k, k+1)
	}
	return journalStatements{
		create: withEntries(`INSERT INTO %[1]s (id, type, state, status, fingerprint, seq, entries, wake_ns, finished_ns, body)
			VALUES ($1, $2, $3, $4, $5, 1, cardinality($9::text[]), $6, $7, $8)
			ON CONFLICT (id) DO NOTHING RETURNING id, seq, entries`, 9),
		replace: withEntries(`UPDATE %[1]s SET type = $2, state = $3, status = $4, fingerprint = $5, seq = seq + 1,
			entries = entries + cardinality($10::text[]), wake_ns = $6, finished_ns = $7, body = $8
			WHERE id = $1 AND seq = $9 RETURNING id, seq, entries`, 10),
		get: fmt.Sprintf(`SELECT i.body || jsonb_build_object('Seq', i.seq),
			(SELECT coalesce(jsonb_agg(h.body || jsonb_build_object('Seq', h.seq) ORDER BY h.seq), '[]') FROM %[2]s h WHERE h.id = i.id)
			FROM %[1]s i WHERE i.id = $1`, inst, hist),
		exists: `SELECT seq FROM ` + inst + ` WHERE id = $1`,
		list: `SELECT body || jsonb_build_object('Seq', seq) FROM ` + inst + `
			WHERE id > $1 AND ($2 = '' OR type = $2) AND ($3 = '' OR state = $3) AND ($4 = '' OR status = $4)
			AND ($5::bigint IS NULL OR wake_ns <= $5) AND ($6::bigint IS NULL OR (status IN ('succeeded', 'failed', 'cancelled') AND finished_ns < $6))
			ORDER BY id LIMIT $7`,
		delete: `DELETE FROM ` + inst + ` WHERE id = $1 AND seq = $2`,
	}
}

var (
	minNanos = time.Unix(0, math.MinInt64)
	maxNanos = time.Unix(0, math.MaxInt64)
)

// nanos is t as Unix nanoseconds, clamped to the range an int64 holds
// (years 1677 to 2262), so that comparisons in SQL are exact.
func nanos(t time.Time) int64 {
	switch {
	case t.Before(minNanos):
		return math.MinInt64
	case t.After(maxNanos):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// wakeNanos is nil (SQL NULL) for an instance with no WakeAt.
func wakeNanos(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	n := nanos(t)
	return &n
}

// args are the parameters $1 to $11 of create and replace.
func instanceArgs(in *workflow.Instance, replaceSeq int64, entries []workflow.Entry) ([]any, error) {
	c := *in
	c.History = nil
	body, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("pgstore: journal: encode instance %q: %w", in.ID, err)
	}
	kinds := make([]string, len(entries))
	bodies := make([]string, len(entries))
	for i, e := range entries {
		e.Seq = 0 // the row's seq is the truth
		b, err := json.Marshal(&e)
		if err != nil {
			return nil, fmt.Errorf("pgstore: journal: encode entry of %q: %w", in.ID, err)
		}
		kinds[i], bodies[i] = string(e.Kind), string(b)
	}
	return []any{in.ID, in.Type, in.State, string(in.Status), in.Fingerprint, wakeNanos(in.WakeAt), nanos(in.Finished), string(body), replaceSeq, kinds, bodies}, nil
}

func (j *Journal) enter(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return j.s.check()
}

// Create implements workflow.Journal.
func (j *Journal) Create(ctx context.Context, p *workflow.CreateParams) (*workflow.CreateResult, error) {
	if p == nil || p.Instance == nil || p.Instance.ID == "" {
		return nil, fmt.Errorf("%w: create: instance with an id required", idem.ErrInvalid)
	}
	if err := j.enter(ctx); err != nil {
		return nil, err
	}
	id := p.Instance.ID
	args, err := instanceArgs(p.Instance, p.ReplaceSeq, p.Entries)
	if err != nil {
		return nil, err
	}
	stmt := j.q.create
	if p.Replace {
		stmt = j.q.replace
	} else {
		args = append(args[:8], args[9:]...) // create has no $9 of its own
	}
	var seq int64
	err = j.db(ctx).QueryRow(ctx, stmt, args...).Scan(&seq)
	switch {
	case errors.Is(err, pgx.ErrNoRows) && p.Replace:
		return nil, fmt.Errorf("%w: create %q: no instance at seq %d to replace", workflow.ErrConflict, id, p.ReplaceSeq)
	case errors.Is(err, pgx.ErrNoRows):
		// The id exists: the same start returns it, another is refused.
		got, err := j.get(ctx, id)
		if errors.Is(err, idem.ErrNotFound) { // deleted in between: start afresh
			return j.Create(ctx, p)
		}
		if err != nil {
			return nil, err
		}
		if got.Fingerprint != p.Instance.Fingerprint {
			return nil, fmt.Errorf("%w: instance %q was started with another type or input", idem.ErrFingerprintMismatch, id)
		}
		return &workflow.CreateResult{Instance: got}, nil
	case err != nil:
		return nil, j.wrap(ctx, "journal: create "+id, err)
	}
	if p.Replace {
		// The history goes on from the replaced run's: read it back.
		got, err := j.get(ctx, id)
		if err != nil {
			return nil, err
		}
		return &workflow.CreateResult{Instance: got, Created: true}, nil
	}
	// What was written, decoded from the JSON the row holds: no read.
	got, err := decodeCreated(args[7].(string), args[9].([]string), seq)
	if err != nil {
		return nil, fmt.Errorf("pgstore: journal: create %q: %w", id, err)
	}
	return &workflow.CreateResult{Instance: got, Created: true}, nil
}

// decodeCreated is the instance a create stored, from the JSON of its
// body and entries, as get would read it.
func decodeCreated(body string, entries []string, seq int64) (*workflow.Instance, error) {
	in := new(workflow.Instance)
	if err := json.Unmarshal([]byte(body), in); err != nil {
		return nil, err
	}
	in.Seq = seq
	for i, b := range entries {
		var e workflow.Entry
		if err := json.Unmarshal([]byte(b), &e); err != nil {
			return nil, err
		}
		e.Seq = int64(i + 1)
		in.History = append(in.History, e)
	}
	return in, nil
}

func (j *Journal) get(ctx context.Context, id string) (*workflow.Instance, error) {
	var body, hist []byte
	err := j.db(ctx).QueryRow(ctx, j.q.get, id).Scan(&body, &hist)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: instance %q", idem.ErrNotFound, id)
	}
	if err != nil {
		return nil, j.wrap(ctx, "journal: get "+id, err)
	}
	in := new(workflow.Instance)
	if err := json.Unmarshal(body, in); err != nil {
		return nil, fmt.Errorf("pgstore: journal: get %q: decode instance: %w", id, err)
	}
	if err := json.Unmarshal(hist, &in.History); err != nil {
		return nil, fmt.Errorf("pgstore: journal: get %q: decode history: %w", id, err)
	}
	if len(in.History) == 0 {
		in.History = nil
	}
	return in, nil
}

// Get implements workflow.Journal, in one statement: the instance and its
// history are of the same Seq.
func (j *Journal) Get(ctx context.Context, p *workflow.GetParams) (*workflow.GetResult, error) {
	if err := j.enter(ctx); err != nil {
		return nil, err
	}
	in, err := j.get(ctx, p.ID)
	if err != nil {
		return nil, err
	}
	return &workflow.GetResult{Instance: in}, nil
}

// Append implements workflow.Journal.
func (j *Journal) Append(ctx context.Context, p *workflow.AppendParams) (*workflow.AppendResult, error) {
	if p == nil || p.Instance == nil {
		return nil, fmt.Errorf("%w: append: instance required", idem.ErrInvalid)
	}
	if err := j.enter(ctx); err != nil {
		return nil, err
	}
	id := p.Instance.ID
	args, err := instanceArgs(p.Instance, p.Instance.Seq, p.Entries)
	if err != nil {
		return nil, err
	}
	var seq int64
	if _, inTx := j.db(ctx).(pgx.Tx); inTx {
		err = j.db(ctx).QueryRow(ctx, j.q.replace, args...).Scan(&seq)
	} else {
		size := len(args[7].(string))
		for _, b := range args[10].([]string) {
			size += len(b)
		}
		o := &appendOp{id: id, args: args, size: size}
		if err = j.appendOnPool(ctx, o); err == nil {
			seq, err = o.seq, o.err
			if err == nil && !o.matched {
				err = pgx.ErrNoRows
			}
		}
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, j.refused(ctx, "append", id, p.Instance.Seq)
	}
	if err != nil {
		return nil, j.wrap(ctx, "journal: append "+id, err)
	}
	return &workflow.AppendResult{Seq: seq}, nil
}

// refused says why a write at seq changed no row: no instance, or
// another seq.
func (j *Journal) refused(ctx context.Context, op, id string, seq int64) error {
	var cur int64
	err := j.db(ctx).QueryRow(ctx, j.q.exists, id).Scan(&cur)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("%w: instance %q", idem.ErrNotFound, id)
	case err != nil:
		return j.wrap(ctx, "journal: "+op+" "+id, err)
	}
	return fmt.Errorf("%w: instance %q: seq is %d, not %d", workflow.ErrConflict, id, cur, seq)
}

// List implements workflow.Journal with one query; the filters on Type,
// State, Status and Due use indexes.
func (j *Journal) List(ctx context.Context, p *workflow.ListParams) (*workflow.ListResult, error) {
	if err := j.enter(ctx); err != nil {
		return nil, err
	}
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	var due, finishedBefore *int64
	if !p.Due.IsZero() {
		n := nanos(p.Due)
		due = &n
	}
	if !p.FinishedBefore.IsZero() {
		n := nanos(p.FinishedBefore)
		finishedBefore = &n
	}
	rows, err := j.db(ctx).Query(ctx, j.q.list, p.After, p.Type, p.State, string(p.Status), due, finishedBefore, limit+1)
	if err != nil {
		return nil, j.wrap(ctx, "journal: list", err)
	}
	defer rows.Close()
	res := &workflow.ListResult{}
	for rows.Next() {
		var body []byte
		if err := rows.Scan(&body); err != nil {
			return nil, j.wrap(ctx, "journal: list", err)
		}
		if len(res.Instances) == limit {
			res.Next = res.Instances[limit-1].ID
			break
		}
		in := new(workflow.Instance)
		if err := json.Unmarshal(body, in); err != nil {
			return nil, fmt.Errorf("pgstore: journal: list: decode instance: %w", err)
		}
		res.Instances = append(res.Instances, in)
	}
	if err := rows.Err(); err != nil {
		return nil, j.wrap(ctx, "journal: list", err)
	}
	return res, nil
}

// Delete implements workflow.Journal; the history goes with the instance
// (ON DELETE CASCADE).
func (j *Journal) Delete(ctx context.Context, p *workflow.DeleteParams) (*workflow.DeleteResult, error) {
	if err := j.enter(ctx); err != nil {
		return nil, err
	}
	tag, err := j.db(ctx).Exec(ctx, j.q.delete, p.ID, p.Seq)
	if err != nil {
		return nil, j.wrap(ctx, "journal: delete "+p.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return nil, j.refused(ctx, "delete", p.ID, p.Seq)
	}
	return &workflow.DeleteResult{}, nil
}
