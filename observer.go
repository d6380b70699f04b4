package idem

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	// Attempt is the owner's attempt number for acquired Begins and for
	// Completes (greater than 1: a retry's).
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
	// key is the caller's key ("" for OpSweep). It is unexported so that
	// an Observer sees only its digest (KeyDigest).
	key string
}

// KeyDigest returns the digest of the operation's key (see KeyDigest), ""
// for an operation on no key (OpSweep). It is computed on each call.
func (e *Event) KeyDigest() string {
	if e.key == "" {
		return ""
	}
	return KeyDigest(e.key)
}

// KeyDigest returns "sha256:" and the first 16 hex digits of the SHA-256
// of key: what traces and logs carry instead of a key, which may be a
// secret. The same key always has the same digest, so the spans and log
// lines of one key (an HTTP request's, its workflow step's, the message it
// sends) can be found together. A key of little entropy (an order number)
// can be guessed from its digest by trying candidates.
func KeyDigest(key string) string {
	sum := sha256.Sum256([]byte(key))
	var out [len("sha256:") + 16]byte
	copy(out[:], "sha256:")
	hex.Encode(out[len("sha256:"):], sum[:8])
	return string(out[:])
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
