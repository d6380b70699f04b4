// Package dbosbench measures idem's workflow engine against DBOS Transact
// Go (github.com/dbos-inc/dbos-transact-golang) on the same PostgreSQL, in
// the same process, by turns.
//
// The workload is the one of the figures in docs/performance.md: a
// workflow of three no-op steps (each returns a few bytes), started with
// distinct ids by 1 or 16 concurrent starters, each of which starts an
// instance, waits for its result and starts the next. Three systems run
// it:
//
//   - dbos: DBOS Transact on PostgreSQL, in the database dbosbench (its
//     system database, a schema of its own per run);
//   - idem-pg: idem's engine on the pgstore journal, in the database
//     idembench (a schema of its own per run);
//   - idem-pebble: idem's engine on the pebblestore journal, in a
//     temporary directory.
//
// Each turn opens the system afresh (its own connection pool), runs the
// starters for a fixed time, and closes it. Commits are counted two ways:
// for idem, a journal wrapper counts every Create and Append (one commit
// each); for both PostgreSQL systems, the database's own
// pg_stat_database.xact_commit, read once every backend of the dedicated
// database has exited (a backend flushes its statistics when it exits),
// less what an idle turn (open and close, no instance) counts. Every
// transaction counts there, reads included, on both sides alike.
//
// The package has only tests. The plain test run checks that one instance
// of each system completes its three steps and that the counters move;
// the figures come from
//
//	IDEM_BENCH_FIGURES=1 go test -run TestFigures -v ./bench/dbos
//
// (IDEM_BENCH_ROUNDS, default 5, and IDEM_BENCH_TURN, default 2s, adjust
// it) or from the benchmarks:
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/dbos
package dbosbench
