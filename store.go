package idem

import (
	"context"
	"time"
)

// State is the lifecycle state of a record.
type State string

const (
	// StatePending: an owner holds (or held) a lease and has not finished.
	StatePending State = "pending"
	// StateCompleted: an outcome is stored and is replayed to duplicates
	// until the dedup window ends.
	StateCompleted State = "completed"
	// StateReleased: the last owner gave the key back after a retryable
	// failure. The key is free; only the token and attempt count are kept.
	StateReleased State = "released"
)

// Valid reports whether s is one of the defined states.
func (s State) Valid() bool {
	return s == StatePending || s == StateCompleted || s == StateReleased
}

// Limits every store enforces (see ValidateKey).
const (
	MaxKeyLen       = 255
	MaxScopeLen     = 255
	MaxPointLen     = 255
	MaxFingerprint  = 1024
	MaxCheckpoint   = 64 << 10 // checkpoint data is meant to be small
	DefaultLease    = 30 * time.Second
	DefaultWindow   = 24 * time.Hour
	DefaultListSize = 100
	MaxListSize     = 1000
)

// Outcome is the stored result of a completed operation: opaque bytes and
// small metadata (an HTTP status and headers, an error message).
type Outcome struct {
	Data []byte            `json:"data"`
	Meta map[string]string `json:"meta,omitempty"`
}

// Checkpoint is a recovery point written by an owner and handed to its
// successor after a takeover, so the successor resumes instead of redoing
// finished phases.
type Checkpoint struct {
	Point string `json:"point"`
	Data  []byte `json:"data"`
}

// Record is everything a store keeps about one (scope, key).
type Record struct {
	Scope       string
	Key         string // the key as stored: the raw key, or its digest (Config.KeySecret)
	Fingerprint string
	State       State
	// Token is the fencing token of the current (or last) owner. Tokens of
	// one key strictly increase every time ownership changes hands, also
	// across release, takeover, expiry and deletion.
	Token int64
	// Attempts counts the owners that have held the key.
	Attempts   int
	LeaseUntil time.Time // while in the future, a pending record's owner may work
	Checkpoint *Checkpoint
	Outcome    *Outcome // set when State is StateCompleted
	Created    time.Time
	Completed  time.Time
	// Expires is the dedup horizon of a completed record (Completed +
	// window); after it the record counts as absent to Begin.
	Expires time.Time
	// RetainUntil is when Sweep may remove the record. For a completed record
	// it is Completed + max(window, retention); for a pending one LeaseUntil
	// + window (an orphan guard, never before the lease ends); for a released
	// one the release time + window.
	RetainUntil time.Time
	Window      time.Duration
	Retention   time.Duration
}

// Decision is what Begin found.
type Decision string

const (
	// Acquired: the caller owns the key and must Complete or Release it.
	Acquired Decision = "acquired"
	// Replay: the key completed earlier with the same fingerprint.
	Replay Decision = "replay"
	// InFlight: another owner's lease is live.
	InFlight Decision = "in_flight"
	// Mismatch: the key is in use with a different fingerprint.
	Mismatch Decision = "mismatch"
)

// BeginParams are the arguments of Store.Begin. Lease and Window must be
// positive; Retention, when longer than Window, keeps a completed record
// for lookup after its dedup window ends.
type BeginParams struct {
	Scope       string
	Key         string
	Fingerprint string
	Lease       time.Duration
	Window      time.Duration
	Retention   time.Duration
}

// BeginResult is the answer of Store.Begin. Record is the record after the
// operation; for Mismatch it is nil, so nothing of another request leaks.
type BeginResult struct {
	Decision Decision
	Record   *Record
	// Takeover is true when Acquired took over an expired lease.
	Takeover bool
	// RetryAfter is set for InFlight: the time left on the current lease.
	RetryAfter time.Duration
}

// CompleteParams are the arguments of Store.Complete.
type CompleteParams struct {
	Scope   string
	Key     string
	Token   int64
	Outcome Outcome
}

// ReleaseParams are the arguments of Store.Release.
type ReleaseParams struct {
	Scope string
	Key   string
	Token int64
}

