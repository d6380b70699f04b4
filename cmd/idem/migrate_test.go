package main

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/jackc/pgx/v5"
)

// TestMigrateJSON: --json says what migrate did, as the schema's
// migrations table records it; progress goes to stderr as plain lines,
// one per migration (none with --quiet, none when nothing is applied).
func TestMigrateJSON(t *testing.T) {
	t.Parallel()
	schema := fmt.Sprintf("idem_migrate_json_%d", time.Now().UnixNano())
	url := pgSchemaURL(t, schema)
	dir := t.TempDir()
	out, errOut, code := runIdem(t, dir, "migrate", "--store", url, "--json")
	var got migrateJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil || code != 0 {
		t.Fatalf("exit %d, %v: %q %q", code, err, out, errOut)
	}
	// The applied list is what the database holds.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, servicetest.Postgres.Need(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, `SELECT version, name FROM `+pgx.Identifier{schema}.Sanitize()+`.migrations ORDER BY version`)
	stored, err := pgx.CollectRows(rows, pgx.RowToStructByPos[appliedMigrationJSON])
	if err != nil {
		t.Fatal(err)
	}
	latest := pgstore.LatestVersion()
	if !got.HasSchema || got.From != 0 || got.To != latest || len(stored) != latest || !reflect.DeepEqual(got.Applied, stored) ||
		!strings.Contains(got.Store, fmt.Sprintf("PostgreSQL schema %q", schema)) {
		t.Fatalf("--json %+v, the migrations table holds %+v", got, stored)
	}
	var want strings.Builder
	for _, m := range stored {
		fmt.Fprintf(&want, "idem migrate: applying %s (v%d of v%d)\n", m.Name, m.Version, latest)
	}
	if errOut != want.String() {
		t.Fatalf("stderr %q, want %q", errOut, want.String())
	}

	// Again: nothing applied, an empty list (not null), no progress.
	out, errOut, code = runIdem(t, dir, "migrate", "--store", url, "--json", "--quiet")
	if code != 0 || errOut != "" || !strings.Contains(out, `"applied":[]`) {
		t.Fatalf("second run: exit %d, %q, %q", code, out, errOut)
	}
	got = migrateJSON{}
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.From != latest || got.To != latest || len(got.Applied) != 0 {
		t.Fatalf("second run: %+v, %v", got, err)
	}

	// A store without a schema: nothing to do, said in JSON too.
	out, _, code = runIdem(t, dir, "migrate", "--store", "redis://:pw@127.0.0.1:6379/0", "--json")
	if code != 0 || out != `{"store":"redis://:xxxxx@127.0.0.1:6379/0","has_schema":false,"from":0,"to":0,"applied":[]}`+"\n" {
		t.Fatalf("redis: exit %d, %q", code, out)
	}
}
