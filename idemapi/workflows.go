package idemapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
)

// Workflow limits.
const (
	// DefaultMaxWorkflowDocument is the default limit of a declarative
	// document sent to POST /v1/workflow-types: 1 MiB.
	DefaultMaxWorkflowDocument = 1 << 20
	// DefaultMaxWorkflowInput is the default limit of a start's input
	// and of an event's payload, as JSON: 256 KiB.
	DefaultMaxWorkflowInput = 256 << 10
	// MaxWorkflowReason bounds the reason of a cancel or a resume, in
	// bytes.
	MaxWorkflowReason = 1024
	// MaxWorkflowName bounds a workflow type's name, a state's name, an
	// event and an event id, in bytes, as idem.MaxKeyLen bounds a key
	// (and a workflow id).
	MaxWorkflowName = 255
)

// WorkflowScopePrefix starts the scope that grants a token one workflow
// type: "wf:order" for the type order.
const WorkflowScopePrefix = "wf:"

// WorkflowScope returns the scope that grants the workflow type typ:
// "wf:" + typ.
func WorkflowScope(typ string) string { return WorkflowScopePrefix + typ }

const (
	wfTypesPrefix = "/v1/workflow-types/"
	wfPrefix      = "/v1/workflows/"
)

// configureWorkflows checks and keeps the workflow part of cfg.
func (s *Server) configureWorkflows(cfg *Config) error {
	s.wf, s.wfTypes, s.parseWF = cfg.Workflows, cfg.WorkflowTypes, cfg.ParseWorkflow
	s.maxDoc, s.maxInput = cfg.MaxWorkflowDocument, cfg.MaxWorkflowInput
	switch {
	case s.wf != nil && s.wfTypes == nil:
		return fmt.Errorf("%w: idemapi: Config.Workflows needs Config.WorkflowTypes, the registry the engine was made with", idem.ErrInvalid)
	case s.maxDoc < 0 || s.maxInput < 0:
		return fmt.Errorf("%w: idemapi: Config.MaxWorkflowDocument and MaxWorkflowInput must be positive (or 0 for the defaults)", idem.ErrInvalid)
	}
	if s.maxDoc == 0 {
		s.maxDoc = DefaultMaxWorkflowDocument
	}
	if s.maxInput == 0 {
		s.maxInput = DefaultMaxWorkflowInput
	}
	return nil
}

// lookupWorkflowRoute finds the workflow route of an escaped path, nil if
// it is none. Names and ids are one escaped segment each.
func lookupWorkflowRoute(path string) *route {
	if rest, ok := strings.CutPrefix(path, wfTypesPrefix); ok {
		if name, ok := strings.CutSuffix(rest, "/graph"); ok && !strings.Contains(name, "/") {
			return routes[wfTypesPrefix+"{}/graph"]
		}
		return nil
	}
	rest, ok := strings.CutPrefix(path, wfPrefix)
	if !ok {
		return nil
	}
	id, action, _ := strings.Cut(rest, "/")
	if strings.Contains(action, "/") || id == "" && action != "" {
		return nil
	}
	if action == "" {
		return routes[wfPrefix+"{}"]
	}
	return routes[wfPrefix+"{}/"+action] // nil for an unknown action
}

// wfSegment returns the unescaped segment of the path after prefix and
// before the next "/".
func wfSegment(r *http.Request, prefix string) (string, *problem) {
	rest := strings.TrimPrefix(r.URL.EscapedPath(), prefix)
	seg, _, _ := strings.Cut(rest, "/")
	v, err := url.PathUnescape(seg)
	if err != nil {
		return "", newProblem(http.StatusBadRequest, ProblemInvalidRequest, "the path segment is not valid percent-encoding")
	}
	return v, nil
}

var errNoWorkflowScope = newProblem(http.StatusForbidden, ProblemForbidden,
	`the token is bound to no workflow type: bind it to "wf:TYPE" or "*"`)

