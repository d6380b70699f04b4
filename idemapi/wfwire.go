package idemapi

import (
	"encoding/json"
	"maps"
	"slices"

	"github.com/idemkit/idem/workflow"
)

// The wire schema of the workflow routes (docs/api.md, "Workflows"),
// shared by the server, idemclient and `idem wf --json`. Inputs, event
// payloads and action results are JSON values on the wire; bytes that are
// no JSON (an instance started by Go code with other bytes) travel as
// base64 in the *_base64 field beside them instead.

// Reuse policies of StartWorkflowRequest.ReusePolicy, the names of
// workflow.ReusePolicy's values.
const (
	ReuseRejectDuplicate = "reject_duplicate"
	ReuseAllowIfFailed   = "allow_if_failed"
	ReuseAllowAlways     = "allow_always"
)

// ParseReusePolicy returns the workflow.ReusePolicy named s ("" is
// reject_duplicate); ok is false for an unknown name.
func ParseReusePolicy(s string) (p workflow.ReusePolicy, ok bool) {
	switch s {
	case "", ReuseRejectDuplicate:
		return workflow.RejectDuplicate, true
	case ReuseAllowIfFailed:
		return workflow.AllowIfFailed, true
	case ReuseAllowAlways:
		return workflow.AllowAlways, true
	}
	return 0, false
}

// WorkflowType is one registered (name, version) of GET and POST
// /v1/workflow-types.
type WorkflowType struct {
	Name    string `json:"name"`
	Version int    `json:"version"`
	// Fingerprint is workflow.Definition.Fingerprint: equal fingerprints,
	// equal state machines (and documents, for declarative types).
	Fingerprint string `json:"fingerprint"`
	// Latest is true for the greatest registered version, the one a start
	// without a version runs.
	Latest bool `json:"latest"`
	// Declarative is true for a type read from a document (its
	// Definition.Source is set), false for one defined in Go.
	Declarative bool                 `json:"declarative"`
	Initial     string               `json:"initial"`
	States      []WorkflowState      `json:"states"`
	Transitions []WorkflowTransition `json:"transitions"`
}

// WorkflowState is a state of a WorkflowType.
type WorkflowState struct {
	Name string `json:"name"`
	// Terminal is "success", "failure", or left out.
	Terminal     string `json:"terminal,omitempty"`
	OnEnter      string `json:"on_enter,omitempty"` // the action's name
	TimeoutMS    int64  `json:"timeout_ms,omitempty"`
	TimeoutEvent string `json:"timeout_event,omitempty"`
}

// WorkflowTransition is a transition of a WorkflowType; Event is "" for
// an automatic one, Action the name of its action ("" for none).
type WorkflowTransition struct {
	From   string `json:"from"`
	Event  string `json:"event"`
	To     string `json:"to"`
	Action string `json:"action,omitempty"`
}

// WorkflowTypesResponse is the 200 answer of GET /v1/workflow-types: the
// types the token may use, by name, then version.
type WorkflowTypesResponse struct {
	Types []*WorkflowType `json:"types"`
}

// StartWorkflowRequest is the body of POST /v1/workflows. Version 0 or
// left out starts the latest version. Input is any JSON value (left out:
// none); ReusePolicy is one of the Reuse* names ("" for reject_duplicate).
type StartWorkflowRequest struct {
	Type        string          `json:"type"`
	Version     int             `json:"version,omitempty"`
	ID          string          `json:"id"`
	Input       json.RawMessage `json:"input,omitempty"`
	ReusePolicy string          `json:"reuse_policy,omitempty"`
}

