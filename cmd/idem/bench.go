package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemclient"
	"github.com/idemkit/idem/internal/bench"
	"github.com/idemkit/idem/internal/loadgen"
)

const benchCommonHelp = `  --mode MODE            cycle: every operation on a new key; replay: every
                         operation on a key already completed (--keys of them,
                         completed before the first round, unmeasured); mix:
                         a replay with probability --dup-rate, else a new key
                         (default cycle)
  --dup-rate F           mix only: the fraction of operations that repeat a
                         completed key, 0 to 1 (default 0.3)
  --keys N               how many keys replay and mix repeat (default 1000)
  -c, --clients LIST     comma-separated concurrency levels: each level is a
                         run of its own with that many concurrent clients, each
                         sending its next operation when the previous one is
                         answered (a closed loop) (default 1,16,64)
  --duration DURATION    measured time of one target's turn (default 5s)
  --warmup DURATION      unmeasured load before every turn; 0 for none
                         (default 1s)
  --rounds N             rounds by turns: every round runs each target once,
                         in an order that rotates from round to round, so
                         that a ratio compares targets on the same machine
                         load; figures are medians over the rounds (default 3)
  --json                 print one JSON document on stdout instead of the
                         table (docs/performance.md describes its fields)
  --quiet                no progress on stderr (otherwise the running turn
                         is redrawn in place there on a terminal, and a
                         line per finished turn is written off one)
`

const benchUsage = `Usage: idem bench (--store URL | --server URL --token T)... [flags]
       idem bench proxy --target URL [--target URL] [--baseline URL | --reverse-proxy URL] [flags]

A load generator for your own deployment, as pgbench and redis-benchmark
are for theirs. It drives idem's ledger directly in this process (--store),
an idem serve over HTTP (--server), or, with "idem bench proxy", an idem
proxy or any HTTP endpoint with Idempotency-Key requests, at each
concurrency level of -c, and reports operations per second, latency
quantiles, errors by kind and this process's CPU time per operation.

An operation is a cycle (begin on a new key, then complete it with
--payload bytes; unit cycles/s), a replay (begin on a completed key,
which must answer replay; unit replays/s) or, in mix mode, either (ops/s).
Keys start with a random prefix of the run and the target, so neither
runs nor two targets on one ledger (a --server and the --store behind it)
meet; they are written in --scope and expire after --window. Measure a store you can
fill: a scratch schema (?schema=) or Redis prefix (?prefix=), or a scope
of its own on a deployment.

Two or more targets are measured by turns in one sitting: each round runs
every target once for --duration, and the second and later targets are
reported as the median of their per-round ratio to the first (ops/s
target ÷ ops/s first target), with the range over the rounds.

Targets (repeat a flag or separate URLs with commas; the first target
given is the baseline of the ratios):
  --store URL            drive a store in this process (its CPU is this
                         process's):
                            ` + storeURLHelp + `
                         A PostgreSQL store's schema must be up to date
                         (idem migrate).
  --server URL           drive an idem serve over its HTTP API, like
                         http://127.0.0.1:7070 (the CPU reported is only
                         the client's)
  --token T              the bearer token for every --server (default
                         $IDEM_TOKEN); it must be bound to --scope
  --client net/http|raw  how --server targets are driven (default
                         net/http): net/http is idemclient, what a Go
                         program sees; raw writes each request on one
                         HTTP/1.1 keep-alive connection per client and
                         reads only the status, decision and token, a
                         client light enough to leave the CPU to the
                         server when both share a machine: use it to
                         measure the server's capacity. Exchanges longer
                         than 10s count as timeouts

Flags:
  --payload BYTES        size of the outcome each cycle completes (default 256)
  --scope S              the scope of the keys (default "bench")
  --window DURATION      how long the records written are kept (default 1h)
` + benchCommonHelp + `
Output: a table per concurrency level with, per target, the median ops/s
over the rounds, p50, p99 and p99.9 latency in µs over all rounds' operations,
this process's CPU µs per operation (median over rounds), the failed
operations by kind (http_STATUS, timeout, net, decision_DECISION,
lease_lost, unavailable, replayed_mismatch, other), and the ratio to the
first target. While it runs, stderr shows the rate, elapsed and remaining
time (one updating line on a terminal, a line per turn otherwise).

Exit status: 0 when every level of every target had a successful operation,
1 when one had none or a target could not be reached, 2 for a usage error.

Examples:
  idem bench --store mem: --store file:/tmp/idem-bench -c 1,16,64
  idem bench --server http://127.0.0.1:7070 --token "$(cat idem-data/token)" --mode replay
  idem bench --store mem: --server http://127.0.0.1:7070 --token T -c 16 --json
`