// authorizeWorkflow checks that the request's token may use type typ.
func authorizeWorkflow(req *request, typ string) *problem {
	req.scope = WorkflowScope(typ)
	if req.token.AllowsWorkflow(typ) {
		return nil
	}
	return newProblem(http.StatusForbidden, ProblemForbidden, `the token is not bound to this workflow type (scope "wf:TYPE") nor to "*"`)
}

// needEngine refuses a workflow route on a server without an engine (501)
// and a token bound to no workflow type (403).
func (s *Server) needEngine(req *request) *problem {
	if s.wf == nil {
		return newProblem(http.StatusNotImplemented, ProblemNotImplemented, "the server runs no workflow engine (its store keeps no workflow journal)")
	}
	if !req.token.AnyWorkflow() {
		return errNoWorkflowScope
	}
	return nil
}

// wfProblem maps an error of the engine or the registry to a problem.
func wfProblem(err error) *problem {
	p := &problem{err: err}
	detail := func(sentinel error) string {
		msg := err.Error()
		if i := strings.LastIndex(msg, sentinel.Error()+": "); i >= 0 {
			return msg[i+len(sentinel.Error())+2:]
		}
		return strings.TrimPrefix(sentinel.Error(), "workflow: ")
	}
	switch {
	case errors.Is(err, workflow.ErrInvalidDefinition):
		p.status, p.name, p.detail = http.StatusBadRequest, ProblemInvalidRequest, clip(err.Error())
	case errors.Is(err, idem.ErrInvalid):
		p.status, p.name, p.detail = http.StatusBadRequest, ProblemInvalidRequest, invalidDetail(err)
	case errors.Is(err, idem.ErrNotFound):
		p.status, p.name, p.detail = http.StatusNotFound, ProblemWorkflowNotFound, "no workflow instance with this id"
	case errors.Is(err, workflow.ErrNotRegistered):
		p.status, p.name, p.detail = http.StatusNotFound, ProblemWorkflowTypeNotFound, "not registered: "+detail(workflow.ErrNotRegistered)
	case errors.Is(err, idem.ErrFingerprintMismatch):
		p.status, p.name, p.detail = http.StatusConflict, ProblemWorkflowMismatch,
			"the id was started with another type or input; use a new id, or a reuse_policy once the instance has finished"
	case errors.Is(err, workflow.ErrVersionConflict):
		p.status, p.name, p.detail = http.StatusConflict, ProblemWorkflowVersionConflict,
			"this name and version are registered with other content; register a new version: "+detail(workflow.ErrVersionConflict)
	case errors.Is(err, workflow.ErrNotParked):
		p.status, p.name, p.detail = http.StatusConflict, ProblemWorkflowNotParked, "retry resumes parked instances only: "+detail(workflow.ErrNotParked)
	case errors.Is(err, workflow.ErrNotResumable):
		p.status, p.name, p.detail = http.StatusConflict, ProblemWorkflowNotResumable,
			"resume needs an instance parked by a failed action, or failed or cancelled with no compensation run: "+detail(workflow.ErrNotResumable)
	case errors.Is(err, workflow.ErrFinished):
		p.status, p.name, p.detail = http.StatusConflict, ProblemWorkflowFinished, detail(workflow.ErrFinished)
	case errors.Is(err, workflow.ErrConflict):
		p.status, p.name, p.detail = http.StatusServiceUnavailable, ProblemUnavailable, "the instance changed concurrently; try again"
	default:
		return problemFor(err)
	}
	return p
}

// clip bounds a detail of the client's own making (a parser's errors).
func clip(s string) string {
	const limit = 8 << 10
	if len(s) <= limit {
		return s
	}
	s = s[:limit]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

// checkName checks a name of the workflow routes (type, event, ...).
func checkName(field, v string, required bool) *problem {
	switch {
	case v == "" && required:
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, field+" is required")
	case len(v) > MaxWorkflowName:
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, fmt.Sprintf("%s is %d bytes, over the limit of %d", field, len(v), MaxWorkflowName))
	case !utf8.ValidString(v):
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, field+" is not valid UTF-8")
	}
	return nil
}

