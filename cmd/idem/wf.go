package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemclient"
	"github.com/idemkit/idem/store/pebblestore"
	"github.com/idemkit/idem/workflow"
)

const wfUsage = `Usage: idem wf <subcommand> [ARGS] [flags]

Starts, signals, inspects and operates workflows (docs/workflows.md;
every subcommand and column: docs/cli-wf.md). It goes through a running
idem serve (--server and a token), or works on a store directly (--store,
with the workflow types of --workflows DIR).

Subcommands:
  types               the workflow types: a table of NAME, VERSION, LATEST
                      (* for the version a start without --version runs),
                      STATES, TRANSITIONS, SOURCE (document or go) and
                      FINGERPRINT (its first 12 hex digits)
  graph TYPE          the state machine of TYPE as Mermaid text (--format
                      dot: Graphviz), always text, also with --json
  register FILE...    register declarative documents (JSON or YAML) on the
                      server; --server only (with --store, types come from
                      --workflows DIR). Registrations last as long as the
                      server process: give serve --workflows DIR to keep them
  start TYPE ID       start instance ID of TYPE, idempotently: the same ID
                      with the same type and input is the same instance
                      ("exists"); another input is refused
  signal ID EVENT     send EVENT to instance ID, once per --event-id
  cancel ID           ask instance ID to stop and unwind
  retry ID            give the failed action of parked instance ID a fresh
                      set of attempts
  resume ID STATE     restart instance ID from STATE (a parked one, or one
                      failed or cancelled before any compensation ran)
  show ID             one instance: every field
  wait ID             wait until instance ID is finished or parked (at most
                      --timeout), then print it as show does; exit 1 if the
                      timeout passed first
  history ID          its history, oldest first: a table of SEQ, AT, RUN,
                      KIND, STATE, EVENT, ACTION, STATUS and DETAIL (the
                      step key, error or reason)
  ls                  instances by id: a table of ID, TYPE, VERSION, RUN,
                      STATE, STATUS and UPDATED

Flags (before or after the arguments; "--" ends them):
  --server URL        go through the API of a running idem serve, like
                      http://127.0.0.1:7070 (default $IDEM_SERVER)
  --token T           the bearer token for --server (default $IDEM_TOKEN);
                      it must be bound to "wf:TYPE" for each type used, or
                      to "*"
  --token-file FILE   read the token from FILE, alone on one line (such as
                      the ./idem-data/token of idem serve without --tokens)
  --store URL         work on the store directly (default file:./idem-data;
                      see idem serve --help). Instances started or changed
                      here are advanced by an idem serve of the same store
                      (postgres:// shares one; file: is locked by a running
                      serve: use --server then); mem: holds nothing
  --workflows DIR     with --store: the declarative documents that define
                      the types (start, resume, types and graph need them)
  --workflow-var NAME=VALUE
                      with --store: the value of {{vars.NAME}} in the
                      documents of --workflows, over the document's own
                      vars (repeatable; as idem serve --workflow-var)
  --json              print JSON for scripts: show, cancel, retry and resume
                      write the instance object of the API (docs/api.md);
                      start writes {"created":BOOL,"workflow":OBJECT};
                      signal {"id","event_id","event","duplicate"}; ls,
                      types and history write one object per line (JSON
                      Lines); register one {"file","created","type"} per
                      file
  --version N         graph, start: the type's version (default the latest)
  --format F          graph: mermaid (default) or dot
  --input JSON        start: the input, any JSON value (default none)
  --input-file FILE   start: read the input from FILE ("-": stdin)
  --reuse POLICY      start: whether a finished ID starts again:
                      reject_duplicate (default), allow_if_failed or
                      allow_always
  --event-id ID       signal: the event's id: an event id is delivered
                      once, so a signal repeated with the same id changes
                      nothing (default: a new random id, printed; pass one
                      to make retries safe)
  --payload JSON      signal: the event's payload, any JSON value
  --payload-file FILE signal: read the payload from FILE ("-": stdin)
  --reason TEXT       cancel, resume: why, kept in the history
  --type T            ls: only instances of type T
  --state S           ls: only instances in state S
  --status S          ls: running, unwinding, parked, succeeded, failed or
                      cancelled
  --limit N           ls: print at most N instances (default 100; 0: all)
  --quiet             ls: no progress on standard error (ls fetches pages
                      of 1000 and says "fetched P pages, N instances"
                      there: redrawn in place when stderr is a terminal
                      and stdout is not, else a plain line "idem wf ls:
                      ..." at most every 10 seconds)
  --timeout D         wait: how long to wait, a Go duration (default 1m)
  --after ID          ls: start after instance ID (a previous ls said
                      "more")

Environment:
  IDEM_SERVER, IDEM_TOKEN, IDEM_TOKEN_FILE, IDEM_STORE, IDEM_WORKFLOWS and
  IDEM_WORKFLOW_VAR set the flags of the same names; a flag on the command
  line wins. IDEM_WORKFLOW_VAR holds one NAME=VALUE (give more on the
  command line). No other flag is read from the environment.

Exit codes: 0 done, 1 failure (an unknown instance or type, an operation
the instance's status refuses, a server or store error), 2 usage.

Examples:
  idem wf types --server http://127.0.0.1:7070 --token-file ./idem-data/token
  idem wf start order order-7 --input '{"sku":"A1","qty":2}'
  idem wf signal order-7 pay --event-id pay-7 --payload '{"amount":1200}'
  idem wf ls --status parked --json | jq -r .id
  idem wf graph order --format dot | dot -Tsvg > order.svg
`

