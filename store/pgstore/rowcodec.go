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
//
// A record comes as one composite column (the table's whole row, or
// ROW(…)), not as eighteen: the server describes one column instead of
// eighteen on every execution, and pgx keeps the description of up to 16
// columns without allocating.
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
// format: the row's own columns (vals), or the fields of a composite
// column, read from its bytes as they come (see composite). The first
// column that is not what the store's schema makes it sets err and zero
// values follow.
type columnReader struct {
	vals   [][]byte
	fields []byte // a composite's fields not read yet
	n      int    // a composite's field count; 0: reading vals
	i      int
	err    error
}

// pgEpoch is where PostgreSQL counts timestamps from, in Unix µs.
const pgEpoch = 946684800 * 1000000

// next returns the next column's bytes (nil for NULL), checking its width
// when want is not 0 and nullable, when it is NULL, says it may be.
func (c *columnReader) next(want int, nullable bool) []byte {
	if c.err != nil {
		return nil
	}
	var v []byte
	switch {
	case c.n > 0:
		v = c.field()
		if c.err != nil {
			return nil
		}
	case c.i >= len(c.vals):
		c.err = fmt.Errorf("pgstore: %d columns, want more", len(c.vals))
		return nil
	default:
		v = c.vals[c.i]
	}
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

// int8OrNil reads a bigint column that may be NULL; ok is false for NULL.
func (c *columnReader) int8OrNil() (v int64, ok bool) {
	if b := c.next(8, true); b != nil {
		return int64(binary.BigEndian.Uint64(b)), true
	}
	return 0, false
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

// composite reads the next column as a composite value in PostgreSQL's
// binary format (a field count, then each field's type OID, its length or
// -1 for NULL, and its bytes) and returns a reader of its fields.
func (c *columnReader) composite() columnReader {
	v := c.next(0, false)
	if c.err != nil {
		return columnReader{err: c.err}
	}
	if len(v) < 4 {
		c.err = fmt.Errorf("pgstore: column %d is not a record: no field count", c.i)
		return columnReader{err: c.err}
	}
	n := int32(binary.BigEndian.Uint32(v))
	if n <= 0 {
		c.err = fmt.Errorf("pgstore: column %d is not a record: %d fields", c.i, n)
		return columnReader{err: c.err}
	}
	return columnReader{fields: v[4:], n: int(n)}
}

// field returns a composite's next field (nil for NULL).
func (c *columnReader) field() []byte {
	if c.i >= c.n {
		c.err = fmt.Errorf("pgstore: %d columns, want more", c.n)
		return nil
	}
	if len(c.fields) < 8 {
		c.err = fmt.Errorf("pgstore: the record ends early, in column %d", c.i+1)
		return nil
	}
	size := int32(binary.BigEndian.Uint32(c.fields[4:]))
	c.fields = c.fields[8:]
	switch {
	case size < 0:
		return nil
	case int(size) > len(c.fields):
		c.err = fmt.Errorf("pgstore: the record ends early, in column %d", c.i+1)
		return nil
	}
	v := c.fields[:size:size] // empty but not nil: not NULL
	c.fields = c.fields[size:]
	return v
}

// read reads a record from c's next column: a composite of the table's
// columns in the table's order. Fields after them, which a later migration
// may add, are left for later versions to read.
func (r *row) read(c *columnReader) {
	f := c.composite()
	r.scope, r.key, r.fingerprint, r.state = f.text(), f.text(), f.text(), f.text()
	r.token, r.attempts, r.leaseUntil = f.int8(), f.int4(), f.time()
	r.point, r.checkpoint, r.data, r.meta = f.textOrNil(), f.bytes(), f.bytes(), f.bytes()
	r.created, r.completed, r.expires, r.retain = f.time(), f.timeOrNil(), f.timeOrNil(), f.time()
	r.window, r.retention, r.takeover = f.int8(), f.int8(), f.bool()
	if c.err == nil {
		c.err = f.err
	}
}