// checkID checks a workflow id: a key's rules.
func checkID(id string) *problem {
	if err := idem.ValidateKey("wf", id); err != nil {
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "the workflow id: "+invalidDetail(err))
	}
	return nil
}

// decodeWF reads a workflow body as decode does, with the workflow
// body limit. emptyOK admits no body at all (retry).
func (s *Server) decodeWF(w http.ResponseWriter, r *http.Request, v any, emptyOK bool) *problem {
	limit := s.maxInput + BodyOverhead
	if emptyOK && r.ContentLength == 0 && r.Header.Get("Content-Type") == "" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return newProblem(http.StatusUnsupportedMediaType, ProblemUnsupportedMediaType, "send the body as Content-Type: application/json")
	}
	if r.ContentLength > limit {
		return tooLarge(limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return tooLarge(limit)
		}
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "the body could not be read")
	}
	if emptyOK && len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if err := checkStrict(body, shapeFor(reflect.TypeOf(v))); err != nil {
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, err.Error())
	}
	if err := json.Unmarshal(body, v); err != nil {
		return &problem{status: http.StatusInternalServerError, name: ProblemInternal, detail: "the server failed to decode a body it accepted; this is a bug", err: err}
	}
	return nil
}

// wfJSON compacts a JSON value of a request (input, payload) into the
// bytes the engine keeps: no insignificant space, so that the same value
// sent twice has the same fingerprint; null and none are nothing.
func (s *Server) wfJSON(field string, raw json.RawMessage) ([]byte, *problem) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return nil, newProblem(http.StatusBadRequest, ProblemInvalidRequest, field+" is not valid JSON")
	}
	if int64(b.Len()) > s.maxInput {
		return nil, newProblem(http.StatusRequestEntityTooLarge, ProblemBodyTooLarge,
			fmt.Sprintf("%s is %d bytes, over the limit of %d bytes", field, b.Len(), s.maxInput))
	}
	return b.Bytes(), nil
}

// wfQuery parses the query string, refusing a parameter given twice.
func wfQuery(r *http.Request, names ...string) (url.Values, *problem) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, newProblem(http.StatusBadRequest, ProblemInvalidRequest, "the query string is malformed")
	}
	for name, vs := range q {
		if !slices.Contains(names, name) {
			return nil, newProblem(http.StatusBadRequest, ProblemInvalidRequest, fmt.Sprintf("unknown query parameter %s (want %s)", quoted(name), strings.Join(names, ", ")))
		}
		if len(vs) > 1 {
			return nil, newProblem(http.StatusBadRequest, ProblemInvalidRequest, "the query parameter "+name+" is given twice")
		}
	}
	return q, nil
}

