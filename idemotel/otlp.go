package idemotel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// EnvEnabled reports whether the environment asks for an OTLP export: one
// of OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set (and OTEL_SDK_DISABLED is not
// "true").
func EnvEnabled() bool {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") {
		return false
	}
	for _, v := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"} {
		if os.Getenv(v) != "" {
			return true
		}
	}
	return false
}

// FromEnv returns Telemetry that exports over OTLP as the standard
// environment variables say, and the function that flushes and stops the
// export, or nil Telemetry when EnvEnabled is false. Traces go to
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (default
// OTEL_EXPORTER_OTLP_ENDPOINT + "/v1/traces"), metrics to
// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT (default ... + "/v1/metrics") every
// OTEL_METRIC_EXPORT_INTERVAL (default 60000 ms); a signal whose endpoint
// is unset while the other's is set is not exported. The protocol
// (OTEL_EXPORTER_OTLP_PROTOCOL, _TRACES_PROTOCOL, _METRICS_PROTOCOL) must
// be http/protobuf, the default; grpc is refused. OTEL_EXPORTER_OTLP_HEADERS,
// _TIMEOUT, _COMPRESSION and _CERTIFICATE are read by the exporters;
// OTEL_SERVICE_NAME (default service, a name of the caller's) and
// OTEL_RESOURCE_ATTRIBUTES name the resource. The Telemetry records
// idem.ledger.operation.duration (Config.OperationDurations).
func FromEnv(ctx context.Context, service string) (*Telemetry, func(context.Context) error, error) {
	if !EnvEnabled() {
		return nil, nil, nil
	}
	for _, v := range []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"} {
		if p := os.Getenv(v); p != "" && p != "http/protobuf" {
			return nil, nil, fmt.Errorf("%s=%s: idem exports OTLP over http/protobuf only", v, p)
		}
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName(service)))
	if err != nil {
		return nil, nil, err
	}
	if env, err := resource.New(ctx, resource.WithFromEnv()); err == nil {
		if merged, err := resource.Merge(res, env); err == nil {
			res = merged
		}
	}
	base := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != ""
	var shutdowns []func(context.Context) error
	shutdown := func(ctx context.Context) error {
		var errs []error
		for _, s := range shutdowns {
			errs = append(errs, s(ctx))
		}
		return errors.Join(errs...)
	}
	cfg := &Config{OperationDurations: true}
	if base || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" {
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("otlp traces: %w", err)
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
		shutdowns = append(shutdowns, tp.Shutdown)
		cfg.TracerProvider = tp
	} else {
		cfg.TracerProvider = noopTracerProvider()
	}
	if base || os.Getenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") != "" {
		exp, err := otlpmetrichttp.New(ctx)
		if err != nil {
			_ = shutdown(ctx)
			return nil, nil, fmt.Errorf("otlp metrics: %w", err)
		}
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)), sdkmetric.WithResource(res))
		shutdowns = append(shutdowns, mp.Shutdown)
		cfg.MeterProvider = mp
	} else {
		cfg.MeterProvider = noopMeterProvider()
	}
	t, err := New(cfg)
	if err != nil {
		_ = shutdown(ctx)
		return nil, nil, err
	}
	return t, shutdown, nil
}
