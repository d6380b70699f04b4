package idem

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Ledger. The zero value (or a nil *Config) is usable:
// 30 s leases, a 24 h dedup window, raw keys, the system clock.
type Config struct {
	// Lease is how long an owner holds a key before another caller may take
	// it over. Do extends it while its function runs. Default 30 s.
	Lease time.Duration
	// Window is the dedup horizon: how long after completion a duplicate
	// gets the stored outcome. Default 24 h.
	Window time.Duration
	// Retention keeps a completed record for lookup (Get, List) after its
	// window ends, when longer than Window. Default: Window.
	Retention time.Duration
	// KeySecret, when set, makes the ledger store HMAC-SHA256(KeySecret,
	// key) instead of the key, so the store never holds raw keys. Lookups
	// by raw key keep working; List shows digests. Changing the secret
	// forgets every stored key.
	KeySecret []byte
	// MaxWait bounds WithWait. Default 30 s.
	MaxWait time.Duration
	// Observer receives an Event after every operation.
	Observer Observer
	// Clock drives lease heartbeats and waits. Default: SystemClock. Stores
	// judge leases by their own clock.
	Clock Clock
}

func (c *Config) withDefaults() (Config, error) {
	var cfg Config
	if c != nil {
		cfg = *c
	}
	if cfg.Lease == 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = 30 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	switch {
	case cfg.Lease < 0:
		return cfg, invalidf("Config.Lease must be positive (or 0 for 30s), got %s", cfg.Lease)
	case cfg.Window < 0:
		return cfg, invalidf("Config.Window must be positive (or 0 for 24h), got %s", cfg.Window)
	case cfg.Retention < 0:
		return cfg, invalidf("Config.Retention must not be negative, got %s", cfg.Retention)
	case cfg.MaxWait < 0:
		return cfg, invalidf("Config.MaxWait must be positive (or 0 for 30s), got %s", cfg.MaxWait)
	}
	return cfg, nil
}

// Ledger runs operations at most once per (scope, key) on top of a Store.
// It is safe for concurrent use.
type Ledger struct {
	store Store
	cfg   Config
	macs  sync.Pool // of *keyMAC, with Config.KeySecret
	beats heartbeats
}

// keyMAC is a reusable HMAC state keyed by Config.KeySecret.
type keyMAC struct {
	h   hash.Hash
	buf []byte
}

// New returns a Ledger over store. A nil cfg means defaults.
func New(store Store, cfg *Config) (*Ledger, error) {
	if store == nil {
		return nil, invalidf("store is nil")
	}
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	l := &Ledger{store: store, cfg: c}
	l.beats.clock = c.Clock
	return l, nil
}

// Clock returns the ledger's clock (Config.Clock).
func (l *Ledger) Clock() Clock { return l.cfg.Clock }

// Lease returns the default lease (Config.Lease).
func (l *Ledger) Lease() time.Duration { return l.cfg.Lease }

// Window returns the default dedup window (Config.Window).
func (l *Ledger) Window() time.Duration { return l.cfg.Window }

// Store returns the ledger's store.
func (l *Ledger) Store() Store { return l.store }

// Close closes the store.
func (l *Ledger) Close() error { return l.store.Close() }

// StoredKey returns the key as the store holds it: the key itself, or its
// digest when Config.KeySecret is set.
func (l *Ledger) StoredKey(key string) string {
	if len(l.cfg.KeySecret) == 0 {
		return key
	}
	m, _ := l.macs.Get().(*keyMAC)
	if m == nil {
		m = &keyMAC{h: hmac.New(sha256.New, l.cfg.KeySecret)}
	}
	m.h.Reset()
	m.buf = append(m.buf[:0], key...)
	m.h.Write(m.buf)
	const prefix = "hmac-sha256:"
	var out [len(prefix) + (sha256.Size*8+5)/6]byte
	copy(out[:], prefix)
	m.buf = m.h.Sum(m.buf[:0])
	base64.RawURLEncoding.Encode(out[len(prefix):], m.buf)
	l.macs.Put(m)
	return string(out[:])
}

// CallOption adjusts one call of Begin or Do.
type CallOption func(*callOptions)

type callOptions struct {
	lease, window, retention, wait time.Duration
}

// WithLease sets the lease of this call.
func WithLease(d time.Duration) CallOption { return func(o *callOptions) { o.lease = d } }

// WithWindow sets the dedup window of this call.
func WithWindow(d time.Duration) CallOption { return func(o *callOptions) { o.window = d } }

// WithRetention sets how long the completed record is kept for lookup.
func WithRetention(d time.Duration) CallOption {
	return func(o *callOptions) { o.retention = d }
}

