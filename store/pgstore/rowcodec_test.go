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

// composite is fields as one composite column in PostgreSQL's binary format
// (the type OIDs, which the reader does not look at, zero).
func composite(fields [][]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(fields)))
	for _, f := range fields {
		b = binary.BigEndian.AppendUint32(b, 0)
		if f == nil {
			b = binary.BigEndian.AppendUint32(b, 0xFFFFFFFF) // -1: NULL
			continue
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

func TestColumnReaderReadsARecord(t *testing.T) {
	var r row
	fields := append(goodRow(), []byte("a column a later migration adds"))
	fields[2] = []byte{} // an empty fingerprint is not NULL
	c := columnReader{vals: [][]byte{composite(fields)}}
	r.read(&c)
	if c.err != nil {
		t.Fatal(c.err)
	}
	rec := r.record()
	want := time.Date(2026, 11, 27, 8, 0, 0, 123456000, time.UTC)
	if rec.Scope != "s" || rec.Key != "k" || rec.Fingerprint != "" || rec.Token != 42 || rec.Attempts != 3 || !rec.Created.Equal(want) ||
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
		"missing cols": {func(v [][]byte) [][]byte { return v[:10] }, "10 columns, want more"},
		"null scope":   {func(v [][]byte) [][]byte { v[0] = nil; return v }, "column 1 is NULL"},
		"no columns":   {func([][]byte) [][]byte { return nil }, "0 fields"},
	} {
		t.Run(name, func(t *testing.T) {
			var r row
			c := columnReader{vals: [][]byte{composite(tc.mutate(goodRow()))}}
			r.read(&c)
			if c.err == nil || !strings.Contains(c.err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", c.err, tc.want)
			}
		})
	}
}

func TestColumnReaderRefusesWhatIsNotARecord(t *testing.T) {
	good := composite(goodRow())
	for name, tc := range map[string]struct {
		col  []byte
		want string
	}{
		"null":        {nil, "column 1 is NULL"},
		"no count":    {[]byte{0, 0}, "no field count"},
		"negative":    {[]byte{0xFF, 0xFF, 0xFF, 0xFF}, "-1 fields"},
		"no fields":   {[]byte{0, 0, 0, 0}, "0 fields"},
		"fewer":       {[]byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 's'}, "1 columns, want more"},
		"many, empty": {binary.BigEndian.AppendUint32(nil, 1<<20), "ends early"},
		"cut header":  {good[:10], "ends early"},
		"cut value":   {good[:len(good)-3], "ends early"},
		"long field":  {append(binary.BigEndian.AppendUint32([]byte{0, 0, 0, 1, 0, 0, 0, 0}, 100), 'x'), "ends early"},
	} {
		t.Run(name, func(t *testing.T) {
			var r row
			c := columnReader{vals: [][]byte{tc.col}}
			r.read(&c)
			if c.err == nil || !strings.Contains(c.err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", c.err, tc.want)
			}
		})
	}
}

// FuzzColumnReader: whatever the record column holds, reading it fails
// cleanly or yields a record; it never panics.
func FuzzColumnReader(f *testing.F) {
	good := composite(goodRow())
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF})
	f.Fuzz(func(t *testing.T, col []byte) {
		var r row
		c := columnReader{vals: [][]byte{col}}
		if r.read(&c); c.err == nil {
			_ = r.record()
		}
	})
}
