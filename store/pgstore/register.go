package pgstore

import (
	"context"
	"fmt"
	"net/url"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/storeurl"
)

// Importing pgstore makes postgres:// and postgresql:// URLs open a Store
// through idem.OpenStore. The query parameter schema names the schema
// (default DefaultSchema); every other parameter goes to pgx (sslmode,
// pool_max_conns, ...). idem.OpenConfig.Migrate is Config.Migrate.
func init() {
	idem.RegisterStore("postgres", openURL)
	idem.RegisterStore("postgresql", openURL)
}

func openURL(ctx context.Context, u *url.URL, cfg *idem.OpenConfig) (idem.Store, error) {
	conn, schema, err := storeurl.CutParam(u, "schema")
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	if schema != "" { // refused before connecting, not after
		if err := validSchema(schema); err != nil {
			return nil, err
		}
	}
	return Open(ctx, conn.String(), &Config{Schema: schema, Migrate: cfg.Migrate})
}

// Describe implements idem.Describer: the schema, database, server and user
// (never the password).
func (s *Store) Describe() string {
	cc := s.pool.Config().ConnConfig
	return fmt.Sprintf("PostgreSQL schema %q in database %q at %s:%d as %s", s.schema, cc.Database, cc.Host, cc.Port, cc.User)
}
