package redisstore

import (
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

func TestMetaRoundTrip(t *testing.T) {
	t.Parallel()
	for _, m := range []map[string]string{nil, {}, {"": ""}, {"status": "200", "content-type": "text/plain"}, {"x-unicode": "héllo ✓", "quote\"key": "line\nbreak"}} {
		got, err := decodeMeta(encodeMeta(m))
		if err != nil || len(got) != len(m) || (len(m) > 0 && !maps.Equal(got, m)) {
			t.Errorf("meta %v: decoded %v, %v", m, got, err)
		}
	}
	if encodeMeta(map[string]string{"a": "1", "b": "2"}) != encodeMeta(map[string]string{"b": "2", "a": "1"}) {
		t.Error("equal maps encode differently")
	}
}

func TestMicros(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]int64{time.Nanosecond: 1, time.Microsecond: 1, time.Microsecond + 1: 2, time.Second: 1e6} {
		if got := micros(d); got != want {
			t.Errorf("micros(%s) = %d, want %d", d, got, want)
		}
	}
}

func TestDecodeRecord(t *testing.T) {
	t.Parallel()
	vals := []any{"c", "fp", "7", "2", "1000000", "1000000", "2000000", "3000000", "4000000", "1000000", "2000000", "pt", "cd", "data", encodeMeta(map[string]string{"s": "200"})}
	r, err := decodeRecord("sc", "k", vals)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != idem.StateCompleted || r.Token != 7 || r.Attempts != 2 || r.Window != time.Second || r.Retention != 2*time.Second ||
		!r.Expires.Equal(time.Unix(3, 0)) || r.Checkpoint == nil || r.Checkpoint.Point != "pt" || string(r.Outcome.Data) != "data" || r.Outcome.Meta["s"] != "200" {
		t.Errorf("decoded %+v", r)
	}
	if r, err := decodeRecord("sc", "k", make([]any, len(recordFields))); r != nil || err != nil {
		t.Errorf("no state: %+v, %v; want no record, no error", r, err)
	}
	for name, bad := range map[string][]any{
		"short":     {"p"},
		"state":     append([]any{"x"}, vals[1:]...),
		"token":     append([]any{"p", "f", "seven"}, vals[3:]...),
		"zero":      append([]any{"p", "f", "0"}, vals[3:]...),
		"meta":      append(append([]any{}, vals[:14]...), "\x05ab"),
		"too long!": append(append([]any{}, vals...), "x"),
	} {
		if _, err := decodeRecord("sc", "k", bad); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("%s: %v, want an error wrapping idem.ErrInvalid", name, err)
		}
	}
}

// FuzzDecodeRecord: whatever the hash holds, decoding returns a record or
// an error wrapping idem.ErrInvalid, never panics; meta round-trips.
func FuzzDecodeRecord(f *testing.F) {
	f.Add("c", "7", "1000", "pt", "data", encodeMeta(map[string]string{"a": "b"}), true)
	f.Add("p", "-1", "x", "", "", "\xff\xff", false)
	f.Fuzz(func(t *testing.T, state, token, at, point, data, meta string, hasPoint bool) {
		vals := []any{state, "f", token, "1", at, at, at, at, at, at, at, nil, nil, data, meta}
		if hasPoint {
			vals[11], vals[12] = point, data
		}
		r, err := decodeRecord("s", "k", vals)
		if err != nil && !errors.Is(err, idem.ErrInvalid) {
			t.Fatalf("error %v does not wrap idem.ErrInvalid", err)
		}
		if err == nil && r != nil && r.Token <= 0 {
			t.Fatalf("record with token %d", r.Token)
		}
		if m, err := decodeMeta(meta); err == nil && len(m) > 0 {
			if again, err := decodeMeta(encodeMeta(m)); err != nil || !maps.Equal(again, m) {
				t.Fatalf("meta %q: %v, then %v %v", meta, m, again, err)
			}
		}
	})
}
