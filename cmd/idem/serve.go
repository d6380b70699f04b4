package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/workflow"
)

const serveUsage = `Usage: idem serve [flags]

Runs the ledger over HTTP/JSON (the API is docs/api.md). With no flags it
keeps the ledger in the embedded store in ./idem-data, listens on
127.0.0.1:7070, and makes one random token for the scope "default": it
prints it once and keeps it in ./idem-data/token (mode 0600), which later
starts reuse (read it with: cat ./idem-data/token).

Flags:
  --listen ADDR          where to listen; port 0 picks a free port
                         (default 127.0.0.1:7070)
  --store URL            where the ledger lives (default file:./idem-data):
                            ` + storeURLHelp + `
  --migrate              apply the PostgreSQL schema migrations at start
                         (as idem migrate does)
  --tokens FILE          who may call the API: one "TOKEN SCOPE[,SCOPE...]"
                         per line; blank lines and # comments are allowed.
                         The scope * binds a token to every scope (for
                         operators, sweeps and conformance tests). Without
                         --tokens serve makes one token for scope "default"
                         and listens on loopback addresses only; on a file:
                         store it keeps that token in DIR/token (mode 0600,
                         owner only, else serve refuses to start) and reuses
                         it; on mem:, postgres:// and redis:// it makes a new
                         one at every start and keeps it nowhere.
  --max-body BYTES       largest request body; larger ones get 413
                         (default 5657944: an outcome of 4 MiB, the
                         largest complete accepts, as base64 plus 64 KiB
                         for the other fields). A smaller limit also caps
                         outcomes at 3/4 of it; a larger one leaves them at
                         4 MiB
  --key-secret-file FILE keep only HMAC-SHA256 digests of keys in the store,
                         keyed by the secret in FILE (its bytes, without
                         trailing newlines; an empty one is refused; keep
                         it mode 0600). Clients still name raw keys; GET
                         /v1/keys lists digests. The digests are those of
                         idem.Config.KeySecret, so a Go service with the
                         same secret finds the same records; another secret
                         (or none) finds none of them
  --lease DURATION       lease of a begin without lease_ms (default 30s)
  --window DURATION      dedup window of a begin without window_ms
                         (default 24h)
  --drain DURATION       on SIGTERM or SIGINT, how long in-flight requests
                         may finish before the store is closed (default 10s)
  --sweep-interval DURATION
                         how often expired records are removed from a mem:,
                         postgres:// or redis:// store (file: sweeps itself)
                         (default 1m). Redis expires records by itself; its
                         sweep trims index entries and reads the whole
                         index (about 2.6 s of Redis per million records):
                         sweep a large Redis ledger every 10m or so
  --log-level LEVEL      debug (every request), info (client errors), warn
                         or error (default info); logs never hold keys,
                         tokens or bodies
` + readyHelp + `
  --workflows DIR        register every declarative workflow document of
                         DIR (*.json, *.yaml, *.yml; docs/workflows.md) at
                         start; serve refuses to start when one is bad and
                         prints every error with its file, line and column.
                         The workflow engine runs on mem:, file: and
                         postgres:// stores (with or without --workflows:
                         POST /v1/workflow-types registers more, for the
                         life of the process); redis:// keeps no workflows
                         and the workflow routes answer 501
  --engine-id ID         the engine's name in the instances it owns (give
                         each serve process its own) (default: host name
                         and pid)
  --workflow-workers N   how many workflow instances the engine advances at
                         once (default 16)
  --workflow-lease DURATION
                         how long the engine owns an instance after its last
                         write; an instance whose serve died is taken over
                         by another serve of the same store once it runs out
                         (default 30s). It is renewed while an action runs
                         longer than a third of it
  --workflow-var NAME=VALUE
                         the value of {{vars.NAME}} in the declarative
                         documents (--workflows and POST /v1/workflow-types),
                         over the document's own vars: point a document at
                         this deployment's services without editing it
                         (repeatable; a later NAME wins). Vars are not part
                         of a type's fingerprint. IDEM_WORKFLOW_VAR holds one
                         NAME=VALUE; give more on the command line
` + uiHelp + `
` + tlsHelp + `
` + envHelp + `
Example:
  printf 'ops-%s *\nbilling-%s billing\n' $(openssl rand -hex 16) $(openssl rand -hex 16) > tokens
  idem serve --listen :7070 --store file:/var/lib/idem --tokens tokens
  curl -H "Authorization: Bearer billing-..." -H 'Content-Type: application/json' \
       -d '{"scope":"billing","key":"order-42","fingerprint":"v1"}' localhost:7070/v1/begin
`

// defaultScope is the scope of the token serve makes without --tokens.
const defaultScope = "default"

type serveOptions struct {
	listen, store, tokens, logLevel string
	keySecretFile                   string
	migrate                         bool
	maxBody                         int64
	lease, window, drain, sweep     time.Duration
	tls                             tlsFiles
	workflows, engineID             string
	workflowWorkers                 int
	workflowLease                   time.Duration
	workflowVars                    workflowVars
	ui                              uiOptions
	ready                           readyFlags
}

