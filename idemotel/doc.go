// Package idemotel turns idem's observer hooks into OpenTelemetry metrics
// and traces.
//
// A Telemetry is the ledger's idem.Observer (a span per ledger operation,
// counters of operations and outcomes, the time-to-idempotence
// histogram); its Handler and Transport wrap HTTP servers (the idemhttp
// middleware and proxy) and clients with server and client spans and W3C
// traceparent propagation; ObserveMessage, Publisher and OutboxRound
// observe messaging consumers and the outbox relay; Workflow observes a
// workflow engine (a span per instance and per step). Spans carry keys only
// as idem.KeyDigest, never a key or a body, so one trace links an HTTP
// request, the workflow it starts, its steps and the requests and messages
// they send.
//
// FromEnv builds a Telemetry that exports over OTLP/HTTP as the standard
// OTEL_EXPORTER_OTLP_* variables say, as idem serve and idem proxy do.
//
// The repository's docs/observability.md lists every span, metric and
// attribute, with a Grafana dashboard and Prometheus alert rules.
package idemotel
