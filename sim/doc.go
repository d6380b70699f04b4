// Package sim is idem's deterministic simulator: it runs the real ledger,
// Ledger.Do, the idemhttp middleware, the messaging consumer and the
// workflow engine in a seeded world of clients, servers, a network and a
// store that all misbehave, and checks after every run that idem's
// guarantees held.
//
// # The world
//
// A World has a virtual clock, processes made of tasks, a network and a
// durable store. Tasks are goroutines, but exactly one runs at a time; it
// runs until it reaches a yield point (every store call, Sleep, a
// mailbox's Recv, Yield) and the scheduler picks the next task with the
// world's random source. Between steps the world may crash a process
// (its tasks die, its memory is lost, its timers never fire; the store
// outside survives; it restarts later) or pause one past its lease, as a
// GC pause or a frozen VM would. The network drops, duplicates, delays and
// so reorders messages. The store (NewStore) wraps a real idem.Store with
// named failpoints: store/before-commit (the call fails, nothing
// happened), store/after-commit (it took effect, then the answer was lost:
// the ambiguous case) and store/latency.
//
// The code under test gets the world's Clock (an idem.Clock): leases,
// heartbeats (Claim.KeepAlive) and waits run on virtual time and are
// scheduled like everything else. One seed therefore reproduces one run
// bit for bit: Report.Hash digests its whole trace.
//
// # Invariants
//
// After every run (Run, RunSeeds) the scenario checks, with the world at
// rest:
//   - at-most-once: a side effect is applied at most once per key;
//   - at-least-once: an acknowledged request has its effect applied;
//   - same-outcome: every duplicate got the original outcome;
//   - no-lost-outcome: an acknowledged outcome is stored;
//   - ends-known: every key ends completed or free, every message is
//     processed, and the world comes to rest;
//   - no-mismatch-replay: a key reused for another request is refused,
//     never replayed.
//
// and the store checks, at every call, what really committed:
// tokens-monotone (tokens of a key strictly increase), fenced (a stale
// owner's Complete, Release, Extend or Checkpoint never succeeds),
// completed-stays (a completed key is never acquired again nor
// overwritten), checkpoint-handed-on (a successor gets its predecessor's
// checkpoint), and that a replay is the stored outcome of the same
// request.
//
// A side effect is staged by the task that makes it (World.Stage) and
// applied when that task's Complete commits, as a business write in the
// same transaction as the outcome would be (pgstore.CompleteTx): a task
// that crashes or loses its lease never applies it.
//
// # Scenarios and mutants
//
// Scenarios lists the built-in worlds: payments (clients retrying charges
// through the HTTP middleware), messages (at-least-once delivery to
// competing consumers that each run a messaging.Consumer, whose Decision
// the simulated adapter turns into an ack or a redelivery, and the outbox
// relay below), pauses (owners that pause past their lease and wake up to
// finish) and workflows (below). Mutants lists deliberately broken
// ledgers; workflow engines broken through internal hooks
// (commit-before-action, compensate-twice, keep-token, forget-step-key);
// message consumers broken the same way (record-before-handler: the key is
// recorded as handled before the handler runs, as Watermill's deduplicator
// does; ack-before-commit: the adapter acks before the outcome is
// recorded); and outbox relays (mark-before-publish: a row is marked sent
// before it is published; new-id-per-attempt: every publish of a row goes
// out under a fresh message id, so the broker's dedup cannot work;
// publish-past-failure: an entity's later rows go out after one failed).
// The tests prove each is caught. `idem sim` runs both from the command
// line.
//
// # The outbox
//
// In the messages scenario every order a consumer applies enqueues two
// outbox rows for its customer (two customers, so each entity has several
// rows), in the step that commits the order's outcome, as pgstore.Enqueue
// in the caller's transaction would: a consumer that crashes first
// enqueues nothing. Two relay processes, each a real messaging.Relay over
// an in-memory messaging.Outbox, compete for the relay lease; they crash
// (also right after a publish, before its mark) and pause past their lease,
// so that the other takes over and the stale one's marks are fenced: the
// Outbox checks the Fence against the ledger's record of the lease, as
// pgstore's SQL does. The broker fails a publish before it has the message
// (failpoint broker/unavailable) or loses the ack after
// (broker/ack-lost), drops a publish of a message id it had within its
// dedup window, and redelivers to the downstream, which drops redeliveries
// of a message id and applies each message's row. The checks:
//   - outbox-delivered: every row enqueued was delivered downstream and
//     marked sent, once the relays settled;
//   - at-most-once: the downstream applied each row once, whatever ids it
//     came under;
//   - entity-order: the first deliveries of an entity's rows come in seq
//     order (checked at each delivery);
//   - sent-was-published: no row is marked sent before the broker had it
//     (checked at each mark);
//   - relay-fenced: a mark gets through only with the token that holds
//     the relay lease, by the store's record of what committed.
//
// # Workflows
//
// The workflows scenario runs the real workflow.Engine: worker processes,
// each an engine over one Journal (a workflow.MemJournal with failpoints
// journal/before-commit and journal/after-commit), crash at step
// boundaries (an action or compensation ran and its journal entry is not
// committed) and at random, restart as new engines, and pause past their
// lease. Clients start orders (reserve,
// charge, ship), duplicate the start with the same input and with
// another, send events late, twice and out of order, and cancel some;
// actions fail for a while or for good. Actions call a downstream service
// that honours idempotency keys (the first final answer for a key answers
// every later request with it) and fencing tokens (a request with a lower
// token than the key has seen is refused), and apply their effect there. At rest it
// checks, besides the store's invariants:
//   - ends-terminal: every instance ends succeeded, failed, cancelled or
//     parked;
//   - exactly-once, at-most-once: each completed action has exactly one
//     effect, under the step key its history names; no step has two, under
//     any key; no effect belongs to a step the history does not complete;
//   - compensations: an unwound instance compensated exactly its completed
//     actions, latest first, once each, in its history and at the
//     downstream; one that did not unwind, none;
//   - history-append-only: no entry, once read, ever changes or goes
//     (checked at every journal read);
//   - history-explains: replaying the history's transitions from the
//     initial state gives the final state and status, and every accepted
//     event is in it, received or rejected;
//   - same-start, no-mismatch-start: a duplicate start returns the
//     instance, one with another input is refused;
//   - cancel-honoured: a recorded cancel ends the instance cancelled;
//   - step-key: an action's context carries its step key, and every step
//     the history completes or compensates ran with its key.
//
// SetupWorkflows builds the same world around any definition, with the
// checks above that need no knowledge of its actions' effects (all but
// exactly-once and at-most-once); package idemtest runs users' own
// definitions through it (idemtest.Workflow).
//
// # Limits
//
// Code under test must wait only through the world: its Clock's Sleep and
// AfterFunc (a task that blocks on Clock.After, a mutex held across a
// yield point, or a goroutine of its own would stall or escape the
// scheduler), and must not draw randomness or time from elsewhere where it
// changes what happens. Sleep does not notice a context cancelled
// meanwhile.
package sim
