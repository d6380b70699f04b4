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
)

// Versioned reads the (entity, version) a message carries; ok is false for
// a message the ordering guard lets through unordered. Versions of an
// entity start at 1 and grow by 1.
type Versioned func(m *Message) (entity string, version int64, ok bool)

// Gap is what GuardConfig.OnGap receives: versions Last+1 .. Version-1 of
// Entity never arrived within MaxGap of Since, so Version is applied
// without them (they count as superseded if they come later).
type Gap struct {
	Entity  string
	Last    int64     // the last applied version (0: none)
	Version int64     // the version applied now
	Since   time.Time // when Version was first held back
}

// GuardConfig configures a Guard.
type GuardConfig struct {
	// Scope is the ledger scope of the guard's records. Default
	// "messages/order".
	Scope string
	// Versioned reads a message's entity and version. Required.
	Versioned Versioned
	// MaxGap bounds how long a message after a gap is held back, from the
	// first time it was seen; then the gap is reported and it is applied.
	// Default 30 s.
	MaxGap time.Duration
	// GapRetry is the longest Retry delay of a held-back message, so that
	// it comes back soon after its gap fills. Default 1 s.
	GapRetry time.Duration
	// OnGap, if set, is told of a gap given up on, before the message
	// after it is applied; an error holds the message back (Retry).
	OnGap func(ctx context.Context, m *Message, gap Gap) error
	// Lease is how long the guard holds an entity while next runs (kept
	// alive meanwhile). Default: the ledger's.
	Lease time.Duration
	// Window is how long the guard remembers an applied version, and so
	// how late a stale duplicate is still recognised. Default: the
	// ledger's window.
	Window time.Duration
}

// Guard applies messages that carry (entity, version) in version order. It
// is safe for concurrent use. Its state lives in the ledger: one completed
// record per applied (or skipped) version, "v:" entity "#" version, and one
// per held-back version recording when it was first seen; a lock record
// per entity ("lock:" entity) serialises the messages of one entity across
// processes. A Guard built over the same ledger after a restart continues
// where the last one stopped.
type Guard struct {
	ledger *idem.Ledger
	cfg    GuardConfig
	opts   []idem.CallOption
}

// NewGuard returns an ordering guard over ledger.
func NewGuard(ledger *idem.Ledger, cfg *GuardConfig) (*Guard, error) {
	if ledger == nil {
		return nil, invalidf("messaging: ledger is nil")
	}
	if cfg == nil || cfg.Versioned == nil {
		return nil, invalidf("messaging: GuardConfig.Versioned is required")
	}
	c := *cfg
	if c.Scope == "" {
		c.Scope = "messages/order"
	}
	if c.MaxGap == 0 {
		c.MaxGap = 30 * time.Second
	}
	if c.GapRetry == 0 {
		c.GapRetry = time.Second
	}
	if c.Lease == 0 {
		c.Lease = ledger.Lease()
	}
	if c.Window == 0 {
		c.Window = ledger.Window()
	}
	switch {
	case c.MaxGap < 0, c.GapRetry < 0, c.Lease < 0, c.Window < 0:
		return nil, invalidf("messaging: GuardConfig durations must be positive (or 0 for the default)")
	}
	if err := idem.ValidateKey(c.Scope, "k"); err != nil {
		return nil, fmt.Errorf("messaging: GuardConfig.Scope: %w", err)
	}
	return &Guard{ledger: ledger, cfg: c, opts: []idem.CallOption{idem.WithLease(c.Lease), idem.WithWindow(c.Window)}}, nil
}

// guardKey names one of an entity's records; an entity too long for the
// key is replaced by its digest.
func guardKey(prefix, entity string, v int64) string {
	s := ""
	if v > 0 {
		s = "#" + strconv.FormatInt(v, 10)
	}
	if len(prefix)+len(entity)+len(s) > idem.MaxKeyLen {
		sum := sha256.Sum256([]byte(entity))
		entity = "sha256:" + hex.EncodeToString(sum[:])
	}
	return prefix + entity + s
}

