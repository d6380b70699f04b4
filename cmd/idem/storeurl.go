package main

import (
	"fmt"
	"strings"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/store/pebblestore"
)

// defaultStore is where the embedded store lives when no --store is given.
const defaultStore = "file:./idem-data"

// storeUse says what a command opens a store for.
type storeUse int

const (
	// serving: the store is the server's ledger and sweeps itself.
	serving storeUse = iota
	// inspecting: a short look by an operator tool (idem keys); nothing
	// runs in the background.
	inspecting
)

// openStore opens a store named by URL: mem:, file:PATH. It returns a
// description of where the data lives for people.
func openStore(url string, use storeUse) (idem.Store, string, error) {
	scheme, rest, ok := strings.Cut(url, ":")
	if !ok {
		return nil, "", fmt.Errorf("store %q: want mem: or file:PATH", url)
	}
	switch scheme {
	case "mem":
		return memstore.New(nil), "memory (nothing is kept after exit)", nil
	case "file":
		dir := strings.TrimPrefix(rest, "//")
		if dir == "" {
			return nil, "", fmt.Errorf("store %q: file: needs a directory, like file:./idem-data", url)
		}
		cfg := &pebblestore.Config{}
		if use == inspecting {
			cfg.SweepInterval = -1
		}
		s, err := pebblestore.Open(dir, cfg)
		if err != nil {
			return nil, "", err
		}
		return s, dir, nil
	}
	return nil, "", fmt.Errorf("store %q: unknown scheme %q (want mem: or file:PATH)", url, scheme)
}
