package pebblestore

import (
	"errors"

	"github.com/idemkit/idem"
)

// ErrLocked: the directory is held by another process (a running idem
// serve).
var ErrLocked = errors.New("pebblestore: directory is in use by another process")

// Config configures a Store. A nil *Config means defaults.
type Config struct {
	// Clock judges leases and windows. Default: idem.SystemClock.
	Clock idem.Clock
}

// Store is the embedded idem.Store. (Stub: being written.)
type Store struct{ idem.Store }

// Open opens (creating if needed) the store in dir.
func Open(dir string, cfg *Config) (*Store, error) {
	return nil, errors.New("pebblestore: not yet implemented")
}
