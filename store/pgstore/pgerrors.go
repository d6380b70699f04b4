package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/idemkit/idem"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
)

// ErrUnavailable: the database did not answer, refused the connection, or
// dropped it (a restart, a failover, a network fault). An operation that
// fails with it may or may not have taken effect: Begin again with the same
// key to find out. Errors wrapping it read "pgstore: database unavailable:
// ...".
var ErrUnavailable = fmt.Errorf("pgstore: database unavailable: %w", idem.ErrUnavailable)

// wrapErr maps a pgx error to one that wraps the sentinel a caller
// branches on, with op as context. It returns nil for nil.
func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("pgstore: %s: %w", op, err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case unavailableCode(pgErr.Code):
			return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
		case pgErr.Code == "22021", pgErr.Code == "22P05": // NUL or a byte the encoding lacks
			return fmt.Errorf("%w: %s: PostgreSQL text cannot hold this value (a NUL byte?): %w", idem.ErrInvalid, op, err)
		case pgErr.Code == "3F000", pgErr.Code == "42P01": // no such schema, no such table
			return fmt.Errorf("pgstore: %s: the schema is not migrated (%s): %w", op, howToMigrate, err)
		}
		return fmt.Errorf("pgstore: %s: %w", op, err)
	}
	if errors.Is(err, puddle.ErrClosedPool) {
		return fmt.Errorf("%w: %s: the connection pool is closed: %w", idem.ErrClosed, op, err)
	}
	var netErr net.Error
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) || errors.As(err, &netErr) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || pgconn.SafeToRetry(err) ||
		strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "failed to connect") {
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
	}
	return fmt.Errorf("pgstore: %s: %w", op, err)
}

// unavailableCode says whether a server error's SQLSTATE is the server
// going away or refusing connections, not a refusal of the statement.
func unavailableCode(code string) bool {
	return strings.HasPrefix(code, "08") || // connection exception
		code == "57P01" || code == "57P02" || code == "57P03" || // shutdown, crash, cannot connect now
		code == "53300" // too many connections
}

// refused says whether err is the server's refusal of a statement: a
// server error that is not unavailableCode's.
func refused(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && !unavailableCode(pgErr.Code)
}
