// Package idemapi is the HTTP/JSON face of an idem ledger, the handler behind
// `idem serve`. The API it implements is specified in docs/api.md; this
// package is the reference for it.
//
// # Requests
//
// Every request but GET /healthz carries a bearer token bound to one or more
// scopes (Config.Tokens; the scope "*" stands for every scope). Bodies are
// strict JSON: Content-Type application/json, unknown fields and trailing
// data refused, at most Config.MaxBody bytes. Client input is answered with
// a 4xx application/problem+json (RFC 9457) and never with a 5xx.
//
// # Metrics
//
// GET /metrics writes the Prometheus text format by hand (no client
// library): operations by op and outcome, the time-to-idempotence
// histogram (first attempt to stored outcome), the ledger size when the
// store is an idem.Sizer, and request durations by route. The operation
// series are fed by idem.Events, so the same Observer contract serves the
// ledger, this server and idemotel.
//
// # Logs
//
// One log line per request with the route, scope, status and duration.
// Raw keys, tokens and bodies are never logged.
package idemapi
