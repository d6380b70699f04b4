package pgstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/batch"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultSchema is the schema the ledger lives in when Config.Schema is
// empty.
const DefaultSchema = "idem"

// sweepBatch is how many records one DELETE of Sweep removes: short
// transactions that never hold many row locks, whatever the backlog.
const sweepBatch = 10000

// Config configures a Store. A nil *Config means the defaults.
type Config struct {
	// Schema is the PostgreSQL schema that holds the ledger's tables.
	// Default "idem". Lower-case letters, digits and underscores.
	Schema string
	// Migrate applies the embedded migrations when the store starts (as
	// `idem migrate` does). Without it the store refuses to start on a
	// schema that is not at this build's version.
	Migrate bool
	// OnMigration, with Migrate, is called as each migration the schema
	// lacks is about to run, in order, for a progress display. All of
	// them are applied in one transaction: none is applied when Open or
	// New fails.
	OnMigration func(AppliedMigration)
}

// Store is an idem.Store on PostgreSQL. Leases are judged by the
// database's clock. It is safe for concurrent use.
type Store struct {
	pool   *pgxpool.Pool
	owned  bool // Open made the pool; Close closes it
	schema string
	// migrated is what Config.Migrate did, for Migration.
	migrated *MigrateResult
	closed   atomic.Bool
	q        statements
	// completer batches Completes on the pool (batch.go).
	completer *batch.Batcher[*completeOp]
	// onPool counts the Begins and Completes on the pool, those waiting
	// for a connection included; Completes batch only while it is over
	// batchAbove (the pool's connections).
	onPool     atomic.Int64
	batchAbove int64

	journalOnce sync.Once
	journal     *Journal
}

var (
	_ idem.Store  = (*Store)(nil)
	_ idem.Lister = (*Store)(nil)
	_ idem.Sizer  = (*Store)(nil)
	_ idem.Pinger = (*Store)(nil)

	_ idem.StateSizer = (*Store)(nil)
	_ idem.Describer  = (*Store)(nil)
)

// querier is what a *pgxpool.Pool and a pgx.Tx have in common: the store
// runs the same statements on either.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// DefaultMaxConns is the size of the pool Open makes when its URL sets no
// pool_max_conns. pgx's own default (the number of CPUs, at least 4) is
// sized for a process's own queries: in front of many concurrent callers
// (idem serve, idem proxy) four connections made a Begin wait for one
// while the database idled. Sixteen is what the figures in
// docs/performance.md ran on; with more callers than connections,
// Completes are batched (see the package documentation).
const DefaultMaxConns = 16

// Open connects to the database at url (postgres://user@host:port/db?...)
// with a pool of its own, which Close closes. The pool has
// DefaultMaxConns connections unless url sets pool_max_conns.
func Open(ctx context.Context, url string, cfg *Config) (*Store, error) {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("%w: pgstore: the store URL does not parse (want postgres://user@host:5432/db): %v", idem.ErrInvalid, err)
	}
	if !strings.Contains(url, "pool_max_conns") {
		pcfg.MaxConns = DefaultMaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, wrapErr("open", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, wrapErr("open "+pcfg.ConnConfig.Host, err)
	}
	s, err := New(pool, cfg)
	if err != nil {
		pool.Close()
		return nil, err
	}
	s.owned = true
	return s, nil
}

// New returns a store on the caller's pool, which stays the caller's to
// close. With cfg.Migrate it applies the migrations first; without, it
// checks that the schema is at this build's version.
func New(pool *pgxpool.Pool, cfg *Config) (*Store, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pgstore: nil pool (use pgstore.Open for a URL)", idem.ErrInvalid)
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Schema == "" {
		c.Schema = DefaultSchema
	}
	if err := validSchema(c.Schema); err != nil {
		return nil, err
	}
	ctx := context.Background()
	var migrated *MigrateResult
	if c.Migrate {
		var err error
		if migrated, err = migrate(ctx, pool, c.Schema, c.OnMigration); err != nil {
			return nil, err
		}
	} else {
		v, err := schemaVersion(ctx, pool, c.Schema)
		if err != nil {
			return nil, err
		}
		if want := LatestVersion(); v != want {
			return nil, fmt.Errorf("pgstore: schema %q is at version %d, this build needs %d: %s", c.Schema, v, want, howToMigrate)
		}
	}
	s := &Store{pool: pool, schema: c.Schema, migrated: migrated, q: newStatements(pgx.Identifier{c.Schema}.Sanitize())}
	s.setupBatching()
	return s, nil
}

