// Package pgstore is the PostgreSQL store.
package pgstore

import (
	_ "github.com/jackc/pgx/v5/pgxpool"
)