// workflowTypes serves GET and POST /v1/workflow-types.
func (s *Server) workflowTypes(w http.ResponseWriter, r *http.Request, req *request) *problem {
	if p := s.needEngine(req); p != nil {
		return p
	}
	if r.Method == http.MethodPost {
		return s.registerWorkflow(w, r, req)
	}
	if _, p := wfQuery(r); p != nil {
		return p
	}
	out := WorkflowTypesResponse{Types: []*WorkflowType{}}
	for _, ti := range s.wfTypes.Types() {
		if !req.token.AllowsWorkflow(ti.Name) {
			continue
		}
		for i, v := range ti.Versions {
			def, err := s.wfTypes.Lookup(ti.Name, v)
			if err != nil {
				continue // not possible: the registry never forgets
			}
			out.Types = append(out.Types, EncodeWorkflowType(def, i == len(ti.Versions)-1))
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

// registerWorkflow serves POST /v1/workflow-types: a declarative document.
func (s *Server) registerWorkflow(w http.ResponseWriter, r *http.Request, req *request) *problem {
	if s.parseWF == nil {
		return newProblem(http.StatusNotImplemented, ProblemNotImplemented, "the server reads no declarative workflow documents")
	}
	if _, p := wfQuery(r); p != nil {
		return p
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var name string
	switch {
	case err != nil:
	case mt == "application/json":
		name = "document.json"
	case mt == "application/yaml", mt == "application/x-yaml", mt == "text/yaml":
		name = "document.yaml"
	}
	if name == "" {
		return newProblem(http.StatusUnsupportedMediaType, ProblemUnsupportedMediaType, "send the document as Content-Type: application/json or application/yaml")
	}
	if r.ContentLength > s.maxDoc {
		return tooLarge(s.maxDoc)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxDoc))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return tooLarge(s.maxDoc)
		}
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "the body could not be read")
	}
	def, err := s.parseWF(body, name)
	if err != nil {
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, clip(err.Error()))
	}
	if def == nil {
		return &problem{status: http.StatusInternalServerError, name: ProblemInternal, detail: "the server's parser returned no definition; this is a bug", err: errors.New("ParseWorkflow returned nil, nil")}
	}
	if p := authorizeWorkflow(req, def.Name); p != nil {
		return p
	}
	status := http.StatusCreated
	if prev, err := s.wfTypes.Lookup(def.Name, def.Version); err == nil && prev.Fingerprint() == def.Fingerprint() {
		status = http.StatusOK
	}
	if err := s.wfTypes.Register(def); err != nil {
		return wfProblem(err)
	}
	latest, err := s.wfTypes.Latest(def.Name)
	if err != nil {
		return wfProblem(err)
	}
	reg, err := s.wfTypes.Lookup(def.Name, def.Version)
	if err != nil {
		return wfProblem(err)
	}
	return writeJSON(w, status, EncodeWorkflowType(reg, latest.Version == reg.Version))
}

// workflowGraph serves GET /v1/workflow-types/{name}/graph.
func (s *Server) workflowGraph(w http.ResponseWriter, r *http.Request, req *request) *problem {
	if p := s.needEngine(req); p != nil {
		return p
	}
	name, p := wfSegment(r, wfTypesPrefix)
	if p != nil {
		return p
	}
	if p := checkName("the type name", name, true); p != nil {
		return p
	}
	q, p := wfQuery(r, "version", "format")
	if p != nil {
		return p
	}
	version := 0
	if v := q.Get("version"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "version must be a positive integer")
		}
		version = n
	}
	format := q.Get("format")
	if format != "" && format != "mermaid" && format != "dot" {
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "format must be mermaid or dot")
	}
	if p := authorizeWorkflow(req, name); p != nil {
		return p
	}
	var def *workflow.Definition
	var err error
	if version == 0 {
		def, err = s.wfTypes.Latest(name)
	} else {
		def, err = s.wfTypes.Lookup(name, version)
	}
	if err != nil {
		return wfProblem(err)
	}
	text := def.Mermaid()
	if format == "dot" {
		text = def.DOT()
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, text)
	return nil
}

