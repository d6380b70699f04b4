package redisstore

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/storeurl"
	"github.com/redis/go-redis/v9"
)

// Importing redisstore makes redis:// and rediss:// (TLS) URLs open a Store
// through idem.OpenStore. The query parameter prefix sets Config.Prefix
// (default DefaultPrefix); every other parameter goes to redis.ParseURL
// (dial_timeout, pool_size, ...).
func init() {
	idem.RegisterStore("redis", openURL)
	idem.RegisterStore("rediss", openURL)
}

func openURL(ctx context.Context, u *url.URL, _ *idem.OpenConfig) (idem.Store, error) {
	conn, prefix, err := storeurl.CutParam(u, "prefix")
	if err != nil {
		return nil, fmt.Errorf("redisstore: %w", err)
	}
	return Open(ctx, conn.String(), &Config{Prefix: prefix})
}

// Describe implements idem.Describer: the key prefix, the server and the
// database (never the password).
func (s *Store) Describe() string {
	where := "?"
	switch c := s.client.(type) {
	case *redis.Client:
		o := c.Options()
		where = fmt.Sprintf("%s db %d", o.Addr, o.DB)
	case *redis.ClusterClient:
		where = "cluster " + strings.Join(c.Options().Addrs, ",")
	case *redis.Ring:
		where = "ring"
	}
	return fmt.Sprintf("Redis prefix %q at %s", s.cfg.Prefix, where)
}
