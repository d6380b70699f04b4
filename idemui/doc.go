// Package idemui is idem's dashboard: server-rendered HTML pages over a
// ledger, its recent rates and a workflow engine, mounted at /ui by idem
// serve and on idem proxy's admin listener (docs/ui.md).
//
// The pages are Keys (a scope's records by state, a record's attempts,
// lease, checkpoint, fingerprint and stored outcome; delete), Rates
// (duplicate rate, outcomes by kind and time to idempotence over the last
// hours, as SVG charts drawn on the server), Workflows (instances by type
// and status; an instance's state machine with the path it took, its
// history and step keys; cancel, retry, resume) and Messaging (consumer
// scopes, dead letters, the outbox's unsent rows). Everything is built
// in: the templates, one stylesheet and the SVG; no script runs and
// nothing is loaded from elsewhere, so it works without internet.
//
// # Signing in
//
// A form takes one of the API's bearer tokens (the same map as
// idemapi.Config.Tokens) and sets a session cookie: HttpOnly,
// SameSite=Strict, Secure over TLS (or with Config.SecureCookie), valid
// for Config.SessionTTL, held in the handler's memory (a restart signs
// everyone out). A session sees and acts on exactly what its token may
// use through the API (idemapi.Grant): the ledger scopes it is bound to,
// the workflow types T of its scopes "wf:T", everything with "*". Every
// state-changing form carries the session's CSRF token, and cross-origin
// posts are refused (http.CrossOriginProtection).
//
// # Mounting
//
// New returns an http.Handler that serves the paths under Config.Prefix
// (default "/ui"):
//
//	rates := idemui.NewRates(nil) // the API server's observer, sampled every 10 s
//	go rates.Run(ctx)
//	api, _ := idemapi.NewServer(store, &idemapi.Config{Tokens: tokens, Observer: rates})
//	ui, _ := idemui.New(&idemui.Config{Store: store, Tokens: tokens, Rates: rates})
//	mux := http.NewServeMux()
//	mux.Handle("/ui/", ui)
//	mux.Handle("/", api)
package idemui