// workflows serves GET (list) and POST (start) /v1/workflows.
func (s *Server) workflows(w http.ResponseWriter, r *http.Request, req *request) *problem {
	if p := s.needEngine(req); p != nil {
		return p
	}
	if r.Method == http.MethodPost {
		return s.startWorkflow(w, r, req)
	}
	q, p := wfQuery(r, "type", "state", "status", "after", "limit")
	if p != nil {
		return p
	}
	params := &workflow.ListParams{Type: q.Get("type"), State: q.Get("state"), Status: workflow.Status(q.Get("status")), After: q.Get("after"), Limit: 100}
	for _, f := range []struct{ name, v string }{{"type", params.Type}, {"state", params.State}, {"after", params.After}} {
		if p := checkName(f.name, f.v, false); p != nil {
			return p
		}
	}
	switch params.Status {
	case "", workflow.Running, workflow.Unwinding, workflow.Parked, workflow.Succeeded, workflow.Failed, workflow.Cancelled:
	default:
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "status must be running, unwinding, parked, succeeded, failed or cancelled")
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > idem.MaxListSize {
			return newProblem(http.StatusBadRequest, ProblemInvalidRequest, fmt.Sprintf("limit must be an integer from 1 to %d", idem.MaxListSize))
		}
		params.Limit = n
	}
	if params.Type != "" {
		if p := authorizeWorkflow(req, params.Type); p != nil {
			return p
		}
	}
	res, err := s.wf.List(r.Context(), params)
	if err != nil {
		return wfProblem(err)
	}
	out := WorkflowListResponse{Workflows: make([]*Workflow, 0, len(res.Instances)), Next: res.Next}
	for _, in := range res.Instances {
		if req.token.AllowsWorkflow(in.Type) {
			out.Workflows = append(out.Workflows, EncodeWorkflow(in, false))
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

// startWorkflow serves POST /v1/workflows.
func (s *Server) startWorkflow(w http.ResponseWriter, r *http.Request, req *request) *problem {
	var in StartWorkflowRequest
	if p := s.decodeWF(w, r, &in, false); p != nil {
		return p
	}
	if p := checkName("type", in.Type, true); p != nil {
		return p
	}
	if p := checkID(in.ID); p != nil {
		return p
	}
	if in.Version < 0 {
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "version must be positive (or left out for the latest)")
	}
	policy, ok := ParseReusePolicy(in.ReusePolicy)
	if !ok {
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "reuse_policy must be reject_duplicate, allow_if_failed or allow_always")
	}
	input, p := s.wfJSON("input", in.Input)
	if p != nil {
		return p
	}
	if p := authorizeWorkflow(req, in.Type); p != nil {
		return p
	}
	// Whether this start created a run: the run before, if any, tells.
	before := 0
	if old, err := s.wf.Get(r.Context(), in.ID); err == nil {
		before = old.Run
	} else if !errors.Is(err, idem.ErrNotFound) {
		return wfProblem(err)
	}
	inst, err := s.wf.Start(r.Context(), in.Type, in.Version, in.ID, input, &workflow.StartOptions{ReusePolicy: policy})
	if err != nil {
		return wfProblem(err)
	}
	status := http.StatusOK
	if inst.Run > before {
		status = http.StatusCreated
	}
	return writeJSON(w, status, EncodeWorkflow(inst, false))
}

// instance reads the instance of the route's path and checks the token
// may use its type.
func (s *Server) instance(r *http.Request, req *request) (*workflow.Instance, *problem) {
	if p := s.needEngine(req); p != nil {
		return nil, p
	}
	id, p := wfSegment(r, wfPrefix)
	if p != nil {
		return nil, p
	}
	if p := checkID(id); p != nil {
		return nil, p
	}
	in, err := s.wf.Get(r.Context(), id)
	if err != nil {
		return nil, wfProblem(err)
	}
	if p := authorizeWorkflow(req, in.Type); p != nil {
		return nil, p
	}
	return in, nil
}

// MaxWorkflowWait bounds the wait query parameter of GET
// /v1/workflows/{id}.
const MaxWorkflowWait = time.Minute

// workflowGet serves GET /v1/workflows/{id}, with ?wait=DURATION a long
// poll: it answers once the instance is finished or parked, or when the
// wait is over, whichever comes first.
func (s *Server) workflowGet(w http.ResponseWriter, r *http.Request, req *request) *problem {
	if p := s.needEngine(req); p != nil {
		return p
	}
	q, p := wfQuery(r, "wait")
	if p != nil {
		return p
	}
	var wait time.Duration
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > MaxWorkflowWait {
			return newProblem(http.StatusBadRequest, ProblemInvalidRequest, fmt.Sprintf("wait must be a duration between 0s and %s, such as 30s", MaxWorkflowWait))
		}
		wait = d
	}
	in, p := s.instance(r, req)
	if p != nil {
		return p
	}
	if wait > 0 && !in.Status.Finished() && in.Status != workflow.Parked {
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		_, err := s.wf.Wait(ctx, in.ID)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil {
			return wfProblem(err)
		}
		if err := r.Context().Err(); err != nil {
			return nil // the client went away
		}
		if in, err = s.wf.Get(r.Context(), in.ID); err != nil {
			return wfProblem(err)
		}
	}
	return writeJSON(w, http.StatusOK, EncodeWorkflow(in, true))
}