// howToMigrate ends the error of a schema that is not at this build's
// version.
const howToMigrate = "start the server with `idem serve --migrate`, run `idem migrate --store URL`, or set Config.Migrate"

// Migration returns what Config.Migrate applied when the store was made;
// nil without Config.Migrate.
func (s *Store) Migration() *MigrateResult { return s.migrated }

// Schema returns the schema the store's tables live in.
func (s *Store) Schema() string { return s.schema }

// Pool returns the pool the store runs on.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

func (s *Store) check() error {
	if s.closed.Load() {
		return fmt.Errorf("%w: pgstore", idem.ErrClosed)
	}
	return nil
}

// Close marks the store closed; it closes the pool only when Open made it.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.owned {
		s.pool.Close()
	}
	return nil
}

// Begin implements idem.Store in one statement; see BeginTx.
func (s *Store) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	return s.BeginTx(ctx, nil, p)
}

// BeginTx is Begin run on the caller's transaction, so the claim commits or
// rolls back with the caller's business writes. An acquired key stays
// locked (other Begins of it wait) until the transaction ends; a rolled
// back transaction leaves the key as it was. A nil tx runs on the pool.
// Use READ COMMITTED (the default): under REPEATABLE READ or SERIALIZABLE
// a concurrent Begin of the same key fails with a serialization error.
func (s *Store) BeginTx(ctx context.Context, tx pgx.Tx, p *idem.BeginParams) (*idem.BeginResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	db := s.db(tx)
	if tx == nil {
		s.onPool.Add(1)
		defer s.onPool.Add(-1)
	}
	// Almost always one round: beginFreshSQL acquires a key without a row
	// or answers from the row. Another, with beginSQL, when the row may be
	// taken over, or when a concurrent writer changed the key between the
	// statement's snapshot and its insert; a third when it changed again
	// before the re-read.
	args := []any{p.Scope, p.Key, p.Fingerprint, micros(p.Lease), micros(p.Window), micros(p.Retention)}
	for round := range 8 {
		var r row
		var written bool
		var now time.Time
		fresh, sql := round == 0, s.q.begin
		if fresh {
			sql = s.q.beginFresh
		}
		found, err := queryRow(ctx, db, sql, args, func(c *columnReader) {
			if !fresh {
				written, now = c.bool(), c.time()
				r.read(c)
				return
			}
			token, ok := c.int8OrNil()
			if now = c.time(); ok {
				written, r = true, freshRow(p, token, now)
				return
			}
			r.read(c)
		})
		if err != nil {
			return nil, wrapErr("begin", err)
		}
		if written {
			return &idem.BeginResult{Decision: idem.Acquired, Record: r.record(), Takeover: r.takeover}, nil
		}
		if found {
			if res := decide(r.record(), p.Fingerprint, now); res != nil {
				return res, nil
			}
			if fresh {
				continue // a row to take over: beginSQL
			}
		}
		// The insert met a row this statement's snapshot could not see
		// (committed by a concurrent Begin after the snapshot): read it
		// with a fresh snapshot.
		r = row{}
		found, err = queryRow(ctx, db, s.q.getNow, args[:2], func(c *columnReader) {
			r.read(c)
			now = c.time()
		})
		if err != nil {
			return nil, wrapErr("begin", err)
		}
		if found {
			if res := decide(r.record(), p.Fingerprint, now); res != nil {
				return res, nil
			}
		}
	}
	return nil, fmt.Errorf("pgstore: begin %s/%s: the key kept changing hands; try again", p.Scope, p.Key)
}

// decide answers a Begin that wrote nothing from the record it read at
// now, by the rules of internal/transition.Begin; nil means the key is
// free to acquire after all.
func decide(rec *idem.Record, fingerprint string, now time.Time) *idem.BeginResult {
	live := rec.State == idem.StatePending || (rec.State == idem.StateCompleted && now.Before(rec.Expires))
	switch {
	case !live:
		return nil
	case rec.Fingerprint != fingerprint:
		return &idem.BeginResult{Decision: idem.Mismatch}
	case rec.State == idem.StateCompleted:
		return &idem.BeginResult{Decision: idem.Replay, Record: rec}
	case now.Before(rec.LeaseUntil):
		return &idem.BeginResult{Decision: idem.InFlight, Record: rec, RetryAfter: rec.LeaseUntil.Sub(now)}
	}
	return nil
}

// Complete implements idem.Store; see CompleteTx.
func (s *Store) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	return s.CompleteTx(ctx, nil, p)
}

