package idemclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
)

// The wire types are idemapi's: the server's and this client's are one
// schema. Unknown fields in answers are accepted, so a newer server may add
// some.

// millis writes a duration as the API's integer milliseconds, rounding up
// so that a positive duration never becomes 0 (which the server reads as
// "invalid" or "default").
func millis(d time.Duration) *int64 {
	ms := int64(d / time.Millisecond)
	if d%time.Millisecond != 0 {
		ms++
	}
	return &ms
}

// durationMS reads integer milliseconds, refusing what a Duration cannot
// hold.
func durationMS(op, field string, ms int64) (time.Duration, error) {
	if ms < 0 || ms > math.MaxInt64/int64(time.Millisecond) {
		return 0, protocolf(op, "%s %d is out of range", field, ms)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// decodeJSON decodes exactly one JSON object from body into v.
func decodeJSON(op string, body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return protocolf(op, "the body is not the JSON the API defines: %v (%q)", err, snippet(body))
	}
	if dec.More() {
		return protocolf(op, "the body holds more than one JSON value")
	}
	return nil
}

func parseTime(op, field, s string, required bool) (time.Time, error) {
	if s == "" {
		if required {
			return time.Time{}, protocolf(op, "%s is missing", field)
		}
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, protocolf(op, "%s %q is not an RFC 3339 time", field, snippet([]byte(s)))
	}
	return t, nil
}

func parseTimePtr(op, field string, s *string) (time.Time, error) {
	if s == nil {
		return time.Time{}, protocolf(op, "%s is missing", field)
	}
	return parseTime(op, field, *s, true)
}

// decodeCheckpoint reads a checkpoint that may be null.
func decodeCheckpoint(op string, raw []byte) (*idem.Checkpoint, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c idem.Checkpoint
	if err := decodeJSON(op, raw, &c); err != nil {
		return nil, err
	}
	return checkCheckpoint(op, &c)
}

func checkCheckpoint(op string, c *idem.Checkpoint) (*idem.Checkpoint, error) {
	if c == nil {
		return nil, nil
	}
	if c.Point == "" {
		return nil, protocolf(op, "the checkpoint has no point")
	}
	return c, nil
}

// decodeBegin reads the 200 answer of POST /v1/begin for p.
func decodeBegin(p *idem.BeginParams, body []byte) (*idem.BeginResult, error) {
	const op = "begin"
	var r idemapi.BeginResponse
	if err := decodeJSON(op, body, &r); err != nil {
		return nil, err
	}
	if r.Decision == "" {
		return nil, protocolf(op, "the answer has no decision")
	}
	rec := &idem.Record{Scope: p.Scope, Key: p.Key, Fingerprint: p.Fingerprint, Window: p.Window, Retention: p.Retention}
	res := &idem.BeginResult{Decision: r.Decision, Record: rec}
	switch res.Decision {
	case idem.Acquired:
		switch {
		case r.Token == nil || *r.Token <= 0:
			return nil, protocolf(op, "acquired without a positive token")
		case r.Attempt == nil || *r.Attempt <= 0:
			return nil, protocolf(op, "acquired without a positive attempt")
		case r.Takeover == nil:
			return nil, protocolf(op, "acquired without takeover")
		}
		lease, err := parseTimePtr(op, "lease_until", r.LeaseUntil)
		if err != nil {
			return nil, err
		}
		var cp *idem.Checkpoint
		if r.Checkpoint != nil {
			if cp, err = decodeCheckpoint(op, *r.Checkpoint); err != nil {
				return nil, err
			}
		}
		rec.State, rec.Token, rec.Attempts, rec.LeaseUntil, rec.Checkpoint = idem.StatePending, *r.Token, *r.Attempt, lease, cp
		res.Takeover = *r.Takeover
	case idem.Replay:
		if r.Outcome == nil {
			return nil, protocolf(op, "replay without an outcome")
		}
		out := r.Outcome
		completed, err := parseTimePtr(op, "completed_at", r.CompletedAt)
		if err != nil {
			return nil, err
		}
		expires, err := parseTimePtr(op, "expires_at", r.ExpiresAt)
		if err != nil {
			return nil, err
		}
		rec.State, rec.Outcome, rec.Completed, rec.Expires = idem.StateCompleted, out, completed, expires
	case idem.InFlight:
		if r.RetryAfterMS == nil {
			return nil, protocolf(op, "in flight without retry_after_ms")
		}
		d, err := durationMS(op, "retry_after_ms", *r.RetryAfterMS)
		if err != nil {
			return nil, err
		}
		if d == 0 { // the server rounds up: a live lease has at least 1 ms
			return nil, protocolf(op, "in flight with retry_after_ms 0")
		}
		rec.State, res.RetryAfter = idem.StatePending, d
	default:
		return nil, protocolf(op, "unknown decision %q", snippet([]byte(r.Decision)))
	}
	return res, nil
}

// decodeRecord reads the answer of GET /v1/keys/{key}.
func decodeRecord(op string, body []byte) (*idem.Record, error) {
	var r idemapi.Record
	if err := decodeJSON(op, body, &r); err != nil {
		return nil, err
	}
	return checkRecord(op, &r)
}

// checkRecord turns a record of the API into an idem.Record.
func checkRecord(op string, r *idemapi.Record) (*idem.Record, error) {
	switch {
	case r == nil:
		return nil, protocolf(op, "a null record")
	case r.Scope == "":
		return nil, protocolf(op, "the record has no scope")
	case r.Key == "":
		return nil, protocolf(op, "the record has no key")
	case !r.State.Valid():
		return nil, protocolf(op, "the record has no valid state")
	case r.Token <= 0:
		return nil, protocolf(op, "the record has no positive token")
	case r.Attempts < 0:
		return nil, protocolf(op, "the record has a negative attempt count")
	}
	rec := &idem.Record{Scope: r.Scope, Key: r.Key, Fingerprint: r.Fingerprint, State: r.State, Token: r.Token, Attempts: r.Attempts, Outcome: r.Outcome}
	var err error
	times := []struct {
		field string
		s     string
		dst   *time.Time
	}{
		{"lease_until", r.LeaseUntil, &rec.LeaseUntil},
		{"created", r.Created, &rec.Created},
		{"completed", r.Completed, &rec.Completed},
		{"expires", r.Expires, &rec.Expires},
		{"retain_until", r.RetainUntil, &rec.RetainUntil},
	}
	for _, f := range times {
		if *f.dst, err = parseTime(op, f.field, f.s, false); err != nil {
			return nil, err
		}
	}
	if rec.Window, err = durationMS(op, "window_ms", r.WindowMS); err != nil {
		return nil, err
	}
	if rec.Retention, err = durationMS(op, "retention_ms", r.RetentionMS); err != nil {
		return nil, err
	}
	if rec.Checkpoint, err = checkCheckpoint(op, r.Checkpoint); err != nil {
		return nil, err
	}
	if rec.State == idem.StateCompleted && rec.Outcome == nil {
		return nil, protocolf(op, "a completed record without an outcome")
	}
	return rec, nil
}

// decodeList reads the answer of GET /v1/keys for p; every record must be
// of the scope (and state) asked for.
func decodeList(p *idem.ListParams, body []byte) (*idem.ListResult, error) {
	const op = "list"
	var r idemapi.ListResponse
	if err := decodeJSON(op, body, &r); err != nil {
		return nil, err
	}
	if r.Records == nil || r.NextCursor == nil {
		return nil, protocolf(op, "the answer lacks records or next_cursor")
	}
	if len(r.Records) > p.Limit {
		return nil, protocolf(op, "%d records, over the limit of %d", len(r.Records), p.Limit)
	}
	res := &idem.ListResult{Records: make([]*idem.Record, 0, len(r.Records)), NextCursor: *r.NextCursor}
	for i, raw := range r.Records {
		rec, err := checkRecord(fmt.Sprintf("%s: record %d", op, i), raw)
		if err != nil {
			return nil, err
		}
		if rec.Scope != p.Scope || (p.State != "" && rec.State != p.State) {
			return nil, protocolf(op, "record %d is of scope %q in state %s, not what was asked", i, snippet([]byte(rec.Scope)), rec.State)
		}
		res.Records = append(res.Records, rec)
	}
	if res.NextCursor != "" && len(res.Records) == 0 {
		return nil, protocolf(op, "a next cursor on an empty page")
	}
	return res, nil
}

// decodeProblem turns an error answer into a *ProblemError.
func decodeProblem(op string, status int, contentType string, body []byte) *ProblemError {
	pe := &ProblemError{Op: op, Status: status, Err: statusSentinel(status)}
	mt, _, _ := mime.ParseMediaType(contentType)
	var p idemapi.Problem
	if (mt == "application/problem+json" || mt == "application/json") && json.Unmarshal(body, &p) == nil {
		if name, ok := strings.CutPrefix(p.Type, idemapi.ProblemBase); ok {
			if sentinel, known := problemSentinels[name]; known {
				pe.Name, pe.Title, pe.Detail, pe.Err = name, p.Title, p.Detail, sentinel
				return pe
			}
			pe.Name = snippet([]byte(name))
		}
		pe.Title, pe.Detail = snippet([]byte(p.Title)), snippet([]byte(p.Detail))
		if pe.Title == "" && pe.Detail == "" {
			pe.Detail = snippet(body)
		}
		return pe
	}
	if text := snippet(body); text != "" {
		pe.Detail = text
	} else {
		pe.Detail = http.StatusText(status)
	}
	return pe
}

// isProblem reports whether err is a problem named name.
func isProblem(err error, name string) bool {
	var pe *ProblemError
	return errors.As(err, &pe) && pe.Name == name
}