const benchProxyUsage = `Usage: idem bench proxy --target URL [--target URL] [--baseline URL | --reverse-proxy URL] [flags]

Drives idem proxy, or any HTTP endpoint, with requests that carry an
Idempotency-Key: a new key per request (cycle), a key already sent
(replay: --keys of them are sent once before the first round) or a mix.
Each client keeps one HTTP/1.1 keep-alive connection and writes a
prebuilt request (a client light enough not to take the server's CPU on a
machine of few cores); a connection that fails is dialled again. An
answer is successful when its status is 2xx and, when it carries
Idempotent-Replayed, that header says what the mode expects (false for a
new key, true for a replay); answers without the header are not checked.
The keys are quoted strings like "bench-5f0c9a1b2e3d-t0-1042": a random
prefix of the run, the target's place among the targets and a number, so
neither runs nor targets meet.

Targets (repeat a flag or separate URLs with commas):
  --target URL           the endpoint, like http://127.0.0.1:7071/orders
                         (http:// only; the path and query are sent)
  --reverse-proxy URL    a baseline this process serves on a loopback port:
                         a plain httputil.ReverseProxy to URL (the upstream,
                         like http://127.0.0.1:8080/orders; the path is
                         requested) with idem proxy's connection pool,
                         measured like --baseline (instead of it): what idem
                         proxy costs over a reverse proxy in Go
  --baseline URL         measured first and sent the same requests without
                         an Idempotency-Key, like the bare upstream or a
                         plain reverse proxy in front of it: every target is
                         reported as a ratio to it. Without it, targets
                         after the first are reported as ratios to the first.

Flags:
  --method M             the request method (default POST)
  --header 'NAME: VALUE' an extra request header; repeatable. Without a
                         Content-Type among them, Content-Type:
                         application/json is sent
  --body TEXT            the request body (default {"amount":100,"currency":"eur"})
  --body-size BYTES      instead of --body, a JSON document of this many bytes
  --timeout DURATION     longest exchange of one request; a slower one
                         counts as a timeout error (default 10s)
` + benchCommonHelp + `
Output, exit status: as idem bench (idem bench --help); the unit is req/s.

Example:
  idem bench proxy --baseline http://127.0.0.1:8080/orders \
      --target http://127.0.0.1:7071/orders -c 64 --rounds 9
`

// benchTarget is one target of a bench run as given on the command line.
type benchTarget struct {
	Kind string `json:"kind"` // store, server, http, baseline or reverse-proxy
	URL  string `json:"url"`  // printable: without a password
	raw  string
}

// label names the target in the report: its URL, and for a
// --reverse-proxy "reverse-proxy:" and the upstream's URL.
func (t benchTarget) label() string {
	if t.Kind == "reverse-proxy" {
		return "reverse-proxy:" + t.URL
	}
	return t.URL
}

// targetFlag appends each URL of a flag (comma-separated) as a target of
// kind, keeping the command line's order across flags.
type targetFlag struct {
	kind string
	list *[]benchTarget
}

func (f targetFlag) String() string { return "" }

func (f targetFlag) Set(v string) error {
	for _, u := range splitURLs(v) {
		if u == "" {
			return errors.New("empty URL")
		}
		*f.list = append(*f.list, benchTarget{Kind: f.kind, URL: redactURL(u), raw: u})
	}
	return nil
}

// splitURLs splits a flag's value at each comma that a URL scheme this
// binary knows follows (mem:, file:, postgres:, redis:, http:, ...), so
// that a comma inside a URL (the hosts of postgres://h1,h2/db) stays.
func splitURLs(v string) []string {
	schemes := append(idem.StoreSchemes(), "http", "https")
	var out []string
	start := 0
	for i := 0; i < len(v); i++ {
		if v[i] != ',' {
			continue
		}
		next := strings.ToLower(strings.TrimSpace(v[i+1:]))
		if slices.ContainsFunc(schemes, func(s string) bool { return strings.HasPrefix(next, s+":") }) || next == "" {
			out = append(out, strings.TrimSpace(v[start:i]))
			start = i + 1
		}
	}
	return append(out, strings.TrimSpace(v[start:]))
}

// listFlag is a repeatable string flag.
type listFlag []string

func (f *listFlag) String() string     { return strings.Join(*f, ",") }
func (f *listFlag) Set(v string) error { *f = append(*f, v); return nil }

type benchOptions struct {
	proxy           bool
	targets         []benchTarget // the baseline, when given, first
	token, scope    string
	mode            string
	dupRate         float64
	keys            int
	clients         []int
	duration        time.Duration
	warmup          time.Duration
	rounds, payload int
	json, quiet     bool
	method, body    string
	headers         []string
	timeout, window time.Duration
	client          string // for --server: "net/http" (idemclient) or "raw"
}

