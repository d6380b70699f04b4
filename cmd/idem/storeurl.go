package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/store/pebblestore"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/idemkit/idem/store/redisstore"
)

// defaultStore is where the embedded store lives when no --store is given.
const defaultStore = "file:./idem-data"

// storeURLHelp explains --store for every command that takes it.
const storeURLHelp = `mem:                      in memory, nothing kept after exit
                            file:DIR                  the embedded durable store (Pebble)
                            postgres://USER@HOST/DB   PostgreSQL; ?schema=NAME picks the schema
                                                      (default idem)
                            redis://HOST:PORT/DB      Redis; ?prefix=NAME picks the key prefix
                                                      (default idem)`

// storeUse says what a command opens a store for.
type storeUse int

const (
	// serving: the store is the server's ledger and sweeps itself where it
	// can.
	serving storeUse = iota
	// inspecting: a short look by an operator tool (idem keys); nothing
	// runs in the background.
	inspecting
	// migrating: idem migrate, or serve --migrate: bring the schema up to
	// date first.
	migrating
)

// openStore opens a store named by URL. It returns a description of where
// the data lives for people.
func openStore(ctx context.Context, raw string, use storeUse) (idem.Store, string, error) {
	scheme, rest, ok := strings.Cut(raw, ":")
	if !ok {
		return nil, "", fmt.Errorf("store %q: want mem:, file:DIR, postgres://… or redis://…", raw)
	}
	switch scheme {
	case "mem":
		return memstore.New(nil), "memory (nothing is kept after exit)", nil
	case "file":
		dir := strings.TrimPrefix(rest, "//")
		if dir == "" {
			return nil, "", fmt.Errorf("store %q: file: needs a directory, like file:./idem-data", raw)
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
	case "postgres", "postgresql":
		conn, schema, err := cutParam(raw, "schema")
		if err != nil {
			return nil, "", err
		}
		s, err := pgstore.Open(ctx, conn, &pgstore.Config{Schema: schema, Migrate: use == migrating})
		if err != nil {
			return nil, "", err
		}
		return s, fmt.Sprintf("PostgreSQL schema %q (%s)", s.Schema(), redact(conn)), nil
	case "redis", "rediss":
		conn, prefix, err := cutParam(raw, "prefix")
		if err != nil {
			return nil, "", err
		}
		s, err := redisstore.Open(ctx, conn, &redisstore.Config{Prefix: prefix})
		if err != nil {
			return nil, "", err
		}
		return s, fmt.Sprintf("Redis (%s)", redact(conn)), nil
	}
	return nil, "", fmt.Errorf("store %q: unknown scheme %q (want mem:, file:DIR, postgres://… or redis://…)", raw, scheme)
}

// cutParam removes idem's own query parameter from a driver URL, which the
// driver would otherwise refuse or send to the server.
func cutParam(raw, name string) (conn, value string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("%w: store URL does not parse: %v", idem.ErrInvalid, err)
	}
	q := u.Query()
	value = q.Get(name)
	q.Del(name)
	u.RawQuery = q.Encode()
	return u.String(), value, nil
}

// redact hides a password in a URL printed for people.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "?"
	}
	return u.Redacted()
}