// SignalWorkflowRequest is the body of POST /v1/workflows/{id}/events.
// Payload is any JSON value (left out: none).
type SignalWorkflowRequest struct {
	EventID string          `json:"event_id"`
	Event   string          `json:"event"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// SignalWorkflowResponse is the 200 answer of POST
// /v1/workflows/{id}/events: Duplicate is true when the event id had been
// received before (nothing changed).
type SignalWorkflowResponse struct {
	Duplicate bool `json:"duplicate"`
}

// CancelWorkflowRequest is the body of POST /v1/workflows/{id}/cancel.
type CancelWorkflowRequest struct {
	Reason string `json:"reason,omitempty"`
}

// RetryWorkflowRequest is the body of POST /v1/workflows/{id}/retry: an
// empty object (or no body at all).
type RetryWorkflowRequest struct{}

// ResumeWorkflowRequest is the body of POST /v1/workflows/{id}/resume.
type ResumeWorkflowRequest struct {
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
}

// Workflow is an instance as the API shows it: GET /v1/workflows/{id}
// (with History), a list page and the answers of start, cancel, retry and
// resume (without). Times are RFC 3339 in UTC, left out when unset.
type Workflow struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	Version int    `json:"version"`
	Run     int    `json:"run"`
	State   string `json:"state"`
	Status  string `json:"status"`
	// Input is the instance's input as JSON; InputBase64 holds it instead
	// when it is not JSON. Both are left out when there is none.
	Input       json.RawMessage `json:"input,omitempty"`
	InputBase64 []byte          `json:"input_base64,omitempty"`
	Fingerprint string          `json:"fingerprint"`
	// Owner is the engine advancing the instance ("" when none), Token
	// its fencing token.
	Owner      string           `json:"owner,omitempty"`
	Token      int64            `json:"token"`
	LeaseUntil string           `json:"lease_until,omitempty"`
	Steps      int              `json:"steps"`
	Pending    *WorkflowPending `json:"pending,omitempty"`
	// Attempt counts the failed attempts of the pending action.
	Attempt   int    `json:"attempt"`
	NotBefore string `json:"not_before,omitempty"`
	// Inbox lists the events received and not yet processed (without
	// their payloads).
	Inbox []WorkflowEvent `json:"inbox,omitempty"`
	// Results holds the latest result of each completed action that is
	// JSON, by action name (results that are not JSON are left out).
	Results         map[string]json.RawMessage `json:"results,omitempty"`
	CancelRequested bool                       `json:"cancel_requested"`
	CancelReason    string                     `json:"cancel_reason,omitempty"`
	Error           string                     `json:"error,omitempty"`
	TimeoutAt       string                     `json:"timeout_at,omitempty"`
	WakeAt          string                     `json:"wake_at,omitempty"`
	Created         string                     `json:"created"`
	Updated         string                     `json:"updated"`
	Finished        string                     `json:"finished,omitempty"`
	// History is every entry, oldest first: GET /v1/workflows/{id} only.
	History []WorkflowEntry `json:"history,omitempty"`
}

// WorkflowPending is the action an instance is running.
type WorkflowPending struct {
	Step    int    `json:"step"`
	Action  string `json:"action"`
	OnEnter bool   `json:"on_enter"`
	Event   string `json:"event,omitempty"`
	EventID string `json:"event_id,omitempty"`
	From    string `json:"from,omitempty"`
	To      string `json:"to"`
}

// WorkflowEvent is a queued event.
type WorkflowEvent struct {
	EventID string `json:"event_id"`
	Event   string `json:"event"`
}

// WorkflowEntry is one line of an instance's history (workflow.Entry).
type WorkflowEntry struct {
	Seq        int64  `json:"seq"`
	At         string `json:"at"`
	Kind       string `json:"kind"`
	Run        int    `json:"run"`
	State      string `json:"state,omitempty"`
	Event      string `json:"event,omitempty"`
	EventID    string `json:"event_id,omitempty"`
	From       string `json:"from,omitempty"`
	To         string `json:"to,omitempty"`
	Action     string `json:"action,omitempty"`
	StepKey    string `json:"step_key,omitempty"`
	Token      int64  `json:"token,omitempty"`
	Attempt    int    `json:"attempt,omitempty"`
	Replayed   bool   `json:"replayed,omitempty"`
	Error      string `json:"error,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Status     string `json:"status,omitempty"`
	DurationMS int64  `json:"duration_ms,omitempty"`
}