func runBench(args []string, stdout, stderr io.Writer) int {
	opts, code := parseBenchFlags(args, stdout, stderr)
	if code >= 0 {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := runBenchTargets(ctx, opts, newBenchProgress(stderr, opts))
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "idem bench: interrupted")
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "idem bench: %v\n", err)
		return 1
	}
	if opts.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		printBenchReport(stdout, rep)
	}
	for _, l := range rep.Levels {
		for _, r := range l.Results {
			if r.Ops == 0 {
				fmt.Fprintf(stderr, "idem bench: %s at %d clients: no operation succeeded\n", r.Target, l.Clients)
				return 1
			}
		}
	}
	return 0
}

// parseBenchFlags returns the options, or an exit code >= 0 when bench
// should stop here (help, usage error).
func parseBenchFlags(args []string, stdout, stderr io.Writer) (*benchOptions, int) {
	o := &benchOptions{}
	name, usage := "idem bench", benchUsage
	if len(args) > 0 && args[0] == "proxy" {
		o.proxy, args = true, args[1:]
		name, usage = "idem bench proxy", benchProxyUsage
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var clients string
	var baselines []benchTarget
	var headers listFlag
	var bodySize int
	if o.proxy {
		fs.Var(targetFlag{"http", &o.targets}, "target", "")
		fs.Var(targetFlag{"baseline", &baselines}, "baseline", "")
		fs.Var(targetFlag{"reverse-proxy", &baselines}, "reverse-proxy", "")
		fs.StringVar(&o.method, "method", "POST", "")
		fs.Var(&headers, "header", "")
		fs.StringVar(&o.body, "body", `{"amount":100,"currency":"eur"}`, "")
		fs.IntVar(&bodySize, "body-size", 0, "")
		fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "")
	} else {
		fs.Var(targetFlag{"store", &o.targets}, "store", "")
		fs.Var(targetFlag{"server", &o.targets}, "server", "")
		fs.StringVar(&o.token, "token", os.Getenv("IDEM_TOKEN"), "")
		fs.IntVar(&o.payload, "payload", 256, "")
		fs.StringVar(&o.scope, "scope", "bench", "")
		fs.DurationVar(&o.window, "window", time.Hour, "")
		fs.StringVar(&o.client, "client", "net/http", "")
		o.timeout = 10 * time.Second
	}
	fs.StringVar(&o.mode, "mode", "cycle", "")
	fs.Float64Var(&o.dupRate, "dup-rate", 0.3, "")
	fs.IntVar(&o.keys, "keys", 1000, "")
	fs.StringVar(&clients, "c", "1,16,64", "")
	fs.StringVar(&clients, "clients", "1,16,64", "")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "")
	fs.IntVar(&o.rounds, "rounds", 3, "")
	fs.BoolVar(&o.json, "json", false, "")
	fs.BoolVar(&o.quiet, "quiet", false, "")
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		_, _ = io.WriteString(stdout, usage)
		return nil, 0
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\n\n%s", name, err, usage)
		return nil, 2
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n\n%s", name, fs.Arg(0), usage)
		return nil, 2
	}
	o.targets = append(baselines, o.targets...)
	o.headers = headers
	var bad string
	if o.clients, err = parseClients(clients); err != nil {
		bad = err.Error()
	}
	if bad == "" {
		bad = o.check(bodySize, len(baselines))
	}
	if bad != "" {
		fmt.Fprintf(stderr, "%s: %s\n", name, bad)
		return nil, 2
	}
	if bodySize > 0 {
		o.body = jsonOfSize(bodySize)
	}
	if o.proxy && !slices.ContainsFunc(o.headers, func(h string) bool {
		return strings.EqualFold(strings.TrimSpace(strings.SplitN(h, ":", 2)[0]), "Content-Type")
	}) {
		o.headers = append([]string{"Content-Type: application/json"}, o.headers...)
	}
	return o, -1
}

