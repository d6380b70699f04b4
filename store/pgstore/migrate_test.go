package pgstore

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/jackc/pgx/v5"
)

func TestMigrateIdempotent(t *testing.T) {
	t.Parallel()
	pool := sharedPool(t)
	schema := freshSchema(t, pool)
	ctx := context.Background()
	for i := range 3 {
		res, err := Migrate(ctx, pool, schema)
		if err != nil {
			t.Fatal(err)
		}
		want := MigrateResult{From: LatestVersion(), To: LatestVersion()} // nothing applied again
		if i == 0 {
			want.From = 0
			want.Migrations = []AppliedMigration{{1, "0001_records"}, {2, "0002_workflow"}, {3, "0003_messaging"}}
		}
		if !reflect.DeepEqual(*res, want) {
			t.Errorf("Migrate %d = %+v, want %+v", i+1, *res, want)
		}
	}
	rows, err := pool.Query(ctx, `SELECT version, name FROM `+pgx.Identifier{schema}.Sanitize()+`.migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var v int
		var name string
		if err := rows.Scan(&v, &name); err != nil {
			t.Fatal(err)
		}
		got = append(got, name)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if strings.Join(got, ",") != "0001_records,0002_workflow,0003_messaging" || LatestVersion() != 3 {
		t.Errorf("migrations table after 3 Migrates: %v (latest %d), want [0001_records 0002_workflow 0003_messaging] once each", got, LatestVersion())
	}
}

func TestMigrateConcurrent(t *testing.T) {
	t.Parallel()
	pool := sharedPool(t)
	schema := freshSchema(t, pool)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	results := make([]*MigrateResult, len(errs))
	gate := make(chan struct{})
	for i := range errs {
		wg.Go(func() {
			<-gate
			results[i], errs[i] = Migrate(context.Background(), pool, schema)
		})
	}
	close(gate)
	wg.Wait()
	applied := 0
	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate %d of %d at once: %v", i, len(errs), err)
			continue
		}
		applied += results[i].Applied()
	}
	if applied != LatestVersion() {
		t.Errorf("%d Migrates at once applied %d migrations in all, want each of %d once", len(errs), applied, LatestVersion())
	}
	if v, err := schemaVersion(context.Background(), pool, schema); err != nil || v != LatestVersion() {
		t.Errorf("version after concurrent Migrates: %d, %v; want %d", v, err, LatestVersion())
	}
}

func TestNewRefusesAnUnmigratedSchema(t *testing.T) {
	t.Parallel()
	pool := sharedPool(t)
	schema := freshSchema(t, pool)
	_, err := New(pool, &Config{Schema: schema})
	if err == nil || !strings.Contains(err.Error(), "idem migrate") || !strings.Contains(err.Error(), "idem serve --migrate") {
		t.Fatalf("New on an unmigrated schema: %v, want an error that says to run idem migrate or idem serve --migrate", err)
	}
	ctx := context.Background()
	if _, err := Migrate(ctx, pool, schema); err != nil {
		t.Fatal(err)
	}
	if _, err := New(pool, &Config{Schema: schema}); err != nil {
		t.Fatalf("New after Migrate: %v", err)
	}
	// A schema migrated by a newer build is refused, by both.
	if _, err := pool.Exec(ctx, `INSERT INTO `+pgx.Identifier{schema}.Sanitize()+`.migrations (version, name) VALUES (999, 'future')`); err != nil {
		t.Fatal(err)
	}
	if _, err := Migrate(ctx, pool, schema); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Migrate of a newer schema: %v, want a refusal", err)
	}
	if _, err := New(pool, &Config{Schema: schema}); err == nil {
		t.Error("New on a newer schema: no error")
	}
}

func TestSchemaNames(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"Idem", "1x", "a-b", `x"; DROP TABLE y; --`, "pg_catalog", strings.Repeat("a", 64), "é"} {
		if _, err := New(nil, &Config{Schema: bad}); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("schema %q: %v, want ErrInvalid", bad, err)
		}
		if err := validSchema(bad); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("validSchema(%q): %v, want ErrInvalid", bad, err)
		}
	}
	for _, good := range []string{"idem", "_x", "tenant_42", strings.Repeat("a", 63)} {
		if err := validSchema(good); err != nil {
			t.Errorf("validSchema(%q): %v", good, err)
		}
	}
}

