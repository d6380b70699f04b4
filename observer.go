package idem

import (
	"context"
	"time"
)

// Op names a ledger operation in an Event.
type Op string

const (
	OpBegin      Op = "begin"
	OpComplete   Op = "complete"
	OpRelease    Op = "release"
	OpExtend     Op = "extend"
	OpCheckpoint Op = "checkpoint"
	OpSweep      Op = "sweep"
)

// Event describes one ledger operation for an Observer. It never carries
// the key or any payload: those may be secrets.
type Event struct {
	Op    Op
	Scope string
	// Decision is set for OpBegin when the store answered.
	Decision Decision
	// Takeover is true when Begin took over an expired lease.
	Takeover bool
	// Attempt is the owner's attempt number for acquired Begins.
	Attempt int
	// Duration is how long the store call took.
	Duration time.Duration
	// TimeToIdempotence is set on a successful OpComplete: from the key's
	// first attempt to its stored outcome.
	TimeToIdempotence time.Duration
	// Deleted is set for OpSweep: how many expired records were removed.
	Deleted int
	// Err is the call's error, if any (ErrLeaseLost, ErrCompleted, ...).
	Err error
}

// Observer receives an Event after every ledger operation. Implementations
// must be fast and safe for concurrent use; metrics and tracing adapters
// live outside the core (the API server's Prometheus endpoint in idemapi).
type Observer interface {
	Observe(ctx context.Context, ev *Event)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(ctx context.Context, ev *Event)

// Observe calls f.
func (f ObserverFunc) Observe(ctx context.Context, ev *Event) { f(ctx, ev) }
