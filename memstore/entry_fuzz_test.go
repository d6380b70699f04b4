package memstore

import (
	"bytes"
	"maps"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/idemkit/idem"
)

// FuzzEntryRoundTrip: a record and outcome the store accepts come back
// from their entry as they went in: names, fingerprint, numbers, times (in
// UTC), state, Data and Meta (nil kept apart from empty), and the map key
// is appendKey's.
func FuzzEntryRoundTrip(f *testing.F) {
	f.Add("s", "k", "f", int64(1), int64(2), int64(3600e9), int64(0), int64(1e18), uint8(1), []byte("data"), "status", "201", false)
	f.Add("", "", "", int64(0), int64(0), int64(0), int64(-1), int64(-9e18), uint8(0), []byte(nil), "", "", true)
	f.Fuzz(func(t *testing.T, scope, key, fp string, token, attempts, window, retention, unixNano int64, state uint8, data []byte, mk, mv string, metaNil bool) {
		if len(scope) > idem.MaxScopeLen || len(key) > idem.MaxKeyLen || !utf8.ValidString(mk) || !utf8.ValidString(mv) {
			t.Skip("the store refuses these before encoding")
		}
		at := time.Unix(0, unixNano).In(time.FixedZone("z", 3600))
		rec := &idem.Record{Scope: scope, Key: key, Fingerprint: fp, State: states[int(state)%len(states)],
			Token: token, Attempts: int(attempts), Window: time.Duration(window), Retention: time.Duration(retention),
			LeaseUntil: at, Created: at.Add(-time.Second), Completed: at.Add(time.Second), Expires: at.Add(2 * time.Second), RetainUntil: at.Add(3 * time.Second)}
		out := &idem.Outcome{Data: data}
		if !metaNil {
			out.Meta = map[string]string{mk: mv, "other": ""}
		}
		e := newEntry(rec, out)
		if got, want := e.key(), string(appendKey(nil, scope, key)); got != want {
			t.Fatalf("key %q, want %q", got, want)
		}
		back := e.record()
		for i, tm := range recordTimes(&back) {
			if want := *recordTimes(rec)[i]; !tm.Equal(want) || tm.Location() != time.UTC {
				t.Fatalf("time %d: %v, want %v in UTC", i, tm, want)
			}
		}
		if back.Scope != scope || back.Key != key || back.Fingerprint != fp || back.State != rec.State ||
			back.Token != token || back.Attempts != rec.Attempts || back.Window != rec.Window || back.Retention != rec.Retention {
			t.Fatalf("record %+v, want %+v", back, rec)
		}
		if rec.State != idem.StateCompleted {
			return
		}
		var c recordCopy
		got := e.copyTo(&c, &back)
		if !bytes.Equal(got.Outcome.Data, data) || (got.Outcome.Meta == nil) != (out.Meta == nil) || !maps.Equal(got.Outcome.Meta, out.Meta) {
			t.Fatalf("outcome %q %v, want %q %v", got.Outcome.Data, got.Outcome.Meta, data, out.Meta)
		}
	})
}
