package idemhttp

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// ProblemTypeBase prefixes the type URI of every problem the middleware
// and the Proxy answer; the fragment names the problem (docs/http.md
// describes each).
const ProblemTypeBase = "https://github.com/idemkit/idem/blob/main/docs/http.md#"

// ProblemContentType is the media type of error responses (RFC 9457).
const ProblemContentType = "application/problem+json"

type problem struct {
	name   string
	title  string
	status int
}

var (
	problemKeyInvalid     = problem{"key-invalid", "Invalid Idempotency-Key", http.StatusBadRequest}
	problemKeyRequired    = problem{"key-required", "Idempotency-Key required", http.StatusBadRequest}
	problemBodyTooLarge   = problem{"body-too-large", "Request body too large", http.StatusRequestEntityTooLarge}
	problemBodyUnreadable = problem{"body-unreadable", "Request body unreadable", http.StatusBadRequest}
	problemScope          = problem{"scope-failed", "Principal unknown", http.StatusBadRequest}
	problemMismatch       = problem{"fingerprint-mismatch", "Idempotency-Key reused for another request", http.StatusUnprocessableEntity}
	problemInFlight       = problem{"in-flight", "Request with this Idempotency-Key in progress", http.StatusConflict}
	problemUnavailable    = problem{"ledger-unavailable", "Idempotency ledger unavailable", http.StatusServiceUnavailable}
	problemLeaseLost      = problem{"lease-lost", "Idempotency-Key taken over", http.StatusConflict}
	problemNotRecorded    = problem{"not-recorded", "Outcome not recorded", http.StatusServiceUnavailable}

	// Proxy's.
	problemBadGateway         = problem{"bad-gateway", "The upstream did not answer", http.StatusBadGateway}
	problemUpstreamTimeout    = problem{"upstream-timeout", "The upstream did not answer in time", http.StatusGatewayTimeout}
	problemMissingScope       = problem{"missing-scope", "The scope header is missing", http.StatusBadRequest}
	problemProxyMisconfigured = problem{"proxy-misconfigured", "The proxy is misconfigured", http.StatusInternalServerError}
)

// Problem is the body of an error response (RFC 9457).
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

func writeProblem(w http.ResponseWriter, p problem, detail string) {
	body, _ := json.Marshal(Problem{Type: ProblemTypeBase + p.name, Title: p.title, Status: p.status, Detail: detail})
	h := w.Header()
	h.Set("Content-Type", ProblemContentType)
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(p.status)
	_, _ = w.Write(body)
}