// CompleteTx is Complete run on the caller's transaction: the outcome is
// stored iff the transaction commits. One conditional UPDATE on the token.
func (s *Store) CompleteTx(ctx context.Context, tx pgx.Tx, p *idem.CompleteParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	data := p.Outcome.Data
	if data == nil {
		data = []byte{}
	}
	var meta []byte
	if p.Outcome.Meta != nil {
		var err error
		if meta, err = json.Marshal(p.Outcome.Meta); err != nil {
			return nil, fmt.Errorf("%w: outcome meta: %v", idem.ErrInvalid, err)
		}
	}
	o := &completeOp{scope: p.Scope, key: p.Key, token: p.Token, data: data, meta: meta}
	var err error
	if tx != nil {
		s.completeOne(ctx, tx, o)
	} else {
		err = s.complete(ctx, o)
	}
	if err == nil {
		err = o.err
	}
	if err != nil {
		return nil, wrapErr("complete", err)
	}
	if !o.found {
		return nil, s.notOwner(ctx, s.db(tx), "complete", p.Scope, p.Key, p.Token)
	}
	rec := o.r.record()
	rec.Outcome = &idem.Outcome{Data: append([]byte{}, data...)}
	if p.Outcome.Meta != nil {
		rec.Outcome.Meta = make(map[string]string, len(p.Outcome.Meta))
		for k, v := range p.Outcome.Meta {
			rec.Outcome.Meta[k] = v
		}
	}
	return rec, nil
}

// Release implements idem.Store; see ReleaseTx.
func (s *Store) Release(ctx context.Context, p *idem.ReleaseParams) error {
	return s.ReleaseTx(ctx, nil, p)
}

// ReleaseTx is Release run on the caller's transaction.
func (s *Store) ReleaseTx(ctx context.Context, tx pgx.Tx, p *idem.ReleaseParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if err := s.check(); err != nil {
		return err
	}
	_, err := s.ownerUpdate(ctx, s.db(tx), "release", s.q.release, p.Scope, p.Key, p.Token)
	return err
}

// Extend implements idem.Store.
func (s *Store) Extend(ctx context.Context, p *idem.ExtendParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	return s.ownerUpdate(ctx, s.pool, "extend", s.q.extend, p.Scope, p.Key, p.Token, micros(p.Lease))
}

// Checkpoint implements idem.Store.
func (s *Store) Checkpoint(ctx context.Context, p *idem.CheckpointParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if err := s.check(); err != nil {
		return err
	}
	data := p.Data
	if data == nil {
		data = []byte{}
	}
	_, err := s.ownerUpdate(ctx, s.pool, "checkpoint", s.q.checkpoint, p.Scope, p.Key, p.Token, p.Point, data)
	return err
}

// ownerUpdate runs one of the conditional updates on the owner's token and
// returns the updated row. When the token is not the pending owner's, it
// reads the row as it stands (a second round trip, on the failure path
// only) to say why.
func (s *Store) ownerUpdate(ctx context.Context, db querier, op, sql, scope, key string, token int64, args ...any) (*idem.Record, error) {
	var r row
	found, err := queryRow(ctx, db, sql, append([]any{scope, key, token}, args...), r.read)
	if err != nil {
		return nil, wrapErr(op, err)
	}
	if found {
		return r.record(), nil
	}
	return nil, s.notOwner(ctx, db, op, scope, key, token)
}

// notOwner says why token does not own the key, from the row as it is now
// (a second round trip, on the failure path only).
func (s *Store) notOwner(ctx context.Context, db querier, op, scope, key string, token int64) error {
	var r row
	found, err := queryRow(ctx, db, s.q.get, []any{scope, key}, r.read)
	if err != nil {
		return wrapErr(op, err)
	}
	if !found {
		return fmt.Errorf("%w: %s: no record for the key", idem.ErrLeaseLost, op)
	}
	// get never returns Delete's tombstone: a deleted key is not found.
	switch {
	case r.token != token:
		return fmt.Errorf("%w: %s: token %d is not current", idem.ErrLeaseLost, op, token)
	case r.state == string(idem.StateCompleted):
		return fmt.Errorf("%w: %s: token %d", idem.ErrCompleted, op, token)
	}
	return fmt.Errorf("%w: %s: token %d was released", idem.ErrLeaseLost, op, token)
}

// Get implements idem.Store.
func (s *Store) Get(ctx context.Context, p *idem.KeyParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	var r row
	found, err := queryRow(ctx, s.pool, s.q.get, []any{p.Scope, p.Key}, r.read)
	if err != nil {
		return nil, wrapErr("get", err)
	}
	if !found {
		return nil, fmt.Errorf("%w: scope %q", idem.ErrNotFound, p.Scope)
	}
	return r.record(), nil
}

