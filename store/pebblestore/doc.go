// Package pebblestore is the embedded, durable idem.Store on Pebble
// (github.com/cockroachdb/pebble/v2): the default store of `idem serve`, for
// one machine, kept in a directory (./idem-data by default).
//
//	s, err := pebblestore.Open("./idem-data", nil)
//	ledger, err := idem.New(s, nil)
//
// Importing the package also registers the URL scheme file: with
// idem.OpenStore: idem.OpenStore(ctx, "file:./idem-data", nil) is the same
// store.
//
// # Durability
//
// Every acknowledged mutation (Begin that acquires, Complete, Release,
// Extend, Checkpoint, Delete, Sweep) is written in one Pebble batch
// committed with pebble.Sync: when the method returns nil, the change is in
// the fsynced write-ahead log and survives a crash of the process or of the
// machine. Reads that change nothing (a Begin that replays or finds the key
// in flight, Get, List) write nothing. Open creates the directory and its
// missing parents, and syncs the parent of each directory it creates, so a
// fresh store cannot lose its directory entry to a power cut.
//
// TestPowerCut checks it: the store runs on Pebble's crashable in-memory
// filesystem with concurrent operations of every kind (and the workflow
// journal's), the power is cut at a random moment 1000 times (only what
// was synced stays), and after each cut the store must open without repair
// with every acknowledged operation there and tokens above every one handed
// out before; a store that commits without syncing fails it.
// docs/store-pebble.md describes the test.
//
// # Group commit
//
// Operations on different keys run concurrently. Their synced batches meet
// in Pebble's commit pipeline, which writes all the batches that are waiting
// and covers them with one fsync of the write-ahead log, so N concurrent
// callers share syncs instead of paying one fsync each. Throughput grows
// with the number of callers (docs/performance.md).
//
// # Locking
//
// Operations on one (scope, key) are serialised by a per-key lock (striped:
// keys share 1024 mutexes by hash), held from reading the record until its
// new version is synced; the rules of each operation are the pure
// transitions of the ledger, so the store behaves exactly as the reference
// model. Get also reads under the key lock, so it never returns a write that
// is not yet durable.
//
// Each stripe also keeps, in memory, the pending records of its keys that
// this process wrote and synced (a few per stripe, small ones only),
// decoded. Every write of a record happens under its stripe lock, so an
// entry is exactly the record on disk: the owner's Complete, Release,
// Extend or Checkpoint use it instead of reading and decoding Pebble's
// value, and a Begin+Complete cycle reads Pebble once. A record that leaves pending, is deleted or is touched by
// Sweep leaves the stripe; a miss (after a reopen, or an entry dropped to
// bound the memory) reads Pebble. The directory itself is locked: a second Open,
// from this process or another one, fails with an error wrapping ErrLocked
// that names the directory.
//
// Tokens are store-wide and strictly increasing, across Delete and
// restarts: they come from an in-memory counter backed by a high-water mark
// that is synced before a block of 65536 tokens is handed out, and Open
// starts above the persisted mark, so no token repeats after a crash.
//
// # Layout
//
// Keys carry a prefix naming what they hold:
//
//	r/ <len(scope)> <scope> <key>                 the record (versioned binary encoding)
//	x/ <retain-until> <len(scope)> <scope> <key>  the expiry index (empty value)
//	m/token                                       the token high-water mark
//
// The records of a scope are contiguous and in key order, which List walks
// with an opaque cursor. The index time is encoded so that byte order is
// time order. Each record has exactly one index entry, written in the same
// batch as the record, at a time no later than its RetainUntil (a lower
// bound, kept in the record so the entry can be found): a Begin that hands
// out a lease with window w at now puts it at now + w (or leaves it where
// it is when that is earlier), and since every RetainUntil that lease can
// reach by Extend, Complete or Release is at least now + w, those write the
// record alone. So a Begin+Complete cycle writes three keys, not five.
//
// # Sweeping
//
// Sweep walks the expiry index from its start up to now (by the store's
// clock), so its cost is proportional to what has expired, not to the size
// of the store; an entry that comes due before its record (a completed
// record kept for a Retention longer than its window, a lease extended
// past it) is moved once to the record's RetainUntil. Each record is checked again under its key lock (a pending
// record with a live lease is never removed) and removed together with its
// index entry, in synced batches of up to 128 records; SweepParams.Limit
// bounds one call. A background sweeper runs every Config.SweepInterval (a
// minute by default; negative disables it) on the store's clock; Close
// stops it and waits for it.
//
// # Size
//
// Size is an in-memory count: Open counts the records once (a scan of the
// record keys), and every write that adds or removes a record adjusts it.
//
// # Workflow journal
//
// Store.Journal returns the store's durable workflow.Journal, kept in the
// same database under the prefix w/ (instances by id, each instance's
// history as ordered keys, and an index of Instance.WakeAt that List with
// Due reads):
//
//	engine, err := workflow.NewEngine(s.Journal(), registry, nil)
//
// Every Create, Append and Delete is one batch committed with pebble.Sync
// before it returns, under a per-instance lock held from reading the
// stored Seq, so Append is a compare-and-set and the instance and its new
// entries are durable together. List without Due walks the instances in
// id order and filters them as it decodes them. docs/workflows.md
// describes the layout.
//
// # Close and logging
//
// Close stops the sweeper, waits for running operations and closes Pebble
// cleanly; opening the directory again needs no recovery step. Pebble's own
// log messages are dropped unless Config.Logger is set, so raw keys are
// never logged by default.
package pebblestore
