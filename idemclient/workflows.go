package idemclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/workflow"
)

// The workflow routes of docs/api.md ("Workflows"). The token must be
// bound to the scope "wf:TYPE" of the workflow type used, or to "*".
// Errors wrap the sentinels of the other methods (idem.ErrInvalid,
// idem.ErrNotFound for an unknown instance, idem.ErrFingerprintMismatch
// for a start of an existing id with another type or input,
// idem.ErrNotImplemented for a server without a workflow engine,
// ErrForbidden, ...) and the workflow package's: workflow.ErrNotRegistered,
// ErrVersionConflict, ErrNotParked, ErrNotResumable and ErrFinished.

// WorkflowListParams filter ListWorkflows; zero fields match everything.
type WorkflowListParams struct {
	Type, State string
	// Status is one of workflow.Status's values, "" for any.
	Status string
	// After is the Next of the previous page ("" from the first).
	After string
	// Limit bounds the page, 1 to idem.MaxListSize; 0 means 100.
	Limit int
}

// workflowPath is the path of instance id (and of its action, if any):
// the id is one percent-encoded segment, "." and ".." included.
func workflowPath(id, action string) string {
	seg := url.PathEscape(id)
	if id == "." || id == ".." {
		seg = strings.ReplaceAll(seg, ".", "%2E")
	}
	p := "/v1/workflows/" + seg
	if action != "" {
		p += "/" + action
	}
	return p
}

func checkWorkflowID(op, id string) error {
	if err := idem.ValidateKey("wf", id); err != nil {
		return fmt.Errorf("idemclient: %s: the workflow id: %w", op, err)
	}
	return nil
}

// checkJSON refuses a value that is not JSON before it is sent (the
// encoder would fail with a less helpful error).
func checkJSON(op, field string, v json.RawMessage) error {
	if len(v) > 0 && !json.Valid(v) {
		return fmt.Errorf("%w: idemclient: %s: %s is not valid JSON", idem.ErrInvalid, op, field)
	}
	return nil
}

// decodeWorkflow reads an instance and checks what every answer has.
func decodeWorkflow(op string, body []byte, id string) (*idemapi.Workflow, error) {
	var w idemapi.Workflow
	if err := decodeJSON(op, body, &w); err != nil {
		return nil, err
	}
	if err := checkWorkflow(op, &w); err != nil {
		return nil, err
	}
	if id != "" && w.ID != id {
		return nil, protocolf(op, "asked for workflow %q, got %q", snippet([]byte(id)), snippet([]byte(w.ID)))
	}
	return &w, nil
}

func checkWorkflow(op string, w *idemapi.Workflow) error {
	switch {
	case w == nil:
		return protocolf(op, "a null workflow")
	case w.ID == "" || w.Type == "" || w.State == "" || w.Status == "":
		return protocolf(op, "the workflow lacks an id, type, state or status")
	case w.Version <= 0 || w.Run <= 0:
		return protocolf(op, "the workflow has no positive version and run")
	}
	return nil
}

// RegisterWorkflow registers a declarative workflow document (JSON when
// its first non-space byte is '{', else YAML) on the server, which must
// have been started with a parser (idem serve has one). created is false
// when the same document was registered already. A document that does
// not parse or validate is an error wrapping idem.ErrInvalid whose text
// holds the parser's errors with their lines and columns; another
// document under a registered name and version, workflow.ErrVersionConflict.
// The registration lasts as long as the server process: idem serve
// --workflows DIR registers documents at every start.
func (c *Client) RegisterWorkflow(ctx context.Context, document []byte) (t *idemapi.WorkflowType, created bool, err error) {
	const op = "register workflow"
	ct := "application/yaml"
	if trimmed := bytes.TrimLeft(document, " \t\r\n"); len(trimmed) > 0 && trimmed[0] == '{' {
		ct = "application/json"
	}
	status, body, err := c.send(ctx, op, http.MethodPost, "/v1/workflow-types", ct, document, "application/json", http.StatusCreated, http.StatusOK)
	if err != nil {
		return nil, false, err
	}
	var wt idemapi.WorkflowType
	if err := decodeJSON(op, body, &wt); err != nil {
		return nil, false, err
	}
	if wt.Name == "" || wt.Version <= 0 || wt.Fingerprint == "" {
		return nil, false, protocolf(op, "the type lacks a name, version or fingerprint")
	}
	return &wt, status == http.StatusCreated, nil
}

// WorkflowTypes lists the workflow types the token may use, every
// registered version of each, by name then version.
func (c *Client) WorkflowTypes(ctx context.Context) ([]*idemapi.WorkflowType, error) {
	const op = "workflow types"
	body, err := c.call(ctx, op, http.MethodGet, "/v1/workflow-types", nil, http.StatusOK)
	if err != nil {
		return nil, err
	}
	var r idemapi.WorkflowTypesResponse
	if err := decodeJSON(op, body, &r); err != nil {
		return nil, err
	}
	if r.Types == nil {
		return nil, protocolf(op, "the answer lacks types")
	}
	for i, t := range r.Types {
		if t == nil || t.Name == "" || t.Version <= 0 {
			return nil, protocolf(op, "type %d lacks a name or version", i)
		}
	}
	return r.Types, nil
}

