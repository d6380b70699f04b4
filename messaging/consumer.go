package messaging

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/msghook"
)

// Attempt is one failed attempt at a message, as the dead-letter hook
// receives it.
type Attempt struct {
	// At is when the attempt failed, by the ledger's clock; zero for an
	// attempt that left no record (its consumer crashed or lost its lease).
	At time.Time
	// Error is the handler's error message, or why there is none.
	Error string
}

// Config configures a Consumer. A nil *Config means every default.
type Config struct {
	// Scope is the ledger scope of the dedup keys. Default "messages". The
	// record of failed attempts lives in Scope + "/attempts".
	Scope string
	// Key derives the dedup key. Default: m.ID. An empty key is invalid:
	// the message is dead-lettered with an error wrapping idem.ErrInvalid.
	// Return a business key (an order id) to dedup what producers resend
	// under new message ids.
	Key func(m *Message) string
	// Fingerprint says what the message means: the same key with another
	// fingerprint is a mismatch, never applied. Default: hex SHA-256 of
	// the payload.
	Fingerprint func(m *Message) string
	// MaxAttempts bounds the attempts at a message; the failure of the
	// last one dead-letters it. An attempt whose consumer crashed counts,
	// and so does one whose handler failed because ctx was cancelled (a
	// shutdown). Default 5.
	MaxAttempts int
	// Backoff is the Retry delay after the attempt-th failed attempt.
	// Default: 1 s, doubling, capped at 1 min.
	Backoff func(attempt int) time.Duration
	// DeadLetter, if set, receives a message given up on: with the record
	// of every attempt (oldest first) and the error that ended it. If it
	// returns an error the key is released and the message redelivered
	// (Retry), and the hook runs again then, so it must tolerate
	// duplicates (it runs at least once per dead-lettered key).
	DeadLetter func(ctx context.Context, m *Message, attempts []Attempt, err error) error
	// OnMismatch, if set, receives a message whose key was used for
	// another payload (the Decision is DeadLetter, or Retry if it returns
	// an error). Default: the DeadLetter hook, with no attempts and an
	// error wrapping idem.ErrFingerprintMismatch.
	OnMismatch func(ctx context.Context, m *Message) error
	// Lease is how long an attempt owns its key before another consumer
	// may take it over; the consumer extends it while the handler runs.
	// Default: the ledger's.
	Lease time.Duration
	// MaxResult bounds the result a handler attaches to its outcome
	// (SetResult), in bytes: a larger one fails the attempt with an error
	// wrapping idem.ErrInvalid, marked Permanent (the message is
	// dead-lettered). Default DefaultMaxResult (1 MiB). The result is
	// stored in the ledger record, and a store may refuse less (idemapi,
	// behind idemclient, takes 4 MiB by default).
	MaxResult int
	// Observe, if set, is called when Handle starts on a message: Handle
	// goes on with the context it returns (so the ledger's Observer and
	// the handler see it) and calls done with its Decision before
	// returning. It is for metrics and tracing (module idemotel); it must
	// be fast and safe for concurrent use, and must not keep m.
	Observe func(ctx context.Context, m *Message) (_ context.Context, done func(*Decision))
}

// Consumer runs a Handler at most once per dedup key. It is safe for
// concurrent use: many goroutines and many processes may share one key
// space through the ledger.
type Consumer struct {
	ledger       *idem.Ledger
	h            Handler
	cfg          Config
	attemptScope string
	opts         []idem.CallOption
	hooks        *msghook.Hooks // the simulator's mutants only
}

func init() {
	msghook.Install = func(consumer any, h *msghook.Hooks) { consumer.(*Consumer).hooks = h }
}

const (
	defaultScope       = "messages"
	defaultMaxAttempts = 5
	outcomeKind        = "messaging"
	outcomeError       = "idem.error" // as Ledger.Do records a failure: Do replays it as *idem.OutcomeError
	attemptAt          = "at"
	attemptErr         = "error"
	attemptDead        = "dead"
)

// DefaultBackoff is the default Config.Backoff: 1 s after the first failed
// attempt, doubling, capped at 1 min.
func DefaultBackoff(attempt int) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	if attempt > 7 {
		return time.Minute
	}
	return min(time.Second<<(attempt-1), time.Minute)
}

