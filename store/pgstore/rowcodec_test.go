package pgstore

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"
)

func be8(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

// goodRow is a record's columns as PostgreSQL sends them in binary.
func goodRow() [][]byte {
	created := time.Date(2026, 11, 27, 8, 0, 0, 123456000, time.UTC)
	us := created.UnixMicro() - pgEpoch
	return [][]byte{
		[]byte("s"), []byte("k"), []byte("f"), []byte("completed"), be8(42), binary.BigEndian.AppendUint32(nil, 3), be8(us),
		nil, nil, []byte("out"), []byte(`{"a":"b"}`), be8(us), be8(us + 1), be8(us + 2), be8(us + 3), be8(60e6), be8(0), {1},
	}
}

func TestColumnReaderReadsARecord(t *testing.T) {
	var r row
	c := columnReader{vals: goodRow()}
	r.read(&c)
	if c.err != nil {
		t.Fatal(c.err)
	}
	rec := r.record()
	want := time.Date(2026, 11, 27, 8, 0, 0, 123456000, time.UTC)
	if rec.Scope != "s" || rec.Key != "k" || rec.Token != 42 || rec.Attempts != 3 || !rec.Created.Equal(want) ||
		!rec.Completed.Equal(want.Add(time.Microsecond)) || rec.Window != time.Minute || !r.takeover || rec.Checkpoint != nil {
		t.Fatalf("record %+v", rec)
	}
	if string(rec.Outcome.Data) != "out" || rec.Outcome.Meta["a"] != "b" {
		t.Fatalf("outcome %+v", rec.Outcome)
	}
}

func TestColumnReaderRefusesWhatTheSchemaCannotSend(t *testing.T) {
	for name, tc := range map[string]struct {
		mutate func([][]byte) [][]byte
		want   string
	}{
		"null token":   {func(v [][]byte) [][]byte { v[4] = nil; return v }, "column 5 is NULL"},
		"short int8":   {func(v [][]byte) [][]byte { v[4] = []byte{1, 2}; return v }, "column 5 has 2 bytes, want 8"},
		"short time":   {func(v [][]byte) [][]byte { v[12] = []byte{1}; return v }, "column 13 has 1 bytes, want 8"},
		"wide bool":    {func(v [][]byte) [][]byte { v[17] = []byte{1, 0}; return v }, "column 18 has 2 bytes, want 1"},
		"missing cols": {func(v [][]byte) [][]byte { return v[:10] }, "returned 10 columns"},
		"null scope":   {func(v [][]byte) [][]byte { v[0] = nil; return v }, "column 1 is NULL"},
		"no columns":   {func([][]byte) [][]byte { return nil }, "returned 0 columns"},
	} {
		t.Run(name, func(t *testing.T) {
			var r row
			c := columnReader{vals: tc.mutate(goodRow())}
			r.read(&c)
			if c.err == nil || !strings.Contains(c.err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", c.err, tc.want)
			}
		})
	}
}

// FuzzColumnReader: whatever the columns hold, reading them fails cleanly
// or yields a record; it never panics.
func FuzzColumnReader(f *testing.F) {
	f.Add([]byte("s\x00k\x00f"), 3)
	f.Fuzz(func(t *testing.T, data []byte, n int) {
		vals := make([][]byte, 0, 18)
		for i, part := range strings.Split(string(data), "\x00") {
			if i == n%19 {
				vals = append(vals, nil)
			}
			vals = append(vals, []byte(part))
		}
		var r row
		c := columnReader{vals: vals}
		if r.read(&c); c.err == nil {
			_ = r.record()
		}
	})
}
