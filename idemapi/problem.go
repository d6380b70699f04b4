package idemapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

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
// client's doing become 503: the store failed or is closing.
func problemFor(err error) *problem {
	p := &problem{detail: err.Error(), err: err}
	switch {
	case errors.Is(err, idem.ErrInvalid):
		p.status, p.name = http.StatusBadRequest, ProblemInvalidRequest
	case errors.Is(err, idem.ErrLeaseLost):
		p.status, p.name = http.StatusConflict, ProblemLeaseLost
	case errors.Is(err, idem.ErrCompleted):
		p.status, p.name = http.StatusConflict, ProblemCompleted
	case errors.Is(err, idem.ErrNotFound):
		p.status, p.name = http.StatusNotFound, ProblemNotFound
	case errors.Is(err, idem.ErrFingerprintMismatch):
		p.status, p.name = http.StatusUnprocessableEntity, ProblemFingerprintMismatch
	case errors.Is(err, idem.ErrNotImplemented):
		p.status, p.name = http.StatusNotImplemented, ProblemNotImplemented
	case errors.Is(err, idem.ErrClosed), errors.Is(err, idem.ErrUnavailable), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		p.status, p.name = http.StatusServiceUnavailable, ProblemUnavailable
	default:
		// The store's own failure: its message may name internals, so the
		// client gets a generic detail and the log gets the error.
		p.status, p.name, p.detail = http.StatusServiceUnavailable, ProblemUnavailable, "the store failed; try again"
	}
	return p
}

func writeProblem(w http.ResponseWriter, p *problem) {
	body, _ := json.Marshal(Problem{Type: ProblemBase + p.name, Title: problemTitles[p.name], Status: p.status, Detail: p.detail})
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.status)
	_, _ = w.Write(append(body, '\n'))
}