// WithWait makes Begin and Do wait up to d (capped by Config.MaxWait) for an
// in-flight original to finish, then return its outcome (or take the key
// over if it was released or its lease expired), instead of returning
// ErrInFlight at once. The wait polls the store on the ledger's clock, 10 ms
// after the first look, then twice as long each time up to 250 ms: it
// works on every store.
func WithWait(d time.Duration) CallOption { return func(o *callOptions) { o.wait = d } }

func (l *Ledger) options(opts []CallOption) callOptions {
	o := callOptions{lease: l.cfg.Lease, window: l.cfg.Window, retention: l.cfg.Retention}
	if len(opts) > 0 {
		// An option may keep its argument: only a call with options
		// pays for moving it to the heap.
		p := new(callOptions)
		*p = o
		for _, opt := range opts {
			opt(p)
		}
		o = *p
	}
	o.wait = min(o.wait, l.cfg.MaxWait)
	return o
}

// observe hands ev, of an operation that began at start (Ledger.start),
// to the Observer, with its Duration. It takes ev by value and copies it
// to the heap, and reads the time, only when there is an Observer, so a
// ledger without one pays nothing for events.
func (l *Ledger) observe(ctx context.Context, start time.Time, ev Event) {
	if l.cfg.Observer != nil {
		e := ev
		e.Duration = time.Since(start)
		l.cfg.Observer.Observe(ctx, &e)
	}
}

// start is when an operation starts, for its Event's duration: the zero
// time without an Observer, which would not read it.
func (l *Ledger) start() time.Time {
	if l.cfg.Observer == nil {
		return time.Time{}
	}
	return time.Now()
}

// Claim is the answer of Begin: either a replay of a stored outcome, or
// ownership of the key, which the caller ends with Complete or Release.
type Claim struct {
	mu       sync.Mutex // guards rec: Do's heartbeat extends while fn reads
	l        *Ledger
	scope    string
	key      string // as stored
	raw      string // as the caller gave it, for Events' KeyDigest
	rec      *Record
	replayed bool
	begin    BeginParams // Begin's params share the claim's allocation
	// alive is the first KeepAlive's state, in the claim's allocation;
	// aliveTaken says it is in use (a later KeepAlive allocates its own).
	alive      keepAlive
	aliveTaken atomic.Bool
}

// Replayed reports whether the key had completed: Outcome holds the stored
// result and the caller must not run the operation.
func (c *Claim) Replayed() bool { return c.replayed }

// Outcome returns the stored outcome of a replay, nil for an acquired claim.
func (c *Claim) Outcome() *Outcome {
	if !c.replayed {
		return nil
	}
	return c.rec.Outcome
}

// Token is the fencing token of this ownership. Hand it to side effects
// (a version column, a request header) so that downstream systems can
// refuse a stale owner.
func (c *Claim) Token() int64 { return c.rec.Token }

// Attempt is 1 for the first owner of a key and grows with every takeover
// or release.
func (c *Claim) Attempt() int { return c.rec.Attempts }

// Checkpoint is the recovery point a predecessor saved, nil if none.
func (c *Claim) Checkpoint() *Checkpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec.Checkpoint
}

// Record is a copy of the record as this claim last saw it.
func (c *Claim) Record() Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return *c.rec
}

// LeaseUntil is the end of the current lease by the store's clock.
func (c *Claim) LeaseUntil() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec.LeaseUntil
}

// Complete stores the outcome. It returns ErrLeaseLost if another owner took
// over, ErrCompleted if the key already completed.
func (c *Claim) Complete(ctx context.Context, out Outcome) error {
	start := c.l.start()
	rec, err := c.l.store.Complete(ctx, &CompleteParams{Scope: c.scope, Key: c.key, Token: c.rec.Token, Outcome: out})
	if err == nil {
		c.mu.Lock()
		c.rec.State, c.rec.Completed, c.rec.Expires, c.rec.RetainUntil = rec.State, rec.Completed, rec.Expires, rec.RetainUntil
		c.mu.Unlock()
	}
	if c.l.cfg.Observer != nil {
		ev := Event{Op: OpComplete, Scope: c.scope, Attempt: c.rec.Attempts, Err: err, key: c.raw}
		if err == nil {
			ev.TimeToIdempotence = rec.Completed.Sub(rec.Created)
		}
		c.l.observe(ctx, start, ev)
	}
	if err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	return nil
}

// Release gives the key back: the next Begin acquires it and runs again.
func (c *Claim) Release(ctx context.Context) error {
	start := c.l.start()
	err := c.l.store.Release(ctx, &ReleaseParams{Scope: c.scope, Key: c.key, Token: c.rec.Token})
	c.l.observe(ctx, start, Event{Op: OpRelease, Scope: c.scope, Err: err, key: c.raw})
	if err != nil {
		return fmt.Errorf("release: %w", err)
	}
	return nil
}

