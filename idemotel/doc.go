// Package idemotel turns idem's observer hooks into OpenTelemetry metrics
// and traces.
package idemotel
