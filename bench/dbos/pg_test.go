package dbosbench

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/internal/wait"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The databases the two PostgreSQL systems use, one each, so that
// pg_stat_database counts each side's transactions alone.
const (
	dbosDatabase = "dbosbench"
	idemDatabase = "idembench"
)

// poolConns is the connection pool size of both PostgreSQL systems
// (DBOS's own default).
const poolConns = 20

// pgServer is the PostgreSQL server of a run: the administrative
// connection (to the services' test database) that creates the benchmark
// databases and reads their statistics.
type pgServer struct {
	base  *url.URL
	admin *pgx.Conn
}

// newPGServer connects to PostgreSQL (skipping the test when it does not
// answer) and creates the benchmark databases if they do not exist.
func newPGServer(tb testing.TB) *pgServer {
	tb.Helper()
	raw := servicetest.Postgres.Need(tb)
	u, err := url.Parse(raw)
	if err != nil {
		tb.Fatal(err)
	}
	admin, err := pgx.Connect(context.Background(), raw)
	if err != nil {
		tb.Fatalf("connect %s: %v", u.Redacted(), err)
	}
	tb.Cleanup(func() { admin.Close(context.Background()) })
	s := &pgServer{base: u, admin: admin}
	for _, db := range []string{dbosDatabase, idemDatabase} {
		_, err := admin.Exec(context.Background(), "CREATE DATABASE "+pgx.Identifier{db}.Sanitize())
		var pgErr *pgconn.PgError
		if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42P04") { // duplicate_database
			tb.Fatalf("create database %s: %v", db, err)
		}
	}
	return s
}

// url is the server's URL with database db.
func (s *pgServer) url(db string) string {
	u := *s.base
	u.Path = "/" + db
	return u.String()
}

// pool opens a pool of poolConns connections to db.
func (s *pgServer) pool(ctx context.Context, db string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(s.url(db))
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = poolConns
	return pgxpool.NewWithConfig(ctx, cfg)
}

// commits is db's pg_stat_database.xact_commit once no backend is
// connected to it. A backend flushes its statistics when it exits, at the
// latest, and leaves pg_stat_activity after that; so once none is left,
// the count holds every transaction committed in db so far. Callers close
// their pools first.
func (s *pgServer) commits(tb testing.TB, db string) int64 {
	tb.Helper()
	ctx := context.Background()
	wait.For(tb, "the backends of "+db+" to exit", func() bool {
		var n int
		err := s.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1`, db).Scan(&n)
		if err != nil {
			tb.Fatalf("pg_stat_activity: %v", err)
		}
		return n == 0
	})
	var n int64
	if err := s.admin.QueryRow(ctx, `SELECT xact_commit FROM pg_stat_database WHERE datname = $1`, db).Scan(&n); err != nil {
		tb.Fatalf("pg_stat_database %s: %v", db, err)
	}
	return n
}

// dropSchemaAtEnd drops schema from db when tb ends, through a pool of
// its own (the systems' pools are closed by then).
func (s *pgServer) dropSchemaAtEnd(tb testing.TB, db, schema string) {
	tb.Cleanup(func() {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, s.url(db))
		if err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
		}
	})
}

var schemaSeq atomic.Int64

// freshSchema names a schema no other run uses.
func freshSchema(prefix string) string {
	return fmt.Sprintf("%s_%d_%d", prefix, time.Now().UnixNano()%1e12, schemaSeq.Add(1))
}