// Delete implements idem.Store.
func (s *Store) Delete(ctx context.Context, p *idem.KeyParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if err := s.check(); err != nil {
		return err
	}
	tag, err := s.pool.Exec(ctx, s.q.delete, p.Scope, p.Key)
	if err != nil {
		return wrapErr("delete", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: scope %q", idem.ErrNotFound, p.Scope)
	}
	return nil
}

// Sweep implements idem.Store: batches of at most 10000 records, each its
// own short DELETE walking the retain_until index from its oldest end.
func (s *Store) Sweep(ctx context.Context, p *idem.SweepParams) (*idem.SweepResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	res := &idem.SweepResult{}
	for {
		batch := sweepBatch
		if p.Limit > 0 {
			batch = min(batch, p.Limit-res.Deleted)
		}
		if batch <= 0 {
			return res, nil
		}
		var removed, records int
		if err := s.pool.QueryRow(ctx, s.q.sweep, batch).Scan(&removed, &records); err != nil {
			return res, wrapErr("sweep", err)
		}
		res.Deleted += records // tombstones of deleted records are not counted again
		if removed < batch {
			return res, nil
		}
	}
}

// List implements idem.Lister. The cursor is the last key of the page.
func (s *Store) List(ctx context.Context, p *idem.ListParams) (*idem.ListResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, s.q.list, binaryResults, p.Scope, p.Cursor, string(p.State), p.Limit+1)
	if err != nil {
		return nil, wrapErr("list", err)
	}
	defer rows.Close()
	res := &idem.ListResult{}
	for rows.Next() {
		var r row
		c := columnReader{vals: rows.RawValues()}
		if r.read(&c); c.err != nil {
			return nil, wrapErr("list", c.err)
		}
		if len(res.Records) == p.Limit {
			res.NextCursor = res.Records[len(res.Records)-1].Key
			break
		}
		res.Records = append(res.Records, r.record())
	}
	if err := rows.Err(); err != nil {
		return nil, wrapErr("list", err)
	}
	return res, nil
}

// Ping checks that the database answers on a connection of the pool and
// accepts writes there: one round trip, `SELECT pg_is_in_recovery()`. A
// standby (in recovery, read-only) fails it; so does an unreachable
// database, with an error wrapping ErrUnavailable. With a multi-host URL
// and target_session_attrs=read-write the pool connects only to a primary,
// and after a failover Ping fails until the promoted standby accepts
// writes. It does not write: a primary whose synchronous standby is gone
// passes it while every commit waits (see docs/deploy.md).
func (s *Store) Ping(ctx context.Context) error {
	if err := s.check(); err != nil {
		return err
	}
	var standby bool
	if err := s.pool.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&standby); err != nil {
		return wrapErr("ping", err)
	}
	if standby {
		return fmt.Errorf("%w: ping: the server is a standby in recovery (read-only): point the URL at the primary, or list every node with target_session_attrs=read-write", ErrUnavailable)
	}
	return nil
}

// Size implements idem.Sizer with an exact count, a scan of the primary
// key: cheap for millions of records, seconds at a hundred million.
func (s *Store) Size(ctx context.Context) (int64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	var n int64
	err := s.pool.QueryRow(ctx, s.q.size).Scan(&n)
	return n, wrapErr("size", err)
}

// SizeByState implements idem.StateSizer with exact counts, one scan of
// the table grouped by state: it costs what Size's does, or more (it reads
// every row, not only the primary key).
func (s *Store) SizeByState(ctx context.Context) (map[idem.State]int64, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	m := map[idem.State]int64{idem.StatePending: 0, idem.StateCompleted: 0, idem.StateReleased: 0}
	rows, err := s.pool.Query(ctx, s.q.sizeByState)
	if err != nil {
		return nil, wrapErr("size by state", err)
	}
	var state string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&state, &n}, func() error {
		if !idem.State(state).Valid() {
			return fmt.Errorf("unknown state %q", state)
		}
		m[idem.State(state)] = n
		return nil
	})
	if err != nil {
		return nil, wrapErr("size by state", err)
	}
	return m, nil
}

func (s *Store) db(tx pgx.Tx) querier {
	if tx != nil {
		return tx
	}
	return s.pool
}

// micros is d in whole microseconds, rounded up so that a positive lease
// never becomes zero.
func micros(d time.Duration) int64 {
	us := int64(d / time.Microsecond)
	if d%time.Microsecond > 0 {
		us++
	}
	return us
}
