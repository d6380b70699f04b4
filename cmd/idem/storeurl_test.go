package main

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

func TestOpenStoreRefusesBadURLs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, raw := range []string{"", "nothing", "file:", "file:./x?y", "mem:x", "ftp://x", "postgres://%zz",
		"redis://%zz", "postgres://h/db?schema=a&schema=b", "redis://h/0?prefix=a&prefix=b"} {
		s, err := idem.OpenStore(ctx, raw, &idem.OpenConfig{Inspect: true})
		if err == nil {
			s.Close()
			t.Errorf("OpenStore(%q) = nil error, want a refusal", raw)
		} else if !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("OpenStore(%q) = %v, want ErrInvalid", raw, err)
		}
	}
}

// TestStoreSchemes: the binary can open every store it documents.
func TestStoreSchemes(t *testing.T) {
	t.Parallel()
	if got, want := strings.Join(idem.StoreSchemes(), " "), "file mem postgres postgresql redis rediss"; got != want {
		t.Fatalf("StoreSchemes = %s, want %s", got, want)
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		"postgres://u:secret@h:5432/db?schema=billing": "postgres://u:xxxxx@h:5432/db?schema=billing",
		"file:./idem-data":          "file:./idem-data",
		"postgres://u:secret@h/%zz": "(a store URL that does not parse)",
	} {
		if got := redactURL(raw); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", raw, got, want)
		}
	}
}

// TestServeOnSharedStores runs idem serve on PostgreSQL and on Redis, does
// a begin/complete, restarts the server, and finds the outcome replayed: the
// ledger lives in the service, not in the process.
func TestServeOnSharedStores(t *testing.T) {
	t.Parallel()
	suffix := fmt.Sprintf("%d", time.Now().UnixNano())
	// Each startup line names where in the service the ledger is.
	where := map[string]string{
		"postgres": `data in PostgreSQL schema "idem_serve_` + suffix + `" in database "`,
		"redis":    `data in Redis prefix "idem-serve-` + suffix + `" at `,
	}
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
			if line := p.next(t); !strings.Contains(line, where[name]) {
				t.Errorf("startup line %q does not say %q", line, where[name])
			}
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

// TestServeUnreachableRedis: a Redis that does not answer is one line on
// stderr naming its address (not the driver's pool logs), and exit 1.
func TestServeUnreachableRedis(t *testing.T) {
	t.Parallel()
	out, errOut, code := runIdem(t, t.TempDir(), "serve", "--listen", "127.0.0.1:0", "--store", "redis://:hunter2@127.0.0.1:1/0")
	want := "idem serve: --store redis://:xxxxx@127.0.0.1:1/0: redisstore: connect to 127.0.0.1:1: "
	if code != 1 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, want) {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 1 and one line starting %q", code, out, errOut, want)
	}
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	url := pgSchemaURL(t, fmt.Sprintf("idem_migrate_%d", time.Now().UnixNano()))
	dir := t.TempDir()
	for i, want := range []string{ // a second run changes nothing and still succeeds
		fmt.Sprintf(": applied %d migration", pgstore.LatestVersion()),
		fmt.Sprintf(": schema already at v%d, nothing applied\n", pgstore.LatestVersion()),
	} {
		out, errOut, code := runIdem(t, dir, "migrate", "--store", url)
		if code != 0 || !strings.Contains(out, want) || !strings.Contains(out, `PostgreSQL schema "idem_migrate_`) {
			t.Fatalf("migrate %d: exit %d\n%s\n%s\nwant %q", i+1, code, out, errOut, want)
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
	_, errOut, code := runIdem(t, dir, "serve", "--listen", "127.0.0.1:0", "--store", pgSchemaURL(t, "idem_never_migrated"))
	if code != 1 || !strings.Contains(errOut, "idem serve --migrate") {
		t.Fatalf("serve on an unmigrated schema: exit %d, stderr %q; want 1, suggesting idem serve --migrate", code, errOut)
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