// Handle applies m in version order, with next (usually Consumer.Handle)
// doing the work:
//   - m carries no version (Versioned says !ok): next(ctx, m);
//   - another message of the entity is being handled: Retry after its
//     lease at most;
//   - version <= the last applied (or skipped): AckSuperseded;
//   - version == last+1: next(ctx, m), and on Ack or AckDuplicate the
//     version is recorded as applied;
//   - version > last+1, a gap: Retry with Err wrapping ErrGap, until the
//     gap fills or MaxGap passes since it was first seen; then OnGap is
//     told, the missing versions are recorded as skipped and m goes to
//     next as above.
//
// A version below 1 is dead-lettered with an error wrapping
// idem.ErrInvalid. Finding the last applied version after a gap reads one
// record per missing version.
func (g *Guard) Handle(ctx context.Context, m *Message, next func(ctx context.Context, m *Message) Decision) Decision {
	if m == nil {
		return Decision{Action: DeadLetter, Err: invalidf("messaging: nil message")}
	}
	entity, v, ok := g.cfg.Versioned(m)
	if !ok {
		return next(ctx, m)
	}
	key := entity + "#" + strconv.FormatInt(v, 10)
	if v < 1 || entity == "" {
		return Decision{Action: DeadLetter, Key: key, Err: invalidf("messaging: message %q has entity %q version %d: want a name and a version from 1", m.ID, entity, v)}
	}
	finish := context.WithoutCancel(ctx)
	lock, err := g.ledger.Begin(ctx, g.cfg.Scope, guardKey("lock:", entity, 0), "", g.opts...)
	var inFlight *idem.InFlightError
	switch {
	case errors.As(err, &inFlight):
		return Decision{Action: Retry, Delay: max(inFlight.RetryAfter, 0), Key: key, Err: err}
	case err != nil:
		return Decision{Action: Retry, Delay: g.cfg.GapRetry, Key: key, Err: err}
	case lock.Replayed():
		// Nobody completes a lock; a record that says otherwise is not ours.
		return Decision{Action: Retry, Delay: g.cfg.GapRetry, Key: key, Err: fmt.Errorf("messaging: lock of entity %q is a completed record", entity)}
	}
	defer func() { _ = lock.Release(finish) }() // best effort: the lease expires otherwise

	applied, err := g.applied(ctx, entity, v)
	switch {
	case err != nil:
		return Decision{Action: Retry, Delay: g.cfg.GapRetry, Key: key, Err: err}
	case applied:
		return Decision{Action: AckSuperseded, Key: key}
	}
	last := v - 1
	if v > 1 {
		prev, err := g.applied(ctx, entity, v-1)
		if err != nil {
			return Decision{Action: Retry, Delay: g.cfg.GapRetry, Key: key, Err: err}
		}
		if !prev {
			since, err := g.firstSeen(ctx, entity, v)
			if err != nil {
				return Decision{Action: Retry, Delay: g.cfg.GapRetry, Key: key, Err: err}
			}
			if left := g.cfg.MaxGap - g.ledger.Clock().Now().Sub(since); left > 0 {
				return Decision{Action: Retry, Delay: min(left, g.cfg.GapRetry), Key: key,
					Err: fmt.Errorf("%w: entity %q version %d waits for version %d", ErrGap, entity, v, v-1)}
			}
			if last, err = g.lastApplied(ctx, entity, v-2); err != nil {
				return Decision{Action: Retry, Delay: g.cfg.GapRetry, Key: key, Err: err}
			}
			if g.cfg.OnGap != nil {
				if err := g.cfg.OnGap(ctx, m, Gap{Entity: entity, Last: last, Version: v, Since: since}); err != nil {
					return Decision{Action: Retry, Delay: g.cfg.GapRetry, Key: key, Err: fmt.Errorf("messaging: gap hook: %w", err)}
				}
			}
		}
	}

	stop := lock.KeepAlive(ctx, g.cfg.Lease, func(error) {})
	d := next(ctx, m)
	stop()
	if d.Action != Ack && d.Action != AckDuplicate {
		return d
	}
	for s := last + 1; s < v; s++ {
		if err := g.mark(finish, entity, s, "skipped"); err != nil {
			return Decision{Action: Retry, Delay: g.cfg.GapRetry, Key: d.Key, Err: err}
		}
	}
	if err := g.mark(finish, entity, v, "applied"); err != nil {
		// Handled, not recorded as applied: the redelivery is a duplicate
		// for next, and records it then.
		return Decision{Action: Retry, Delay: g.cfg.GapRetry, Key: d.Key, Err: err}
	}
	return d
}

// applied reports whether version v of entity was applied or skipped.
func (g *Guard) applied(ctx context.Context, entity string, v int64) (bool, error) {
	rec, err := g.ledger.Get(ctx, g.cfg.Scope, guardKey("v:", entity, v))
	switch {
	case errors.Is(err, idem.ErrNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("messaging: ordering state of %q: %w", entity, err)
	}
	return rec.State == idem.StateCompleted && g.ledger.Clock().Now().Before(rec.Expires), nil
}

// lastApplied is the highest applied version of entity at most from, 0 if
// none.
func (g *Guard) lastApplied(ctx context.Context, entity string, from int64) (int64, error) {
	for v := from; v >= 1; v-- {
		ok, err := g.applied(ctx, entity, v)
		if err != nil || ok {
			return v, err
		}
	}
	return 0, nil
}

// mark records version v of entity as applied or skipped.
func (g *Guard) mark(ctx context.Context, entity string, v int64, how string) error {
	c, err := g.ledger.Begin(ctx, g.cfg.Scope, guardKey("v:", entity, v), "", g.opts...)
	if err != nil {
		return fmt.Errorf("messaging: recording %q version %d: %w", entity, v, err)
	}
	if c.Replayed() {
		return nil
	}
	if err := c.Complete(ctx, idem.Outcome{Meta: map[string]string{"version": how}}); err != nil {
		return fmt.Errorf("messaging: recording %q version %d: %w", entity, v, err)
	}
	return nil
}

// firstSeen is when version v of entity was first held back behind a gap,
// recorded on first sight.
func (g *Guard) firstSeen(ctx context.Context, entity string, v int64) (time.Time, error) {
	c, err := g.ledger.Begin(ctx, g.cfg.Scope, guardKey("gap:", entity, v), "", g.opts...)
	if err != nil {
		return time.Time{}, fmt.Errorf("messaging: gap of %q version %d: %w", entity, v, err)
	}
	if c.Replayed() {
		at, err := time.Parse(time.RFC3339Nano, c.Outcome().Meta["since"])
		if err != nil {
			return time.Time{}, fmt.Errorf("messaging: gap of %q version %d: %w", entity, v, err)
		}
		return at, nil
	}
	now := g.ledger.Clock().Now()
	if err := c.Complete(ctx, idem.Outcome{Meta: map[string]string{"since": now.UTC().Format(time.RFC3339Nano)}}); err != nil {
		return time.Time{}, fmt.Errorf("messaging: gap of %q version %d: %w", entity, v, err)
	}
	return now, nil
}