// Extend sets the lease to end d from now.
func (c *Claim) Extend(ctx context.Context, d time.Duration) error {
	start := c.l.start()
	rec, err := c.l.store.Extend(ctx, &ExtendParams{Scope: c.scope, Key: c.key, Token: c.rec.Token, Lease: d})
	c.l.observe(ctx, start, Event{Op: OpExtend, Scope: c.scope, Err: err, key: c.raw})
	if err != nil {
		return fmt.Errorf("extend: %w", err)
	}
	// Only the lease moves; a remote store may answer with nothing else.
	c.mu.Lock()
	c.rec.LeaseUntil = rec.LeaseUntil
	c.mu.Unlock()
	return nil
}

// SetCheckpoint saves a recovery point that a successor receives in
// Claim.Checkpoint if this owner dies.
func (c *Claim) SetCheckpoint(ctx context.Context, point string, data []byte) error {
	start := c.l.start()
	err := c.l.store.Checkpoint(ctx, &CheckpointParams{Scope: c.scope, Key: c.key, Token: c.rec.Token, Point: point, Data: data})
	c.l.observe(ctx, start, Event{Op: OpCheckpoint, Scope: c.scope, Err: err, key: c.raw})
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	c.mu.Lock()
	c.rec.Checkpoint = &Checkpoint{Point: point, Data: append([]byte{}, data...)}
	c.mu.Unlock()
	return nil
}

// Begin claims (scope, key) for a request whose meaning is fingerprint.
// It returns a Claim that either owns the key or replays its outcome; an
// *InFlightError (ErrInFlight) when another owner is working on it; an
// error wrapping ErrFingerprintMismatch when the key was used for another
// request.
func (l *Ledger) Begin(ctx context.Context, scope, key, fingerprint string, opts ...CallOption) (*Claim, error) {
	return l.begin(ctx, scope, key, fingerprint, l.options(opts))
}

func (l *Ledger) begin(ctx context.Context, scope, key, fingerprint string, o callOptions) (*Claim, error) {
	if err := ValidateKey(scope, key); err != nil {
		return nil, err
	}
	c := &Claim{l: l, scope: scope, raw: key}
	p := &c.begin
	*p = BeginParams{Scope: scope, Key: l.StoredKey(key), Fingerprint: fingerprint,
		Lease: o.lease, Window: o.window, Retention: o.retention}
	var deadline time.Time
	var pause time.Duration // between polls of an in-flight key
	if o.wait > 0 {
		deadline = l.cfg.Clock.Now().Add(o.wait)
	}
	for {
		start := l.start()
		res, err := l.store.Begin(ctx, p)
		if l.cfg.Observer != nil {
			ev := Event{Op: OpBegin, Scope: scope, Err: err, key: key}
			if err == nil {
				ev.Decision, ev.Takeover = res.Decision, res.Takeover
				if res.Decision == Acquired {
					ev.Attempt = res.Record.Attempts
				}
			}
			l.observe(ctx, start, ev)
		}
		if err != nil {
			return nil, fmt.Errorf("begin: %w", err)
		}
		switch res.Decision {
		case Acquired, Replay:
			c.key, c.rec, c.replayed = p.Key, res.Record, res.Decision == Replay
			return c, nil
		case Mismatch:
			return nil, fmt.Errorf("begin: %w: the key was used with a different request", ErrFingerprintMismatch)
		case InFlight:
			left := time.Duration(0)
			if o.wait > 0 {
				left = deadline.Sub(l.cfg.Clock.Now())
			}
			if left <= 0 {
				e := &InFlightError{RetryAfter: res.RetryAfter}
				if res.Record != nil && res.Record.Attempts == 1 {
					e.Started = res.Record.Created
				}
				return nil, e
			}
			// Poll with backoff: soon after the original at first (most
			// work is short), then every 250 ms; never later than the
			// lease's end, when the key may be taken over.
			pause = min(max(2*pause, 10*time.Millisecond), 250*time.Millisecond)
			if err := l.cfg.Clock.Sleep(ctx, max(min(pause, res.RetryAfter, left), time.Millisecond)); err != nil {
				return nil, fmt.Errorf("begin: waiting for the in-flight original: %w", err)
			}
		default:
			return nil, fmt.Errorf("begin: store answered unknown decision %q", res.Decision)
		}
	}
}

// Result is what Do returns: the outcome, and whether it was replayed.
type Result struct {
	Outcome  Outcome
	Replayed bool
	// Attempt is the attempt number that produced the outcome in this call
	// (0 on a replay).
	Attempt int
}

// outcomeErrorMeta marks an outcome that records a failure.
const outcomeErrorMeta = "idem.error"

