package pebblestore

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

func sampleRecords() []*idem.Record {
	at := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	return []*idem.Record{
		{Scope: "s", Key: "k", State: idem.StatePending, Token: 1, Attempts: 1,
			LeaseUntil: at.Add(time.Second), Created: at, RetainUntil: at.Add(time.Hour), Window: time.Hour},
		{Scope: "tenant-☃", Key: "order/7", Fingerprint: "sha256:abc", State: idem.StateCompleted, Token: 1 << 40, Attempts: 3,
			LeaseUntil: at, Created: at.Add(-time.Minute), Completed: at, Expires: at.Add(24 * time.Hour),
			RetainUntil: at.Add(48 * time.Hour), Window: 24 * time.Hour, Retention: 48 * time.Hour,
			Outcome: &idem.Outcome{Data: []byte{0, 1, 2, 255}, Meta: map[string]string{"status": "201", "b": "", "a": "x"}}},
		{Scope: "s", Key: "k2", State: idem.StatePending, Token: 9, Attempts: 2,
			LeaseUntil: at, Created: at, RetainUntil: at, Window: time.Nanosecond,
			Checkpoint: &idem.Checkpoint{Point: "disk-created", Data: []byte("disk-9")}},
		{Scope: "s", Key: "k3", State: idem.StateReleased, Token: 4, Attempts: 1, Created: time.Unix(-1e10, 999_999_999).UTC(),
			LeaseUntil: at, Expires: at, RetainUntil: at, Window: time.Minute},
		{Scope: "s", Key: "empty", State: idem.StateCompleted, Token: 5, Attempts: 1,
			Outcome: &idem.Outcome{Data: []byte{}}, Checkpoint: &idem.Checkpoint{Data: []byte{}}},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	t.Parallel()
	for _, r := range sampleRecords() {
		at := r.RetainUntil.Add(-time.Minute)
		b := encodeRecord(nil, r, at)
		if b[0] != recordVersion {
			t.Fatalf("first byte %d, want version %d", b[0], recordVersion)
		}
		got, gotAt, err := decodeRecord(b)
		if err != nil {
			t.Fatalf("decode %s: %v", r.Key, err)
		}
		if !gotAt.Equal(at) {
			t.Fatalf("index time of %s: %v, want %v", r.Key, gotAt, at)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("round trip of %s:\n got %+v\nwant %+v", r.Key, got, r)
		}
		// The encoding is deterministic (meta keys sorted), and every
		// truncation is an error, never a panic or a shorter record.
		if again := encodeRecord(nil, got, gotAt); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding %s differs", r.Key)
		}
		for n := range len(b) {
			if _, _, err := decodeRecord(b[:n]); !errors.Is(err, errCorrupt) {
				t.Fatalf("decode of %d of %d bytes: err %v, want errCorrupt", n, len(b), err)
			}
		}
		if _, _, err := decodeRecord(append(b, 0)); !errors.Is(err, errCorrupt) {
			t.Fatalf("trailing byte: err %v, want errCorrupt", err)
		}
	}
}

func TestRecordRejectsUnknownVersion(t *testing.T) {
	t.Parallel()
	b := encodeRecord(nil, sampleRecords()[0], time.Time{})
	b[0] = recordVersion + 1
	if _, _, err := decodeRecord(b); !errors.Is(err, errCorrupt) {
		t.Fatalf("err %v, want errCorrupt", err)
	}
}

// FuzzDecodeRecord: corrupt bytes give an error, never a panic; whatever
// decodes re-encodes to a record that decodes the same.
func FuzzDecodeRecord(f *testing.F) {
	for _, r := range sampleRecords() {
		f.Add(encodeRecord(nil, r, r.RetainUntil))
	}
	f.Add([]byte{})
	f.Add([]byte{recordVersion, stateCodePending, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, at, err := decodeRecord(b)
		if err != nil {
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("err %v does not wrap errCorrupt", err)
			}
			return
		}
		again, againAt, err := decodeRecord(encodeRecord(nil, r, at))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !reflect.DeepEqual(again, r) || !againAt.Equal(at) {
			t.Fatalf("re-decode differs:\n got %+v\nwant %+v", again, r)
		}
	})
}

func TestIndexKeyOrderIsTimeOrder(t *testing.T) {
	t.Parallel()
	ref := recordRef("s", "k")
	times := []time.Time{
		time.Time{},
		time.Unix(-1, 5),
		time.Unix(0, 0),
		time.Unix(0, 1),
		time.Unix(1, 0),
		time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
		time.Date(2030, 1, 2, 3, 4, 5, 1, time.UTC),
		time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	for i := 1; i < len(times); i++ {
		a, b := indexKey(times[i-1], ref), indexKey(times[i], ref)
		if bytes.Compare(a, b) >= 0 {
			t.Fatalf("index key of %v does not sort before %v", times[i-1], times[i])
		}
	}
	for _, at := range times {
		got, gotRef, err := parseIndexKey(indexKey(at, ref))
		if err != nil || !got.Equal(at) || !bytes.Equal(gotRef, ref) {
			t.Fatalf("parse index key of %v: %v %q %v", at, got, gotRef, err)
		}
		filled := make([]byte, len(prefixIndex)+timeLen+len(ref))
		putIndexKey(filled, at, ref)
		if want := indexKey(at, ref); !bytes.Equal(filled, want) {
			t.Fatalf("putIndexKey at %v: %x, indexKey %x", at, filled, want)
		}
	}
	if k, want := recordKey("scope", "key"), append([]byte(prefixRecord), recordRef("scope", "key")...); !bytes.Equal(k, want) {
		t.Fatalf("recordKey %q, want %q", k, want)
	}
}

// FuzzParseIndexKey: bad index keys give an error, never a panic.
func FuzzParseIndexKey(f *testing.F) {
	f.Add(indexKey(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), recordRef("scope", "key")))
	f.Add([]byte("x/"))
	f.Add(append([]byte("x/0123456789ab"), 200, 'a'))
	f.Fuzz(func(t *testing.T, k []byte) {
		at, ref, err := parseIndexKey(k)
		if err != nil {
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("err %v does not wrap errCorrupt", err)
			}
			return
		}
		scope, key := parseRef(ref)
		if !bytes.Equal(indexKey(at, recordRef(scope, key)), k) {
			t.Fatalf("index key %q does not re-encode", k)
		}
	})
}
