package watermill

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/idemkit/idem"
)

// Repository is Watermill's middleware.ExpiringKeyRepository on an
// idem.Ledger: the keys a Deduplicator checks are kept in the ledger's
// store (memstore, pebblestore, pgstore, redisstore...), shared by every
// process that uses the same store and scope, and surviving restarts.
// Make one with KeyRepository.
type Repository struct {
	ledger *idem.Ledger
	scope  string
	ttl    time.Duration
}

var _ middleware.ExpiringKeyRepository = (*Repository)(nil)

// KeyRepository returns a Watermill ExpiringKeyRepository that records the
// keys in ledger under scope for ttl, to replace
// middleware.NewMapExpiringKeyRepository in a middleware.Deduplicator
// (same results, one line):
//
//	repo, err := middleware.NewMapExpiringKeyRepository(time.Minute)   // before
//	repo, err := idemwatermill.KeyRepository(ledger, "dedup", 24*time.Hour) // after
//
// It keeps the Deduplicator's semantics, where a key is recorded before
// the handler runs and never removed when it fails, so a failed message's
// redelivery is dropped as a duplicate; Middleware records after success
// instead. An invalid scope or a ttl that is not positive is an error
// wrapping idem.ErrInvalid.
func KeyRepository(ledger *idem.Ledger, scope string, ttl time.Duration) (*Repository, error) {
	switch {
	case ledger == nil:
		return nil, fmt.Errorf("%w: idem watermill: ledger is nil", idem.ErrInvalid)
	case ttl <= 0:
		return nil, fmt.Errorf("%w: idem watermill: ttl must be positive, got %s", idem.ErrInvalid, ttl)
	}
	if err := idem.ValidateKey(scope, "k"); err != nil {
		return nil, fmt.Errorf("idem watermill: scope: %w", err)
	}
	return &Repository{ledger: ledger, scope: scope, ttl: ttl}, nil
}

// IsDuplicate reports whether key was checked within the last ttl, and
// records it if not, as Watermill's repositories do: the first call with a
// key is false, every later one true until ttl has passed since the first.
// A call concurrent with the first is true too. Keys that are not valid
// UTF-8 (Watermill's hashers return raw digest bytes) or that are longer
// than idem.MaxKeyLen are stored as "sha256:" and their hex SHA-256. An
// empty key, or a store that does not answer, is an error (the
// Deduplicator's handler call returns it and the router nacks).
func (r *Repository) IsDuplicate(ctx context.Context, key string) (bool, error) {
	if key == "" {
		return false, fmt.Errorf("%w: idem watermill: empty dedup key", idem.ErrInvalid)
	}
	claim, err := r.ledger.Begin(ctx, r.scope, StoredKey(key), "", idem.WithWindow(r.ttl))
	var inFlight *idem.InFlightError
	switch {
	case errors.As(err, &inFlight):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("idem watermill: checking key: %w", err)
	case claim.Replayed():
		return true, nil
	}
	if err := claim.Complete(context.WithoutCancel(ctx), idem.Outcome{Meta: map[string]string{"watermill": "seen"}}); err != nil {
		return false, fmt.Errorf("idem watermill: recording key: %w", err)
	}
	return false, nil
}

// StoredKey is the ledger key under which Repository keeps a Watermill
// dedup key: the key itself when it is valid UTF-8 of at most
// idem.MaxKeyLen bytes, else "sha256:" and its hex SHA-256.
func StoredKey(key string) string {
	if idem.ValidateKey("s", key) == nil {
		return key
	}
	sum := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(sum[:])
}
