package idemhttp

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/idemkit/idem"
)

// Header names.
const (
	HeaderKey      = "Idempotency-Key"
	HeaderReplayed = "Idempotent-Replayed"
	HeaderExpires  = "Idempotency-Key-Expires"
)

// Config configures Middleware. The zero value (or nil) is sensible: keys
// on POST and PATCH, optional; scope by a digest of the Authorization
// header, method and route; 1 MiB request bodies, 10 MiB stored responses;
// 409 while in flight; 2xx and 4xx kept, 5xx/408/429 released.
type Config struct {
	// Methods the middleware applies to. Default POST and PATCH.
	Methods []string
	// RequireKey answers 400 to a request without a key (on Methods).
	RequireKey bool
	// Scope returns the principal a request acts for; keys never cross
	// scopes. Default: a digest of the Authorization header ("anonymous"
	// without one). The method and route are appended to it.
	Scope func(r *http.Request) (string, error)
	// Route names the route of a request for the scope. Default: r.Pattern
	// when a ServeMux matched one, else the path.
	Route func(r *http.Request) string
	// Fingerprint digests what a request means. Default: SHA-256 of method,
	// path, query, FingerprintHeaders and body.
	Fingerprint func(r *http.Request, body []byte) string
	// FingerprintHeaders are the request headers the default fingerprint
	// covers. Default Content-Type.
	FingerprintHeaders []string
	// MaxBody bounds the request body read for the fingerprint; larger: 413.
	// Default 1 MiB.
	MaxBody int64
	// MaxResponse bounds a stored response; a larger one is passed through
	// and the key released, never replayed truncated. Default 10 MiB.
	MaxResponse int64
	// MismatchStatus answers a key reused for another request. Default 422.
	MismatchStatus int
	// Wait, when positive, makes a duplicate of an in-flight request wait up
	// to Wait for the original and replay its response instead of 409.
	Wait time.Duration
	// Keep says which statuses are stored. Default: 2xx and 4xx but 408 and
	// 429; KeepEverything stores all (Stripe's practice).
	Keep func(status int) bool
	// StoredHeaders are the response headers stored and replayed. Default
	// DefaultStoredHeaders. Set-Cookie, Date, request ids and rate-limit
	// headers are never stored whatever this says.
	StoredHeaders []string
	// Lease and Window per request; 0 means the ledger's.
	Lease, Window time.Duration
	// Logger receives reasons for released keys; never keys or bodies.
	// Default slog.Default().
	Logger *slog.Logger
}

// DefaultStoredHeaders are the response headers a replay carries.
var DefaultStoredHeaders = []string{"Content-Type", "Content-Language", "Content-Encoding", "Content-Location",
	"Location", "ETag", "Last-Modified", "Link", "Cache-Control", "Vary"}

// KeepEverything stores every status, as Stripe does.
func KeepEverything(int) bool { return true }

// Middleware returns the Idempotency-Key middleware over ledger.
func Middleware(ledger *idem.Ledger, cfg *Config) func(http.Handler) http.Handler {
	panic("idemhttp.Middleware: being written")
}