type wfOptions struct {
	server, token, tokenFile, store, workflows string
	asJSON, quiet                              bool
	version                                    int
	format, input, inputFile, reuse            string
	eventID, payload, payloadFile, reason      string
	typ, state, status, after                  string
	limit                                      int
	timeout                                    time.Duration
	workflowVars                               workflowVars
	onCommandLine                              map[string]bool
}

// wfEnvFlags are the flags an environment variable sets (envName).
var wfEnvFlags = []string{"server", "token", "token-file", "store", "workflows", "workflow-var"}

// wfArgs names the positional arguments of each subcommand.
var wfArgs = map[string][]string{
	"types": nil, "graph": {"TYPE"}, "register": {"FILE..."}, "start": {"TYPE", "ID"},
	"signal": {"ID", "EVENT"}, "cancel": {"ID"}, "retry": {"ID"}, "resume": {"ID", "STATE"},
	"show": {"ID"}, "wait": {"ID"}, "history": {"ID"}, "ls": nil,
}

func runWF(args []string, stdout, stderr io.Writer) int {
	return runWFWith(args, stdout, stderr, os.Stdin, os.LookupEnv)
}

func runWFWith(args []string, stdout, stderr io.Writer, stdin io.Reader, lookup func(string) (string, bool)) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, wfUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "-h", "--help", "-help", "help":
		fmt.Fprint(stdout, wfUsage)
		return 0
	}
	want, known := wfArgs[sub]
	if !known {
		fmt.Fprintf(stderr, "idem wf: unknown subcommand %q\n\n%s", sub, wfUsage)
		return 2
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "idem wf %s: %s\n\nRun \"idem wf --help\" for the flags.\n", sub, fmt.Sprintf(format, a...))
		return 2
	}
	o, pos, code := parseWFFlags(sub, args, stdout, stderr, lookup)
	if code >= 0 {
		return code
	}
	switch {
	case sub == "register" && len(pos) == 0:
		return usageErr("want one or more FILEs")
	case sub != "register" && len(want) == 0 && len(pos) > 0:
		return usageErr("unexpected argument %q (%s takes none)", pos[0], sub)
	case sub != "register" && len(pos) != len(want):
		return usageErr("want %s, got %d arguments", strings.Join(want, " "), len(pos))
	case o.server != "" && o.onCommandLine["store"]:
		return usageErr("pass --store or --server, not both")
	case o.server == "" && (o.onCommandLine["token"] || o.onCommandLine["token-file"]):
		return usageErr("--token and --token-file are for --server; the store is used directly")
	case o.server != "" && o.onCommandLine["workflows"]:
		return usageErr("--workflows is for --store; the server has its own types")
	case o.server != "" && o.onCommandLine["workflow-var"]:
		return usageErr("--workflow-var is for --store (with --workflows); pass it to the idem serve behind --server")
	case o.server == "" && sub == "register":
		return usageErr("register registers types on a server (--server); with --store, types come from --workflows DIR")
	case o.token != "" && o.tokenFile != "" && o.onCommandLine["token"] && o.onCommandLine["token-file"]:
		return usageErr("pass --token or --token-file, not both")
	case o.input != "" && o.inputFile != "":
		return usageErr("pass --input or --input-file, not both")
	case o.payload != "" && o.payloadFile != "":
		return usageErr("pass --payload or --payload-file, not both")
	case o.format != "" && o.format != "mermaid" && o.format != "dot":
		return usageErr("--format %q: want mermaid or dot", o.format)
	case o.version < 0:
		return usageErr("--version must be positive, got %d", o.version)
	case o.limit < 0:
		return usageErr("--limit must not be negative, got %d", o.limit)
	case o.timeout <= 0:
		return usageErr("--timeout must be positive, got %s", o.timeout)
	}
	if _, ok := idemapi.ParseReusePolicy(o.reuse); !ok {
		return usageErr("--reuse %q: want reject_duplicate, allow_if_failed or allow_always", o.reuse)
	}
	switch workflow.Status(o.status) {
	case "", workflow.Running, workflow.Unwinding, workflow.Parked, workflow.Succeeded, workflow.Failed, workflow.Cancelled:
	default:
		return usageErr("--status %q: want running, unwinding, parked, succeeded, failed or cancelled", o.status)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	fail := func(err error) int {
		fmt.Fprintf(stderr, "idem wf %s: %s\n", sub, explainWF(err, o))
		return 1
	}
	be, err := wfOpen(ctx, o)
	if err != nil {
		return fail(err)
	}
	err = runWFSub(ctx, be, sub, pos, o, stdout, stderr, stdin)
	err = errors.Join(err, be.close())
	if err != nil {
		return fail(err)
	}
	return 0
}