func TestSchemaIsolation(t *testing.T) {
	t.Parallel()
	a, b := newStore(t), newStore(t)
	ctx := context.Background()
	p := &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "fa", Lease: time.Minute, Window: time.Hour}
	ra, err := a.Begin(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: ra.Record.Token, Outcome: idem.Outcome{Data: []byte("a")}}); err != nil {
		t.Fatal(err)
	}
	q := *p
	q.Fingerprint = "fb"
	rb, err := b.Begin(ctx, &q)
	if err != nil || rb.Decision != idem.Acquired {
		t.Fatalf("the same key in another schema: %v %v, want acquired", rb, err)
	}
	if n, err := b.Size(ctx); err != nil || n != 1 {
		t.Errorf("Size of b: %d %v, want 1", n, err)
	}
	if err := b.Delete(ctx, &idem.KeyParams{Scope: "s", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Get(ctx, &idem.KeyParams{Scope: "s", Key: "k"}); err != nil || got.State != idem.StateCompleted {
		t.Errorf("a after a Delete in b: %+v %v, want its completed record", got, err)
	}
}

func TestMigrationNames(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"1_x.sql", "0000_x.sql", "0001_X.sql", "0001_x.txt", "0001x.sql"} {
		if _, err := parseMigrationName(bad); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("parseMigrationName(%q): %v, want ErrInvalid", bad, err)
		}
	}
	if m, err := parseMigrationName("0012_add_index.sql"); err != nil || m.version != 12 || m.name != "0012_add_index" {
		t.Errorf("parseMigrationName: %+v %v", m, err)
	}
}

func FuzzMigrationName(f *testing.F) {
	for _, s := range []string{"0001_records.sql", "x", "9999_a.sql", "0001_.sql"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		m, err := parseMigrationName(name)
		if err != nil {
			if !errors.Is(err, idem.ErrInvalid) {
				t.Fatalf("%q: %v does not wrap ErrInvalid", name, err)
			}
			return
		}
		if m.version < 1 || m.version > 9999 || m.name+".sql" != name {
			t.Fatalf("%q: accepted as %+v", name, m)
		}
	})
}

func FuzzSchemaName(f *testing.F) {
	for _, s := range []string{"idem", "Idem", `a"b`, "pg_x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, schema string) {
		err := validSchema(schema)
		if err != nil {
			if !errors.Is(err, idem.ErrInvalid) {
				t.Fatalf("%q: %v does not wrap ErrInvalid", schema, err)
			}
			return
		}
		// An accepted name needs no quoting: it cannot change the SQL.
		if q := (pgx.Identifier{schema}).Sanitize(); q != `"`+schema+`"` {
			t.Fatalf("%q accepted but quotes as %s", schema, q)
		}
		for _, r := range schema {
			if !(r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9')) {
				t.Fatalf("%q accepted with %q", schema, r)
			}
		}
	})
}

func FuzzDecodeMeta(f *testing.F) {
	for _, s := range []string{`{"status":"200"}`, `{"a":1}`, `null`, `[`, `{"\u0000":"x"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = decodeMeta(b) // never panics; unreadable meta is dropped
	})
}

func TestMigrateURL(t *testing.T) {
	t.Parallel()
	url := servicetest.Postgres.Need(t)
	pool := sharedPool(t)
	schema := freshSchema(t, pool)
	ctx := context.Background()
	if _, err := MigrateURL(ctx, url, schema); err != nil {
		t.Fatal(err)
	}
	if _, err := New(pool, &Config{Schema: schema}); err != nil {
		t.Errorf("New after MigrateURL: %v", err)
	}
	if _, err := MigrateURL(ctx, "postgres://127.0.0.1:1/x?connect_timeout=5", schema); !errors.Is(err, ErrUnavailable) {
		t.Errorf("MigrateURL of a dead address: %v, want ErrUnavailable", err)
	}
	if _, err := MigrateURL(ctx, "postgres://h:port/x", schema); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("MigrateURL of a bad URL: %v, want ErrInvalid", err)
	}
}

// TestNewOnMigration: Config.OnMigration sees each migration the schema
// lacks, in order, and Migration reports the same ones; a second New on
// the migrated schema calls it for none.
func TestNewOnMigration(t *testing.T) {
	t.Parallel()
	pool := sharedPool(t)
	schema := freshSchema(t, pool)
	var seen []AppliedMigration
	s, err := New(pool, &Config{Schema: schema, Migrate: true, OnMigration: func(m AppliedMigration) { seen = append(seen, m) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	want := []AppliedMigration{{1, "0001_records"}, {2, "0002_workflow"}, {3, "0003_messaging"}}
	if !reflect.DeepEqual(seen, want) || !reflect.DeepEqual(s.Migration().Migrations, want) || s.Migration().Applied() != 3 {
		t.Fatalf("OnMigration saw %v, Migration %+v; want %v", seen, s.Migration(), want)
	}
	seen = nil
	again, err := New(pool, &Config{Schema: schema, Migrate: true, OnMigration: func(m AppliedMigration) { seen = append(seen, m) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { again.Close() })
	if len(seen) != 0 || len(again.Migration().Migrations) != 0 || again.Migration().From != 3 {
		t.Fatalf("second New: saw %v, Migration %+v", seen, again.Migration())
	}
}