// check returns what is wrong with the options, or "".
func (o *benchOptions) check(bodySize, baselines int) string {
	switch {
	case o.proxy && len(o.targets) == baselines:
		return "no target: give --target URL, like --target http://127.0.0.1:7071/orders"
	case o.proxy && baselines > 1:
		return "at most one --baseline or --reverse-proxy"
	case !o.proxy && len(o.targets) == 0:
		return "no target: give --store URL (like --store mem:) or --server URL --token T"
	case o.mode != "cycle" && o.mode != "replay" && o.mode != "mix":
		return fmt.Sprintf("--mode %q: want cycle, replay or mix", o.mode)
	case o.dupRate < 0 || o.dupRate > 1 || math.IsNaN(o.dupRate):
		return fmt.Sprintf("--dup-rate must be between 0 and 1, got %v", o.dupRate)
	case o.keys < 1:
		return fmt.Sprintf("--keys must be positive, got %d", o.keys)
	case o.duration <= 0:
		return fmt.Sprintf("--duration must be positive, got %s", o.duration)
	case o.warmup < 0:
		return fmt.Sprintf("--warmup must not be negative, got %s", o.warmup)
	case o.rounds < 1:
		return fmt.Sprintf("--rounds must be at least 1, got %d", o.rounds)
	case !o.proxy && (o.window <= 0 || o.window > idemapi.MaxDuration):
		return fmt.Sprintf("--window must be positive and at most a century, got %s", o.window)
	case o.payload < 0:
		return fmt.Sprintf("--payload must not be negative, got %d", o.payload)
	case bodySize < 0:
		return fmt.Sprintf("--body-size must not be negative, got %d", bodySize)
	case o.timeout < 0:
		return fmt.Sprintf("--timeout must not be negative (0 for none), got %s", o.timeout)
	case !o.proxy && o.client != "net/http" && o.client != "raw":
		return fmt.Sprintf("--client must be net/http or raw, got %q", o.client)
	case o.proxy && !validHeaderName(o.method):
		return fmt.Sprintf("--method %q is not a method", o.method)
	}
	for _, h := range o.headers {
		n, v, ok := strings.Cut(h, ":")
		if !ok || !validHeaderName(strings.TrimSpace(n)) || strings.ContainsAny(v, "\r\n") {
			return fmt.Sprintf("--header %q: want 'NAME: VALUE'", h)
		}
	}
	for _, t := range o.targets {
		switch t.Kind {
		case "server":
			if o.token == "" {
				return "--server needs --token (or $IDEM_TOKEN): a token of the server's tokens file bound to --scope"
			}
		case "http", "baseline", "reverse-proxy":
			u, err := url.Parse(t.raw)
			flagName := "--" + t.Kind
			switch {
			case err != nil || u.Host == "":
				return fmt.Sprintf("%s %q: want a URL like http://127.0.0.1:7071/orders", flagName, t.URL)
			case u.Scheme != "http":
				return fmt.Sprintf("%s %q: only http:// is supported", flagName, t.URL)
			}
		}
	}
	return ""
}

// parseClients parses -c: positive counts separated by commas.
func parseClients(raw string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(raw, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 100000 {
			return nil, fmt.Errorf("-c %q: want concurrency levels like 1,16,64", raw)
		}
		out = append(out, n)
	}
	return out, nil
}

// jsonOfSize is a JSON document of n bytes (at least the smallest one).
func jsonOfSize(n int) string {
	const open, closing = `{"pad":"`, `"}`
	if n <= len(open)+len(closing) {
		return "{}"
	}
	return open + strings.Repeat("x", n-len(open)-len(closing)) + closing
}

// benchReport is the document of --json.
type benchReport struct {
	Mode      string        `json:"mode"`
	Unit      string        `json:"unit"`
	DupRate   float64       `json:"dup_rate,omitempty"`
	Keys      int           `json:"keys,omitempty"`
	Payload   int           `json:"payload_bytes"`
	Duration  string        `json:"duration"`
	Warmup    string        `json:"warmup"`
	Rounds    int           `json:"rounds"`
	Client    string        `json:"client,omitempty"` // how --server targets were driven
	Targets   []benchTarget `json:"targets"`
	Levels    []benchLevel  `json:"levels"`
	StartedAt time.Time     `json:"started_at"`
}

type benchLevel struct {
	Clients int           `json:"clients"`
	Results []benchResult `json:"results"`
}

// benchResult is one target at one level, over all rounds.
type benchResult struct {
	Target      string         `json:"target"`
	Kind        string         `json:"kind"`
	OpsPerSec   float64        `json:"ops_per_s"`
	RoundRates  []float64      `json:"ops_per_s_rounds"`
	Ops         int            `json:"ops"`
	Errors      map[string]int `json:"errors"`
	WarmupOps   int            `json:"warmup_ops"`
	P50         float64        `json:"p50_us"`
	P99         float64        `json:"p99_us"`
	P999        float64        `json:"p999_us"`
	CPU         float64        `json:"cpu_us_per_op"`
	Ratio       *float64       `json:"ratio,omitempty"`
	RatioMin    *float64       `json:"ratio_min,omitempty"`
	RatioMax    *float64       `json:"ratio_max,omitempty"`
	RoundRatios []float64      `json:"ratio_rounds,omitempty"`
}

func (o *benchOptions) unit() string {
	switch {
	case o.proxy:
		return "req/s"
	case o.mode == "cycle":
		return "cycles/s"
	case o.mode == "replay":
		return "replays/s"
	}
	return "ops/s"
}

// benchDriver is a target's operations: a new key's, a completed key's
// (k below --keys), and a request without a key (a --baseline's).
type benchDriver interface {
	// level prepares a concurrency level of n clients.
	level(n int) error
	fresh(caller int) error
	replay(caller, k int) error
	closeAll()
}