// parseWFFlags parses flags before and after the positional arguments,
// then fills those the command line left out from the environment.
func parseWFFlags(sub string, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) (*wfOptions, []string, int) {
	fs := flag.NewFlagSet("idem wf "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := &wfOptions{workflowVars: workflowVars{}, onCommandLine: map[string]bool{}}
	fs.StringVar(&o.server, "server", "", "")
	fs.StringVar(&o.token, "token", "", "")
	fs.StringVar(&o.tokenFile, "token-file", "", "")
	fs.StringVar(&o.store, "store", defaultStore, "")
	fs.StringVar(&o.workflows, "workflows", "", "")
	fs.Var(o.workflowVars, "workflow-var", "")
	fs.BoolVar(&o.asJSON, "json", false, "")
	fs.BoolVar(&o.quiet, "quiet", false, "")
	fs.IntVar(&o.version, "version", 0, "")
	fs.StringVar(&o.format, "format", "", "")
	fs.StringVar(&o.input, "input", "", "")
	fs.StringVar(&o.inputFile, "input-file", "", "")
	fs.StringVar(&o.reuse, "reuse", "", "")
	fs.StringVar(&o.eventID, "event-id", "", "")
	fs.StringVar(&o.payload, "payload", "", "")
	fs.StringVar(&o.payloadFile, "payload-file", "", "")
	fs.StringVar(&o.reason, "reason", "", "")
	fs.StringVar(&o.typ, "type", "", "")
	fs.StringVar(&o.state, "state", "", "")
	fs.StringVar(&o.status, "status", "", "")
	fs.StringVar(&o.after, "after", "", "")
	fs.IntVar(&o.limit, "limit", 100, "")
	fs.DurationVar(&o.timeout, "timeout", time.Minute, "")
	positional, code := parseSubcommandFlags(fs, args, wfUsage, stdout, stderr)
	if code >= 0 {
		return nil, nil, code
	}
	fs.Visit(func(f *flag.Flag) { o.onCommandLine[f.Name] = true })
	// Only where to work comes from the environment; what to do never
	// does (an IDEM_EVENT_ID left set would make every signal a duplicate).
	skip := maps.Clone(o.onCommandLine)
	fs.VisitAll(func(f *flag.Flag) {
		if !slices.Contains(wfEnvFlags, f.Name) {
			skip[f.Name] = true
		}
	})
	if err := applyEnv(fs, skip, lookup); err != nil {
		fmt.Fprintf(stderr, "idem wf %s: %v\n", sub, err)
		return nil, nil, 2
	}
	return o, positional, -1
}

// wfBackend is where idem wf works: a server (idemclient) or a store's
// journal with an engine of its own that advances nothing (a serve of
// the store does).
type wfBackend interface {
	types(ctx context.Context) ([]*idemapi.WorkflowType, error)
	graph(ctx context.Context, name string, version int, format string) (string, error)
	register(ctx context.Context, doc []byte) (*idemapi.WorkflowType, bool, error)
	start(ctx context.Context, in *idemapi.StartWorkflowRequest) (*idemapi.Workflow, bool, error)
	signal(ctx context.Context, id, eventID, event string, payload json.RawMessage) (bool, error)
	cancel(ctx context.Context, id, reason string) (*idemapi.Workflow, error)
	retry(ctx context.Context, id string) (*idemapi.Workflow, error)
	resume(ctx context.Context, id, state, reason string) (*idemapi.Workflow, error)
	get(ctx context.Context, id string) (*idemapi.Workflow, error)
	wait(ctx context.Context, id string) (*idemapi.Workflow, error)
	list(ctx context.Context, p *idemclient.WorkflowListParams) (*idemapi.WorkflowListResponse, error)
	close() error
}

// wfOpen opens the backend the flags name.
func wfOpen(ctx context.Context, o *wfOptions) (wfBackend, error) {
	if o.server != "" {
		token := o.token
		if o.tokenFile != "" {
			b, err := os.ReadFile(o.tokenFile)
			if err != nil {
				return nil, fmt.Errorf("--token-file: %w", err)
			}
			if token, err = parseTokenFile(b); err != nil {
				return nil, fmt.Errorf("--token-file %s: %w", o.tokenFile, err)
			}
		}
		if token == "" {
			return nil, fmt.Errorf("--server needs --token, --token-file or $IDEM_TOKEN: a token bound to \"wf:TYPE\" or \"*\"")
		}
		c, err := idemclient.New(o.server, token, &idemclient.Config{UserAgent: "idem-wf/" + version})
		if err != nil {
			return nil, fmt.Errorf("--server: %w", err)
		}
		return remoteWF{c}, nil
	}
	s, err := openStore(ctx, o.store, &idem.OpenConfig{Inspect: true})
	switch {
	case errors.Is(err, idem.ErrNotFound):
		return nil, fmt.Errorf("no store at %s (pass --store file:DIR, the directory idem serve keeps its data in)", redactURL(o.store))
	case errors.Is(err, pebblestore.ErrLocked):
		return nil, fmt.Errorf("the store %s is in use by a running idem serve; pass --server URL and a token to go through its API", redactURL(o.store))
	case err != nil:
		return nil, fmt.Errorf("--store %s: %w", redactURL(o.store), err)
	}
	journal := workflowJournal(s)
	if journal == nil {
		_ = s.Close()
		return nil, fmt.Errorf("the store %s keeps no workflow journal (workflows run on mem:, file: and postgres://)", redactURL(o.store))
	}
	reg := workflow.NewRegistry()
	if o.workflows != "" {
		if _, err := loadWorkflows(o.workflows, o.workflowVars, reg); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	eng, err := workflow.NewEngine(journal, reg, &workflow.EngineConfig{ID: "idem-wf-" + strconv.Itoa(os.Getpid())})
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	return &localWF{eng: eng, reg: reg, store: s}, nil
}

// remoteWF is idemclient under the backend's names.
type remoteWF struct{ c *idemclient.Client }

func (r remoteWF) types(ctx context.Context) ([]*idemapi.WorkflowType, error) {
	return r.c.WorkflowTypes(ctx)
}
func (r remoteWF) graph(ctx context.Context, name string, version int, format string) (string, error) {
	return r.c.WorkflowGraph(ctx, name, version, format)
}
func (r remoteWF) register(ctx context.Context, doc []byte) (*idemapi.WorkflowType, bool, error) {
	return r.c.RegisterWorkflow(ctx, doc)
}
func (r remoteWF) start(ctx context.Context, in *idemapi.StartWorkflowRequest) (*idemapi.Workflow, bool, error) {
	return r.c.StartWorkflow(ctx, in)
}
func (r remoteWF) signal(ctx context.Context, id, eventID, event string, payload json.RawMessage) (bool, error) {
	return r.c.SignalWorkflow(ctx, id, eventID, event, payload)
}
func (r remoteWF) cancel(ctx context.Context, id, reason string) (*idemapi.Workflow, error) {
	return r.c.CancelWorkflow(ctx, id, reason)
}
func (r remoteWF) retry(ctx context.Context, id string) (*idemapi.Workflow, error) {
	return r.c.RetryWorkflow(ctx, id)
}
func (r remoteWF) resume(ctx context.Context, id, state, reason string) (*idemapi.Workflow, error) {
	return r.c.ResumeWorkflow(ctx, id, state, reason)
}
func (r remoteWF) get(ctx context.Context, id string) (*idemapi.Workflow, error) {
	return r.c.GetWorkflow(ctx, id)
}
func (r remoteWF) wait(ctx context.Context, id string) (*idemapi.Workflow, error) {
	return r.c.WaitWorkflow(ctx, id)
}
func (r remoteWF) list(ctx context.Context, p *idemclient.WorkflowListParams) (*idemapi.WorkflowListResponse, error) {
	return r.c.ListWorkflows(ctx, p)
}
func (r remoteWF) close() error { return r.c.Close() }

// localWF works on a store's journal with an engine that never runs: it
// records starts, events and operators' changes, and a serve of the same
// store advances the instances.
type localWF struct {
	eng   *workflow.Engine
	reg   *workflow.Registry
	store idem.Store
}

func (l *localWF) types(context.Context) ([]*idemapi.WorkflowType, error) {
	var out []*idemapi.WorkflowType
	for _, ti := range l.reg.Types() {
		for i, v := range ti.Versions {
			if def, err := l.reg.Lookup(ti.Name, v); err == nil {
				out = append(out, idemapi.EncodeWorkflowType(def, i == len(ti.Versions)-1))
			}
		}
	}
	return out, nil
}

func (l *localWF) graph(_ context.Context, name string, version int, format string) (string, error) {
	var def *workflow.Definition
	var err error
	if version == 0 {
		def, err = l.reg.Latest(name)
	} else {
		def, err = l.reg.Lookup(name, version)
	}
	if err != nil {
		return "", err
	}
	if format == "dot" {
		return def.DOT(), nil
	}
	return def.Mermaid(), nil
}

func (l *localWF) register(context.Context, []byte) (*idemapi.WorkflowType, bool, error) {
	return nil, false, fmt.Errorf("%w: register needs --server", idem.ErrInvalid)
}

func (l *localWF) start(ctx context.Context, in *idemapi.StartWorkflowRequest) (*idemapi.Workflow, bool, error) {
	policy, _ := idemapi.ParseReusePolicy(in.ReusePolicy)
	before := 0
	if old, err := l.eng.Get(ctx, in.ID); err == nil {
		before = old.Run
	} else if !errors.Is(err, idem.ErrNotFound) {
		return nil, false, err
	}
	var input []byte
	if len(in.Input) > 0 && string(in.Input) != "null" {
		input = in.Input
	}
	inst, err := l.eng.Start(ctx, in.Type, in.Version, in.ID, input, &workflow.StartOptions{ReusePolicy: policy})
	if err != nil {
		return nil, false, err
	}
	return idemapi.EncodeWorkflow(inst, false), inst.Run > before, nil
}

func (l *localWF) signal(ctx context.Context, id, eventID, event string, payload json.RawMessage) (bool, error) {
	if _, err := l.eng.Get(ctx, id); err != nil {
		return false, err
	}
	if string(payload) == "null" {
		payload = nil
	}
	return l.eng.Signal(ctx, id, eventID, event, payload)
}

func (l *localWF) after(ctx context.Context, id string, err error) (*idemapi.Workflow, error) {
	if err != nil {
		return nil, err
	}
	in, err := l.eng.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return idemapi.EncodeWorkflow(in, false), nil
}

func (l *localWF) cancel(ctx context.Context, id, reason string) (*idemapi.Workflow, error) {
	return l.after(ctx, id, l.eng.Cancel(ctx, id, reason))
}

func (l *localWF) retry(ctx context.Context, id string) (*idemapi.Workflow, error) {
	return l.after(ctx, id, l.eng.Retry(ctx, id))
}

func (l *localWF) resume(ctx context.Context, id, state, reason string) (*idemapi.Workflow, error) {
	return l.after(ctx, id, l.eng.Resume(ctx, id, state, reason))
}

func (l *localWF) get(ctx context.Context, id string) (*idemapi.Workflow, error) {
	in, err := l.eng.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return idemapi.EncodeWorkflow(in, true), nil
}

// wait reads the instance from the journal every second until it ends:
// a serve of the same store advances it.
func (l *localWF) wait(ctx context.Context, id string) (*idemapi.Workflow, error) {
	if _, err := l.eng.Wait(ctx, id); err != nil {
		return nil, err
	}
	return l.get(ctx, id)
}

func (l *localWF) list(ctx context.Context, p *idemclient.WorkflowListParams) (*idemapi.WorkflowListResponse, error) {
	res, err := l.eng.List(ctx, &workflow.ListParams{Type: p.Type, State: p.State, Status: workflow.Status(p.Status), After: p.After, Limit: p.Limit})
	if err != nil {
		return nil, err
	}
	out := &idemapi.WorkflowListResponse{Workflows: []*idemapi.Workflow{}, Next: res.Next}
	for _, in := range res.Instances {
		out.Workflows = append(out.Workflows, idemapi.EncodeWorkflow(in, false))
	}
	return out, nil
}

func (l *localWF) close() error { return l.store.Close() }

// jsonArg reads a JSON value from a flag or a file ("-": stdin), compact;
// nil when neither is given.
func jsonArg(flagName, value, file string, stdin io.Reader) (json.RawMessage, error) {
	data := []byte(value)
	if file != "" {
		var err error
		if file == "-" {
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(file)
		}
		if err != nil {
			return nil, fmt.Errorf("--%s-file: %w", flagName, err)
		}
		flagName += "-file"
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	var b bytes.Buffer
	if err := json.Compact(&b, data); err != nil {
		return nil, fmt.Errorf("%w: --%s is not valid JSON: %v", idem.ErrInvalid, flagName, err)
	}
	return b.Bytes(), nil
}

func runWFSub(ctx context.Context, be wfBackend, sub string, pos []string, o *wfOptions, stdout, stderr io.Writer, stdin io.Reader) error {
	enc := json.NewEncoder(stdout)
	printWF := func(w *idemapi.Workflow, line string) error {
		if o.asJSON {
			return enc.Encode(w)
		}
		_, err := fmt.Fprintln(stdout, line)
		return err
	}
	switch sub {
	case "types":
		types, err := be.types(ctx)
		if err != nil {
			return err
		}
		if o.asJSON {
			for _, t := range types {
				if err := enc.Encode(t); err != nil {
					return err
				}
			}
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tVERSION\tLATEST\tSTATES\tTRANSITIONS\tSOURCE\tFINGERPRINT")
		for _, t := range types {
			latest, source := "", "go"
			if t.Latest {
				latest = "*"
			}
			if t.Declarative {
				source = "document"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\t%.12s\n", printable(t.Name), t.Version, latest, len(t.States), len(t.Transitions), source, t.Fingerprint)
		}
		return tw.Flush()

	case "graph":
		g, err := be.graph(ctx, pos[0], o.version, o.format)
		if err != nil {
			return err
		}
		_, err = io.WriteString(stdout, g)
		return err

	case "register":
		for _, file := range pos {
			doc, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			t, created, err := be.register(ctx, doc)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			if o.asJSON {
				if err := enc.Encode(struct {
					File    string                `json:"file"`
					Created bool                  `json:"created"`
					Type    *idemapi.WorkflowType `json:"type"`
				}{file, created, t}); err != nil {
					return err
				}
				continue
			}
			what := "registered"
			if !created {
				what = "already registered (the same document)"
			}
			fmt.Fprintf(stdout, "%s: %s %s v%d, fingerprint %.12s\n", filepath.Base(file), what, printable(t.Name), t.Version, t.Fingerprint)
		}
		return nil

	case "start":
		input, err := jsonArg("input", o.input, o.inputFile, stdin)
		if err != nil {
			return err
		}
		w, created, err := be.start(ctx, &idemapi.StartWorkflowRequest{Type: pos[0], Version: o.version, ID: pos[1], Input: input, ReusePolicy: o.reuse})
		if err != nil {
			return err
		}
		if o.asJSON {
			return enc.Encode(struct {
				Created  bool              `json:"created"`
				Workflow *idemapi.Workflow `json:"workflow"`
			}{created, w})
		}
		what := "started"
		if !created {
			what = "exists (same type and input; nothing started)"
		}
		_, err = fmt.Fprintf(stdout, "%s %s: %s v%d run %d, state %s, status %s\n", printable(w.ID), what, printable(w.Type), w.Version, w.Run, printable(w.State), w.Status)
		return err

	case "signal":
		payload, err := jsonArg("payload", o.payload, o.payloadFile, stdin)
		if err != nil {
			return err
		}
		eventID := o.eventID
		if eventID == "" {
			var b [8]byte
			_, _ = rand.Read(b[:])
			eventID = "cli-" + hex.EncodeToString(b[:])
		}
		dup, err := be.signal(ctx, pos[0], eventID, pos[1], payload)
		if err != nil {
			return err
		}
		if o.asJSON {
			return enc.Encode(struct {
				ID        string `json:"id"`
				EventID   string `json:"event_id"`
				Event     string `json:"event"`
				Duplicate bool   `json:"duplicate"`
			}{pos[0], eventID, pos[1], dup})
		}
		if dup {
			_, err = fmt.Fprintf(stdout, "event id %s was already received by %s; nothing changed\n", printable(eventID), printable(pos[0]))
		} else {
			_, err = fmt.Fprintf(stdout, "event %s (id %s) queued for %s\n", printable(pos[1]), printable(eventID), printable(pos[0]))
		}
		return err

	case "cancel":
		w, err := be.cancel(ctx, pos[0], o.reason)
		if err != nil {
			return err
		}
		return printWF(w, fmt.Sprintf("%s: cancel requested (status %s, state %s); the engine unwinds it", printable(w.ID), w.Status, printable(w.State)))

	case "retry":
		w, err := be.retry(ctx, pos[0])
		if err != nil {
			return err
		}
		return printWF(w, fmt.Sprintf("%s: retrying %s (status %s)", printable(w.ID), pendingName(w), w.Status))

	case "resume":
		w, err := be.resume(ctx, pos[0], pos[1], o.reason)
		if err != nil {
			return err
		}
		return printWF(w, fmt.Sprintf("%s: resumed in state %s (status %s)", printable(w.ID), printable(w.State), w.Status))

	case "show":
		w, err := be.get(ctx, pos[0])
		if err != nil {
			return err
		}
		if o.asJSON {
			w.History = nil
			return enc.Encode(w)
		}
		return showWF(stdout, w)

	case "wait":
		wctx, cancel := context.WithTimeout(ctx, o.timeout)
		defer cancel()
		w, err := be.wait(wctx, pos[0])
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return fmt.Errorf("instance %s did not end within %s", printable(pos[0]), o.timeout)
		}
		if err != nil {
			return err
		}
		if o.asJSON {
			w.History = nil
			return enc.Encode(w)
		}
		return showWF(stdout, w)

	case "history":
		w, err := be.get(ctx, pos[0])
		if err != nil {
			return err
		}
		if o.asJSON {
			for _, e := range w.History {
				if err := enc.Encode(e); err != nil {
					return err
				}
			}
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tAT\tRUN\tKIND\tSTATE\tEVENT\tACTION\tSTATUS\tDETAIL")
		for _, e := range w.History {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, wireTime(e.At), e.Run, e.Kind, dash(e.State), dash(e.Event), dash(e.Action), dash(e.Status), dash(entryDetail(e)))
		}
		return tw.Flush()

	case "ls":
		bar := newPageProgress(stderr, dataProgressModeFor(stdout, stderr, o.quiet), "idem wf ls: ", "instance")
		return lsWF(ctx, be, o, stdout, stderr, enc, bar)
	}
	return fmt.Errorf("unknown subcommand %q", sub)
}

// lsWF writes the instances of ls to stdout, counting the pages in bar.
func lsWF(ctx context.Context, be wfBackend, o *wfOptions, stdout, stderr io.Writer, enc *json.Encoder, bar *pageProgress) error {
	var tw *tabwriter.Writer
	if !o.asJSON {
		tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTYPE\tVERSION\tRUN\tSTATE\tSTATUS\tUPDATED")
	}
	bar.start(progressPeriod)
	defer bar.stop()
	after, err := bar.listPages(o.limit, o.after, func(size int, after string) (int, string, error) {
		res, err := be.list(ctx, &idemclient.WorkflowListParams{Type: o.typ, State: o.state, Status: o.status, After: after, Limit: size})
		if err != nil {
			return 0, "", err
		}
		for _, w := range res.Workflows {
			if o.asJSON {
				if err := enc.Encode(w); err != nil {
					return 0, "", err
				}
			} else {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\n", printable(w.ID), printable(w.Type), w.Version, w.Run, printable(w.State), w.Status, wireTime(w.Updated))
			}
		}
		return len(res.Workflows), res.Next, nil
	})
	if err != nil {
		return err
	}
	if tw != nil {
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	bar.stop()
	if after != "" {
		fmt.Fprintf(stderr, "idem wf ls: more instances; pass --limit 0 for all, or --after %s for the next ones\n", printable(after))
	}
	return nil
}

func pendingName(w *idemapi.Workflow) string {
	if w.Pending != nil {
		return "action " + printable(w.Pending.Action)
	}
	return "its compensation"
}

func showWF(stdout io.Writer, w *idemapi.Workflow) error {
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	row := func(name, value string) {
		if value != "" {
			fmt.Fprintf(tw, "%s\t%s\n", name, value)
		}
	}
	row("id", printable(w.ID))
	row("type", fmt.Sprintf("%s v%d", printable(w.Type), w.Version))
	row("run", strconv.Itoa(w.Run))
	row("state", printable(w.State))
	row("status", w.Status)
	switch {
	case len(w.Input) > 0:
		row("input", clipText(string(w.Input)))
	case len(w.InputBase64) > 0:
		row("input", fmt.Sprintf("%d bytes, not JSON (--json shows them)", len(w.InputBase64)))
	}
	if p := w.Pending; p != nil {
		on := "transition " + printable(p.From) + " -> " + printable(p.To)
		if p.OnEnter {
			on = "entry of " + printable(p.To)
		}
		row("pending", fmt.Sprintf("step %d, action %s (%s), %d failed attempts", p.Step, printable(p.Action), on, w.Attempt))
	}
	row("not before", wireTimeOr(w.NotBefore, ""))
	for _, ev := range w.Inbox {
		row("queued", fmt.Sprintf("%s (id %s)", printable(ev.Event), printable(ev.EventID)))
	}
	if w.CancelRequested {
		row("cancel", "requested: "+printable(w.CancelReason))
	}
	row("error", printable0(w.Error))
	row("timeout at", wireTimeOr(w.TimeoutAt, ""))
	row("owner", printable0(w.Owner))
	if w.Owner != "" {
		row("lease until", wireTime(w.LeaseUntil))
	}
	row("token", strconv.FormatInt(w.Token, 10))
	row("steps", strconv.Itoa(w.Steps))
	for _, name := range slices.Sorted(maps.Keys(w.Results)) {
		row("result "+printable(name), clipText(string(w.Results[name])))
	}
	row("created", wireTime(w.Created))
	row("updated", wireTime(w.Updated))
	row("finished", wireTimeOr(w.Finished, ""))
	row("history", fmt.Sprintf("%d entries (idem wf history %s)", len(w.History), printable(w.ID)))
	return tw.Flush()
}

func entryDetail(e idemapi.WorkflowEntry) string {
	var parts []string
	if e.From != "" || e.To != "" {
		parts = append(parts, printable0(e.From)+" -> "+printable0(e.To))
	}
	if e.StepKey != "" {
		parts = append(parts, "key "+printable(e.StepKey))
	}
	if e.Attempt > 0 {
		parts = append(parts, "attempt "+strconv.Itoa(e.Attempt))
	}
	if e.Replayed {
		parts = append(parts, "replayed")
	}
	if e.Error != "" {
		parts = append(parts, "error: "+clipText(e.Error))
	}
	if e.Reason != "" {
		parts = append(parts, "reason: "+clipText(e.Reason))
	}
	return strings.Join(parts, "; ")
}

// clipText is a text for a table cell (JSON text is shown as it is when
// it holds no control characters): printable, at most 120 bytes.
func clipText(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		s = printable(s)
	}
	if len(s) > 120 {
		cut := 117
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

// printable0 is printable, but "" for "".
func printable0(s string) string {
	if s == "" {
		return ""
	}
	return printable(s)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// wireTime is an API time for people: UTC to the second, "-" when unset.
func wireTime(s string) string { return wireTimeOr(s, "-") }

func wireTimeOr(s, none string) string {
	if s == "" {
		return none
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return printable(s)
	}
	return tableTime(t)
}

// explainWF turns an error into a sentence for people.
func explainWF(err error, o *wfOptions) string {
	switch {
	case errors.Is(err, idemclient.ErrUnauthorized):
		return fmt.Sprintf("the server refused the token (check --token against its tokens file): %v", err)
	case errors.Is(err, idemclient.ErrForbidden):
		return fmt.Sprintf("the token is not bound to this workflow type (scope \"wf:TYPE\") nor to \"*\": %v", err)
	case errors.Is(err, workflow.ErrNotRegistered) && o.server == "" && o.workflows == "":
		return fmt.Sprintf("%v (with --store, pass --workflows DIR: the documents that define the types)", err)
	case errors.Is(err, idem.ErrNotFound):
		return fmt.Sprintf("no such workflow instance: %v", err)
	}
	return err.Error()
}
