package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/storetest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The tests of this package share one pool (PostgreSQL allows 100
// connections on this machine, shared with other packages' tests); each
// test gets a schema of its own.
var shared struct {
	once sync.Once
	pool *pgxpool.Pool
	err  error
}

func sharedPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	url := servicetest.Postgres.Need(t)
	shared.once.Do(func() {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			shared.err = err
			return
		}
		cfg.MaxConns = 16
		shared.pool, shared.err = pgxpool.NewWithConfig(context.Background(), cfg)
	})
	if shared.err != nil {
		t.Fatalf("pool: %v", shared.err)
	}
	return shared.pool
}

func closeSharedPool() {
	if shared.pool != nil {
		shared.pool.Close()
	}
}

var schemaSeq atomic.Int64

// freshSchema names a schema no other test uses, and drops it when t ends.
func freshSchema(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	schema := fmt.Sprintf("idem_test_%d_%d", time.Now().UnixNano()%1e9, schemaSeq.Add(1))
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}

// newStore returns a store in a fresh, migrated schema on the shared pool.
func newStore(t testing.TB) *Store {
	t.Helper()
	pool := sharedPool(t)
	s, err := New(pool, &Config{Schema: freshSchema(t, pool), Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T, _ idem.Clock) idem.Store { return newStore(t) }, &storetest.Options{RealClock: true})
}

func wantErr(t testing.TB, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: error %v, want one wrapping %v", what, err, target)
	}
}
