package pgstore

import (
	"context"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/idemkit/idem"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one numbered file of migrations/.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations in version order.
func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		m, err := parseMigrationName(e.Name())
		if err != nil {
			return nil, err
		}
		body, err := migrationFiles.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, err
		}
		m.sql = string(body)
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("pgstore: migration %s: versions must run 1, 2, 3... without gaps", m.name)
		}
	}
	return ms, nil
}

var migrationName = regexp.MustCompile(`^([0-9]{4})_([a-z0-9_]+)\.sql$`)

// parseMigrationName reads "0001_records.sql" as version 1.
func parseMigrationName(name string) (migration, error) {
	m := migrationName.FindStringSubmatch(name)
	if m == nil {
		return migration{}, fmt.Errorf("%w: migration file %q is not named NNNN_name.sql", idem.ErrInvalid, name)
	}
	v, _ := strconv.Atoi(m[1])
	if v == 0 {
		return migration{}, fmt.Errorf("%w: migration file %q: versions start at 0001", idem.ErrInvalid, name)
	}
	return migration{version: v, name: strings.TrimSuffix(name, ".sql")}, nil
}

// LatestVersion is the schema version this build of pgstore writes and
// expects.
func LatestVersion() int {
	ms, err := migrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// validSchema checks a schema name: lower-case letters, digits and
// underscores, at most 63 bytes, so it needs no quoting in any tool an
// operator uses and cannot smuggle SQL.
func validSchema(schema string) error {
	if !schemaName.MatchString(schema) || strings.HasPrefix(schema, "pg_") {
		return fmt.Errorf("%w: schema %q: use 1 to 63 lower-case letters, digits and underscores, starting with a letter or underscore, not pg_", idem.ErrInvalid, schema)
	}
	return nil
}

// migrationLockKey is the advisory lock every Migrate of one schema takes,
// so concurrent starters apply each migration once. It is computed here
// rather than with hashtext() so the SQL runs on CockroachDB too.
func migrationLockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("idem.pgstore.migrate." + schema))
	return int64(h.Sum64())
}

// MigrateResult says what a Migrate did.
type MigrateResult struct {
	// From is the schema's version before (0 for a new schema), To its
	// version after: LatestVersion.
	From, To int
	// Migrations are the migrations applied, in order (none when the
	// schema was at LatestVersion).
	Migrations []AppliedMigration
}

// AppliedMigration names one embedded migration: its version and the
// name of its file without .sql, like 2 and "0002_workflow".
type AppliedMigration struct {
	Version int
	Name    string
}

// Applied is the number of migrations Migrate applied; 0 when the schema
// was already at LatestVersion.
func (r *MigrateResult) Applied() int { return r.To - r.From }

// Migrate creates schema if needed and applies the embedded migrations it
// lacks, in one transaction under an advisory lock, so any number of
// processes may call it at once. Applied versions are kept in
// schema.migrations. It fails without changing anything when the schema
// is at a version newer than this build knows.
func Migrate(ctx context.Context, pool *pgxpool.Pool, schema string) (*MigrateResult, error) {
	return migrate(ctx, pool, schema, nil)
}

// migrate is Migrate calling each, when not nil, as each migration is
// about to run (inside the transaction: it is applied only when Migrate
// returns without an error).
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string, each func(AppliedMigration)) (*MigrateResult, error) {
	if err := validSchema(schema); err != nil {
		return nil, err
	}
	ms, err := migrations()
	if err != nil {
		return nil, err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, wrapErr("migrate", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	q := pgx.Identifier{schema}.Sanitize()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLockKey(schema)); err != nil {
		return nil, wrapErr("migrate "+schema, err)
	}
	steps := []string{
		`CREATE SCHEMA IF NOT EXISTS ` + q,
		`CREATE TABLE IF NOT EXISTS ` + q + `.migrations (
			version integer PRIMARY KEY,
			name text NOT NULL,
			applied timestamptz NOT NULL DEFAULT now())`,
	}
	for _, s := range steps {
		if _, err := tx.Exec(ctx, s); err != nil {
			return nil, wrapErr("migrate "+schema, err)
		}
	}
	var current int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+q+`.migrations`).Scan(&current); err != nil {
		return nil, wrapErr("migrate "+schema, err)
	}
	if latest := ms[len(ms)-1].version; current > latest {
		return nil, fmt.Errorf("pgstore: schema %q is at version %d, newer than this build's %d: upgrade idem", schema, current, latest)
	}
	res := &MigrateResult{From: current, To: ms[len(ms)-1].version}
	for _, m := range ms[current:] {
		a := AppliedMigration{Version: m.version, Name: m.name}
		if each != nil {
			each(a)
		}
		res.Migrations = append(res.Migrations, a)
		if _, err := tx.Exec(ctx, strings.ReplaceAll(m.sql, "{{schema}}", q)); err != nil {
			return nil, wrapErr(fmt.Sprintf("migrate %s: %s", schema, m.name), err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+q+`.migrations (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
			return nil, wrapErr("migrate "+schema, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, wrapErr("migrate "+schema, err)
	}
	return res, nil
}

// schemaVersion reads the version schema is at; 0 when it was never
// migrated.
func schemaVersion(ctx context.Context, db querier, schema string) (int, error) {
	var exists bool
	err := db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, pgx.Identifier{schema, "migrations"}.Sanitize()).Scan(&exists)
	if err != nil || !exists {
		return 0, wrapErr("read schema version", err)
	}
	var v int
	err = db.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+pgx.Identifier{schema}.Sanitize()+`.migrations`).Scan(&v)
	return v, wrapErr("read schema version", err)
}

// MigrateURL is Migrate on a pool of its own for the database at url, for
// `idem migrate --store URL`; an empty schema means DefaultSchema.
func MigrateURL(ctx context.Context, url, schema string) (*MigrateResult, error) {
	if schema == "" {
		schema = DefaultSchema
	}
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("%w: pgstore: the store URL does not parse (want postgres://user@host:5432/db): %v", idem.ErrInvalid, err)
	}
	pcfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, wrapErr("migrate", err)
	}
	defer pool.Close()
	return Migrate(ctx, pool, schema)
}