// NewConsumer returns a consumer that runs h over ledger. A nil cfg means
// every default.
func NewConsumer(ledger *idem.Ledger, h Handler, cfg *Config) (*Consumer, error) {
	if ledger == nil {
		return nil, invalidf("messaging: ledger is nil")
	}
	if h == nil {
		return nil, invalidf("messaging: handler is nil")
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Scope == "" {
		c.Scope = defaultScope
	}
	if c.Key == nil {
		c.Key = func(m *Message) string { return m.ID }
	}
	if c.Fingerprint == nil {
		c.Fingerprint = PayloadFingerprint
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = defaultMaxAttempts
	}
	if c.Backoff == nil {
		c.Backoff = DefaultBackoff
	}
	if c.MaxResult == 0 {
		c.MaxResult = DefaultMaxResult
	}
	switch {
	case c.MaxAttempts < 0:
		return nil, invalidf("messaging: Config.MaxAttempts must be positive (or 0 for %d), got %d", defaultMaxAttempts, c.MaxAttempts)
	case c.Lease < 0:
		return nil, invalidf("messaging: Config.Lease must be positive (or 0 for the ledger's), got %s", c.Lease)
	case c.MaxResult < 0:
		return nil, invalidf("messaging: Config.MaxResult must be positive (or 0 for %d), got %d", DefaultMaxResult, c.MaxResult)
	}
	attemptScope := c.Scope + "/attempts"
	if err := idem.ValidateKey(attemptScope, "k"); err != nil {
		return nil, fmt.Errorf("messaging: Config.Scope: %w", err)
	}
	con := &Consumer{ledger: ledger, h: h, cfg: c, attemptScope: attemptScope}
	if c.Lease > 0 {
		con.opts = []idem.CallOption{idem.WithLease(c.Lease)}
	} else {
		c.Lease = ledger.Lease()
		con.cfg.Lease = c.Lease
	}
	return con, nil
}

// PayloadFingerprint is the default Config.Fingerprint: the hex SHA-256 of
// the payload.
func PayloadFingerprint(m *Message) string {
	sum := sha256.Sum256(m.Payload)
	return hex.EncodeToString(sum[:])
}

func (c *Consumer) backoff(attempt int) time.Duration { return max(c.cfg.Backoff(attempt), 0) }

// Handle runs the handler for m at most once per key and says what the
// adapter must do with the delivery:
//   - the key is in flight at another consumer: Retry, with the time left
//     on its lease as Delay (the message is redelivered, never dropped);
//   - the key completed: AckDuplicate, the handler does not run; Result is
//     the result the first run set (SetResult);
//   - the key was used with another payload: the OnMismatch (or
//     DeadLetter) hook runs and the answer is DeadLetter; m is never
//     applied;
//   - acquired: the handler runs with the key in its context
//     (idem.WithKey: idemhttp.Transport sends it as Idempotency-Key) and
//     the lease kept alive; on success the outcome is recorded, with the
//     result the handler set (SetResult), then Ack with that Result;
//     on an error the attempt is recorded (durably, in Scope+"/attempts")
//     and the key released: Retry with Backoff(attempt) as Delay;
//   - the last attempt failed, or the error is Permanent: the DeadLetter
//     hook gets m with every attempt, the key completes as failed (later
//     duplicates are AckDuplicate, not re-run), and the answer is
//     DeadLetter.
//
// A store that does not answer gives Retry with the store's error. Handle
// never panics on a message; a handler that panics has its key released
// and the panic goes on.
func (c *Consumer) Handle(ctx context.Context, m *Message) Decision {
	if c.cfg.Observe == nil || m == nil {
		return c.handle(ctx, m)
	}
	ctx, done := c.cfg.Observe(ctx, m)
	d := c.handle(ctx, m)
	done(&d)
	return d
}

func (c *Consumer) handle(ctx context.Context, m *Message) Decision {
	if m == nil {
		return Decision{Action: DeadLetter, Err: invalidf("messaging: nil message")}
	}
	key := c.cfg.Key(m)
	if err := idem.ValidateKey(c.cfg.Scope, key); err != nil {
		err = fmt.Errorf("messaging: dedup key of message %q: %w", m.ID, err)
		return c.deadLetterOnly(ctx, m, key, nil, err)
	}
	claim, err := c.ledger.Begin(ctx, c.cfg.Scope, key, c.cfg.Fingerprint(m), c.opts...)
	var inFlight *idem.InFlightError
	switch {
	case errors.As(err, &inFlight):
		return Decision{Action: Retry, Delay: max(inFlight.RetryAfter, 0), Key: key, Err: err}
	case errors.Is(err, idem.ErrFingerprintMismatch):
		return c.mismatch(ctx, m, key, err)
	case err != nil:
		return Decision{Action: Retry, Delay: c.backoff(1), Key: key, Err: err}
	case claim.Replayed():
		d := Decision{Action: AckDuplicate, Key: key}
		if out := claim.Outcome(); out != nil {
			if msg, failed := out.Meta[outcomeError]; failed {
				d.Err = &idem.OutcomeError{Message: msg}
			} else if len(out.Data) > 0 {
				d.Result = out.Data
			}
		}
		return d
	}
	finish := context.WithoutCancel(ctx)
	n := claim.Attempt()
	if c.hooks != nil && c.hooks.RecordBeforeHandler {
		// The mutant: the key is taken as handled before the handler ran.
		if err := claim.Complete(finish, handled()); err != nil {
			return Decision{Action: Retry, Delay: c.backoff(n), Key: key, Err: err}
		}
	}
	if n > 1 {
		// A predecessor may have given up (its dead-letter hook failed),
		// and attempts whose consumers crashed count: neither runs again.
		if prev, dead := c.deadAttempt(ctx, key, n-1); dead {
			return c.deadLetter(ctx, claim, m, key, n, n-1, errors.New(prev))
		}
		if n > c.cfg.MaxAttempts {
			err := fmt.Errorf("%w: %d attempts at key %q left no outcome", ErrAttemptsExhausted, n-1, key)
			return c.deadLetter(ctx, claim, m, key, n, n-1, err)
		}
	}

	result, hErr, lost := c.run(ctx, claim, m, key)
	if lost != nil {
		// Another consumer took the key over: it decides.
		return Decision{Action: Retry, Delay: c.backoff(n), Key: key, Err: errors.Join(hErr, lost)}
	}
	if hErr == nil && len(result) > c.cfg.MaxResult {
		hErr = Permanent(invalidf("messaging: the result of key %q is %d bytes, over Config.MaxResult %d", key, len(result), c.cfg.MaxResult))
	}
	if hErr == nil {
		if c.hooks != nil && c.hooks.BeforeCommit != nil {
			c.hooks.BeforeCommit(ctx, key)
		}
		if err := claim.Complete(finish, handledWith(result)); err != nil {
			// The handler ran; the record did not commit (or its answer
			// was lost). No ack: the redelivery replays or runs again.
			return Decision{Action: Retry, Delay: c.backoff(n), Key: key, Err: err}
		}
		return Decision{Action: Ack, Key: key, Result: result}
	}
	last := n >= c.cfg.MaxAttempts || IsPermanent(hErr)
	recErr := c.recordAttempt(finish, key, n, hErr, last)
	if last {
		return c.deadLetter(ctx, claim, m, key, n, n, hErr)
	}
	if err := claim.Release(finish); err != nil {
		return Decision{Action: Retry, Delay: c.backoff(n), Key: key, Err: errors.Join(hErr, recErr, err)}
	}
	return Decision{Action: Retry, Delay: c.backoff(n), Key: key, Err: errors.Join(hErr, recErr)}
}

// run calls the handler with the key and a result slot in its context and
// the lease kept alive; result is what the handler set (SetResult), lost
// the lease loss that cancelled it, if any.
func (c *Consumer) run(ctx context.Context, claim *idem.Claim, m *Message, key string) (result []byte, hErr, lost error) {
	rc := &runCtx{Context: ctx, key: key}
	workCtx, cancel := context.WithCancelCause(rc)
	defer cancel(nil)
	stop := claim.KeepAlive(ctx, c.cfg.Lease, func(err error) { cancel(err) })
	defer func() {
		stop()
		if r := recover(); r != nil {
			_ = claim.Release(context.WithoutCancel(ctx)) // best effort: the lease expires otherwise
			panic(r)
		}
	}()
	hErr = c.h(workCtx, m)
	result = rc.take()
	if cause := context.Cause(workCtx); errors.Is(cause, idem.ErrLeaseLost) {
		return result, hErr, cause
	}
	return result, hErr, nil
}

func handled() idem.Outcome { return handledWith(nil) }

// handledWith is the outcome of a successful run: its result as Data.
func handledWith(result []byte) idem.Outcome {
	return idem.Outcome{Data: result, Meta: handledMeta}
}

// handledMeta is the metadata of every handled outcome, shared: stores
// and the ledger only read an outcome they are given (and what they read
// back is a map of its own), so one map serves every message instead of
// one allocated per message.
var handledMeta = map[string]string{outcomeKind: "handled"}

// attemptKey is the key of attempt n's record; a key too long for the
// suffix is replaced by its digest.
func attemptKey(key string, n int) string {
	s := "#" + strconv.Itoa(n)
	if len(key)+len(s) > idem.MaxKeyLen {
		sum := sha256.Sum256([]byte(key))
		key = "sha256:" + hex.EncodeToString(sum[:])
	}
	return key + s
}

// recordAttempt stores attempt n's failure as a completed record of its
// own, which outlives the key's release and a crash.
func (c *Consumer) recordAttempt(ctx context.Context, key string, n int, hErr error, dead bool) error {
	claim, err := c.ledger.Begin(ctx, c.attemptScope, attemptKey(key, n), "")
	if err != nil {
		return fmt.Errorf("messaging: recording attempt %d: %w", n, err)
	}
	if claim.Replayed() {
		return nil
	}
	meta := map[string]string{attemptAt: c.ledger.Clock().Now().UTC().Format(time.RFC3339Nano), attemptErr: hErr.Error()}
	if dead {
		meta[attemptDead] = "1"
	}
	if err := claim.Complete(ctx, idem.Outcome{Meta: meta}); err != nil {
		return fmt.Errorf("messaging: recording attempt %d: %w", n, err)
	}
	return nil
}

// deadAttempt reports whether attempt n gave the message up, and its error.
func (c *Consumer) deadAttempt(ctx context.Context, key string, n int) (string, bool) {
	rec, err := c.ledger.Get(ctx, c.attemptScope, attemptKey(key, n))
	if err != nil || rec.State != idem.StateCompleted || rec.Outcome == nil || rec.Outcome.Meta[attemptDead] == "" {
		return "", false
	}
	return rec.Outcome.Meta[attemptErr], true
}

// Attempts returns the record of the failed attempts at key, oldest first,
// up to attempt n: one entry per attempt, with At zero for an attempt that
// left no record (its consumer crashed or lost its lease).
func (c *Consumer) Attempts(ctx context.Context, key string, n int) ([]Attempt, error) {
	out := make([]Attempt, 0, n)
	for i := 1; i <= n; i++ {
		rec, err := c.ledger.Get(ctx, c.attemptScope, attemptKey(key, i))
		switch {
		case errors.Is(err, idem.ErrNotFound) || err == nil && (rec.State != idem.StateCompleted || rec.Outcome == nil):
			out = append(out, Attempt{Error: "no record: the consumer stopped or lost its lease during this attempt"})
		case err != nil:
			return out, fmt.Errorf("messaging: reading attempt %d: %w", i, err)
		default:
			at, _ := time.Parse(time.RFC3339Nano, rec.Outcome.Meta[attemptAt])
			out = append(out, Attempt{At: at, Error: rec.Outcome.Meta[attemptErr]})
		}
	}
	return out, nil
}

// deadLetter hands m to the hook with every attempt up to upTo, then completes
// the key as failed. If the hook fails, the key is released and the answer
// is Retry (the next owner dead-letters at once).
func (c *Consumer) deadLetter(ctx context.Context, claim *idem.Claim, m *Message, key string, n, upTo int, cause error) Decision {
	finish := context.WithoutCancel(ctx)
	if c.cfg.DeadLetter != nil {
		attempts, err := c.Attempts(finish, key, upTo)
		if err == nil {
			err = c.cfg.DeadLetter(ctx, m, attempts, cause)
		}
		if err != nil {
			if !c.hasDeadRecord(finish, key, n) {
				_ = c.recordAttempt(finish, key, n, cause, true)
			}
			rErr := claim.Release(finish)
			return Decision{Action: Retry, Delay: c.backoff(n), Key: key, Err: errors.Join(cause, fmt.Errorf("messaging: dead-letter hook: %w", err), rErr)}
		}
	}
	failed := idem.Outcome{Meta: map[string]string{outcomeKind: "dead-letter", outcomeError: cause.Error()}}
	if err := claim.Complete(finish, failed); err != nil {
		return Decision{Action: Retry, Delay: c.backoff(n), Key: key, Err: errors.Join(cause, err)}
	}
	return Decision{Action: DeadLetter, Key: key, Err: cause}
}

func (c *Consumer) hasDeadRecord(ctx context.Context, key string, n int) bool {
	_, dead := c.deadAttempt(ctx, key, n)
	return dead
}

// deadLetterOnly dead-letters a message that owns no key (an invalid key).
func (c *Consumer) deadLetterOnly(ctx context.Context, m *Message, key string, attempts []Attempt, cause error) Decision {
	if c.cfg.DeadLetter != nil {
		if err := c.cfg.DeadLetter(ctx, m, attempts, cause); err != nil {
			return Decision{Action: Retry, Delay: c.backoff(1), Key: key, Err: errors.Join(cause, fmt.Errorf("messaging: dead-letter hook: %w", err))}
		}
	}
	return Decision{Action: DeadLetter, Key: key, Err: cause}
}

// mismatch reports a message whose key belongs to another payload.
func (c *Consumer) mismatch(ctx context.Context, m *Message, key string, err error) Decision {
	cause := fmt.Errorf("messaging: message %q: %w", m.ID, err)
	if c.cfg.OnMismatch == nil {
		return c.deadLetterOnly(ctx, m, key, nil, cause)
	}
	if hErr := c.cfg.OnMismatch(ctx, m); hErr != nil {
		return Decision{Action: Retry, Delay: c.backoff(1), Key: key, Err: errors.Join(cause, fmt.Errorf("messaging: mismatch hook: %w", hErr))}
	}
	return Decision{Action: DeadLetter, Key: key, Err: cause}
}
