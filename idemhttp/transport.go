package idemhttp

import (
	"net/http"
	"time"
)

// TransportConfig configures Transport. The zero value is sensible.
type TransportConfig struct {
	// Base does the requests. Default http.DefaultTransport.
	Base http.RoundTripper
	// Methods that get a key and are retried. Default POST and PATCH.
	Methods []string
	// MaxAttempts per logical request, the first included. Default 4.
	MaxAttempts int
	// BaseDelay and MaxDelay shape exponential backoff with full jitter.
	// Defaults 100 ms and 5 s. A Retry-After longer than MaxDelay is obeyed
	// up to the request's deadline.
	BaseDelay, MaxDelay time.Duration
	// Timeout bounds a logical request, retries included. Default none (the
	// request's context decides).
	Timeout time.Duration
	// BudgetRatio caps retries as a fraction of requests over a sliding
	// window, so an outage does not become a retry storm. Default 0.1.
	BudgetRatio float64
	// MaxBody bounds a body buffered for replay; a larger one is sent once,
	// without retries. Default 1 MiB.
	MaxBody int64
	// NewKey makes a key per logical request. Default NewUUIDv7.
	NewKey func() string
}

// Transport returns a RoundTripper that adds an Idempotency-Key to each
// logical request and retries it with the same key.
func Transport(cfg *TransportConfig) http.RoundTripper {
	panic("idemhttp.Transport: being written")
}
