// Package idemapi is the ledger's HTTP API: its wire schema (the request,
// response and record types, the problem types) and its server, the
// handler `idem serve` runs. The API is specified in docs/api.md;
// idemclient is its Go client and decodes the same types.
//
// # Mounting the API
//
// NewServer returns an http.Handler over any idem.Store. A Go service can
// serve the ledger beside its own routes, under a prefix:
//
//	store := memstore.New(nil) // or pgstore, redisstore, pebblestore ...
//	api, err := idemapi.NewServer(store, &idemapi.Config{
//		Tokens: map[string][]string{os.Getenv("IDEM_TOKEN"): {"billing"}},
//	})
//	if err != nil { ... }
//	mux := http.NewServeMux()
//	mux.Handle("/ledger/", http.StripPrefix("/ledger", api))
//
// and an idemclient made with the base URL http://host/ledger uses it. The
// caller keeps owning the store and closes it after its HTTP server has
// drained; nothing in the server sweeps expired records (idem serve runs
// a sweeper beside it).
//
// # Liveness and readiness
//
// GET /healthz answers 200 while the process answers: liveness, for a
// supervisor that restarts a hung process. GET /readyz answers 200 only
// while the store passes a cheap probe (Readiness: idem.Pinger, or a Get
// of a key never written, under a 2 s timeout, its result kept 1 s) and 503
// application/problem+json (unavailable) otherwise: readiness, for a load
// balancer that should stop sending work to a server that cannot record
// it. Neither needs a token.
//
// # Requests
//
// Every request but GET /healthz and GET /readyz carries a bearer token
// bound to one or more scopes (Config.Tokens; the scope "*" stands for
// every scope; ParseTokens reads the tokens file format of idem serve).
// Bodies are strict JSON, checked before they are decoded: Content-Type
// application/json, exactly one object, field names matched exactly (case
// included), no field twice, no unknown field, valid UTF-8 throughout (no
// lone surrogate escapes either), base64 that decodes. A refusal is a 400
// whose detail names the field. Keys in the URL must be valid UTF-8 too.
// Client input is answered with a 4xx application/problem+json (RFC 9457)
// and never with a 5xx.
//
// # Limits
//
// An outcome's data may be up to Config.MaxOutcome bytes as stored
// (DefaultMaxOutcome, 4 MiB). It travels as base64, so the body limit,
// Config.MaxBody, defaults to MaxBodyFor(MaxOutcome): the base64 length
// plus BodyOverhead (64 KiB) for the other fields, DefaultMaxBody in all.
// Either limit answers 413 body-too-large naming it.
//
// # Keys at rest
//
// With Config.KeySecret the store holds HMAC-SHA256 digests of keys, the
// same digests idem.Config.KeySecret makes for a Ledger, so a server and
// a Ledger with one secret over one store see the same records. Clients
// keep naming raw keys; only a list shows digests.
//
// # Metrics
//
// GET /metrics writes the Prometheus text format by hand (no client
// library): operations by op and outcome, the time-to-idempotence
// histogram (first attempt to stored outcome), the ledger size (by state
// when the store is an idem.StateSizer, the total when it is an
// idem.Sizer), and request durations by route. The operation
// series are fed by idem.Events: Metrics is an idem.Observer, so the same
// series can count a Ledger's operations in other handlers (idem proxy's).
//
// # Workflows
//
// With Config.Workflows (a *workflow.Engine, which the caller runs) and
// Config.WorkflowTypes (its registry), the server also serves the workflow
// routes of docs/api.md: GET and POST /v1/workflow-types (list, register
// a declarative document read by Config.ParseWorkflow), GET
// /v1/workflow-types/{name}/graph, GET and POST /v1/workflows (list,
// start), GET /v1/workflows/{id} and POST /v1/workflows/{id}/events,
// /cancel, /retry and /resume. Without an engine they answer 501. A token
// uses a workflow type T only if bound to the scope "wf:T"
// (WorkflowScope) or "*"; lists show only those types. Inputs and
// payloads are any JSON value, checked strictly and bounded by
// Config.MaxWorkflowInput, documents by Config.MaxWorkflowDocument. The
// wire types (Workflow, WorkflowType, StartWorkflowRequest, ...) are
// shared with idemclient; EncodeWorkflow and EncodeWorkflowType make them.
//
// # Logs
//
// One log line per request with the route, scope, status and duration.
// Raw keys, tokens and bodies (workflow inputs, payloads and documents
// included) are never logged.
package idemapi
