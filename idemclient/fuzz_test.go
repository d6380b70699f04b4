package idemclient

import (
	"errors"
	"testing"

	"github.com/idemkit/idem"
)

var beginSeeds = []string{
	`{"decision":"acquired","token":7,"attempt":1,"lease_until":"2030-01-02T03:04:05.123456789Z","takeover":false,"checkpoint":null}`,
	`{"decision":"acquired","token":7,"attempt":2,"lease_until":"2030-01-02T03:04:05Z","takeover":true,"checkpoint":{"point":"p","data":"AAE="}}`,
	`{"decision":"replay","outcome":{"data":"aGk=","meta":{"k":"v"}},"completed_at":"2030-01-02T03:04:05Z","expires_at":"2030-01-03T03:04:05Z"}`,
	`{"decision":"in_flight","retry_after_ms":1234}`,
	`{"decision":"bogus"}`,
	`{"decision":null}`,
	`{"decision":"in_flight","retry_after_ms":1e400}`,
	"\xff\xfe",
	``,
}

// FuzzDecodeBegin: any body of a 200 answer to begin decodes to a valid
// result or to an error wrapping ErrProtocol, never a panic.
func FuzzDecodeBegin(f *testing.F) {
	for _, s := range beginSeeds {
		f.Add([]byte(s))
	}
	p := &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: 1, Window: 1}
	f.Fuzz(func(t *testing.T, body []byte) {
		res, err := decodeBegin(p, body)
		if err != nil {
			if !errors.Is(err, ErrProtocol) || res != nil {
				t.Fatalf("error %v (result %+v) does not wrap ErrProtocol", err, res)
			}
			return
		}
		rec := res.Record
		switch res.Decision {
		case idem.Acquired:
			if rec == nil || rec.Token <= 0 || rec.Attempts <= 0 || rec.State != idem.StatePending {
				t.Fatalf("acquired with %+v", rec)
			}
		case idem.Replay:
			if rec == nil || rec.Outcome == nil || rec.State != idem.StateCompleted {
				t.Fatalf("replay with %+v", rec)
			}
		case idem.InFlight:
			if res.RetryAfter <= 0 {
				t.Fatalf("in flight with retry after %s", res.RetryAfter)
			}
		default:
			t.Fatalf("decision %q accepted", res.Decision)
		}
	})
}

// FuzzDecodeRecord: any record body decodes to a record with a valid state
// or to ErrProtocol.
func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte(`{"scope":"s","key":"k","fingerprint":"f","state":"completed","token":7,"attempts":1,"lease_until":"2030-01-02T03:04:05Z","checkpoint":null,"outcome":{"data":"","meta":{}},"created":"2030-01-02T03:04:05Z","completed":"2030-01-02T03:04:05Z","expires":"2030-01-02T03:04:05Z","retain_until":"2030-01-02T03:04:05Z","window_ms":86400000,"retention_ms":0}`))
	f.Add([]byte(`{"scope":"s","key":"k","state":"pending","token":1,"attempts":1,"checkpoint":{"point":"p","data":"AA=="}}`))
	f.Add([]byte(`{"scope":"s","key":"k","state":"released","token":1,"attempts":1,"window_ms":-1}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		rec, err := decodeRecord("get", body)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if !rec.State.Valid() || rec.Token <= 0 || rec.Scope == "" || rec.Key == "" || rec.Window < 0 || rec.Retention < 0 ||
			(rec.State == idem.StateCompleted && rec.Outcome == nil) {
			t.Fatalf("accepted %+v", rec)
		}
	})
}

// FuzzDecodeList: a page decodes within its limit and scope, or to
// ErrProtocol.
func FuzzDecodeList(f *testing.F) {
	f.Add([]byte(`{"records":[{"scope":"s","key":"a","state":"pending","token":1,"attempts":1}],"next_cursor":"x"}`))
	f.Add([]byte(`{"records":[],"next_cursor":""}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		p := &idem.ListParams{Scope: "s", Limit: 2}
		res, err := decodeList(p, body)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if len(res.Records) > p.Limit {
			t.Fatalf("%d records over the limit", len(res.Records))
		}
		for _, r := range res.Records {
			if r.Scope != p.Scope {
				t.Fatalf("record of scope %q accepted", r.Scope)
			}
		}
	})
}

// FuzzDecodeProblem: any error answer becomes a *ProblemError wrapping a
// sentinel.
func FuzzDecodeProblem(f *testing.F) {
	f.Add(409, "application/problem+json", []byte(`{"type":"https://github.com/idemkit/idem/blob/main/docs/api.md#lease-lost","title":"t","status":409,"detail":"d"}`))
	f.Add(404, "text/html", []byte(`<html>Not Found</html>`))
	f.Add(503, "application/json; charset=utf-8", []byte(`{"type":5}`))
	f.Add(500, "", []byte("\x00\x01\xff"))
	f.Fuzz(func(t *testing.T, status int, contentType string, body []byte) {
		pe := decodeProblem("get", status, contentType, body)
		if pe == nil || pe.Err == nil || pe.Status != status {
			t.Fatalf("decodeProblem: %+v", pe)
		}
		_ = pe.Error()
	})
}