func runServe(args []string, stdout, stderr io.Writer) int {
	return runLongLived("serve", args, stdout, stderr, parseServeFlags, serve)
}

// parseServeFlags returns the options, or an exit code >= 0 when serve
// should stop here (help, usage error).
func parseServeFlags(args []string, stdout, stderr io.Writer) (*serveOptions, int) {
	fs := flag.NewFlagSet("idem serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := &serveOptions{workflowVars: workflowVars{}}
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7070", "")
	fs.StringVar(&o.store, "store", defaultStore, "")
	fs.StringVar(&o.tokens, "tokens", "", "")
	fs.BoolVar(&o.migrate, "migrate", false, "")
	fs.Int64Var(&o.maxBody, "max-body", idemapi.DefaultMaxBody, "")
	fs.StringVar(&o.keySecretFile, "key-secret-file", "", "")
	fs.DurationVar(&o.lease, "lease", idem.DefaultLease, "")
	fs.DurationVar(&o.window, "window", idem.DefaultWindow, "")
	fs.DurationVar(&o.drain, "drain", 10*time.Second, "")
	fs.DurationVar(&o.sweep, "sweep-interval", time.Minute, "")
	fs.StringVar(&o.logLevel, "log-level", "info", "")
	fs.StringVar(&o.workflows, "workflows", "", "")
	fs.StringVar(&o.engineID, "engine-id", "", "")
	fs.IntVar(&o.workflowWorkers, "workflow-workers", 16, "")
	fs.DurationVar(&o.workflowLease, "workflow-lease", 30*time.Second, "")
	fs.Var(o.workflowVars, "workflow-var", "")
	o.ui.register(fs)
	o.ready.register(fs)
	o.tls.register(fs)
	if code := parseCommandFlags(fs, args, serveUsage, stdout, stderr); code >= 0 {
		return nil, code
	}
	var bad string
	switch {
	case o.workflowLease <= 0 || o.workflowLease > idemapi.MaxDuration:
		bad = fmt.Sprintf("--workflow-lease must be positive and at most a century, got %s", o.workflowLease)
	case o.workflowWorkers <= 0:
		bad = fmt.Sprintf("--workflow-workers must be positive, got %d", o.workflowWorkers)
	default:
		bad = badServerFlags(o.maxBody, o.lease, o.window, o.drain, o.sweep, &o.ready, &o.tls)
	}
	if bad != "" {
		fmt.Fprintf(stderr, "idem serve: %s\n", bad)
		return nil, 2
	}
	return o, -1
}

// serve runs until ctx ends, then drains and closes the store.
func serve(ctx context.Context, o *serveOptions, stdout, stderr io.Writer) error {
	logger, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return err
	}

	if o.tokens == "" { // refused before anything is opened or created
		if err := loopbackOnly(o.listen); err != nil {
			return err
		}
	}
	store, keySecret, closeStore, err := openServerStore(ctx, o.store, o.keySecretFile, &idem.OpenConfig{Migrate: o.migrate})
	if err != nil {
		return err
	}
	tokens, tokenLine, err := serveTokens(o, dataDir(store))
	if err != nil {
		return errors.Join(err, closeStore())
	}

	tel, telLine, err := startTelemetry(ctx, "idem-serve", store, &closeStore)
	if err != nil {
		return errors.Join(err, closeStore())
	}
	var wfObs workflow.Observer
	if tel != nil {
		wfObs = tel.Workflow()
	}
	wf, err := serveWorkflows(o, store, wfObs)
	if err != nil {
		return errors.Join(err, closeStore())
	}
	apiCfg := &idemapi.Config{
		Tokens: tokens, MaxBody: o.maxBody, DefaultLease: o.lease, DefaultWindow: o.window, Logger: logger, KeySecret: keySecret,
		Readiness: o.ready.config(logger),
	}
	var obs observers
	if tel != nil {
		obs = append(obs, tel)
	}
	if wf != nil {
		apiCfg.Workflows, apiCfg.WorkflowTypes, apiCfg.ParseWorkflow = wf.engine, wf.registry,
			func(data []byte, name string) (*workflow.Definition, error) {
				return parseWorkflowDocument(data, name, o.workflowVars)
			}
		// The engine stops after the HTTP servers have drained, before
		// the store closes.
		closeStore = func(closeStore func() error) func() error {
			return func() error {
				wf.stop()
				return closeStore()
			}
		}(closeStore)
	}
	rates := newRates(&o.ui)
	if rates != nil {
		obs = append(obs, rates)
	}
	if len(obs) > 0 {
		apiCfg.Observer = obs
	}
	handler, err := idemapi.NewServer(store, apiCfg)
	if err != nil {
		return errors.Join(err, closeStore())
	}
	var engine *workflow.Engine
	var types *workflow.Registry
	if wf != nil {
		engine, types = wf.engine, wf.registry
	}
	dash, err := newDashboard(&o.ui, rates, store, tokens, keySecret, engine, types, logger)
	if err != nil {
		return errors.Join(err, closeStore())
	}
	ln, err := o.tls.listen(o.listen)
	if err != nil {
		return errors.Join(fmt.Errorf("--listen %s: %w", o.listen, err), closeStore())
	}

	fmt.Fprintf(stdout, "idem serve: listening on %s://%s\n", o.tls.scheme(), ln.Addr())
	fmt.Fprintf(stdout, "idem serve: store %s, data in %s\n", redactURL(o.store), describeStore(store, o.store))
	if keySecret != nil {
		fmt.Fprintf(stdout, "idem serve: keys are stored as HMAC-SHA256 digests (--key-secret-file %s)\n", o.keySecretFile)
	}
	if tokenLine != "" {
		fmt.Fprintf(stdout, "idem serve: %s\n", tokenLine)
	}
	if dash != nil {
		fmt.Fprintf(stdout, "idem serve: dashboard on %s://%s/ui/ (sign in with a token)\n", o.tls.scheme(), ln.Addr())
	}
	if wf != nil {
		fmt.Fprintf(stdout, "idem serve: %s\n", wf.describe)
		wf.start()
	} else {
		fmt.Fprintf(stdout, "idem serve: workflows off: the store keeps no workflow journal (use mem:, file: or postgres://)\n")
	}

	var h http.Handler = handler
	if tel != nil {
		h = tel.Handler("", handler)
		fmt.Fprintf(stdout, "idem serve: %s\n", telLine)
	}
	srv := &http.Server{
		Handler:           dash.mount(h),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	ratesCtx, stopRates := context.WithCancel(ctx)
	ratesDone := dash.run(ratesCtx)
	defer func() { stopRates(); <-ratesDone }()
	return runServers(ctx, "serve", stdout, logger, store, o.sweep, o.drain, closeStore, listening{srv, ln})
}

// serveTokens reads --tokens, or makes one token for the default scope when
// there is none (serve then listens on loopback addresses only). A store with
// a data directory (dir) keeps that token in a file there, so restarts
// keep it; line says where the token is, for the startup output.
func serveTokens(o *serveOptions, dir string) (tokens map[string][]string, line string, err error) {
	if o.tokens != "" {
		f, err := os.Open(o.tokens)
		if err != nil {
			return nil, "", fmt.Errorf("--tokens: %w", err)
		}
		defer f.Close()
		tokens, err := idemapi.ParseTokens(f)
		if err != nil {
			return nil, "", fmt.Errorf("--tokens %s: %w", o.tokens, err)
		}
		if len(tokens) == 0 {
			return nil, "", fmt.Errorf("--tokens %s holds no tokens: add lines like `TOKEN SCOPE[,SCOPE...]`", o.tokens)
		}
		return tokens, "", nil
	}
	var token, path string
	var made bool
	if dir == "" {
		token, err = newToken()
	} else {
		token, path, made, err = keptToken(dir)
	}
	switch {
	case err != nil:
		return nil, "", err
	case dir == "":
		line = fmt.Sprintf("token for scope %q (shown once, kept nowhere: the store has no data directory; pass --tokens FILE to keep tokens): %s", defaultScope, token)
	case made:
		line = fmt.Sprintf("token for scope %q (new, kept in %s, mode 0600): %s", defaultScope, path, token)
	default: // printed once, when made: the file is the place to read it
		line = fmt.Sprintf("token for scope %q kept in %s (read it with: cat %s)", defaultScope, path, path)
	}
	return map[string][]string{token: {defaultScope}}, line, nil
}

// readKeySecret reads --key-secret-file: the file's bytes without trailing
// newlines (an editor or echo adds one) are the secret.
func readKeySecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--key-secret-file: %w", err)
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return nil, fmt.Errorf("--key-secret-file %s is empty: put a random secret in it, like `openssl rand -hex 32 > %s`", path, path)
	}
	return b, nil
}

func loopbackOnly(listen string) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	where := host
	if where == "" {
		where = "every interface"
	}
	return fmt.Errorf("--listen %s would accept connections from other machines (%s), "+
		"but without --tokens the only token is one made up now and printed here, "+
		"so serve listens on loopback addresses only (like 127.0.0.1:7070); "+
		"to serve other machines, pass --tokens FILE with lines `TOKEN SCOPE[,SCOPE...]`", listen, where)
}

// sweepPeriodically removes expired records from a store that does not
// sweep itself.
func sweepPeriodically(ctx context.Context, store idem.Store, every time.Duration, log *slog.Logger, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := store.Sweep(ctx, &idem.SweepParams{}); err != nil && ctx.Err() == nil {
			log.Warn("sweep failed", "error", err)
		}
	}
}
