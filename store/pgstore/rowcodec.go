package pgstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// binaryResults asks for every result column in PostgreSQL's binary format,
// which columnReader reads directly. pgx's generic Scan plans a conversion
// for each column of each row it scans: with a record's eighteen columns
// that was a tenth of the client's CPU per Begin+Complete.
var binaryResults = pgx.QueryResultFormats{pgx.BinaryFormatCode}

// queryRow runs sql and hands its first row, if there is one, to decode as
// raw binary columns, valid only during the call. found tells whether there
// was a row; an error the statement raises after its row is returned too.
func queryRow(ctx context.Context, db querier, sql string, args []any, decode func(*columnReader)) (found bool, err error) {
	rows, err := db.Query(ctx, sql, append([]any{binaryResults}, args...)...)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	if rows.Next() {
		c := columnReader{vals: rows.RawValues()}
		decode(&c)
		if c.err != nil {
			return false, c.err
		}
		found = true
	}
	rows.Close()
	return found, rows.Err()
}

// columnReader reads a row's columns in order, in PostgreSQL's binary
// format. The first column that is not what the store's schema makes it
// sets err and zero values follow.
type columnReader struct {
	vals [][]byte
	i    int
	err  error
}

// pgEpoch is where PostgreSQL counts timestamps from, in Unix µs.
const pgEpoch = 946684800 * 1000000

// next returns the next column's bytes (nil for NULL), checking its width
// when want is not 0 and nullable, when it is NULL, says it may be.
func (c *columnReader) next(want int, nullable bool) []byte {
	if c.err != nil {
		return nil
	}
	if c.i >= len(c.vals) {
		c.err = fmt.Errorf("pgstore: the statement returned %d columns, want more", len(c.vals))
		return nil
	}
	v := c.vals[c.i]
	c.i++
	switch {
	case v == nil && !nullable:
		c.err = fmt.Errorf("pgstore: column %d is NULL", c.i)
	case v != nil && want != 0 && len(v) != want:
		c.err = fmt.Errorf("pgstore: column %d has %d bytes, want %d", c.i, len(v), want)
		return nil
	}
	return v
}

func (c *columnReader) text() string { return string(c.next(0, false)) }

func (c *columnReader) textOrNil() *string {
	v := c.next(0, true)
	if v == nil {
		return nil
	}
	s := string(v)
	return &s
}

// bytes copies a bytea or json column; NULL is nil.
func (c *columnReader) bytes() []byte {
	v := c.next(0, true)
	if v == nil {
		return nil
	}
	return append(make([]byte, 0, len(v)), v...)
}

func (c *columnReader) int8() int64 {
	if v := c.next(8, false); v != nil {
		return int64(binary.BigEndian.Uint64(v))
	}
	return 0
}

func (c *columnReader) int4() int32 {
	if v := c.next(4, false); v != nil {
		return int32(binary.BigEndian.Uint32(v))
	}
	return 0
}

func (c *columnReader) bool() bool {
	v := c.next(1, false)
	return v != nil && v[0] != 0
}

func (c *columnReader) time() time.Time {
	if v := c.next(8, false); v != nil {
		return time.UnixMicro(int64(binary.BigEndian.Uint64(v)) + pgEpoch)
	}
	return time.Time{}
}

func (c *columnReader) timeOrNil() *time.Time {
	v := c.next(8, true)
	if v == nil {
		return nil
	}
	t := time.UnixMicro(int64(binary.BigEndian.Uint64(v)) + pgEpoch)
	return &t
}

// read reads a record's columns, in the order of columns.
func (r *row) read(c *columnReader) {
	r.scope, r.key, r.fingerprint, r.state = c.text(), c.text(), c.text(), c.text()
	r.token, r.attempts, r.leaseUntil = c.int8(), c.int4(), c.time()
	r.point, r.checkpoint, r.data, r.meta = c.textOrNil(), c.bytes(), c.bytes(), c.bytes()
	r.created, r.completed, r.expires, r.retain = c.time(), c.timeOrNil(), c.timeOrNil(), c.time()
	r.window, r.retention, r.takeover = c.int8(), c.int8(), c.bool()
}