// runBenchTargets opens the targets, runs every level by rounds and
// gathers the report.
func runBenchTargets(ctx context.Context, o *benchOptions, p *benchProgress) (*benchReport, error) {
	var prefix [6]byte
	_, _ = rand.Read(prefix[:])
	runID := "bench-" + hex.EncodeToString(prefix[:]) + "-"
	drivers := make([]benchDriver, 0, len(o.targets))
	defer func() {
		for _, d := range drivers {
			d.closeAll()
		}
	}()
	for i, t := range o.targets {
		// Each target its own keys: two targets may share one ledger
		// (a --server and the --store behind it), and the second would
		// meet the first one's keys as replays.
		d, err := openBenchDriver(ctx, o, t, runID+"t"+strconv.Itoa(i)+"-")
		if err != nil {
			return nil, err
		}
		drivers = append(drivers, d)
	}
	rep := &benchReport{Mode: o.mode, Unit: o.unit(), Duration: o.duration.String(), Warmup: o.warmup.String(),
		Rounds: o.rounds, Targets: o.targets, Payload: o.payload, StartedAt: time.Now().UTC()}
	if slices.ContainsFunc(o.targets, func(t benchTarget) bool { return t.Kind == "server" }) {
		rep.Client = o.client
	}
	if o.proxy {
		rep.Payload = len(o.body)
	}
	if o.mode != "cycle" {
		rep.Keys = o.keys
	}
	if o.mode == "mix" {
		rep.DupRate = o.dupRate
	}
	kind := benchErrorKind
	for li, n := range o.clients {
		for i, d := range drivers {
			if err := d.level(n); err != nil {
				return nil, fmt.Errorf("%s: %w", o.targets[i].label(), err)
			}
		}
		if o.mode != "cycle" && li == 0 {
			for i, d := range drivers {
				if err := completeKeys(ctx, d, o.keys, n); err != nil {
					return nil, fmt.Errorf("%s: completing the keys to replay: %w", o.targets[i].label(), err)
				}
			}
		}
		sides := make([]bench.Side, len(drivers))
		warm := make([]int, len(drivers))
		turns := 0 // of this level so far: Rounds runs one side at a time
		for i, d := range drivers {
			op := benchOp(o, o.targets[i].Kind, d)
			sides[i] = bench.Side{Name: o.targets[i].label(), Run: func() (bench.Round, error) {
				round := turns / len(drivers)
				turns++
				if o.warmup > 0 {
					p.turn(n, round, i, true)
					w, _ := bench.Load{Callers: n, More: bench.For(ctx, o.warmup), Op: op, Kind: kind, Done: &p.done}.Drive()
					warm[i] += w.Ops + w.ErrorCount()
				}
				p.turn(n, round, i, false)
				r, err := bench.Load{Callers: n, More: bench.For(ctx, o.duration), Op: op, Kind: kind, Done: &p.done}.Drive()
				if err == nil {
					err = ctx.Err()
				}
				return r, err
			}}
		}
		runs := make([][]bench.Round, len(drivers))
		err := bench.Rounds(o.rounds, sides, func(round, side int, r bench.Round) {
			runs[side] = append(runs[side], r)
			p.turnDone(n, round, side, r)
		})
		p.finish()
		if err != nil {
			return nil, err
		}
		rep.Levels = append(rep.Levels, summarize(n, o.targets, runs, warm))
	}
	return rep, nil
}

// benchOp is the operation of a target in the mode.
func benchOp(o *benchOptions, kind string, d benchDriver) func(int) error {
	switch {
	case kind == "baseline" || kind == "reverse-proxy" || o.mode == "cycle":
		return d.fresh
	case o.mode == "replay":
		return func(c int) error { return d.replay(c, mrand.IntN(o.keys)) }
	}
	return func(c int) error {
		if mrand.Float64() < o.dupRate {
			return d.replay(c, mrand.IntN(o.keys))
		}
		return d.fresh(c)
	}
}

// completeKeys completes the keys 0 to keys-1 that replay and mix repeat,
// from up to clients callers: their fresh executions.
func completeKeys(ctx context.Context, d benchDriver, keys, clients int) error {
	var next atomic.Int64
	_, err := bench.Load{Callers: min(clients, keys), More: func() bool { return ctx.Err() == nil && next.Load() < int64(keys) },
		Op: func(c int) error {
			k := int(next.Add(1)) - 1
			if k >= keys {
				return nil
			}
			return d.replay(c, -1-k) // a negative k: complete key -1-k
		}}.Drive()
	if err == nil {
		err = ctx.Err()
	}
	return err
}

