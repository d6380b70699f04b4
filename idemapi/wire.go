package idemapi

import (
	"encoding/json"
	"time"

	"github.com/idemkit/idem"
)

// The wire schema of docs/api.md, shared by the server and idemclient.
// Fields a response may leave out are pointers, so that a client tells a
// missing field from a zero one; outcomes and checkpoints travel as the
// core's idem.Outcome and idem.Checkpoint (data as base64).

// BeginRequest is the body of POST /v1/begin. A duration left out (nil)
// takes the server's default.
type BeginRequest struct {
	Scope       string `json:"scope"`
	Key         string `json:"key"`
	Fingerprint string `json:"fingerprint"`
	LeaseMS     *int64 `json:"lease_ms,omitempty"`
	WindowMS    *int64 `json:"window_ms,omitempty"`
	RetentionMS *int64 `json:"retention_ms,omitempty"`
}

// BeginResponse is the 200 answer of POST /v1/begin. Which fields are set
// depends on Decision: acquired sets Token, Attempt, LeaseUntil, Takeover
// and Checkpoint (the JSON null when there is none); replay sets Outcome,
// CompletedAt and ExpiresAt; in_flight sets RetryAfterMS.
type BeginResponse struct {
	Decision idem.Decision `json:"decision"`
	// acquired
	Token      *int64           `json:"token,omitempty"`
	Attempt    *int             `json:"attempt,omitempty"`
	LeaseUntil *string          `json:"lease_until,omitempty"`
	Takeover   *bool            `json:"takeover,omitempty"`
	Checkpoint *json.RawMessage `json:"checkpoint,omitempty"`
	// replay
	Outcome     *idem.Outcome `json:"outcome,omitempty"`
	CompletedAt *string       `json:"completed_at,omitempty"`
	ExpiresAt   *string       `json:"expires_at,omitempty"`
	// in_flight
	RetryAfterMS *int64 `json:"retry_after_ms,omitempty"`
}

// CompleteRequest is the body of POST /v1/complete.
type CompleteRequest struct {
	Scope   string       `json:"scope"`
	Key     string       `json:"key"`
	Token   int64        `json:"token"`
	Outcome idem.Outcome `json:"outcome"`
}

// CompleteResponse is the 200 answer of POST /v1/complete.
type CompleteResponse struct {
	CompletedAt *string `json:"completed_at"`
	ExpiresAt   *string `json:"expires_at"`
	Created     string  `json:"created"`
}

// ReleaseRequest is the body of POST /v1/release; its answer is {}.
type ReleaseRequest struct {
	Scope string `json:"scope"`
	Key   string `json:"key"`
	Token int64  `json:"token"`
}

// ExtendRequest is the body of POST /v1/extend. LeaseMS left out (nil)
// takes the server's default lease.
type ExtendRequest struct {
	Scope   string `json:"scope"`
	Key     string `json:"key"`
	Token   int64  `json:"token"`
	LeaseMS *int64 `json:"lease_ms,omitempty"`
}

// ExtendResponse is the 200 answer of POST /v1/extend.
type ExtendResponse struct {
	LeaseUntil *string `json:"lease_until"`
}

// CheckpointRequest is the body of POST /v1/checkpoint; its answer is {}.
type CheckpointRequest struct {
	Scope string `json:"scope"`
	Key   string `json:"key"`
	Token int64  `json:"token"`
	Point string `json:"point"`
	Data  []byte `json:"data"`
}

// SweepRequest is the body of POST /v1/sweep; Limit 0 means no bound.
type SweepRequest struct {
	Limit int `json:"limit"`
}

// SweepResponse is the 200 answer of POST /v1/sweep.
type SweepResponse struct {
	Deleted *int `json:"deleted"`
}

// Record is the record object of GET /v1/keys/{key} and of a list page;
// idem keys --json prints the same. Times are RFC 3339 in UTC, empty
// (left out) when unset.
type Record struct {
	Scope       string           `json:"scope"`
	Key         string           `json:"key"`
	Fingerprint string           `json:"fingerprint"`
	State       idem.State       `json:"state"`
	Token       int64            `json:"token"`
	Attempts    int              `json:"attempts"`
	LeaseUntil  string           `json:"lease_until,omitempty"`
	Checkpoint  *idem.Checkpoint `json:"checkpoint"`
	Outcome     *idem.Outcome    `json:"outcome"`
	Created     string           `json:"created,omitempty"`
	Completed   string           `json:"completed,omitempty"`
	Expires     string           `json:"expires,omitempty"`
	RetainUntil string           `json:"retain_until,omitempty"`
	WindowMS    int64            `json:"window_ms"`
	RetentionMS int64            `json:"retention_ms"`
}

// ListResponse is the 200 answer of GET /v1/keys. NextCursor is empty on
// the last page.
type ListResponse struct {
	Records    []*Record `json:"records"`
	NextCursor *string   `json:"next_cursor"`
}

// FormatTime writes t as the API does: RFC 3339 with nanoseconds in UTC;
// "" when t is zero.
func FormatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// outcomeJSON makes data always a string ("" rather than null for empty).
func outcomeJSON(o *idem.Outcome) *idem.Outcome {
	if o == nil {
		return nil
	}
	c := *o
	if c.Data == nil {
		c.Data = []byte{}
	}
	return &c
}

func checkpointJSON(c *idem.Checkpoint) *idem.Checkpoint {
	if c == nil {
		return nil
	}
	cp := *c
	if cp.Data == nil {
		cp.Data = []byte{}
	}
	return &cp
}

// EncodeRecord returns r as the API shows it.
func EncodeRecord(r *idem.Record) *Record {
	return &Record{
		Scope: r.Scope, Key: r.Key, Fingerprint: r.Fingerprint, State: r.State,
		Token: r.Token, Attempts: r.Attempts,
		LeaseUntil:  FormatTime(r.LeaseUntil),
		Checkpoint:  checkpointJSON(r.Checkpoint),
		Outcome:     outcomeJSON(r.Outcome),
		Created:     FormatTime(r.Created),
		Completed:   FormatTime(r.Completed),
		Expires:     FormatTime(r.Expires),
		RetainUntil: FormatTime(r.RetainUntil),
		WindowMS:    r.Window.Milliseconds(),
		RetentionMS: r.Retention.Milliseconds(),
	}
}
