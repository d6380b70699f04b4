package redisstore

import (
	"errors"
	"maps"
	"reflect"
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

func sampleRecord() *idem.Record {
	at := func(s int64) time.Time { return time.Unix(s, 0).UTC() }
	return &idem.Record{Scope: "sc", Key: "k", Fingerprint: "fp", State: idem.StateCompleted, Token: 7, Attempts: 2,
		LeaseUntil: at(1), Created: at(1), Completed: at(2), Expires: at(3), RetainUntil: at(4),
		Window: time.Second, Retention: 2 * time.Second,
		Outcome: &idem.Outcome{Data: []byte("data"), Meta: map[string]string{"s": "200"}}}
}

func TestRecordRoundTrip(t *testing.T) {
	t.Parallel()
	completed := sampleRecord()
	pending := sampleRecord()
	pending.State, pending.Outcome, pending.Completed, pending.Expires = idem.StatePending, nil, time.Time{}, time.Time{}
	pending.Checkpoint = &idem.Checkpoint{Point: "pt", Data: []byte("cd")}
	empty := sampleRecord()
	empty.Outcome = &idem.Outcome{Data: []byte{}}
	for _, r := range []*idem.Record{completed, pending, empty} {
		b := encodeRecord(r)
		got, err := decodeRecord(r.Scope, r.Key, b)
		if err != nil || !reflect.DeepEqual(got, r) {
			t.Errorf("%s: decoded %+v, %v; want %+v", r.State, got, err, r)
		}
	}
	if n := len(encodeRecord(pending)) - len("fp") - len("pt") - len("cd"); n != minRecordLen {
		t.Errorf("framing of a record: %d bytes, want %d", n, minRecordLen)
	}
}

func TestDecodeRecordRejects(t *testing.T) {
	t.Parallel()
	good := encodeRecord(sampleRecord())
	set := func(i int, c byte) string { b := []byte(good); b[i] = c; return string(b) }
	pending := sampleRecord()
	pending.State = idem.StatePending
	for name, bad := range map[string]string{
		"empty":          "",
		"short":          good[:headerLen],
		"version":        set(0, 2),
		"state":          set(1, 'x'),
		"flags":          set(2, 4),
		"zero token":     string(append(append([]byte(good[:3]), make([]byte, 8)...), good[11:]...)),
		"negative token": set(10, 0x80),
		"no meta":        good[:len(good)-4-len(encodeMeta(sampleRecord().Outcome.Meta))],
		"trailing":       good + "x",
		"section length": set(headerLen, 0xff),
		"checkpoint":     set(2, 0) + "",
		"outcome":        encodeRecord(pending),
		"meta":           good[:len(good)-4-len(encodeMeta(sampleRecord().Outcome.Meta))] + string(section("\x05ab")),
	} {
		if name == "checkpoint" {
			cp := sampleRecord()
			cp.Checkpoint = &idem.Checkpoint{Point: "p"}
			b := []byte(encodeRecord(cp))
			b[2] = 0
			bad = string(b)
		}
		if r, err := decodeRecord("sc", "k", bad); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("%s: %+v, %v; want an error wrapping idem.ErrInvalid", name, r, err)
		}
	}
}

// FuzzDecodeRecord: whatever the key holds, decoding returns a record or an
// error wrapping idem.ErrInvalid, never panics; a record that decodes
// encodes to the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(sampleRecord()))
	cp := sampleRecord()
	cp.State, cp.Outcome, cp.Checkpoint = idem.StatePending, nil, &idem.Checkpoint{Point: "p", Data: []byte{0, 1}}
	f.Add(encodeRecord(cp))
	f.Add("\x01p\x00")
	f.Fuzz(func(t *testing.T, b string) {
		r, err := decodeRecord("s", "k", b)
		if err != nil {
			if !errors.Is(err, idem.ErrInvalid) {
				t.Fatalf("error %v does not wrap idem.ErrInvalid", err)
			}
			return
		}
		if r.Token <= 0 {
			t.Fatalf("record with token %d", r.Token)
		}
		if m := r.Outcome; m != nil && len(m.Meta) > 0 {
			if again, err := decodeMeta(encodeMeta(m.Meta)); err != nil || !maps.Equal(again, m.Meta) {
				t.Fatalf("meta %v: then %v %v", m.Meta, again, err)
			}
		}
		again, err := decodeRecord("s", "k", encodeRecord(r))
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("re-encoded %+v: %+v, %v", r, again, err)
		}
	})
}

// TestSections: the sections Go hands the scripts are those of a stored
// record.
func TestSections(t *testing.T) {
	t.Parallel()
	r := sampleRecord()
	r.Outcome.Meta = map[string]string{"b": "2", "a": "1"}
	b := encodeRecord(r)
	head := headerLen + len(section(r.Fingerprint))
	if got := string(outcomeSections(r.Outcome)); got != b[head:] {
		t.Errorf("outcomeSections: %q, want %q", got, b[head:])
	}
	r.State, r.Outcome, r.Checkpoint = idem.StatePending, nil, &idem.Checkpoint{Point: "pt", Data: []byte("cd")}
	b = encodeRecord(r)
	if got := string(checkpointSections("pt", []byte("cd"))); got != b[head:] {
		t.Errorf("checkpointSections: %q, want %q", got, b[head:])
	}
	r.Checkpoint = nil
	if b = encodeRecord(r); b[head:] != emptySections {
		t.Errorf("emptySections: %q, want %q", emptySections, b[head:])
	}
	if got := tokenBytes(r.Token); string(got) != b[3:11] {
		t.Errorf("tokenBytes: %q, want %q", got, b[3:11])
	}
}
