// Package idemhttp puts the idem ledger behind HTTP: the Idempotency-Key
// middleware for servers, a retrying http.RoundTripper for clients that
// gives every logical request a key, and the handler behind `idem proxy`.
//
// # Middleware
//
//	mux := http.NewServeMux()
//	...
//	http.ListenAndServe(addr, idemhttp.Middleware(ledger, nil)(mux))
//
// Semantics follow the IETF httpapi Idempotency-Key draft and Stripe's
// practice: see Config for every choice and its default. Responses of a
// released key (a status Config.Keep does not keep, a response over
// Config.MaxResponse) carry no Idempotency-Key-Expires.
//
// # Headers
//
// Requests carry Idempotency-Key: a structured-field string ("k-1") or a
// bare token (k-1), at most 255 bytes. Responses to a keyed request carry:
//
//   - Idempotent-Replayed: false on a first execution (set before the
//     handler writes), true on a replay, which also carries the stored
//     status, body and allow-listed headers (Config.StoredHeaders; never
//     Set-Cookie, Date, request ids or rate-limit headers);
//   - Idempotency-Key-Expires: an HTTP-date until which the key is kept at
//     least (its first attempt plus the window, by the ledger's store); a
//     retry after it may run again. Every response to one key carries the
//     same value.
//
// Errors are application/problem+json (RFC 9457) with a stable type URI
// per problem: key-invalid, key-required (400), body-too-large (413),
// fingerprint-mismatch (422), in-flight and lease-lost (409 with
// Retry-After), ledger-unavailable and not-recorded (503); the Proxy adds
// missing-scope (400), bad-gateway (502) and upstream-timeout (504).
// docs/http.md describes each.
//
// # Recording before answering
//
// A first execution's response is held until the ledger has stored it
// (or released the key for a status that is not kept), then sent: a client
// never receives an answer its duplicates will not get. If storing fails
// the client gets lease-lost or not-recorded instead, and its retry with
// the same key replays or runs again. A handler that flushes streams: its
// response is sent as written and stored when it returns, so it is
// acknowledged before it is recorded.
//
// # Stored form
//
// A response is stored as one idem.Outcome with no Meta: Data holds a
// version byte, the status, the stored headers and the body, so that a
// replay reads it without building a map. StoredResponse decodes it, for
// tools that show a record.
//
// # Waiting duplicates
//
// A request whose key is in flight waits up to Config.Wait (default
// DefaultWait, 10 s) for the original, polling the ledger, and replays its
// response. One still in flight then gets 409 in-flight with a Retry-After
// that estimates when the original will finish, from the durations of
// recent first executions on its route, not when its lease ends.
//
// # Proxy
//
//	p := &idemhttp.Proxy{Ledger: ledger, Upstream: upstream}
//	http.ListenAndServe(addr, p)
//
// Proxy puts the middleware in front of any HTTP service, as `idem proxy`
// does: an httputil.ReverseProxy whose exchange outlives a client's
// disconnect and is bounded by UpstreamTimeout (504 upstream-timeout, the
// key released). See Proxy for each field and its default.
//
// # Client transport
//
//	client := &http.Client{Transport: idemhttp.Transport(nil)}
//
// POST and PATCH get an Idempotency-Key that every retry of the same
// logical request reuses, so a server behind Middleware runs it once
// however often the network fails: the request's own, else the key its
// context carries (idem.WithKey; inside a workflow action, the step key),
// else a new NewUUIDv7. Retries follow exponential backoff
// with full jitter, honour Retry-After and the request's deadline, and stop
// when the retry budget (a share of recent requests) is spent. See
// TransportConfig.
package idemhttp