// ExtendParams are the arguments of Store.Extend: the lease is set to end
// Lease from now (by the store's clock).
type ExtendParams struct {
	Scope string
	Key   string
	Token int64
	Lease time.Duration
}

// CheckpointParams are the arguments of Store.Checkpoint.
type CheckpointParams struct {
	Scope string
	Key   string
	Token int64
	Point string
	Data  []byte
}

// KeyParams name one record, for Get and Delete.
type KeyParams struct {
	Scope string
	Key   string
}

// SweepParams are the arguments of Store.Sweep. Limit bounds how many
// records one call removes (0: no bound).
type SweepParams struct {
	Limit int
}

// SweepResult says how many records Sweep removed.
type SweepResult struct {
	Deleted int
}

// ListParams select records of one scope in key order.
type ListParams struct {
	Scope  string
	State  State  // empty: every state
	Limit  int    // 0: DefaultListSize
	Cursor string // from a previous ListResult; empty: from the start
}

// ListResult is one page of records. NextCursor is empty on the last page.
type ListResult struct {
	Records    []*Record
	NextCursor string
}

// Store is the driver contract every ledger backend implements. Each method
// is atomic per (scope, key) and linearizable. Leases and windows are judged
// by the store's own clock. storetest.Run checks the rules:
//
//   - Begin acquires a key that is absent, released, or completed with its
//     window over. On any other key a different fingerprint is Mismatch,
//     which changes nothing; a completed key is Replay; a pending key is
//     InFlight (with the time left) while its lease is live, and taken
//     over once it has run out (the successor gets the checkpoint).
//   - Every acquisition gets a fencing token greater than any the key had,
//     also across Release, takeover, expiry, Delete and Sweep.
//   - Only the current token of a pending record may Complete, Release,
//     Extend or Checkpoint; an owner whose lease ran out keeps the key
//     until a successor takes it over.
//   - A completed record replays its outcome byte for byte until its window
//     ends and is never overwritten.
//
// A store must not keep the byte slices or maps of its params after a call
// returns (callers reuse buffers): it copies what it stores.
//
// Complete, Release, Extend and Checkpoint return an error wrapping
// ErrLeaseLost when the token is not the current owner's, and change
// nothing; Complete on a completed record with its own token returns
// ErrCompleted.
type Store interface {
	Begin(ctx context.Context, p *BeginParams) (*BeginResult, error)
	Complete(ctx context.Context, p *CompleteParams) (*Record, error)
	Release(ctx context.Context, p *ReleaseParams) error
	Extend(ctx context.Context, p *ExtendParams) (*Record, error)
	Checkpoint(ctx context.Context, p *CheckpointParams) error
	Get(ctx context.Context, p *KeyParams) (*Record, error)
	Delete(ctx context.Context, p *KeyParams) error
	// Sweep removes records whose RetainUntil has passed. It never removes a
	// pending record whose lease is live.
	Sweep(ctx context.Context, p *SweepParams) (*SweepResult, error)
	Close() error
}

// Lister is the optional capability to enumerate the records of a scope.
type Lister interface {
	List(ctx context.Context, p *ListParams) (*ListResult, error)
}

// Pinger is the optional capability to check cheaply that a store can
// serve: Ping returns nil when the store is reachable and would accept
// writes, an error (wrapping ErrUnavailable when the store is unreachable)
// otherwise. It changes nothing. Readiness checks (idem serve's /readyz) use
// it; a store without it is probed with a Get of a key that is never
// written.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Sizer is the optional capability to tell how many records a store holds,
// for the ledger-size metric. The count is exact on an idle store; under
// concurrent writes it may lag them.
type Sizer interface {
	Size(ctx context.Context) (int64, error)
}

// StateSizer is the optional capability to tell how many records a store
// holds in each state, for the ledger-size metric by state. SizeByState
// counts records by their stored state: a pending record whose lease ran
// out is still pending, and a completed record whose window is over is
// still completed until Sweep or a new Begin changes it. The map has every
// State constant as a key, with 0 for a state no record is in, and its
// values add up to what Sizer's Size would return. As with Sizer, the
// counts are exact on an idle store; under concurrent writes they may lag
// them.
type StateSizer interface {
	SizeByState(ctx context.Context) (map[State]int64, error)
}
