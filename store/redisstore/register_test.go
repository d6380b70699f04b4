package redisstore

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
)

func TestOpenByURL(t *testing.T) {
	t.Parallel()
	b := setup(t, nil) // for its cleanup of the prefix
	u, err := url.Parse(servicetest.Redis.Need(t))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("prefix", b.prefix)
	u.RawQuery = q.Encode()
	ctx := context.Background()
	s, err := idem.OpenStore(ctx, u.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rs := s.(*Store)
	if want := `Redis prefix "` + b.prefix + `" at ` + u.Host + ` db `; !strings.HasPrefix(rs.Describe(), want) {
		t.Errorf("Describe = %q, want it to start %q", rs.Describe(), want)
	}
	if _, err := s.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: 1e10, Window: 1e10}); err != nil {
		t.Fatal(err)
	}
	// The record is under the URL's prefix: the bundle's store sees it.
	if _, err := b.store.Get(ctx, &idem.KeyParams{Scope: "s", Key: "k"}); err != nil {
		t.Errorf("the record is not under prefix %s: %v", b.prefix, err)
	}
}

func TestOpenByURLRefuses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, raw := range []string{"redis://h/0?prefix=a&prefix=b", "redis://h/0?prefix=%7Bx%7D", "rediss://h/notanumber"} {
		if s, err := idem.OpenStore(ctx, raw, nil); !errors.Is(err, idem.ErrInvalid) {
			if s != nil {
				s.Close()
			}
			t.Errorf("OpenStore(%q) = %v, want ErrInvalid", raw, err)
		}
	}
	// Nothing listens on port 1: one error naming the address, not a hang.
	_, err := idem.OpenStore(ctx, "redis://:hunter2-secret@127.0.0.1:1/0?dial_timeout=1s", nil)
	if !errors.Is(err, idem.ErrUnavailable) || !strings.Contains(err.Error(), "127.0.0.1:1") || strings.Contains(err.Error(), "hunter2-secret") {
		t.Errorf("OpenStore of a dead address: %v, want ErrUnavailable naming 127.0.0.1:1 without the password", err)
	}
}
