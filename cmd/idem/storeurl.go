package main

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/idemkit/idem"
	"github.com/redis/go-redis/v9"

	// Each registers its URL schemes with idem.OpenStore.
	_ "github.com/idemkit/idem/memstore"
	_ "github.com/idemkit/idem/store/pebblestore"
	_ "github.com/idemkit/idem/store/pgstore"
	_ "github.com/idemkit/idem/store/redisstore"
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

func init() {
	// go-redis logs every failed dial of its pool on stderr; the store's
	// Open already returns the failure, naming the address, and serve
	// prints it once.
	redis.SetLogger(quietRedis{})
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// openStore opens the store --store names. A scheme no store registered
// is told in the terms of the flag's help, not of Go imports (which
// idem.OpenStore's error suggests to library users).
func openStore(ctx context.Context, raw string, cfg *idem.OpenConfig) (idem.Store, error) {
	scheme, _, ok := strings.Cut(raw, ":")
	if !ok || !slices.Contains(idem.StoreSchemes(), strings.ToLower(scheme)) {
		return nil, fmt.Errorf("not a store URL this binary knows: want mem:, file:DIR, postgres://… or redis://… (schemes %s)",
			strings.Join(idem.StoreSchemes(), ", "))
	}
	return idem.OpenStore(ctx, raw, cfg)
}

// describeStore says where a store opened from raw keeps its data, for
// people.
func describeStore(s idem.Store, raw string) string {
	if d, ok := s.(idem.Describer); ok {
		return d.Describe()
	}
	return redactURL(raw)
}

// redactURL is a store URL as it may be printed: without its password.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(a store URL that does not parse)"
	}
	return u.Redacted()
}
