package idemotel

import (
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

func noopTracerProvider() trace.TracerProvider { return tracenoop.NewTracerProvider() }

func noopMeterProvider() metric.MeterProvider { return metricnoop.NewMeterProvider() }
