package pgstore

import (
	"errors"
	"fmt"
	"testing"

	"github.com/idemkit/idem"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestRefused: a server error on a statement is a refusal (a batch runs
// again one operation at a time); the server going away or refusing
// connections is not, and wraps ErrUnavailable; a non-server error is
// neither a refusal nor a statement error.
func TestRefused(t *testing.T) {
	for code, want := range map[string]bool{
		"22P02": true,  // invalid input (bad JSON)
		"40P01": true,  // deadlock detected
		"23505": true,  // unique violation
		"08006": false, // connection failure
		"57P01": false, // admin shutdown
		"57P03": false, // cannot connect now
		"53300": false, // too many connections
	} {
		err := fmt.Errorf("query: %w", &pgconn.PgError{Code: code})
		if got := refused(err); got != want {
			t.Errorf("refused(%s) = %v, want %v", code, got, want)
		}
		if unavailable := errors.Is(wrapErr("op", err), idem.ErrUnavailable); unavailable == want {
			t.Errorf("wrapErr(%s) wraps ErrUnavailable: %v, want %v", code, unavailable, !want)
		}
	}
	if refused(errors.New("conn closed")) || refused(nil) {
		t.Error("refused: true for an error that is not the server's")
	}
}
