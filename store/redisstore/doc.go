// Package redisstore is the idem.Store on Redis (go-redis v9): a
// low-latency ledger shared by many application servers. It also
// implements idem.Lister and idem.Sizer.
//
//	s, err := redisstore.Open(ctx, "redis://127.0.0.1:6379/0", nil)
//	ledger, err := idem.New(s, nil)
//
// New wraps a redis.UniversalClient the caller owns (a single server, a
// Sentinel failover client or a cluster client); Open makes and owns a
// client from a redis:// URL. Importing the package also registers redis:
// and rediss: with idem.OpenStore, where ?prefix=NAME sets Config.Prefix.
//
// # Atomicity and time
//
// Every operation on a record runs inside one Lua script (a Begin or
// Complete may share its script with others of the same shard, see
// Batching), sent with EVALSHA (and loaded again with EVAL when the server
// answers NOSCRIPT, after a restart, a failover or SCRIPT FLUSH), so each is
// atomic and linearizable per key.
// The scripts express the rules of the ledger's transitions and answer with
// a code and the record's bytes, which the store decodes and maps to
// results and sentinel errors. Leases and windows are judged by the
// server's clock: each script that needs the time reads TIME once (Redis 7
// replicates a script's effects, not the script, so reading the clock is
// allowed). Times are kept in microseconds; durations are rounded up to a
// whole microsecond.
//
// # Batching
//
// Begin and Complete of one shard are batched when the shard is busy: the
// Begins and Completes that callers start while a script of the shard is
// on its way queue, and the queued operations (up to 64) go to Redis as one
// script, one round trip, which runs them in queue order at one server
// time, each by its own rules and with its own reply. The queue goes when a
// script comes back, or as soon as it holds more than two operations per
// script on its way, with up to three scripts of a shard on their way. A
// batch reads TIME once, reads the shard's token counter once and writes
// it once, and puts its index entries with one ZADD, so in a batch a fresh
// key's Begin costs a GET and a SET and a Complete a GET and a SET. A
// caller that finds no script of its shard on its way runs its operation
// at once, so a lone caller waits for nothing; under load it saves the
// per-request cost (system calls on both sides, the script call) that
// dominates these small operations. With Config.WaitReplicas or WaitAOF a
// queued operation may also wait for the WAIT of the batch ahead of it, up
// to WaitTimeout. A batch is atomic as a whole, and its keys share the
// shard's hash tag (one cluster slot). A caller whose context ends while
// its operation is still queued gets the context's error and the operation
// never runs; once its batch is sent it runs to its end. An error from
// Redis for the batch (not a ledger answer such as a mismatch or a lost
// lease, which stay per operation) is returned to every operation in it;
// with Config.WaitReplicas or WaitAOF one wait confirms the whole batch.
//
// A lone caller pays a script call beyond the commands it runs, which
// weighs most when the round trip is short; under load batching more than
// makes up for it. docs/performance.md has the measured figures against
// bare SET NX + SET (BenchmarkVsRaw) and how to reproduce them.
//
// # Record format
//
// A record is one Redis string: a fixed 75-byte header (format version,
// state, flags, then token, attempts, lease until, created, completed,
// expires, retain until, window and retention as little-endian int64) and
// five length-prefixed sections (fingerprint, checkpoint point and data,
// outcome data and meta); record.go has the table. A script reads it with
// one GET, unpacks only the header numbers it judges (Lua's struct),
// compares the fingerprint section as bytes, copies what it does not
// change as a substring, and writes the record and its expiry with one
// SET … PXAT; it never decodes an outcome. The format is versioned: a value
// of another version, or bytes the decoder does not accept, are reported as
// an error wrapping idem.ErrInvalid, never read as a record.
//
// Per Begin that acquires a fresh key the server runs TIME, GET, SET … GET
// (the shard's token counter), SET … PXAT (the record) and ZADD (the
// shard's index); Complete runs GET, TIME and SET on the record key only
// (and APPEND for an outcome over 4 KiB, see below); a replay, an owner in
// flight or a mismatch runs TIME and GET and writes nothing.
//
// Outcomes pass through Lua as strings, and Redis's Lua hashes every byte
// of every string it makes, on a server that runs one script at a time: a
// Complete or a replay of a large outcome holds the server several times
// as long as a plain SET or GET of the same bytes (figures in
// docs/performance.md), so keep outcomes small. Complete appends an
// outcome over 4 KiB to the record with APPEND rather than joining it in
// Lua, which would hash it a second time.
//
// # Layout and cluster slots
//
// The records of one Config.Prefix are spread over 64 shards by a hash of
// the scope; each shard's keys carry the hash tag {hh} of the shard, so
// every key one script touches is in one cluster slot:
//
//	PREFIX:{hh}:r:SCOPE:KEY   the record, a string (format in record.go)
//	PREFIX:{hh}:i             the shard's index: a sorted set, score 0, members SCOPE:KEY
//	PREFIX:{hh}:t             the shard's token counter, 8 bytes little-endian
//
// SCOPE is the scope with '%', ':', '{' and '}' escaped as %XX, so no scope
// can move the hash tag or run into the key; KEY is the raw key (any bytes),
// the rest of the name. Distinct (scope, key) pairs never share a name. The
// index serves List (a scope's keys are the members from "SCOPE:" up to
// "SCOPE;", in key order, read with ZRANGE BYLEX), Sweep and Size.
//
// The trade-off: a scope lives in one shard, so List of a scope reads one
// range of one sorted set and the index is updated in the same script as
// the record (cluster-safe, exact), but one scope's traffic lands on one
// slot: a single very hot tenant is bounded by one Redis node. The shard
// count is part of the layout and cannot change for a prefix that holds
// records.
//
// # Tokens
//
// A fencing token is max(shard counter + 1, server time in µs, the key's
// previous token + 1), and the shard counter keeps it. The counter outlives
// records, so a key's tokens increase across Delete and expiry; the clock
// keeps them increasing when the counter itself is lost (a restart without
// persistence, a failover that dropped it); the counter keeps them
// increasing when the clock steps back. Tokens are therefore large (about
// 1.8e15 in 2026), still exact in a float64 and in JavaScript. The counter
// is kept as 8 bytes, so the script formats and parses no decimal number for
// it.
//
// # Expiry
//
// Every write of a record sets its Redis expiry (SET … PXAT, in the same
// command) at its RetainUntil, rounded up to the millisecond, so Redis
// removes records by itself even when nobody sweeps; Checkpoint, which does
// not move RetainUntil, keeps the expiry (KEEPTTL). A pending record with a
// live lease is never removed: its RetainUntil is its lease's end plus its
// window. Redis is the only judge of expiry; there is no expiry index.
//
// Sweep removes the index entries of records Redis has removed, so List and
// Size agree with what is stored, and counts them (SweepResult.Deleted). It
// walks every shard's index in batches of 1000 entries, each batch one
// script (every key declared, one slot; a few milliseconds of the server's
// time) that checks each record with EXISTS and removes the entries of the
// gone ones with one ZREM, so a record that is still there (a live lease, a
// window not over) keeps its entry; a batch whose records are all there is
// passed by one plain EXISTS of its keys. Its cost grows with the number of
// records stored, expired or not (seconds for a million: see
// docs/performance.md), so sweep a large store every few minutes rather
// than every minute.
//
// List skips, and drops from the index, entries whose record Redis has
// expired; Sweep does not count those again. Size counts index entries:
// exact on a swept store, and including records Redis expired until Sweep
// or List meets them. Consequences: Get may report idem.ErrNotFound for a
// record past its RetainUntil before Sweep runs, a record stays readable up
// to a millisecond past its RetainUntil (the rounding), and a pending record
// whose lease ended more than its window ago is gone, so the next Begin
// starts at attempt 1 without the checkpoint.
//
// The store is no idem.StateSizer: a record's state is in its value only,
// and Redis expires records without telling anyone, so a count kept by
// state would drift and counting by state would mean reading every record.
//
// # Durability
//
// Redis acknowledges a write when it is in memory. What a crash can lose
// depends on the server's persistence settings, not on this package:
//
//   - appendonly no (no AOF; RDB snapshots or nothing, Redis's default):
//     a restart loses every write since the last snapshot, or everything.
//   - appendonly yes, appendfsync everysec (the usual setting): the write
//     reaches the kernel before the reply, so a crash of the Redis process
//     loses nothing; a crash of the machine or a power loss can lose about
//     the last second (up to two) of acknowledged writes.
//   - appendonly yes, appendfsync always: the AOF is fsynced before the
//     reply; an acknowledged write survives a machine crash.
//   - appendonly yes, appendfsync no: the kernel flushes when it likes
//     (about 30 seconds on Linux).
//
// Replication is asynchronous: a failover to a replica can lose writes the
// primary acknowledged, whatever the fsync setting (see Redis Cluster and
// failover for what that loses, measured).
//
// For the ledger a lost write means: a lost Complete lets a later Begin with
// the same key acquire again, so the work runs twice (a completed outcome
// replays only if its write survives); a lost Begin lets a
// second caller acquire while the first still works, and its token may be
// lower than the first one's if the clock stepped back too. Use
// appendfsync always (or WaitAOF) where a duplicate costs more than latency.
//
// Config.WaitReplicas and Config.WaitAOF make every write wait, on the same
// connection, for WAIT numreplicas (replicas acknowledged it) or WAITAOF 1
// numreplicas (the primary's and the replicas' AOF fsynced it; Redis 7.2 or
// later with appendonly yes; Open fails on an older server with an error
// wrapping idem.ErrNotImplemented), for at most Config.WaitTimeout. When the
// wait falls short, the method returns its usual result and an error
// wrapping ErrNotDurable: the write happened on the primary and is visible
// to every caller, but is not confirmed durable; the caller may go on (its
// token is valid) or treat the operation as failed, knowing a retry finds
// the write in place (Complete then answers idem.ErrCompleted). Begin that
// replays or finds the key in flight writes nothing and waits for nothing.
// WAIT narrows the window of loss but does not make Redis a consistent
// system: a failover may still promote a replica that did not acknowledge
// (with more replicas per master than WaitReplicas).
//
// # Redis Cluster and failover
//
// New takes a *redis.ClusterClient like any other client. With a wait,
// each write and its WAIT go, in one pipeline on one connection, to the
// master that serves the write's slot (a cluster client would send a WAIT,
// which names no key, to every master); the wait options are refused on a
// *redis.Ring. go-redis follows MOVED by itself but, when a node refuses
// connections, keeps its map of the slots until
// ClusterOptions.ClusterStateReloadInterval (a minute): so after every
// error that is not an answer from Redis the store asks the cluster client
// to reload its map, and operations on a dead master's slots succeed again
// as soon as its replica has taken over.
//
// Replication is asynchronous, so without WaitReplicas a failover loses
// what the dead master acknowledged and its replica had not received:
// measured on a loopback cluster whose master lost its replica's link just
// before it was killed, 74 acknowledged Completes over three failovers, 73
// of those keys then acquired by a second caller (the work ran twice).
// With WaitReplicas equal to the replicas per master (one in the test),
// nothing acknowledged was lost and no key had two owners; the writes
// caught in the window answered ErrNotDurable instead. Fencing tokens did
// not repeat in either setting (see Tokens: the clock carries them across
// a lost counter; with the wait the counter itself survives).
// docs/store-redis.md has the figures, the settings and how to reproduce
// them (TestClusterFailover).
package redisstore
