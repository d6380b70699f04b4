package main

import (
	"context"
	"flag"
	"log/slog"
	"net/http"
	"os"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemui"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/idemkit/idem/workflow"
)

// uiHelp is the dashboard's part of serve's and proxy's --help.
const uiHelp = `  --ui                   serve the dashboard at /ui (default true; --ui=false
                         turns it off): keys, rates, workflows and
                         messaging as web pages, signed in with a token of
                         the tokens file (docs/ui.md)
  --ui-secure-cookie     mark the dashboard's session cookie Secure also when
                         requests arrive over plain HTTP (behind a proxy that
                         terminates TLS); over TLS it always is`

// uiOptions are the dashboard's flags.
type uiOptions struct {
	on, secureCookie bool
}

func (o *uiOptions) register(fs *flag.FlagSet) {
	fs.BoolVar(&o.on, "ui", true, "")
	fs.BoolVar(&o.secureCookie, "ui-secure-cookie", false, "")
}

// dashboard is the dashboard of serve or proxy and the rates it shows.
type dashboard struct {
	handler *idemui.Handler
	rates   *idemui.Rates
}

// newRates returns the rates a dashboard shows, or nil with --ui=false.
func newRates(o *uiOptions) *idemui.Rates {
	if !o.on {
		return nil
	}
	return idemui.NewRates(nil)
}

// newDashboard makes the dashboard over store, or returns nil with
// --ui=false. A PostgreSQL store's outbox is shown on its Messaging page.
func newDashboard(o *uiOptions, rates *idemui.Rates, store idem.Store, tokens map[string][]string, keySecret []byte,
	engine *workflow.Engine, types *workflow.Registry, logger *slog.Logger) (*dashboard, error) {
	if !o.on {
		return nil, nil
	}
	cfg := &idemui.Config{Store: store, Tokens: tokens, KeySecret: keySecret, Rates: rates,
		Workflows: engine, WorkflowTypes: types, SecureCookie: o.secureCookie, Logger: logger}
	if pg, ok := store.(*pgstore.Store); ok {
		cfg.Outbox = pg.Outbox()
	}
	h, err := idemui.New(cfg)
	if err != nil {
		return nil, err
	}
	return &dashboard{handler: h, rates: rates}, nil
}

// mount serves the dashboard under /ui/ and everything else with next.
func (d *dashboard) mount(next http.Handler) http.Handler {
	if d == nil {
		return next
	}
	mux := http.NewServeMux()
	mux.Handle(idemui.DefaultPrefix+"/", d.handler)
	mux.Handle("/", next)
	return mux
}

// run samples the rates until ctx ends; the returned channel closes when
// it has stopped.
func (d *dashboard) run(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	if d == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		d.rates.Run(ctx)
	}()
	return done
}

// readUITokens reads proxy's --ui-tokens file.
func readUITokens(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return idemapi.ParseTokens(f)
}
