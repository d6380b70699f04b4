package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/store/pebblestore"
)

// runLongLived is the life of a long-lived command (serve, proxy,
// consume, relay): parse its flags (an exit code >= 0 from parse ends it
// there: help, usage error), then run it with a context that SIGTERM and
// SIGINT cancel, turning its error into exit code 1.
func runLongLived[O any](cmd string, args []string, stdout, stderr io.Writer,
	parse func(args []string, stdout, stderr io.Writer) (O, int),
	run func(ctx context.Context, o O, stdout, stderr io.Writer) error) int {
	o, code := parse(args, stdout, stderr)
	if code >= 0 {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "idem %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

// badServerFlags is what is wrong with the flags serve and proxy share,
// "" if nothing; each command checks its own flags first.
func badServerFlags(maxBody int64, lease, window, drain, sweep time.Duration, ready *readyFlags, tls *tlsFiles) string {
	switch {
	case maxBody <= 0:
		return fmt.Sprintf("--max-body must be positive, got %d", maxBody)
	case lease <= 0 || lease > idemapi.MaxDuration:
		return fmt.Sprintf("--lease must be positive and at most a century, got %s", lease)
	case window <= 0 || window > idemapi.MaxDuration:
		return fmt.Sprintf("--window must be positive and at most a century, got %s", window)
	case drain <= 0:
		return fmt.Sprintf("--drain must be positive, got %s", drain)
	case sweep <= 0:
		return fmt.Sprintf("--sweep-interval must be positive, got %s", sweep)
	}
	if err := ready.check(); err != nil {
		return err.Error()
	}
	if err := tls.check(); err != nil {
		return err.Error()
	}
	return ""
}

// openServerStore reads the key secret of --key-secret-file, if given,
// then opens the store of --store, for serve and proxy. closeStore closes
// the store, saying so in its error.
func openServerStore(ctx context.Context, storeURL, keySecretFile string, cfg *idem.OpenConfig) (store idem.Store, keySecret []byte, closeStore func() error, err error) {
	if keySecretFile != "" {
		if keySecret, err = readKeySecret(keySecretFile); err != nil {
			return nil, nil, nil, err
		}
	}
	if store, err = openStore(ctx, storeURL, cfg); err != nil {
		return nil, nil, nil, fmt.Errorf("--store %s: %w", redactURL(storeURL), err)
	}
	closeStore = func() error {
		if err := store.Close(); err != nil {
			return fmt.Errorf("closing the store: %w", err)
		}
		return nil
	}
	return store, keySecret, closeStore, nil
}

// listening is a server and the listener it serves.
type listening struct {
	srv *http.Server
	ln  net.Listener
}

// runServers is the life of serve and proxy: it serves every server until
// ctx ends (SIGTERM, SIGINT) or one fails, sweeps a store that does not
// sweep itself meanwhile, then lets requests in flight finish within drain
// — they store their outcomes before the store closes — and closes the
// store. cmd names the command in what it prints.
func runServers(ctx context.Context, cmd string, stdout io.Writer, logger *slog.Logger, store idem.Store, sweepEvery, drain time.Duration, closeStore func() error, servers ...listening) error {
	served := make(chan error, len(servers))
	for _, s := range servers {
		go func() { served <- s.srv.Serve(s.ln) }()
	}

	sweepDone := make(chan struct{})
	sweepCtx, stopSweep := context.WithCancel(ctx)
	if _, ok := store.(*pebblestore.Store); ok {
		close(sweepDone) // file: sweeps itself
	} else {
		go sweepPeriodically(sweepCtx, store, sweepEvery, logger, sweepDone)
	}

	var serveErr error
	select {
	case <-ctx.Done():
		fmt.Fprintf(stdout, "idem %s: stopping: draining in-flight requests\n", cmd)
	case serveErr = <-served:
	}
	stopSweep()
	<-sweepDone

	drainCtx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	for _, s := range servers {
		if err := s.srv.Shutdown(drainCtx); err != nil {
			// Requests still running after the bound are cut off: the store
			// answers them ErrClosed (503) once it closes, and their keys'
			// leases expire.
			_ = s.srv.Close()
			serveErr = errors.Join(serveErr, fmt.Errorf("draining requests: %w", err))
		}
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	if err := closeStore(); err != nil {
		return errors.Join(serveErr, err)
	}
	if serveErr == nil {
		fmt.Fprintf(stdout, "idem %s: stopped; the store is closed\n", cmd)
	}
	return serveErr
}

// parseLogLevel reads a --log-level value.
func parseLogLevel(s string) (slog.Level, error) {
	var level slog.Level
	if level.UnmarshalText([]byte(s)) != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return level, nil
}

// newLogger is a long-lived command's text logger on stderr, at the
// --log-level level.
func newLogger(stderr io.Writer, level string) (*slog.Logger, error) {
	l, err := parseLogLevel(level)
	if err != nil {
		return nil, err
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: l})), nil
}