// summarize turns each target's rounds into its result at one level.
func summarize(clients int, targets []benchTarget, runs [][]bench.Round, warm []int) benchLevel {
	lvl := benchLevel{Clients: clients}
	for i, rs := range runs {
		res := benchResult{Target: targets[i].label(), Kind: targets[i].Kind, Errors: map[string]int{}, WarmupOps: warm[i]}
		var lat []time.Duration
		var cpus []float64
		for _, r := range rs {
			res.RoundRates = append(res.RoundRates, round1(r.Rate()))
			res.Ops += r.Ops
			for k, n := range r.Errors {
				res.Errors[k] += n
			}
			lat = append(lat, r.Lat...)
			cpus = append(cpus, float64(r.CPU)/float64(time.Microsecond))
		}
		slices.Sort(lat)
		res.OpsPerSec = bench.Median(res.RoundRates)
		res.CPU = round1(bench.Median(cpus))
		if len(lat) > 0 {
			res.P50, res.P99, res.P999 = quantileMicros(lat, 0.5), quantileMicros(lat, 0.99), quantileMicros(lat, 0.999)
		}
		if i > 0 {
			for r := range rs {
				if base := runs[0][r].Rate(); base > 0 {
					res.RoundRatios = append(res.RoundRatios, round3(rs[r].Rate()/base))
				}
			}
			if len(res.RoundRatios) > 0 {
				med, lo, hi := bench.Median(res.RoundRatios), slices.Min(res.RoundRatios), slices.Max(res.RoundRatios)
				res.Ratio, res.RatioMin, res.RatioMax = &med, &lo, &hi
			}
		}
		lvl.Results = append(lvl.Results, res)
	}
	return lvl
}

func quantileMicros(sorted []time.Duration, q float64) float64 {
	return round1(float64(sorted[int(float64(len(sorted)-1)*q)]) / float64(time.Microsecond))
}

func round1(x float64) float64 { return math.Round(x*10) / 10 }
func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// printBenchReport prints the report as tables for people.
func printBenchReport(w io.Writer, rep *benchReport) {
	fmt.Fprintf(w, "idem bench: mode %s", rep.Mode)
	if rep.Mode == "mix" {
		fmt.Fprintf(w, " (dup-rate %v)", rep.DupRate)
	}
	fmt.Fprintf(w, ", payload %d B; %d round(s) by turns of %s measured after %s warm-up per target\n",
		rep.Payload, rep.Rounds, rep.Duration, rep.Warmup)
	fmt.Fprintf(w, "%s: median over rounds; latency over all rounds; cpu: this process\n", rep.Unit)
	for _, l := range rep.Levels {
		fmt.Fprintf(w, "\n%d client(s)\n", l.Clients)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		ratioHead := ""
		if len(l.Results) > 1 {
			ratioHead = "\tratio to " + l.Results[0].Target
		}
		fmt.Fprintf(tw, "target\t%s\tp50 µs\tp99 µs\tp99.9 µs\tcpu µs/op\terrors%s\n", rep.Unit, ratioHead)
		for i, r := range l.Results {
			ratio := ""
			switch {
			case len(l.Results) > 1 && i == 0:
				ratio = "\t1 (baseline)"
			case r.Ratio != nil:
				ratio = fmt.Sprintf("\t%.3f (%.3f–%.3f)", *r.Ratio, *r.RatioMin, *r.RatioMax)
			case len(l.Results) > 1:
				ratio = "\t-"
			}
			fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%s\t%s%s\n", r.Target, r.OpsPerSec, micro(r.P50), micro(r.P99), micro(r.P999), micro(r.CPU), errorsText(r.Errors), ratio)
		}
		_ = tw.Flush()
	}
}

// micro prints microseconds with a decimal below 100.
func micro(us float64) string {
	if us < 100 {
		return strconv.FormatFloat(us, 'f', 1, 64)
	}
	return strconv.FormatFloat(us, 'f', 0, 64)
}

// errorsText is "0" or the kinds and counts, like "http_409:3 timeout:1".
func errorsText(errs map[string]int) string {
	if len(errs) == 0 {
		return "0"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(errs)) {
		parts = append(parts, k+":"+strconv.Itoa(errs[k]))
	}
	return strings.Join(parts, " ")
}

// decisionError is a begin answered with another decision than the
// mode's.
type decisionError idem.Decision

func (e decisionError) Error() string { return "unexpected decision " + string(e) }

// benchErrorKind names the kind of a failed operation.
func benchErrorKind(err error) string {
	var status loadgen.StatusError
	var problem *idemclient.ProblemError
	var decision decisionError
	var netErr net.Error
	switch {
	case errors.As(err, &status):
		return "http_" + strconv.Itoa(int(status))
	case errors.As(err, &problem):
		return "http_" + strconv.Itoa(problem.Status)
	case errors.As(err, &decision):
		return "decision_" + string(decision)
	case errors.Is(err, loadgen.ErrReplayed):
		return "replayed_mismatch"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, idem.ErrLeaseLost):
		return "lease_lost"
	case errors.Is(err, idem.ErrUnavailable):
		return "unavailable"
	case errors.As(err, &netErr), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "net"
	}
	return "other"
}

