package idem

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Callers branch on them with errors.Is; every error
// returned by the ledger and by stores wraps one of them with context.
var (
	// ErrInFlight: another owner holds a live lease on the key. The error
	// returned by Begin is an *InFlightError that says when to retry.
	ErrInFlight = errors.New("idem: operation in flight")

	// ErrFingerprintMismatch: the key is in use with a different fingerprint,
	// so the caller reused a key for a different request. Never a replay.
	ErrFingerprintMismatch = errors.New("idem: fingerprint mismatch")

	// ErrLeaseLost: the token is no longer current (the lease was taken over,
	// released or the record removed). Nothing was changed.
	ErrLeaseLost = errors.New("idem: lease lost")

	// ErrCompleted: the key already holds a completed outcome, which is never
	// overwritten.
	ErrCompleted = errors.New("idem: already completed")

	// ErrNotFound: no record exists for the key.
	ErrNotFound = errors.New("idem: not found")

	// ErrInvalid: a parameter is out of range (empty or oversized key,
	// negative duration, ...). The message says which.
	ErrInvalid = errors.New("idem: invalid argument")

	// ErrNotImplemented: the store lacks an optional capability.
	ErrNotImplemented = errors.New("idem: not implemented by this store")

	// ErrUnavailable: the store did not answer (a database restarting, a
	// refused connection). An operation that failed this way may or may not
	// have taken effect; retrying with the same key is always safe.
	ErrUnavailable = errors.New("idem: store unavailable")

	// ErrClosed: the store or ledger was closed.
	ErrClosed = errors.New("idem: closed")

	// ErrFailedOutcome: a replayed outcome records a failure of the original
	// execution. The error returned by Do is an *OutcomeError.
	ErrFailedOutcome = errors.New("idem: original execution failed")
)

// InFlightError is returned by Begin and Do when another owner holds the key.
type InFlightError struct {
	// RetryAfter is how long until the current lease ends: the latest a
	// retry may have to wait, not an estimate of when the work finishes.
	RetryAfter time.Duration
	// Started is when the owner's attempt began, by the store's clock, if
	// the store said and the owner is the key's first; else zero. With a
	// typical duration of the work, it estimates when the work finishes.
	Started time.Time
}

func (e *InFlightError) Error() string {
	return fmt.Sprintf("idem: operation in flight, retry after %s", e.RetryAfter)
}

// Unwrap makes errors.Is(err, ErrInFlight) true.
func (e *InFlightError) Unwrap() error { return ErrInFlight }

// OutcomeError is the failure the original execution of a key recorded;
// Do returns it on the first execution and on every replay.
type OutcomeError struct {
	Message string
}

func (e *OutcomeError) Error() string { return e.Message }

// Unwrap makes errors.Is(err, ErrFailedOutcome) true.
func (e *OutcomeError) Unwrap() error { return ErrFailedOutcome }

// invalidf returns an error wrapping ErrInvalid.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

type retryableError struct{ err error }

func (e retryableError) Error() string { return e.err.Error() }
func (e retryableError) Unwrap() error { return e.err }

// Retryable marks err so that Do releases the key instead of recording the
// failure: the next attempt with the same key runs again. Use it for
// failures that did not take effect (a timeout before the request was sent,
// a refused connection). Context cancellation is always retryable.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return retryableError{err}
}

// IsRetryable reports whether err was marked with Retryable or comes from a
// cancelled or expired context.
func IsRetryable(err error) bool {
	var r retryableError
	return errors.As(err, &r) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
