package idemapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/idemkit/idem"
)

// ProblemBase is the prefix of every problem type URI; the name after # is
// one of the Problem* constants.
const ProblemBase = "https://github.com/idemkit/idem/blob/main/docs/api.md#"

// Problem names (the part of the type URI after #). Clients branch on them.
const (
	ProblemInvalidRequest       = "invalid-request"
	ProblemUnauthorized         = "unauthorized"
	ProblemForbidden            = "forbidden"
	ProblemNotFound             = "not-found"
	ProblemNoSuchRoute          = "no-such-route"
	ProblemMethodNotAllowed     = "method-not-allowed"
	ProblemLeaseLost            = "lease-lost"
	ProblemCompleted            = "completed"
	ProblemBodyTooLarge         = "body-too-large"
	ProblemUnsupportedMediaType = "unsupported-media-type"
	ProblemFingerprintMismatch  = "fingerprint-mismatch"
	ProblemInternal             = "internal"
	ProblemNotImplemented       = "not-implemented"
	ProblemUnavailable          = "unavailable"

	// The workflow routes' own problems (docs/api.md, "Workflows").
	ProblemWorkflowNotFound        = "workflow-not-found"
	ProblemWorkflowTypeNotFound    = "workflow-type-not-found"
	ProblemWorkflowMismatch        = "workflow-mismatch"
	ProblemWorkflowVersionConflict = "workflow-version-conflict"
	ProblemWorkflowNotParked       = "workflow-not-parked"
	ProblemWorkflowNotResumable    = "workflow-not-resumable"
	ProblemWorkflowFinished        = "workflow-finished"
)

var problemTitles = map[string]string{
	ProblemInvalidRequest:       "The request is invalid",
	ProblemUnauthorized:         "A valid bearer token is required",
	ProblemForbidden:            "The token is not bound to this scope",
	ProblemNotFound:             "No record for the key",
	ProblemNoSuchRoute:          "No such route",
	ProblemMethodNotAllowed:     "Method not allowed",
	ProblemLeaseLost:            "The token no longer owns the key",
	ProblemCompleted:            "The key already holds an outcome",
	ProblemBodyTooLarge:         "The request body is too large",
	ProblemUnsupportedMediaType: "The request body must be application/json",
	ProblemFingerprintMismatch:  "The key is in use with another fingerprint",
	ProblemInternal:             "Internal server error",
	ProblemNotImplemented:       "The store cannot do this",
	ProblemUnavailable:          "The ledger is unavailable",

	ProblemWorkflowNotFound:        "No workflow instance with this id",
	ProblemWorkflowTypeNotFound:    "No workflow type registered under this name and version",
	ProblemWorkflowMismatch:        "The workflow id was started with another type or input",
	ProblemWorkflowVersionConflict: "The workflow version is registered with other content",
	ProblemWorkflowNotParked:       "The workflow instance is not parked",
	ProblemWorkflowNotResumable:    "The workflow instance cannot be resumed",
	ProblemWorkflowFinished:        "The workflow instance has finished",
}

// Problem is an RFC 9457 problem document.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// problem is an HTTP error on its way to the client; err, when set, is the
// cause, logged for 5xx only.
type problem struct {
	status int
	name   string
	detail string
	err    error
}

func newProblem(status int, name, detail string) *problem {
	return &problem{status: status, name: name, detail: detail}
}

// problemFor maps a ledger error to a problem. Errors that are not the
// client's doing become 503: the store failed or is closing. Details are
// plain sentences: a store's error text (its Go package and operation
// prefixes) is for the log, never the client.
func problemFor(err error) *problem {
	p := &problem{err: err}
	switch {
	case errors.Is(err, idem.ErrInvalid):
		p.status, p.name, p.detail = http.StatusBadRequest, ProblemInvalidRequest, invalidDetail(err)
	case errors.Is(err, idem.ErrLeaseLost):
		p.status, p.name, p.detail = http.StatusConflict, ProblemLeaseLost, "the token no longer owns the key: its lease was taken over, or the key was released or deleted"
	case errors.Is(err, idem.ErrCompleted):
		p.status, p.name, p.detail = http.StatusConflict, ProblemCompleted, "the key already holds an outcome, which is never replaced"
	case errors.Is(err, idem.ErrNotFound):
		p.status, p.name, p.detail = http.StatusNotFound, ProblemNotFound, "no record for the key in this scope"
	case errors.Is(err, idem.ErrFingerprintMismatch):
		p.status, p.name, p.detail = http.StatusUnprocessableEntity, ProblemFingerprintMismatch, mismatchDetail
	case errors.Is(err, idem.ErrNotImplemented):
		p.status, p.name, p.detail = http.StatusNotImplemented, ProblemNotImplemented, "the server's store cannot do this"
	case errors.Is(err, idem.ErrClosed):
		p.status, p.name, p.detail = http.StatusServiceUnavailable, ProblemUnavailable, "the server is shutting down; try again"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		p.status, p.name, p.detail = http.StatusServiceUnavailable, ProblemUnavailable, "the request ended before the store answered; try again"
	default:
		// idem.ErrUnavailable or the store's own failure: its message may
		// name internals, so the client gets a generic detail and the log
		// gets the error.
		p.status, p.name, p.detail = http.StatusServiceUnavailable, ProblemUnavailable, "the store did not answer; try again"
	}
	return p
}

const mismatchDetail = "the key was used for a request with another fingerprint; use a new key"

// invalidDetail is the sentence of an idem.ErrInvalid error without the Go
// prefixes before it ("redisstore: complete: idem: invalid argument: ").
func invalidDetail(err error) string {
	msg := err.Error()
	marker := idem.ErrInvalid.Error() + ": "
	if i := strings.LastIndex(msg, marker); i >= 0 && i+len(marker) < len(msg) {
		return msg[i+len(marker):]
	}
	return "the store refused the request as invalid"
}

func writeProblem(w http.ResponseWriter, p *problem) {
	body, _ := json.Marshal(Problem{Type: ProblemBase + p.name, Title: problemTitles[p.name], Status: p.status, Detail: p.detail})
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.status)
	_, _ = w.Write(append(body, '\n'))
}
