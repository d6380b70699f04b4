package main

import (
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/idemkit/idem/idemapi"
)

// readyHelp documents the readiness flags of serve and proxy.
const readyHelp = `  --ready-timeout DURATION
                         GET /readyz answers 503 (application/problem+json,
                         unavailable) while the store does not pass a cheap
                         probe within this (PostgreSQL: a primary that
                         answers, not a standby; other stores: a read of
                         one key) (default 2s); /healthz stays 200 as long
                         as the process answers. Point a load balancer's
                         health check at /readyz, a supervisor's at /healthz
  --ready-cache DURATION how long /readyz answers with the last probe's
                         result, so frequent polls probe the store once
                         (default 1s)`

// readyFlags are --ready-timeout and --ready-cache.
type readyFlags struct {
	timeout, cache time.Duration
}

func (r *readyFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&r.timeout, "ready-timeout", idemapi.DefaultReadyTimeout, "")
	fs.DurationVar(&r.cache, "ready-cache", idemapi.DefaultReadyCache, "")
}

func (r *readyFlags) check() error {
	switch {
	case r.timeout <= 0:
		return fmt.Errorf("--ready-timeout must be positive, got %s", r.timeout)
	case r.cache <= 0:
		return fmt.Errorf("--ready-cache must be positive, got %s", r.cache)
	}
	return nil
}

func (r *readyFlags) config(logger *slog.Logger) *idemapi.ReadinessConfig {
	return &idemapi.ReadinessConfig{Timeout: r.timeout, CacheFor: r.cache, Logger: logger}
}
