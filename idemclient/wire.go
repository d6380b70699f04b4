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
)

// Wire types of docs/api.md. Responses are decoded into pointers so that a
// missing field is told from a zero one; unknown fields are accepted, so a
// newer server may add some.

type beginRequest struct {
	Scope       string `json:"scope"`
	Key         string `json:"key"`
	Fingerprint string `json:"fingerprint"`
	LeaseMS     int64  `json:"lease_ms"`
	WindowMS    int64  `json:"window_ms"`
	RetentionMS int64  `json:"retention_ms"`
}

type completeRequest struct {
	Scope   string       `json:"scope"`
	Key     string       `json:"key"`
	Token   int64        `json:"token"`
	Outcome idem.Outcome `json:"outcome"`
}

type tokenRequest struct {
	Scope string `json:"scope"`
	Key   string `json:"key"`
	Token int64  `json:"token"`
}

type extendRequest struct {
	Scope   string `json:"scope"`
	Key     string `json:"key"`
	Token   int64  `json:"token"`
	LeaseMS int64  `json:"lease_ms"`
}

type checkpointRequest struct {
	Scope string `json:"scope"`
	Key   string `json:"key"`
	Token int64  `json:"token"`
	Point string `json:"point"`
	Data  []byte `json:"data"`
}

type sweepRequest struct {
	Limit int `json:"limit"`
}

type beginResponse struct {
	Decision     *string          `json:"decision"`
	Token        *int64           `json:"token"`
	Attempt      *int             `json:"attempt"`
	LeaseUntil   *string          `json:"lease_until"`
	Takeover     *bool            `json:"takeover"`
	Checkpoint   *json.RawMessage `json:"checkpoint"`
	Outcome      *outcomeJSON     `json:"outcome"`
	CompletedAt  *string          `json:"completed_at"`
	ExpiresAt    *string          `json:"expires_at"`
	RetryAfterMS *int64           `json:"retry_after_ms"`
}

type outcomeJSON struct {
	Data *[]byte           `json:"data"`
	Meta map[string]string `json:"meta"`
}

type checkpointJSON struct {
	Point *string `json:"point"`
	Data  *[]byte `json:"data"`
}

type recordJSON struct {
	Scope       *string         `json:"scope"`
	Key         *string         `json:"key"`
	Fingerprint *string         `json:"fingerprint"`
	State       *string         `json:"state"`
	Token       *int64          `json:"token"`
	Attempts    *int            `json:"attempts"`
	LeaseUntil  string          `json:"lease_until"`
	Checkpoint  json.RawMessage `json:"checkpoint"`
	Outcome     json.RawMessage `json:"outcome"`
	Created     string          `json:"created"`
	Completed   string          `json:"completed"`
	Expires     string          `json:"expires"`
	RetainUntil string          `json:"retain_until"`
	WindowMS    int64           `json:"window_ms"`
	RetentionMS int64           `json:"retention_ms"`
}

type listResponse struct {
	Records    *[]json.RawMessage `json:"records"`
	NextCursor *string            `json:"next_cursor"`
}

type completeResponse struct {
	CompletedAt *string `json:"completed_at"`
	ExpiresAt   *string `json:"expires_at"`
	Created     string  `json:"created"`
}

type extendResponse struct {
	LeaseUntil *string `json:"lease_until"`
}

type sweepResponse struct {
	Deleted *int `json:"deleted"`
}