// workflowSignal serves POST /v1/workflows/{id}/events.
func (s *Server) workflowSignal(w http.ResponseWriter, r *http.Request, req *request) *problem {
	in, p := s.instance(r, req)
	if p != nil {
		return p
	}
	var body SignalWorkflowRequest
	if p := s.decodeWF(w, r, &body, false); p != nil {
		return p
	}
	if p := checkName("event_id", body.EventID, true); p != nil {
		return p
	}
	if p := checkName("event", body.Event, true); p != nil {
		return p
	}
	payload, p := s.wfJSON("payload", body.Payload)
	if p != nil {
		return p
	}
	dup, err := s.wf.Signal(r.Context(), in.ID, body.EventID, body.Event, payload)
	if err != nil {
		return wfProblem(err)
	}
	return writeJSON(w, http.StatusOK, SignalWorkflowResponse{Duplicate: dup})
}

// answer writes the instance id as it is after an operator's change.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, id string) *problem {
	in, err := s.wf.Get(r.Context(), id)
	if err != nil {
		return wfProblem(err)
	}
	return writeJSON(w, http.StatusOK, EncodeWorkflow(in, false))
}

func checkReason(reason string) *problem {
	switch {
	case len(reason) > MaxWorkflowReason:
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, fmt.Sprintf("reason is %d bytes, over the limit of %d", len(reason), MaxWorkflowReason))
	case !utf8.ValidString(reason):
		return newProblem(http.StatusBadRequest, ProblemInvalidRequest, "reason is not valid UTF-8")
	}
	return nil
}

// workflowCancel serves POST /v1/workflows/{id}/cancel.
func (s *Server) workflowCancel(w http.ResponseWriter, r *http.Request, req *request) *problem {
	in, p := s.instance(r, req)
	if p != nil {
		return p
	}
	var body CancelWorkflowRequest
	if p := s.decodeWF(w, r, &body, false); p != nil {
		return p
	}
	if p := checkReason(body.Reason); p != nil {
		return p
	}
	if err := s.wf.Cancel(r.Context(), in.ID, body.Reason); err != nil {
		return wfProblem(err)
	}
	return s.answer(w, r, in.ID)
}

// workflowRetry serves POST /v1/workflows/{id}/retry.
func (s *Server) workflowRetry(w http.ResponseWriter, r *http.Request, req *request) *problem {
	in, p := s.instance(r, req)
	if p != nil {
		return p
	}
	var body RetryWorkflowRequest
	if p := s.decodeWF(w, r, &body, true); p != nil {
		return p
	}
	if err := s.wf.Retry(r.Context(), in.ID); err != nil {
		return wfProblem(err)
	}
	return s.answer(w, r, in.ID)
}

// workflowResume serves POST /v1/workflows/{id}/resume.
func (s *Server) workflowResume(w http.ResponseWriter, r *http.Request, req *request) *problem {
	in, p := s.instance(r, req)
	if p != nil {
		return p
	}
	var body ResumeWorkflowRequest
	if p := s.decodeWF(w, r, &body, false); p != nil {
		return p
	}
	if p := checkName("state", body.State, true); p != nil {
		return p
	}
	if p := checkReason(body.Reason); p != nil {
		return p
	}
	if err := s.wf.Resume(r.Context(), in.ID, body.State, body.Reason); err != nil {
		return wfProblem(err)
	}
	return s.answer(w, r, in.ID)
}