// Do runs fn at most once per (scope, key) within the window:
//   - acquired: fn runs with the lease extended every third of it; on
//     success its outcome is stored and returned; on an error marked
//     Retryable (or a context error) the key is released so the next call
//     runs again; on any other error the failure is stored, and this and
//     every duplicate call return an *OutcomeError with its message;
//   - replay: fn does not run, the stored outcome (or failure) is returned;
//   - in flight: *InFlightError, or with WithWait the original's outcome;
//   - mismatch: an error wrapping ErrFingerprintMismatch.
//
// If fn panics, the key is released and the panic goes on. If the lease is
// lost while fn runs (a heartbeat is refused), fn's context is cancelled
// with ErrLeaseLost as its cause and Do returns ErrLeaseLost.
//
// The outcome is recorded with a context that is not cancelled with ctx, so
// a caller that gives up after fn returned does not lose the record.
func (l *Ledger) Do(ctx context.Context, scope, key, fingerprint string, fn func(ctx context.Context, c *Claim) (Outcome, error), opts ...CallOption) (*Result, error) {
	o := l.options(opts)
	claim, err := l.begin(ctx, scope, key, fingerprint, o)
	if err != nil {
		return nil, err
	}
	if claim.Replayed() {
		return outcomeResult(*claim.Outcome(), true, 0)
	}

	workCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopHeartbeat := claim.KeepAlive(ctx, o.lease, func(err error) { cancel(err) })
	finish := context.WithoutCancel(ctx)

	out, fnErr := l.run(workCtx, claim, fn, stopHeartbeat, finish)
	if cause := context.Cause(workCtx); errors.Is(cause, ErrLeaseLost) {
		return nil, fmt.Errorf("do: %w", cause)
	}
	if fnErr != nil {
		if IsRetryable(fnErr) {
			if err := claim.Release(finish); err != nil {
				return nil, errors.Join(fnErr, err)
			}
			return nil, fnErr
		}
		failed := Outcome{Meta: map[string]string{outcomeErrorMeta: fnErr.Error()}}
		if err := claim.Complete(finish, failed); err != nil {
			return nil, errors.Join(fnErr, err)
		}
		return nil, fnErr
	}
	if err := claim.Complete(finish, out); err != nil {
		return nil, err
	}
	return &Result{Outcome: out, Attempt: claim.Attempt()}, nil
}

// run calls fn, stopping the heartbeat when it returns and releasing the key
// if it panics.
func (l *Ledger) run(ctx context.Context, claim *Claim, fn func(context.Context, *Claim) (Outcome, error), stopHeartbeat func(), finish context.Context) (out Outcome, err error) {
	defer func() {
		stopHeartbeat()
		if r := recover(); r != nil {
			_ = claim.Release(finish) // best effort: the lease expires otherwise
			panic(r)
		}
	}()
	return fn(ctx, claim)
}

func outcomeResult(out Outcome, replayed bool, attempt int) (*Result, error) {
	if msg, failed := out.Meta[outcomeErrorMeta]; failed {
		return nil, &OutcomeError{Message: msg}
	}
	return &Result{Outcome: out, Replayed: replayed, Attempt: attempt}, nil
}

// Get returns the record of (scope, key), ErrNotFound if none.
func (l *Ledger) Get(ctx context.Context, scope, key string) (*Record, error) {
	if err := ValidateKey(scope, key); err != nil {
		return nil, err
	}
	return l.store.Get(ctx, &KeyParams{Scope: scope, Key: l.StoredKey(key)})
}

// Delete removes the record of (scope, key), ErrNotFound if none. An owner
// of a deleted key can no longer complete it.
func (l *Ledger) Delete(ctx context.Context, scope, key string) error {
	if err := ValidateKey(scope, key); err != nil {
		return err
	}
	return l.store.Delete(ctx, &KeyParams{Scope: scope, Key: l.StoredKey(key)})
}

// List returns a page of records of a scope, ErrNotImplemented if the store
// cannot list.
func (l *Ledger) List(ctx context.Context, p *ListParams) (*ListResult, error) {
	lister, ok := l.store.(Lister)
	if !ok {
		return nil, fmt.Errorf("list: %w", ErrNotImplemented)
	}
	return lister.List(ctx, p)
}

// Sweep removes records past their retention.
func (l *Ledger) Sweep(ctx context.Context, limit int) (int, error) {
	start := l.start()
	res, err := l.store.Sweep(ctx, &SweepParams{Limit: limit})
	ev := Event{Op: OpSweep, Err: err}
	if err == nil {
		ev.Deleted = res.Deleted
	}
	l.observe(ctx, start, ev)
	if err != nil {
		return 0, fmt.Errorf("sweep: %w", err)
	}
	return res.Deleted, nil
}