// WorkflowListResponse is the 200 answer of GET /v1/workflows. Next is
// the after of the next page, "" on the last.
type WorkflowListResponse struct {
	Workflows []*Workflow `json:"workflows"`
	Next      string      `json:"next"`
}

// EncodeWorkflowType returns def as the API shows it; latest says whether
// it is its type's greatest version.
func EncodeWorkflowType(def *workflow.Definition, latest bool) *WorkflowType {
	t := &WorkflowType{Name: def.Name, Version: def.Version, Fingerprint: def.Fingerprint(), Latest: latest,
		Declarative: def.Source != nil, Initial: def.Initial,
		States: make([]WorkflowState, 0, len(def.States)), Transitions: make([]WorkflowTransition, 0, len(def.Transitions))}
	for _, s := range def.States {
		ws := WorkflowState{Name: s.Name, Terminal: string(s.Terminal), TimeoutMS: s.Timeout.Milliseconds(), TimeoutEvent: s.TimeoutEvent}
		if s.OnEnter != nil {
			ws.OnEnter = s.OnEnter.Name
		}
		t.States = append(t.States, ws)
	}
	for _, tr := range def.Transitions {
		wt := WorkflowTransition{From: tr.From, Event: tr.Event, To: tr.To}
		if tr.Action != nil {
			wt.Action = tr.Action.Name
		}
		t.Transitions = append(t.Transitions, wt)
	}
	return t
}

// jsonOrBytes splits b into a JSON value or, when b is not JSON, bytes.
func jsonOrBytes(b []byte) (json.RawMessage, []byte) {
	switch {
	case len(b) == 0:
		return nil, nil
	case json.Valid(b):
		return json.RawMessage(slices.Clone(b)), nil
	}
	return nil, slices.Clone(b)
}

// EncodeWorkflow returns in as the API shows it, with its history when
// history is true.
func EncodeWorkflow(in *workflow.Instance, history bool) *Workflow {
	w := &Workflow{ID: in.ID, Type: in.Type, Version: in.Version, Run: in.Run, State: in.State, Status: string(in.Status),
		Fingerprint: in.Fingerprint, Owner: in.Owner, Token: in.Token, LeaseUntil: FormatTime(in.LeaseUntil),
		Steps: in.Steps, Attempt: in.Attempt, NotBefore: FormatTime(in.NotBefore),
		CancelRequested: in.CancelRequested, CancelReason: in.CancelReason, Error: in.Error,
		TimeoutAt: FormatTime(in.TimeoutAt), WakeAt: FormatTime(in.WakeAt),
		Created: FormatTime(in.Created), Updated: FormatTime(in.Updated), Finished: FormatTime(in.Finished)}
	w.Input, w.InputBase64 = jsonOrBytes(in.Input)
	if p := in.Pending; p != nil {
		w.Pending = &WorkflowPending{Step: p.Step, Action: p.Action, OnEnter: p.OnEnter, Event: p.Event, EventID: p.EventID, From: p.From, To: p.To}
	}
	for _, ev := range in.Inbox {
		w.Inbox = append(w.Inbox, WorkflowEvent{EventID: ev.ID, Event: ev.Event})
	}
	for _, name := range slices.Sorted(maps.Keys(in.Results)) {
		if v := in.Results[name]; len(v) > 0 && json.Valid(v) {
			if w.Results == nil {
				w.Results = map[string]json.RawMessage{}
			}
			w.Results[name] = json.RawMessage(slices.Clone(v))
		}
	}
	if history {
		w.History = make([]WorkflowEntry, 0, len(in.History))
		for _, e := range in.History {
			w.History = append(w.History, WorkflowEntry{Seq: e.Seq, At: FormatTime(e.At), Kind: string(e.Kind), Run: e.Run,
				State: e.State, Event: e.Event, EventID: e.EventID, From: e.From, To: e.To, Action: e.Action, StepKey: e.StepKey,
				Token: e.Token, Attempt: e.Attempt, Replayed: e.Replayed, Error: e.Error, Reason: e.Reason,
				Status: string(e.Status), DurationMS: e.Duration.Milliseconds()})
		}
	}
	return w
}
