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
// practice: see Config for every choice and its default.
//
// # Headers
//
// A first execution carries Idempotent-Replayed: false; a replay carries
// Idempotent-Replayed: true and the stored status, body and allow-listed
// headers. Both carry Idempotency-Key-Expires, an HTTP-date after which the
// key may run again.
package idemhttp
