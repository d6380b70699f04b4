package workflow

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/idemkit/idem/internal/permanent"
)

// Defaults of a RetryPolicy, used for its zero fields and for an action
// without one.
const (
	DefaultMaxAttempts    = 3
	DefaultInitialBackoff = time.Second
	DefaultMaxBackoff     = time.Minute
	DefaultMultiplier     = 2.0
	DefaultJitter         = 0.2
)

// DefaultRetryPolicy returns the policy of an action whose Retry is nil: 3
// attempts, waiting 1 s then 2 s (doubling up to 1 min), each wait
// shortened by up to 20 % at random, every error retried but those marked
// Permanent. It is a function, not a variable, because a nil Retry is part
// of a definition's fingerprint: what it means must not change at run
// time.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{
		MaxAttempts:    DefaultMaxAttempts,
		InitialBackoff: DefaultInitialBackoff,
		MaxBackoff:     DefaultMaxBackoff,
		Multiplier:     DefaultMultiplier,
		Jitter:         DefaultJitter,
	}
}

// RetryPolicy says how often and how fast a failed action is tried again.
// A zero field takes its default (DefaultMaxAttempts, ...), except Jitter,
// whose zero value means no jitter.
type RetryPolicy struct {
	// MaxAttempts is the number of attempts, the first included: 1 means
	// never retry. Default 3.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// InitialBackoff is the wait after the first failed attempt. Default
	// 1 s.
	InitialBackoff time.Duration `json:"initial_backoff,omitempty"`
	// MaxBackoff caps every wait. Default 1 min; at least InitialBackoff.
	MaxBackoff time.Duration `json:"max_backoff,omitempty"`
	// Multiplier grows the wait after each further failure. Default 2; at
	// least 1 (1 waits InitialBackoff every time).
	Multiplier float64 `json:"multiplier,omitempty"`
	// Jitter, between 0 and 1, shortens each wait by a random fraction of
	// up to Jitter, so instances that failed together do not retry
	// together. 0 means none.
	Jitter float64 `json:"jitter,omitempty"`
	// Retryable reports whether an error is worth another attempt. Nil
	// retries every error. An error marked with Permanent is never
	// retried, whatever Retryable says.
	Retryable func(error) bool `json:"-"`
}

// withDefaults returns p with its zero fields set; a nil p is
// DefaultRetryPolicy().
func (p *RetryPolicy) withDefaults() RetryPolicy {
	if p == nil {
		return DefaultRetryPolicy()
	}
	r := *p
	if r.MaxAttempts == 0 {
		r.MaxAttempts = DefaultMaxAttempts
	}
	if r.InitialBackoff == 0 {
		r.InitialBackoff = DefaultInitialBackoff
	}
	if r.MaxBackoff == 0 {
		r.MaxBackoff = max(DefaultMaxBackoff, r.InitialBackoff)
	}
	if r.Multiplier == 0 {
		r.Multiplier = DefaultMultiplier
	}
	return r
}

// Attempts returns the number of attempts the policy allows, the first
// included.
func (p *RetryPolicy) Attempts() int { return p.withDefaults().MaxAttempts }

// Backoff returns how long to wait after failed attempt number attempt
// (from 1) before the next one: InitialBackoff × Multiplier^(attempt-1),
// capped at MaxBackoff, then shortened by Jitter × rand (rand in [0, 1],
// clamped; pass a uniform random number). It is a pure function: the
// engine draws rand from its seeded source, so a run can be replayed. An
// attempt below 1 counts as 1. A nil policy is DefaultRetryPolicy().
func (p *RetryPolicy) Backoff(attempt int, rand float64) time.Duration {
	r := p.withDefaults()
	if attempt < 1 {
		attempt = 1
	}
	d := float64(r.InitialBackoff) * math.Pow(r.Multiplier, float64(attempt-1))
	if math.IsNaN(d) || d > float64(r.MaxBackoff) {
		d = float64(r.MaxBackoff)
	}
	if math.IsNaN(rand) || rand < 0 {
		rand = 0
	} else if rand > 1 {
		rand = 1
	}
	j := r.Jitter
	if math.IsNaN(j) || j < 0 {
		j = 0
	} else if j > 1 {
		j = 1
	}
	d *= 1 - j*rand
	if d < 0 {
		d = 0
	}
	return time.Duration(d)
}

// ShouldRetry reports whether err, the failure of attempt number attempt
// (from 1), earns another attempt: attempts remain, err is not marked
// Permanent, and Retryable (if set) accepts it. A nil policy is
// DefaultRetryPolicy().
func (p *RetryPolicy) ShouldRetry(attempt int, err error) bool {
	r := p.withDefaults()
	if err == nil || attempt >= r.MaxAttempts || IsPermanent(err) {
		return false
	}
	return r.Retryable == nil || r.Retryable(err)
}

// validate returns what is wrong with the policy's values, one message per
// problem.
func (p *RetryPolicy) validate() []string {
	if p == nil {
		return nil
	}
	var probs []string
	if p.MaxAttempts < 0 {
		probs = append(probs, "max_attempts is negative")
	}
	if p.InitialBackoff < 0 {
		probs = append(probs, "initial_backoff is negative")
	}
	if p.MaxBackoff < 0 {
		probs = append(probs, "max_backoff is negative")
	}
	if p.Multiplier != 0 && !(p.Multiplier >= 1) || math.IsInf(p.Multiplier, 0) {
		probs = append(probs, "multiplier must be at least 1 and finite")
	}
	if !(p.Jitter >= 0 && p.Jitter <= 1) {
		probs = append(probs, "jitter must be between 0 and 1")
	}
	initial := p.InitialBackoff
	if initial == 0 {
		initial = DefaultInitialBackoff
	}
	if p.MaxBackoff > 0 && p.MaxBackoff < initial {
		probs = append(probs, fmt.Sprintf("max_backoff %s is shorter than initial_backoff %s", p.MaxBackoff, initial))
	}
	return probs
}

// Permanent marks err as not worth retrying (a declined card, a validation
// failure): the action fails at once, whatever attempts remain. The marked
// error keeps err's message and still matches it with errors.Is and As.
// It is the same mark as messaging.Permanent.
func Permanent(err error) error { return permanent.Mark(err) }

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent (or messaging.Permanent).
func IsPermanent(err error) bool { return permanent.Is(err) }

type retryAfterError struct {
	err   error
	after time.Duration
}

func (e retryAfterError) Error() string { return e.err.Error() }
func (e retryAfterError) Unwrap() error { return e.err }

// RetryAfter marks err as asking for the next attempt to wait at least
// after (a downstream's Retry-After): the engine waits the longer of it
// and the policy's backoff. It does not make err retryable if the policy
// says it is not. The marked error keeps err's message and still matches
// it with errors.Is and As.
func RetryAfter(err error, after time.Duration) error {
	if err == nil {
		return nil
	}
	return retryAfterError{err, after}
}

// retryWait is how long to wait after attempt failed with err.
func retryWait(p *RetryPolicy, attempt int, err error, rand float64) time.Duration {
	d := p.Backoff(attempt, rand)
	var ra retryAfterError
	if errors.As(err, &ra) && ra.after > d {
		d = ra.after
	}
	return d
}
