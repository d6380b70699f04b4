// Package pgstore is the PostgreSQL store of idem: the ledger many
// application servers share, and the one a service can use inside its own
// transaction, so its business writes and its recorded outcome commit or
// roll back together.
//
//	store, err := pgstore.Open(ctx, "postgres://app@db:5432/shop", &pgstore.Config{Migrate: true})
//	ledger, err := idem.New(store, nil)
//
// New takes a *pgxpool.Pool the caller already has (and leaves it open on
// Close); Open makes a pool of its own from a URL and closes it. Importing
// the package also registers postgres: and postgresql: with idem.OpenStore,
// where ?schema=NAME sets Config.Schema and idem.OpenConfig.Migrate sets
// Config.Migrate.
//
// # Schema
//
// The tables live in one schema (Config.Schema, default "idem"):
// records, one row per (scope, key) with the primary key (scope, key); the
// sequence tokens, from which every fencing token comes, so tokens of a key
// increase also across Delete and Sweep; wf_instances and wf_history, the
// workflow journal (see below); outbox and outbox_entities, the outbox (see
// Messaging); and migrations, the versions applied.
//
// A Begin's INSERT draws its token before it may wait for a concurrent
// writer of the key; a takeover draws a fresh one while holding the row.
// So that a waiting INSERT can never land after a Delete with a token
// lower than ones the deleted row had, Delete leaves a tombstone row
// (state 'deleted', seen by no reader) that Sweep removes an hour later;
// a waiting Begin meets it and takes the fresh-token path. Sweep itself
// removes expired records outright, which is safe as long as windows are
// longer than a Begin statement can wait (set statement_timeout).
//
// The migrations are numbered .sql files embedded in the module.
// Migrate (what `idem migrate --store URL` runs) applies the missing ones
// in one transaction under an advisory lock, so any number of processes
// may start at once; with Config.Migrate the store runs it at start,
// without it the store refuses a schema not at its version
// (Config.OnMigration sees each migration as it runs, and
// Store.Migration lists those applied). Keys are text
// COLLATE "C" (List pages in byte order); text cannot hold a NUL byte, so
// such a key is rejected with idem.ErrInvalid.
//
// Leases are judged by the database's clock, never the application's: each
// statement reads statement_timestamp(), the time the server received it
// (not now(), which would be the start of a caller's transaction). Times
// are kept to the microsecond and durations in whole microseconds,
// rounded up.
//
// # Workflow journal
//
// Store.Journal returns the store's durable workflow.Journal, in two
// tables of the same schema (migration 0002_workflow): wf_instances, one
// row per instance (the instance as jsonb in body, beside the columns List
// filters on: type, state, status, wake_ns and finished_ns as Unix
// nanoseconds, exact where timestamptz would round to microseconds, and
// clamped to the years 1677 to 2262), and wf_history, one row per history
// entry, keyed (id, seq), deleted with its instance by ON DELETE CASCADE.
//
//	engine, err := workflow.NewEngine(s.Journal(), registry, nil)
//
// Every method is one statement, so one transaction and one round trip
// (two when a write is refused, to tell idem.ErrNotFound from
// workflow.ErrConflict). Append is an UPDATE ... WHERE id = $1 AND seq =
// $old whose RETURNING feeds the INSERT of the history rows in the same
// statement: the instance and its entries commit together, and of
// concurrent Appends at one Seq exactly one matches the row. Create is an
// INSERT ... ON CONFLICT DO NOTHING; when the id exists, the stored
// instance is read and compared by fingerprint. Get reads the instance and
// its history in one statement, so both are of the same Seq. List is one
// query in id order; WakeAt (List with Due, every engine Step), type and
// state, and status have indexes. Any number of processes may share the
// tables.
//
// The journal is a workflow.TxJournal: an action marked InTx
// (workflow.Action.InTx) runs inside Journal.InTx, a transaction on the
// store's pool in which the Append that records its step also runs, and
// does its writes on StepTx(ctx):
//
//	Run: func(ctx context.Context, s *workflow.Step) ([]byte, error) {
//		_, err := pgstore.StepTx(ctx).Exec(ctx, `INSERT INTO shipments (order_id) VALUES ($1)`, s.InstanceID)
//		return nil, err
//	},
//
// The action's rows and the step commit together or not at all: an
// engine that dies before the commit leaves neither, and the engine that
// takes the instance over runs the action again; an Append that conflicts
// (an event came in meanwhile) rolls the action's writes back and the
// unit runs it again in a fresh transaction; a failed attempt's writes
// roll back, and the failure is recorded by a write of its own. A commit
// that fails on a dropped connection, a serialization failure (40001) or a
// deadlock (40P01) wraps ErrUnavailable. Such a unit holds one pool
// connection from its action's start to the commit: keep the action
// short, and with more EngineConfig.Workers than the pool has connections
// (pool_max_conns) expect units to wait for one. The crash test
// (TestWorkflowWorkersSIGKILL, see docs/workflows.md) SIGKILLs engine
// processes mid-step and finds every InTx row written exactly once.
//
// # Messaging: inbox and outbox
//
// Store.Inbox is a transactional inbox: Inbox.Handle claims a consumed
// message's key with BeginTx in a transaction, runs the handler with that
// pgx.Tx, and completes the key in it, so the handler's writes and the
// dedup record commit together, and a redelivery after a crash between
// the commit and the broker's ack is acked as a duplicate. Store.Enqueue
// writes a message to the outbox inside the caller's transaction (schema
// version 3, migration 0003_messaging: tables outbox and
// outbox_entities), with an id derived from the key of the work that sends
// it (idem.KeyFrom); Store.Relay publishes the outbox through a
// Publisher, one relay active at a time by a lease in scope
// "outbox-relay", in order per entity, retrying failed rows with backoff.
// docs/messaging-postgres.md has the details and the crash test.
//
// # Round trips per operation
//
// Begin is one statement for a fresh key, a replay, an in-flight answer
// and a mismatch: it reads the key and inserts a pending row only when the
// key has no row, with ON CONFLICT DO NOTHING, and otherwise returns the
// row for the store to decide from. A replay, an in-flight answer and a
// mismatch write nothing: no row lock, no transaction id, no WAL, no
// commit to flush. A key whose row may be taken over (released, deleted,
// past its window, or a lease run out) takes a second statement, which
// with ON CONFLICT … DO UPDATE … WHERE takes over the row only when the
// rules still allow on the row's latest version. Under READ COMMITTED a
// statement's own read cannot see a row a concurrent Begin committed
// after the statement started; in that rare race Begin reads the row
// again (another round trip). Complete, Release, Extend and Checkpoint are
// each one conditional UPDATE on the token. When the token is not the
// owner's, the update changes nothing and the store reads the row (a
// second round trip, on that failure path only) to tell
// idem.ErrLeaseLost from idem.ErrCompleted. The fresh key's path is kept
// as lean as the bare statements it stands beside: an index probe and the
// insert, returning the token, then the update, returning the columns the
// caller lacks. The server builds every clause of a statement each time
// it runs it, so the takeover's clauses stay out of the fresh key's
// statement (docs/performance.md has the server CPU per statement).
//
// Completes on the pool are batched under load: when more Begins and
// Completes are on the pool than it has connections, and Completes are on
// their way to the server, the ones other callers start queue up and go
// as one UPDATE of all their keys, one round trip and one commit for the
// lot (as River's job completer does). Each is judged on its own key and
// token and gets its own answer. While the pool has a connection for
// each, or none is on its way, a Complete runs at once, so a lone caller
// waits for nothing; a batch the server refuses is retried
// one Complete at a time, so one bad Complete fails no other. A Complete
// whose context ends while it waits in the queue returns the context's
// error and is never sent; once its batch is on its way, it waits for the
// batch's answer. Completes in a caller's transaction (CompleteTx) are
// never batched.
//
// # Transactional use
//
// BeginTx, CompleteTx and ReleaseTx run on the caller's pgx.Tx:
//
//	tx, _ := pool.Begin(ctx)
//	defer tx.Rollback(ctx)
//	res, err := store.BeginTx(ctx, tx, &idem.BeginParams{Scope: "payments", Key: key, Fingerprint: fp,
//		Lease: time.Minute, Window: 24 * time.Hour})
//	if err != nil || res.Decision != idem.Acquired {
//		return res, err // a replay carries the committed outcome
//	}
//	tx.Exec(ctx, `INSERT INTO payments (order_id, amount) VALUES ($1, $2)`, orderID, amount)
//	store.CompleteTx(ctx, tx, &idem.CompleteParams{Scope: "payments", Key: key, Token: res.Record.Token, Outcome: out})
//	return res, tx.Commit(ctx)
//
// A rollback leaves the key as it was before; a commit stores the payment
// and the outcome together, and every duplicate replays it. While the
// transaction is open the key's row is locked: a duplicate Begin waits for
// the commit and then replays. Use READ COMMITTED (PostgreSQL's default):
// under REPEATABLE READ or SERIALIZABLE a concurrent duplicate fails with
// a serialization error instead of waiting.
//
// # Durability
//
// A Complete that returned nil is durable as far as the database's commit
// is: with synchronous_commit = on (the default) it survives a crash or a
// restart of PostgreSQL. With synchronous_commit = off the last few hundred
// milliseconds of completions may be lost in a crash, and their keys run
// again. With a standby, synchronous_standby_names naming it and
// synchronous_commit = on (or remote_apply) keep every acknowledged
// operation through a failover, tokens included; with an asynchronous
// standby the last acknowledged ones may be lost (the failover tests
// measure both: docs/deploy.md). Open a multi-host URL with
// target_session_attrs=read-write (postgres://u@db1,db2/app?...) so the pool
// follows the primary; Ping tells whether the pool reaches one. When the
// database goes away, operations fail with an error wrapping
// ErrUnavailable ("pgstore: database unavailable: …"); one in flight may or
// may not have committed, which the next Begin of the key tells.
//
// # Sweep
//
// Sweep deletes records whose retain_until has passed, walking the
// retain_until index from its oldest end in DELETE batches of 10000 (each
// its own short transaction, FOR UPDATE SKIP LOCKED so it never waits for
// a Begin); docs/performance.md has its rate. Time partitions would make
// expiry a DROP, but PostgreSQL needs the partition key in every unique
// index, and a record's retain_until changes at Complete, Release and
// Extend: each such change would move the row between partitions, and
// (scope, key) could no longer be unique across them. The index keeps
// lookups one probe and the cost of a Sweep proportional to what is due.
// Autovacuum
// should keep up with the deleted rows; right after a large Sweep an
// empty one walks the dead index entries once.
//
// # CockroachDB
//
// The SQL keeps to what CockroachDB also speaks (no ctid, no
// hashtext(), no PostgreSQL-only types), but it is not tested there, and
// some things differ:
//   - CockroachDB runs SERIALIZABLE by default, so concurrent Begins of
//     one key may fail with a retryable serialization error (40001) rather
//     than wait; use READ COMMITTED (23.2 and later) or retry.
//   - Advisory locks are not enforced: run `idem migrate` from one
//     process before starting the others.
//   - COLLATE "C" needs 23.1 or later; CockroachDB's default string order
//     is bytewise already, so the migration may drop it there.
//   - outcome metadata is a json column, which CockroachDB stores as
//     JSONB: a NUL in a meta string may be refused.
//   - statements return a record as one composite (tuple) column in
//     binary, which CockroachDB encodes from 23.1 (and 22.1 and 22.2
//     patch releases of 2023); earlier releases fail on it.
//   - "writes nothing" for replays is a PostgreSQL property (no xid);
//     CockroachDB's reads are also write-free, but its commit costs
//     differ.
package pgstore
