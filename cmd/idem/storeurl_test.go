package main

import (
	"context"
	"fmt"
	neturl "net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/servicetest"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

func TestOpenStoreRefusesBadURLs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, raw := range []string{"", "nothing", "file:", "ftp://x", "postgres://%zz", "redis://%zz"} {
		s, _, err := openStore(ctx, raw, inspecting)
		if err == nil {
			s.Close()
			t.Errorf("openStore(%q) = nil error, want a refusal", raw)
		}
	}
}

func TestCutParamKeepsTheDriverURL(t *testing.T) {
	t.Parallel()
	conn, schema, err := cutParam("postgres://u:secret@h:5432/db?sslmode=disable&schema=billing", "schema")
	if err != nil || schema != "billing" || conn != "postgres://u:secret@h:5432/db?sslmode=disable" {
		t.Fatalf("cutParam = %q %q %v", conn, schema, err)
	}
	if got := redact(conn); strings.Contains(got, "secret") {
		t.Fatalf("redact(%q) = %q still shows the password", conn, got)
	}
}

// TestServeOnSharedStores runs idem serve on PostgreSQL and on Redis, does
// a begin/complete, restarts the server, and finds the outcome replayed: the
// ledger lives in the service, not in the process.
func TestServeOnSharedStores(t *testing.T) {
	t.Parallel()
	suffix := fmt.Sprintf("%d", time.Now().UnixNano())
	for name, store := range map[string]func(t *testing.T) string{
		"postgres": func(t *testing.T) string { return pgSchemaURL(t, "idem_serve_"+suffix) },
		"redis": func(t *testing.T) string {
			url := servicetest.Redis.Need(t)
			prefix := "idem-serve-" + suffix
			t.Cleanup(func() { dropRedisPrefix(t, url, prefix) })
			return withParam(t, url, "prefix", prefix)
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			url := store(t)
			dir := t.TempDir()
			tokens := writeTokens(t, dir)
			args := []string{"--listen", "127.0.0.1:0", "--tokens", tokens, "--store", url, "--migrate"}

			p := startServe(t, dir, args...)
			c := newClient(p.addr, "billing-0123456789")
			if status, err := c.cycle("billing", "order-1", []byte("charged once")); err != nil || status != 200 {
				t.Fatalf("cycle: status %d, %v", status, err)
			}
			if code := p.stop(t, syscall.SIGTERM); code != 0 {
				t.Fatalf("exit %d after SIGTERM; stderr:\n%s", code, p.stderr)
			}

			p = startServe(t, dir, args...)
			c = newClient(p.addr, "billing-0123456789")
			var b beginAnswer
			status, err := c.post("/v1/begin", beginBody{Scope: "billing", Key: "order-1", Fingerprint: "f"}, &b)
			if err != nil || status != 200 || b.Decision != "replay" || b.Outcome == nil || string(b.Outcome.Data) != "charged once" {
				t.Fatalf("after restart: status %d, %+v, %v; want the replay", status, b, err)
			}

			// The records are in the service: idem keys reads them directly.
			out, errOut, code := runIdem(t, dir, "keys", "show", "order-1", "--store", url, "--scope", "billing", "--json")
			if code != 0 || !strings.Contains(out, `"state":"completed"`) {
				t.Fatalf("keys show: exit %d\n%s\n%s", code, out, errOut)
			}
		})
	}
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	url := pgSchemaURL(t, fmt.Sprintf("idem_migrate_%d", time.Now().UnixNano()))
	dir := t.TempDir()
	for range 2 { // a second run changes nothing and still succeeds
		out, errOut, code := runIdem(t, dir, "migrate", "--store", url)
		if code != 0 || !strings.Contains(out, "schema version") {
			t.Fatalf("migrate: exit %d\n%s\n%s", code, out, errOut)
		}
	}
	if _, _, code := runIdem(t, dir, "migrate"); code != 2 {
		t.Fatalf("migrate without --store: exit %d, want 2", code)
	}
	out, _, code := runIdem(t, dir, "migrate", "--store", "file:./x")
	if code != 0 || !strings.Contains(out, "nothing to do") {
		t.Fatalf("migrate on file: exit %d %q, want a no-op", code, out)
	}
	// A server that has not migrated refuses to start rather than guess.
	s, _, err := openStore(context.Background(), pgSchemaURL(t, "idem_never_migrated"), serving)
	if err == nil {
		s.Close()
		t.Fatal("opened an unmigrated schema without --migrate")
	}
}

// pgSchemaURL returns the test database's URL naming schema, which is
// dropped when the test ends.
func pgSchemaURL(t *testing.T, schema string) string {
	t.Helper()
	url := servicetest.Postgres.Need(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return withParam(t, url, "schema", schema)
}

func dropRedisPrefix(t *testing.T, url, prefix string) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Error(err)
		return
	}
	c := redis.NewClient(opts)
	defer c.Close()
	ctx := context.Background()
	iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	for iter.Next(ctx) {
		c.Del(ctx, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Errorf("drop redis prefix %s: %v", prefix, err)
	}
}

func withParam(t *testing.T, raw, name, value string) string {
	t.Helper()
	u, err := neturl.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set(name, value)
	u.RawQuery = q.Encode()
	return u.String()
}
