package idemclient

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/workflow"
)

// Sentinels for answers that have no core counterpart. Every error of a
// Client that comes from an HTTP answer is a *ProblemError wrapping one of
// these or a core sentinel (idem.ErrInvalid, idem.ErrLeaseLost,
// idem.ErrCompleted, idem.ErrNotFound, idem.ErrNotImplemented).
var (
	// ErrUnauthorized: the server refused the token (401): none was
	// accepted, or the token is not in the server's tokens file.
	ErrUnauthorized = errors.New("idemclient: unauthorized")

	// ErrForbidden: the token is not bound to the scope (403), or the
	// operation needs a token bound to every scope ("*"), like Sweep.
	ErrForbidden = errors.New("idemclient: forbidden")

	// ErrUnavailable: the server is shutting down or its store failed
	// (503), or a proxy in front of it answered 502/504. Nothing is known
	// about whether the operation took effect; retrying with the same
	// parameters is safe for every operation of the ledger.
	ErrUnavailable = fmt.Errorf("idemclient: server unavailable: %w", idem.ErrUnavailable)

	// ErrProtocol: the answer is not one the API defines (an unknown
	// decision, a missing field, an HTML error page from a proxy, a
	// problem type this client does not know). The URL may point at
	// something other than idem serve, or the server is broken or newer.
	ErrProtocol = errors.New("idemclient: unexpected answer from the server")
)

// ProblemError is an error answer of the server: an RFC 9457 problem
// document, or, when the body is not one, what the client could tell from
// the status. errors.Is finds the sentinel the problem maps to.
type ProblemError struct {
	// Op is the client operation: begin, complete, get, ...
	Op string
	// Status is the HTTP status code.
	Status int
	// Name is the problem name (the type URI after #), empty when the body
	// was no problem document of this API.
	Name string
	// Title and Detail are the server's words; Detail of a body that was no
	// problem document is the start of that body, sanitised.
	Title, Detail string
	// Err is the sentinel the problem maps to.
	Err error
}

// Error says the operation, the status, the problem name and the server's
// detail (its title when there is none), each once:
// "idemclient: complete: 409 lease-lost: the token no longer owns the key: ...".
// An answer that is no problem of this API says "unexpected answer".
func (e *ProblemError) Error() string {
	var b strings.Builder
	b.WriteString("idemclient: " + e.Op + ": ")
	if errors.Is(e.Err, ErrProtocol) {
		b.WriteString("unexpected answer ")
	}
	b.WriteString(strconv.Itoa(e.Status))
	if e.Name != "" {
		b.WriteString(" " + e.Name)
	}
	text := e.Detail
	if text == "" {
		text = e.Title
	}
	if text != "" {
		b.WriteString(": " + text)
	}
	return b.String()
}

// Unwrap returns the sentinel.
func (e *ProblemError) Unwrap() error { return e.Err }

// problemSentinels maps the problem names of docs/api.md to sentinels.
// fingerprint-mismatch is a Begin decision, not an error, for Begin.
var problemSentinels = map[string]error{
	idemapi.ProblemInvalidRequest:       idem.ErrInvalid,
	idemapi.ProblemBodyTooLarge:         idem.ErrInvalid,
	idemapi.ProblemUnauthorized:         ErrUnauthorized,
	idemapi.ProblemForbidden:            ErrForbidden,
	idemapi.ProblemNotFound:             idem.ErrNotFound,
	idemapi.ProblemLeaseLost:            idem.ErrLeaseLost,
	idemapi.ProblemCompleted:            idem.ErrCompleted,
	idemapi.ProblemFingerprintMismatch:  idem.ErrFingerprintMismatch,
	idemapi.ProblemNotImplemented:       idem.ErrNotImplemented,
	idemapi.ProblemUnavailable:          ErrUnavailable,
	idemapi.ProblemMethodNotAllowed:     ErrProtocol, // this client never sends one: the URL is wrong
	idemapi.ProblemUnsupportedMediaType: ErrProtocol,
	idemapi.ProblemNoSuchRoute:          ErrProtocol,
	idemapi.ProblemInternal:             ErrUnavailable,

	idemapi.ProblemWorkflowNotFound:        idem.ErrNotFound,
	idemapi.ProblemWorkflowTypeNotFound:    workflow.ErrNotRegistered,
	idemapi.ProblemWorkflowMismatch:        idem.ErrFingerprintMismatch,
	idemapi.ProblemWorkflowVersionConflict: workflow.ErrVersionConflict,
	idemapi.ProblemWorkflowNotParked:       workflow.ErrNotParked,
	idemapi.ProblemWorkflowNotResumable:    workflow.ErrNotResumable,
	idemapi.ProblemWorkflowFinished:        workflow.ErrFinished,
}

// statusSentinel is what a status alone says, for bodies that are no
// problem of this API. A bare 404 is not ErrNotFound: it is likely a
// proxy or a wrong base URL, and must not pass for "no such key".
func statusSentinel(status int) error {
	switch status {
	case 401:
		return ErrUnauthorized
	case 403:
		return ErrForbidden
	case 502, 503, 504:
		return ErrUnavailable
	}
	return ErrProtocol
}

// snippet returns the start of a body for an error message: at most 120
// printable characters.
func snippet(body []byte) string {
	const limit = 120
	var b strings.Builder
	for len(body) > 0 && b.Len() < limit {
		r, n := utf8.DecodeRune(body)
		body = body[n:]
		switch {
		case r == utf8.RuneError && n <= 1:
			b.WriteRune('?')
		case unicode.IsSpace(r):
			b.WriteByte(' ')
		case unicode.IsPrint(r):
			b.WriteRune(r)
		default:
			b.WriteRune('?')
		}
	}
	if len(body) > 0 {
		b.WriteString("…")
	}
	return strings.TrimSpace(b.String())
}

// protocolError is an answer this client cannot read as the API defines
// it; it wraps ErrProtocol.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return e.msg }
func (e *protocolError) Unwrap() error { return ErrProtocol }

func protocolf(op, format string, args ...any) error {
	return &protocolError{msg: "idemclient: " + op + ": unexpected answer: " + fmt.Sprintf(format, args...)}
}
