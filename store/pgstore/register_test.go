package pgstore

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
)

// schemaURL is the test database's URL with ?schema=schema, the scheme
// replaced by scheme.
func schemaURL(t *testing.T, scheme, schema string) string {
	t.Helper()
	u, err := url.Parse(servicetest.Postgres.Need(t))
	if err != nil {
		t.Fatal(err)
	}
	u.Scheme = scheme
	q := u.Query()
	q.Set("schema", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func TestOpenByURL(t *testing.T) {
	t.Parallel()
	for _, scheme := range []string{"postgres", "postgresql"} {
		t.Run(scheme, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			schema := freshSchema(t, sharedPool(t))
			raw := schemaURL(t, scheme, schema)

			// A new schema is refused without Migrate, with the way out.
			if _, err := idem.OpenStore(ctx, raw, nil); err == nil || !strings.Contains(err.Error(), "idem serve --migrate") {
				t.Fatalf("OpenStore of an unmigrated schema: %v, want a refusal suggesting idem serve --migrate", err)
			}
			s, err := idem.OpenStore(ctx, raw, &idem.OpenConfig{Migrate: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ps := s.(*Store)
			if ps.Schema() != schema {
				t.Errorf("Schema = %q, want %q (from ?schema=)", ps.Schema(), schema)
			}
			if m := ps.Migration(); m == nil || m.From != 0 || m.To != LatestVersion() {
				t.Errorf("Migration = %+v, want from 0 to %d", m, LatestVersion())
			}
			if d := ps.Describe(); !strings.HasPrefix(d, `PostgreSQL schema "`+schema+`" in database "`) {
				t.Errorf("Describe = %q", d)
			}
			if _, err := s.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: 1e10, Window: 1e10}); err != nil {
				t.Fatal(err)
			}
			// Opened again without Migrate: the schema is current.
			again, err := idem.OpenStore(ctx, raw, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer again.Close()
			if again.(*Store).Migration() != nil {
				t.Error("Migration is set on a store opened without Migrate")
			}
			if _, err := again.Get(ctx, &idem.KeyParams{Scope: "s", Key: "k"}); err != nil {
				t.Errorf("the record is not in the schema the URL names: %v", err)
			}
		})
	}
}

func TestOpenByURLNeverShowsThePassword(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(servicetest.Postgres.Need(t))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("nobody-here", "hunter2-secret")
	u.RawQuery = "sslmode=disable&schema=idem&connect_timeout=5"
	_, err = idem.OpenStore(context.Background(), u.String(), nil)
	if err == nil || strings.Contains(err.Error(), "hunter2-secret") {
		t.Fatalf("OpenStore with a wrong user: %v, want an error without the password", err)
	}
	for _, raw := range []string{"postgres://h/db?schema=a&schema=b", "postgres://h/db?schema=Not-Valid"} {
		if _, err := idem.OpenStore(context.Background(), raw, nil); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("OpenStore(%q) = %v, want ErrInvalid", raw, err)
		}
	}
}