type problemJSON struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// millis writes a duration as the API's integer milliseconds, rounding up
// so that a positive duration never becomes 0 (which the server reads as
// "invalid" or "default").
func millis(d time.Duration) int64 {
	ms := d / time.Millisecond
	if d%time.Millisecond != 0 {
		ms++
	}
	return int64(ms)
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

func (o *outcomeJSON) outcome(op string) (*idem.Outcome, error) {
	if o.Data == nil {
		return nil, protocolf(op, "the outcome has no data")
	}
	return &idem.Outcome{Data: *o.Data, Meta: o.Meta}, nil
}

// decodeCheckpoint reads a checkpoint that may be null.
func decodeCheckpoint(op string, raw []byte) (*idem.Checkpoint, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c checkpointJSON
	if err := decodeJSON(op, raw, &c); err != nil {
		return nil, err
	}
	if c.Point == nil || *c.Point == "" {
		return nil, protocolf(op, "the checkpoint has no point")
	}
	cp := &idem.Checkpoint{Point: *c.Point}
	if c.Data != nil {
		cp.Data = *c.Data
	}
	return cp, nil
}

// decodeBegin reads the 200 answer of POST /v1/begin for p.
func decodeBegin(p *idem.BeginParams, body []byte) (*idem.BeginResult, error) {
	const op = "begin"
	var r beginResponse
	if err := decodeJSON(op, body, &r); err != nil {
		return nil, err
	}
	if r.Decision == nil {
		return nil, protocolf(op, "the answer has no decision")
	}
	rec := &idem.Record{Scope: p.Scope, Key: p.Key, Fingerprint: p.Fingerprint, Window: p.Window, Retention: p.Retention}
	res := &idem.BeginResult{Decision: idem.Decision(*r.Decision), Record: rec}
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
		out, err := r.Outcome.outcome(op)
		if err != nil {
			return nil, err
		}
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
		return nil, protocolf(op, "unknown decision %q", snippet([]byte(*r.Decision)))
	}
	return res, nil
}

// decodeRecord reads one record of GET /v1/keys/{key} or of a list.
func decodeRecord(op string, body []byte) (*idem.Record, error) {
	var r recordJSON
	if err := decodeJSON(op, body, &r); err != nil {
		return nil, err
	}
	switch {
	case r.Scope == nil || *r.Scope == "":
		return nil, protocolf(op, "the record has no scope")
	case r.Key == nil || *r.Key == "":
		return nil, protocolf(op, "the record has no key")
	case r.State == nil || !idem.State(*r.State).Valid():
		return nil, protocolf(op, "the record has no valid state")
	case r.Token == nil || *r.Token <= 0:
		return nil, protocolf(op, "the record has no positive token")
	case r.Attempts == nil || *r.Attempts < 0:
		return nil, protocolf(op, "the record has no attempt count")
	}
	rec := &idem.Record{Scope: *r.Scope, Key: *r.Key, State: idem.State(*r.State), Token: *r.Token, Attempts: *r.Attempts}
	if r.Fingerprint != nil {
		rec.Fingerprint = *r.Fingerprint
	}
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
	if rec.Checkpoint, err = decodeCheckpoint(op, r.Checkpoint); err != nil {
		return nil, err
	}
	if len(r.Outcome) > 0 && string(r.Outcome) != "null" {
		var o outcomeJSON
		if err := decodeJSON(op, r.Outcome, &o); err != nil {
			return nil, err
		}
		if rec.Outcome, err = o.outcome(op); err != nil {
			return nil, err
		}
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
	var r listResponse
	if err := decodeJSON(op, body, &r); err != nil {
		return nil, err
	}
	if r.Records == nil || r.NextCursor == nil {
		return nil, protocolf(op, "the answer lacks records or next_cursor")
	}
	if len(*r.Records) > p.Limit {
		return nil, protocolf(op, "%d records, over the limit of %d", len(*r.Records), p.Limit)
	}
	res := &idem.ListResult{Records: make([]*idem.Record, 0, len(*r.Records)), NextCursor: *r.NextCursor}
	for i, raw := range *r.Records {
		rec, err := decodeRecord(op, raw)
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", i, err)
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
	var p problemJSON
	if (mt == "application/problem+json" || mt == "application/json") && json.Unmarshal(body, &p) == nil {
		if name, ok := strings.CutPrefix(p.Type, ProblemBase); ok {
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