// openBenchDriver opens a target and checks that it answers.
func openBenchDriver(ctx context.Context, o *benchOptions, t benchTarget, runID string) (benchDriver, error) {
	switch t.Kind {
	case "store", "server":
		var store idem.Store
		var err error
		if t.Kind == "store" {
			store, err = openStore(ctx, t.raw, nil)
		} else {
			store, err = idemclient.New(t.raw, o.token, nil)
		}
		if err != nil {
			return nil, fmt.Errorf("--%s %s: %w", t.Kind, t.URL, err)
		}
		d := &ledgerDriver{store: store, scope: o.scope, window: o.window, prefix: runID, outcome: idem.Outcome{Data: make([]byte, o.payload)}}
		_, _ = rand.Read(d.outcome.Data)
		// A first call: a server that cannot be reached or refuses the
		// token is an error now, not a run of failures.
		if _, err := store.Get(ctx, &idem.KeyParams{Scope: o.scope, Key: runID + "probe"}); err != nil && !errors.Is(err, idem.ErrNotFound) {
			_ = store.Close()
			return nil, fmt.Errorf("--%s %s: %w", t.Kind, t.URL, err)
		}
		if t.Kind == "server" && o.client == "raw" {
			_ = store.Close()
			raw, err := newRawAPIDriver(o, t.raw, runID)
			if err == nil {
				err = raw.level(1)
			}
			if err != nil {
				return nil, fmt.Errorf("--%s %s: %w", t.Kind, t.URL, err)
			}
			return raw, nil
		}
		return d, nil
	}
	u, _ := url.Parse(t.raw) // checked by the flags
	target := u.RequestURI()
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	d := &httpDriver{host: host, keys: o.keys, baseline: t.Kind == "baseline",
		req:    loadgen.Request{Method: o.method, Target: target, Header: o.headers, Body: []byte(o.body)},
		prefix: runID, timeout: o.timeout}
	flagName := "--" + t.Kind
	if t.Kind == "http" {
		flagName = "--target"
	}
	if t.Kind == "reverse-proxy" {
		// The upstream must answer before a proxy to it is measured.
		c, err := net.DialTimeout("tcp", host, 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", flagName, t.URL, err)
		}
		c.Close()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		d.rp = &http.Server{Handler: plainProxy(&url.URL{Scheme: "http", Host: u.Host}), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = d.rp.Serve(ln) }()
		d.host, d.baseline = ln.Addr().String(), true
	}
	if err := d.level(1); err != nil {
		d.close()
		return nil, fmt.Errorf("%s %s: %w", flagName, t.URL, err)
	}
	return d, nil
}

// ledgerDriver drives an idem.Store: one in process or an idem serve
// through idemclient.
type ledgerDriver struct {
	store   idem.Store
	scope   string
	window  time.Duration
	prefix  string
	outcome idem.Outcome
	next    atomic.Int64
}

func (d *ledgerDriver) level(int) error { return nil }

func (d *ledgerDriver) closeAll() { _ = d.store.Close() }

func (d *ledgerDriver) fresh(int) error {
	return d.cycle(d.prefix + "n" + strconv.FormatInt(d.next.Add(1), 10))
}

func (d *ledgerDriver) cycle(key string) error {
	ctx := context.Background()
	res, err := d.store.Begin(ctx, &idem.BeginParams{Scope: d.scope, Key: key, Fingerprint: "bench",
		Lease: idem.DefaultLease, Window: d.window})
	if err != nil {
		return err
	}
	if res.Decision != idem.Acquired {
		return decisionError(res.Decision)
	}
	_, err = d.store.Complete(ctx, &idem.CompleteParams{Scope: d.scope, Key: key, Token: res.Record.Token, Outcome: d.outcome})
	return err
}

// replay begins completed key k; a negative k completes key -1-k first.
func (d *ledgerDriver) replay(_, k int) error {
	if k < 0 {
		return d.cycle(d.prefix + "r" + strconv.Itoa(-1-k))
	}
	res, err := d.store.Begin(context.Background(), &idem.BeginParams{Scope: d.scope, Key: d.prefix + "r" + strconv.Itoa(k),
		Fingerprint: "bench", Lease: idem.DefaultLease, Window: d.window})
	if err != nil {
		return err
	}
	if res.Decision != idem.Replay {
		return decisionError(res.Decision)
	}
	return nil
}

