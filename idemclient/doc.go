// Package idemclient is a Go client of the `idem serve` HTTP API
// (docs/api.md) that is an idem.Store and an idem.Lister, so a service can
// use a remote ledger server the way it would use an embedded store:
//
//	store, err := idemclient.New("http://ledger.internal:7070", token, nil)
//	if err != nil { ... }
//	ledger, err := idem.New(store, nil)
//
// Leases and windows are judged by the server's clock, never the caller's.
// Durations travel as whole milliseconds, rounded up.
//
// # Errors
//
// Every error answer of the server is a *ProblemError that keeps the
// server's title and detail and wraps a sentinel to branch on with
// errors.Is: idem.ErrInvalid (invalid-request, body-too-large),
// idem.ErrLeaseLost, idem.ErrCompleted, idem.ErrNotFound,
// idem.ErrNotImplemented, ErrUnauthorized (401), ErrForbidden (403),
// ErrUnavailable (503, or 502/504 from a proxy). Its text says each thing
// once: "idemclient: complete: 409 lease-lost: " and the server's detail.
// A fingerprint-mismatch answer to Begin is the idem.Mismatch decision, not
// an error. Anything the API does not define (an unknown decision or
// problem type, a missing field, an HTML page from a proxy, a redirect, a
// bare 404) wraps ErrProtocol and says "unexpected answer": the URL points
// at something else, or the server is broken or newer than this client.
// Transport failures (refused connections, timeouts) are returned as the
// net/http error, wrapped.
//
// Parameters the server would refuse are refused before anything is sent,
// with the ledger's own checks (the Validate method of each idem params
// type), as errors wrapping idem.ErrInvalid: in particular a scope, key,
// fingerprint, meta entry, checkpoint point or list cursor that is not
// valid UTF-8, which Go's JSON encoder would otherwise send as U+FFFD and
// so as another key.
//
// After Close every call fails with idem.ErrClosed.
//
// # Workflows
//
// RegisterWorkflow, WorkflowTypes, WorkflowGraph, StartWorkflow,
// SignalWorkflow, CancelWorkflow, RetryWorkflow, ResumeWorkflow,
// GetWorkflow and ListWorkflows call the workflow routes of a server that
// runs a workflow engine, and return idemapi's wire types. Their errors
// wrap idem.ErrNotFound (no such instance), idem.ErrFingerprintMismatch
// (an id started with another type or input), idem.ErrNotImplemented (no
// engine), idem.ErrInvalid, ErrForbidden (the token is not bound to
// "wf:TYPE"), and the workflow package's ErrNotRegistered,
// ErrVersionConflict, ErrNotParked, ErrNotResumable and ErrFinished.
//
// # What Begin returns
//
// The API answers Begin with what a caller needs, not the whole record, so
// BeginResult.Record holds, besides scope, key and fingerprint: for
// Acquired the token, attempt count, lease end and inherited checkpoint;
// for Replay the outcome and its completion and expiry times; for InFlight
// only the state (the delay is BeginResult.RetryAfter). Get returns the
// whole record.
//
// # Decoding
//
// Requests and answers are idemapi's types: the server and this client
// share one schema. Answers are decoded strictly enough to notice a broken
// server: required fields must be present, times must be RFC 3339,
// records returned by Get and List must be of the scope (and key or
// state) asked for. Unknown fields are accepted, so a newer server may add
// some.
package idemclient
