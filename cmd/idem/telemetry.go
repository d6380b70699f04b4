package main

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemotel"
)

// startTelemetry starts the OTLP export that the standard
// OTEL_EXPORTER_OTLP_* variables ask for (idemotel.FromEnv; nil Telemetry
// when none is set), with the ledger-size gauge of store. The export is
// flushed and stopped by *closeStore, before the store closes. line
// describes the export for the startup output.
func startTelemetry(ctx context.Context, service string, store idem.Store, closeStore *func() error) (tel *idemotel.Telemetry, line string, err error) {
	if os.Getenv("OTEL_SERVICE_NAME") != "" {
		service = os.Getenv("OTEL_SERVICE_NAME")
	}
	tel, shutdown, err := idemotel.FromEnv(ctx, service)
	if err != nil || tel == nil {
		return nil, "", err
	}
	if err := tel.ObserveLedgerSize(store); err != nil {
		return nil, "", errors.Join(err, shutdown(ctx))
	}
	next := *closeStore
	*closeStore = func() error {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return errors.Join(shutdown(sctx), next())
	}
	return tel, "OpenTelemetry: exporting OTLP/HTTP traces and metrics as OTEL_EXPORTER_OTLP_* say, service " + service, nil
}