// WorkflowGraph returns the state machine of workflow type name drawn as
// format, "mermaid" (Mermaid's stateDiagram-v2; "" means it) or "dot"
// (Graphviz); version 0 draws the latest version.
func (c *Client) WorkflowGraph(ctx context.Context, name string, version int, format string) (string, error) {
	const op = "workflow graph"
	switch {
	case name == "" || !utf8.ValidString(name):
		return "", fmt.Errorf("%w: idemclient: %s: the type name must be non-empty UTF-8", idem.ErrInvalid, op)
	case version < 0:
		return "", fmt.Errorf("%w: idemclient: %s: version must be positive (or 0 for the latest)", idem.ErrInvalid, op)
	case format != "" && format != "mermaid" && format != "dot":
		return "", fmt.Errorf("%w: idemclient: %s: format must be mermaid or dot", idem.ErrInvalid, op)
	}
	q := url.Values{}
	if version > 0 {
		q.Set("version", strconv.Itoa(version))
	}
	if format != "" {
		q.Set("format", format)
	}
	path := "/v1/workflow-types/" + url.PathEscape(name) + "/graph"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	_, body, err := c.send(ctx, op, http.MethodGet, path, "", nil, "text/plain", http.StatusOK)
	if err != nil {
		return "", err
	}
	return string(body), nil
}

// StartWorkflow starts an instance, idempotently by id: created is true
// when this call started a run, false when it returned the existing
// instance (same type and input). Another type or input under an existing
// id is an error wrapping idem.ErrFingerprintMismatch; an unknown type or
// version, workflow.ErrNotRegistered.
func (c *Client) StartWorkflow(ctx context.Context, in *idemapi.StartWorkflowRequest) (w *idemapi.Workflow, created bool, err error) {
	const op = "start workflow"
	if in == nil {
		return nil, false, fmt.Errorf("%w: idemclient: %s: no request", idem.ErrInvalid, op)
	}
	if err := checkWorkflowID(op, in.ID); err != nil {
		return nil, false, err
	}
	if err := checkJSON(op, "input", in.Input); err != nil {
		return nil, false, err
	}
	if in.Type == "" || !utf8.ValidString(in.Type) {
		return nil, false, fmt.Errorf("%w: idemclient: %s: the type must be non-empty UTF-8", idem.ErrInvalid, op)
	}
	body, err := json.Marshal(in)
	if err != nil {
		return nil, false, fmt.Errorf("idemclient: %s: encode the request: %w", op, err)
	}
	status, data, err := c.send(ctx, op, http.MethodPost, "/v1/workflows", "application/json", body, "application/json", http.StatusCreated, http.StatusOK)
	if err != nil {
		return nil, false, err
	}
	w, err = decodeWorkflow(op, data, in.ID)
	if err != nil {
		return nil, false, err
	}
	return w, status == http.StatusCreated, nil
}

// SignalWorkflow delivers event to instance id with payload (any JSON
// value, nil for none), once per eventID: duplicate is true when the
// event id had been received before, and then nothing changed. Whether
// the event applies is decided when the instance processes it (an event
// that does not is recorded as rejected in its history).
func (c *Client) SignalWorkflow(ctx context.Context, id, eventID, event string, payload json.RawMessage) (duplicate bool, err error) {
	const op = "signal workflow"
	if err := checkWorkflowID(op, id); err != nil {
		return false, err
	}
	if err := checkJSON(op, "payload", payload); err != nil {
		return false, err
	}
	body, err := c.call(ctx, op, http.MethodPost, workflowPath(id, "events"),
		idemapi.SignalWorkflowRequest{EventID: eventID, Event: event, Payload: payload}, http.StatusOK)
	if err != nil {
		return false, err
	}
	var r struct {
		Duplicate *bool `json:"duplicate"`
	}
	if err := decodeJSON(op, body, &r); err != nil {
		return false, err
	}
	if r.Duplicate == nil {
		return false, protocolf(op, "the answer lacks duplicate")
	}
	return *r.Duplicate, nil
}

// CancelWorkflow asks instance id to stop and unwind, and returns it as
// it is then (the unwinding is the engine's, later). A finished instance
// is workflow.ErrFinished.
func (c *Client) CancelWorkflow(ctx context.Context, id, reason string) (*idemapi.Workflow, error) {
	return c.operate(ctx, "cancel workflow", id, "cancel", idemapi.CancelWorkflowRequest{Reason: reason})
}