// httpDriver drives an HTTP endpoint over loadgen.Conns. Keys below
// --keys are the ones replay repeats; new keys are numbered above.
type httpDriver struct {
	host     string
	req      loadgen.Request
	prefix   string
	keys     int
	baseline bool
	timeout  time.Duration
	conns    *loadgen.Conns
	next     atomic.Int64
	rp       *http.Server // --reverse-proxy's, served here
}

func (d *httpDriver) level(n int) error {
	d.close()
	c, err := loadgen.DialConns(d.host, n, d.req, d.prefix, d.timeout)
	if err != nil {
		return err
	}
	d.conns = c
	return nil
}

func (d *httpDriver) close() {
	if d.conns != nil {
		d.conns.Close()
		d.conns = nil
	}
}

// closeAll also stops a --reverse-proxy.
func (d *httpDriver) closeAll() {
	d.close()
	if d.rp != nil {
		_ = d.rp.Close()
	}
}

func (d *httpDriver) fresh(c int) error {
	if d.baseline {
		return d.conns.Send(c, -1, "")
	}
	return d.conns.Send(c, int64(d.keys)+d.next.Add(1), "false")
}

// replay repeats key k; a negative k sends key -1-k for the first time.
func (d *httpDriver) replay(c, k int) error {
	if d.baseline {
		return d.conns.Send(c, -1, "")
	}
	if k < 0 {
		return d.conns.Send(c, int64(-1-k), "false")
	}
	return d.conns.Send(c, int64(k), "true")
}

// benchProgress shows on stderr how far a run is: one updating line on a
// terminal, a line per finished turn otherwise (the shared progress of
// progress.go).
type benchProgress struct {
	*progress
	o        *benchOptions
	unit     string
	total    time.Duration // planned time of the whole run
	begun    time.Time
	done     atomic.Int64 // operations of the current turn
	turnInfo atomic.Value // string: what runs now
	turnT0   atomic.Int64
	last     atomic.Value // string: the line of the last finished turn
}

func newBenchProgress(stderr io.Writer, o *benchOptions) *benchProgress {
	p := &benchProgress{o: o, unit: o.unit(), begun: time.Now()}
	p.progress = newProgress(stderr, progressModeFor(stderr, o.quiet), "idem bench: ", p.status)
	p.total = time.Duration(len(o.clients)*o.rounds*len(o.targets)) * (o.duration + o.warmup)
	return p
}

// status is the terminal line: the running turn; as plain lines, the
// last finished turn.
func (p *benchProgress) status() string {
	elapsed := time.Since(p.begun)
	if p.mode == progressLines {
		return fmt.Sprintf("%s, elapsed %s, remaining %s", p.last.Load(), elapsed.Round(time.Second), max(p.total-elapsed, 0).Round(time.Second))
	}
	el := time.Since(time.Unix(0, p.turnT0.Load())).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(p.done.Load()) / el
	}
	return fmt.Sprintf("%s, %.0f %s, elapsed %s, remaining %s", p.turnInfo.Load(), rate, p.unit,
		elapsed.Round(time.Second), max(p.total-elapsed, 0).Round(time.Second))
}

// turn says a turn of target i at n clients in round (from 0) starts:
// its warm-up, or the measured part.
func (p *benchProgress) turn(n, round, i int, warmup bool) {
	if p.mode == progressOff {
		return
	}
	p.done.Store(0)
	p.turnT0.Store(time.Now().UnixNano())
	info := fmt.Sprintf("%d clients, round %d/%d, target %s", n, round+1, p.o.rounds, p.o.targets[i].label())
	if warmup {
		info += ", warming up"
	}
	p.turnInfo.Store(info)
	p.start(progressPeriod)
}

// turnDone reports a finished turn (a line when stderr is no terminal).
func (p *benchProgress) turnDone(n, round, side int, r bench.Round) {
	if p.mode != progressLines {
		return
	}
	p.last.Store(fmt.Sprintf("%d clients, round %d/%d, target %s, %.0f %s, %d errors",
		n, round+1, p.o.rounds, p.o.targets[side].label(), r.Rate(), p.unit, r.ErrorCount()))
	p.event()
}

// finish clears the terminal line at the end of a level.
func (p *benchProgress) finish() { p.stop() }

// plainProxy is the yardstick: a plain httputil.ReverseProxy to upstream,
// with no error handler and no buffer pool, and the same connection pool
// as idem proxy's (the default keeps 2 idle connections per host and
// would measure connection setup instead).
func plainProxy(upstream *url.URL) http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			r.SetXForwarded()
		},
		Transport: upstreamTransport(),
	}
}

// upstreamTransport is the connection pool of idemhttp.Proxy's default
// Transport, for the yardstick.
func upstreamTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 1024
	t.MaxIdleConnsPerHost = 256
	return t
}