// RetryWorkflow gives the failed action of parked instance id a fresh set
// of attempts; workflow.ErrNotParked if it is not parked.
func (c *Client) RetryWorkflow(ctx context.Context, id string) (*idemapi.Workflow, error) {
	return c.operate(ctx, "retry workflow", id, "retry", idemapi.RetryWorkflowRequest{})
}

// ResumeWorkflow restarts instance id from state (a non-terminal state of
// its definition); workflow.ErrNotResumable when the instance is not
// parked by a failed action, nor failed or cancelled without a
// compensation having run.
func (c *Client) ResumeWorkflow(ctx context.Context, id, state, reason string) (*idemapi.Workflow, error) {
	return c.operate(ctx, "resume workflow", id, "resume", idemapi.ResumeWorkflowRequest{State: state, Reason: reason})
}

func (c *Client) operate(ctx context.Context, op, id, action string, in any) (*idemapi.Workflow, error) {
	if err := checkWorkflowID(op, id); err != nil {
		return nil, err
	}
	body, err := c.call(ctx, op, http.MethodPost, workflowPath(id, action), in, http.StatusOK)
	if err != nil {
		return nil, err
	}
	return decodeWorkflow(op, body, id)
}

// GetWorkflow returns instance id with its history; idem.ErrNotFound if
// there is none.
func (c *Client) GetWorkflow(ctx context.Context, id string) (*idemapi.Workflow, error) {
	const op = "get workflow"
	if err := checkWorkflowID(op, id); err != nil {
		return nil, err
	}
	body, err := c.call(ctx, op, http.MethodGet, workflowPath(id, ""), nil, http.StatusOK)
	if err != nil {
		return nil, err
	}
	return decodeWorkflow(op, body, id)
}

// WaitWorkflow returns instance id, with its history, once it is
// finished or parked, or ctx's error when ctx ends first. It long-polls
// GET /v1/workflows/{id}?wait=…, 20 s at a time (less when ctx's deadline
// is nearer: the server answers 200 ms before it), so no request outlives
// the client's timeout.
func (c *Client) WaitWorkflow(ctx context.Context, id string) (*idemapi.Workflow, error) {
	const op = "wait workflow"
	if err := checkWorkflowID(op, id); err != nil {
		return nil, err
	}
	for {
		wait := 20 * time.Second
		if d, ok := ctx.Deadline(); ok {
			// The server answers a little before ctx ends, so that the
			// last answer is read rather than cut off.
			left := time.Until(d) - 200*time.Millisecond
			if left <= 0 {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			wait = min(wait, left)
		}
		path := workflowPath(id, "") + "?wait=" + url.QueryEscape(wait.Round(time.Millisecond).String())
		body, err := c.call(ctx, op, http.MethodGet, path, nil, http.StatusOK)
		if err != nil {
			return nil, err
		}
		in, err := decodeWorkflow(op, body, id)
		if err != nil {
			return nil, err
		}
		switch in.Status {
		case string(workflow.Succeeded), string(workflow.Failed), string(workflow.Cancelled), string(workflow.Parked):
			return in, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// ListWorkflows returns a page of instances (without history) by id,
// of the types the token may use: a page may hold fewer than the limit
// when the token is not bound to every type. Pass the answer's Next as
// After for the next page; it is "" after the last.
func (c *Client) ListWorkflows(ctx context.Context, p *WorkflowListParams) (*idemapi.WorkflowListResponse, error) {
	const op = "list workflows"
	var q WorkflowListParams
	if p != nil {
		q = *p
	}
	if q.Limit < 0 || q.Limit > idem.MaxListSize {
		return nil, fmt.Errorf("%w: idemclient: %s: limit must be between 0 and %d, got %d", idem.ErrInvalid, op, idem.MaxListSize, q.Limit)
	}
	v := url.Values{}
	for _, f := range []struct{ name, v string }{{"type", q.Type}, {"state", q.State}, {"status", q.Status}, {"after", q.After}} {
		if !utf8.ValidString(f.v) {
			return nil, fmt.Errorf("%w: idemclient: %s: %s is not valid UTF-8", idem.ErrInvalid, op, f.name)
		}
		if f.v != "" {
			v.Set(f.name, f.v)
		}
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	path := "/v1/workflows"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	body, err := c.call(ctx, op, http.MethodGet, path, nil, http.StatusOK)
	if err != nil {
		return nil, err
	}
	var r idemapi.WorkflowListResponse
	if err := decodeJSON(op, body, &r); err != nil {
		return nil, err
	}
	if r.Workflows == nil {
		return nil, protocolf(op, "the answer lacks workflows")
	}
	for i, w := range r.Workflows {
		if err := checkWorkflow(fmt.Sprintf("%s: workflow %d", op, i), w); err != nil {
			return nil, err
		}
		if q.Type != "" && w.Type != q.Type || q.Status != "" && w.Status != q.Status || q.State != "" && w.State != q.State {
			return nil, protocolf(op, "workflow %d is not of the type, state or status asked", i)
		}
	}
	return &r, nil
}
