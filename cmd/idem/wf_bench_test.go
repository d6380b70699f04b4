package main

// The declarative workflow benchmark (docs/performance.md, "Declarative
// workflows through idem serve"): a workflow of three HTTP actions,
// defined by a document and the same in Go, started through the API
// server of idem serve, on PostgreSQL and on the embedded store, paired
// by turns in one process.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemclient"
	"github.com/idemkit/idem/internal/bench"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/declare"
	"github.com/jackc/pgx/v5"
)

// wfBenchSteps is the number of actions (HTTP requests) of an instance.
const wfBenchSteps = 3

// wfBenchStarters is the number of concurrent starters, and the engine's
// workers (idem serve's default --workflow-workers).
const wfBenchStarters = 16

// wfBenchDocument is the declarative workflow: three automatic
// transitions, each a POST to the stub at {{vars.stub}}.
const wfBenchDocument = `name: decl3
version: 1
initial: s0
states:
  - name: s0
  - name: s1
  - name: s2
  - {name: done, terminal: success}
transitions:
  - from: s0
    to: s1
    action:
      name: a1
      request: {method: POST, url: "{{vars.stub}}/a1", body: {order: "{{instance.id}}"}}
      no_compensation: true
  - from: s1
    to: s2
    action:
      name: a2
      request: {method: POST, url: "{{vars.stub}}/a2", body: {order: "{{instance.id}}"}}
      no_compensation: true
  - from: s2
    to: done
    action:
      name: a3
      request: {method: POST, url: "{{vars.stub}}/a3", body: {order: "{{instance.id}}"}}
      no_compensation: true
`

// The workflow types: the document's; the same document parsed with
// declare's default HTTP client (Options.Client nil), as idem serve
// parses documents; and the same workflow defined in Go.
const (
	wfDeclType        = "decl3"
	wfDeclDefaultType = "decl3default"
	wfGoType          = "go3"
)

// wfStub is the downstream service of the actions: it answers every
// request 201 with {"id":"r<N>"} at once, honouring nothing, and counts
// the requests and the connections it accepted; with record set it also
// keeps each request.
type wfStub struct {
	*httptest.Server
	calls  atomic.Int64
	conns  atomic.Int64
	record bool

	mu   sync.Mutex
	seen []wfStubRequest
}

// wfStubRequest is one request the stub received.
type wfStubRequest struct {
	Method, Path, Key, Token, ContentType, Body string
}

func newWFStub(tb testing.TB, record bool) *wfStub {
	s := &wfStub{record: record}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		n := s.calls.Add(1)
		if s.record {
			s.mu.Lock()
			s.seen = append(s.seen, wfStubRequest{r.Method, r.URL.Path, r.Header.Get("Idempotency-Key"),
				r.Header.Get(declare.FencingTokenHeader), r.Header.Get("Content-Type"), string(body)})
			s.mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"id":"r`+strconv.FormatInt(n, 10)+`"}`)
	}))
	s.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.Start()
	tb.Cleanup(s.Close)
	return s
}

// requests returns the requests recorded whose Idempotency-Key starts
// with prefix.
func (s *wfStub) requests(prefix string) []wfStubRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []wfStubRequest
	for _, r := range s.seen {
		if strings.HasPrefix(r.Key, prefix) {
			out = append(out, r)
		}
	}
	return out
}

// wfActionClient is the HTTP client of both workflows' actions: keep-alive
// connections, as many idle ones per host as there are workers.
func wfActionClient(tb testing.TB) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	c := &http.Client{Transport: t, Timeout: 30 * time.Second}
	tb.Cleanup(c.CloseIdleConnections)
	return c
}

// wfGoPost is the Go-defined action: the request the declarative
// executor sends for the document's action (POST url, body
// {"order":"<instance id>"}, Content-Type, Idempotency-Key and
// Fencing-Token), sent with net/http, and the same reading of the answer
// (2xx: the body, checked to be JSON; anything else: an error).
func wfGoPost(client *http.Client, url string) workflow.StepFunc {
	return func(ctx context.Context, step *workflow.Step) ([]byte, error) {
		body, err := json.Marshal(map[string]string{"order": step.InstanceID})
		if err != nil {
			return nil, workflow.Permanent(err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(string(body)))
		if err != nil {
			return nil, workflow.Permanent(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", step.Key)
		req.Header.Set(declare.FencingTokenHeader, strconv.FormatInt(step.Token, 10))
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return nil, err
		}
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return nil, fmt.Errorf("POST %s: %s", url, resp.Status)
		}
		if !json.Valid(data) {
			return nil, workflow.Permanent(fmt.Errorf("POST %s: the answer is not JSON", url))
		}
		return data, nil
	}
}

// wfGoDefinition is the document's workflow defined in Go, under the type
// wfGoType.
func wfGoDefinition(client *http.Client, stub string) *workflow.Definition {
	action := func(name string) *workflow.Action {
		return &workflow.Action{Name: name, Run: wfGoPost(client, stub+"/"+name), NoCompensation: true}
	}
	return &workflow.Definition{Name: wfGoType, Version: 1, Initial: "s0",
		States: []workflow.State{{Name: "s0"}, {Name: "s1"}, {Name: "s2"}, {Name: "done", Terminal: workflow.Success}},
		Transitions: []workflow.Transition{
			{From: "s0", To: "s1", Action: action("a1")},
			{From: "s1", To: "s2", Action: action("a2")},
			{From: "s2", To: "done", Action: action("a3")},
		}}
}

// wfServed is idem serve's workflow stack in process: an engine on the
// store's workflow journal, running; the API server (idemapi) over it on
// a loopback HTTP server; a client of that server; and the stub the
// actions call. Both types are registered: the Go one in the registry,
// the document through POST /v1/workflow-types, whose parser is
// declare.Parse with {{vars.stub}} pointing at the stub.
type wfServed struct {
	name   string // "pg" or "pebble"
	store  idem.Store
	eng    *workflow.Engine
	client *idemclient.Client
	stub   *wfStub
}

// newWFServed builds the stack on store (which it closes at the end of
// tb, after the engine stops).
func newWFServed(tb testing.TB, name string, store idem.Store, record bool) *wfServed {
	tb.Helper()
	ctx := context.Background()
	tb.Cleanup(func() { _ = store.Close() })
	journal := workflowJournal(store)
	if journal == nil {
		tb.Fatalf("%s: the store keeps no workflow journal", name)
	}
	stub := newWFStub(tb, record)
	actions := wfActionClient(tb)
	reg := workflow.NewRegistry()
	if err := reg.Register(wfGoDefinition(actions, stub.URL)); err != nil {
		tb.Fatal(err)
	}
	// idem serve reads documents with declare.Parse(data, name, nil): its
	// actions' client is declare's default, whose transport keeps 2 idle
	// connections per host.
	dflt, err := declare.Parse([]byte(strings.Replace(wfBenchDocument, "name: "+wfDeclType, "name: "+wfDeclDefaultType, 1)), "default.yaml",
		&declare.Options{Vars: map[string]string{"stub": stub.URL}})
	if err != nil {
		tb.Fatal(err)
	}
	if err := reg.Register(dflt); err != nil {
		tb.Fatal(err)
	}
	eng, err := workflow.NewEngine(journal, reg, &workflow.EngineConfig{ID: "wfbench-" + name, Workers: wfBenchStarters})
	if err != nil {
		tb.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- eng.Run(runCtx) }()
	tb.Cleanup(func() {
		stop()
		if err := <-ran; err != nil && !errors.Is(err, context.Canceled) {
			tb.Errorf("%s: engine Run: %v", name, err)
		}
	})
	h, err := idemapi.NewServer(store, &idemapi.Config{
		Tokens:    map[string][]string{"bench-token": {idemapi.AllScopes}},
		Workflows: eng, WorkflowTypes: reg,
		ParseWorkflow: func(data []byte, file string) (*workflow.Definition, error) {
			return declare.Parse(data, file, &declare.Options{Client: actions, Vars: map[string]string{"stub": stub.URL}})
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	api := httptest.NewServer(h)
	tb.Cleanup(api.Close)
	client, err := idemclient.New(api.URL, "bench-token", nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = client.Close() })
	typ, created, err := client.RegisterWorkflow(ctx, []byte(wfBenchDocument))
	if err != nil || !created || typ.Name != wfDeclType || !typ.Declarative {
		tb.Fatalf("%s: register the document: created %v, %+v, %v", name, created, typ, err)
	}
	return &wfServed{name: name, store: store, eng: eng, client: client, stub: stub}
}

// wfInput is every instance's input.
var wfInput = json.RawMessage(`{"sku":"A1","qty":2}`)

var wfSeq atomic.Int64

// wfID is a fresh instance id.
func wfID(prefix string) string {
	return prefix + "-" + strconv.FormatInt(wfSeq.Add(1), 10)
}

// startAPI starts an instance of typ through the API (idemclient
// StartWorkflow, POST /v1/workflows) and waits for its end with the
// server's engine's Wait, in process: Wait is woken by the engine's
// commit of the instance's end, so the measure is the API's start and
// the engine's run, with no polling request.
func (w *wfServed) startAPI(ctx context.Context, typ, id string) error {
	in, created, err := w.client.StartWorkflow(ctx, &idemapi.StartWorkflowRequest{Type: typ, ID: id, Input: wfInput})
	if err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	if !created || in.Type != typ {
		return fmt.Errorf("start %s: created %v, type %q", id, created, in.Type)
	}
	return w.wait(ctx, id)
}

// startInProcess starts an instance of typ with the engine's Start, no
// API in between, and waits the same way.
func (w *wfServed) startInProcess(ctx context.Context, typ, id string) error {
	if _, err := w.eng.Start(ctx, typ, 0, id, wfInput, nil); err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	return w.wait(ctx, id)
}

func (w *wfServed) wait(ctx context.Context, id string) error {
	in, err := w.eng.Wait(ctx, id)
	if err != nil {
		return fmt.Errorf("wait %s: %w", id, err)
	}
	if in.Status != workflow.Succeeded || in.State != "done" || in.Steps != wfBenchSteps {
		return fmt.Errorf("%s: %s in %s after %d steps (%s), want succeeded in done after %d", id, in.Status, in.State, in.Steps, in.Error, wfBenchSteps)
	}
	return nil
}

// wfSide is one contender on one stack.
type wfSide struct {
	name string // "decl", "go", "go-inproc"
	what string // for the table
	run  func(ctx context.Context, id string) error
}

func (w *wfServed) sides() []wfSide {
	return []wfSide{
		{"go", "Go-defined, started through the API", func(ctx context.Context, id string) error { return w.startAPI(ctx, wfGoType, id) }},
		{"decl", "declarative, started through the API", func(ctx context.Context, id string) error { return w.startAPI(ctx, wfDeclType, id) }},
		{"go-inproc", "Go-defined, engine.Start in process", func(ctx context.Context, id string) error { return w.startInProcess(ctx, wfGoType, id) }},
		{"decl-default", "declarative with declare's default client, through the API", func(ctx context.Context, id string) error {
			return w.startAPI(ctx, wfDeclDefaultType, id)
		}},
	}
}

// benchSide is s as a side of bench.Paired: wfBenchStarters starters for
// turn, each starting an instance and waiting for its end before the
// next. After the turn it checks that the stub received exactly three
// requests per instance.
func (w *wfServed) benchSide(s wfSide, turn time.Duration) bench.Side {
	ctx := context.Background()
	timed := bench.Timed(w.name+"-"+s.name, wfBenchStarters, turn, func() error {
		return s.run(ctx, wfID(w.name+"-"+s.name))
	})
	return bench.Side{Name: timed.Name, Run: func() (bench.Round, error) {
		before := w.stub.calls.Load()
		r, err := timed.Run()
		if err == nil {
			if got := w.stub.calls.Load() - before; got != int64(wfBenchSteps*r.Ops) {
				err = fmt.Errorf("%s: the stub received %d requests for %d instances, want %d", timed.Name, got, r.Ops, wfBenchSteps*r.Ops)
			}
		}
		return r, err
	}}
}

// warm runs a few instances of every side, untimed: first connections,
// the pools' growth, prepared statements.
func (w *wfServed) warm(tb testing.TB) {
	tb.Helper()
	ctx := context.Background()
	for _, s := range w.sides() {
		if _, err := bench.Drive(wfBenchStarters, wfCount(4*wfBenchStarters), func() error {
			return s.run(ctx, wfID(w.name+"-warm-"+s.name))
		}); err != nil {
			tb.Fatalf("%s-%s warm-up: %v", w.name, s.name, err)
		}
	}
}

// wfCount is a more for bench.Drive: true n times in all.
func wfCount(n int) func() bool {
	var left atomic.Int64
	left.Store(int64(n))
	return func() bool { return left.Add(-1) >= 0 }
}

// wfPGStore opens pgstore in a fresh schema (dropped at the end of tb)
// with a pool of 20 connections, as the DBOS comparison does.
func wfPGStore(tb testing.TB) idem.Store {
	tb.Helper()
	raw := servicetest.Postgres.Need(tb)
	schema := fmt.Sprintf("idem_wfbench_%d", time.Now().UnixNano())
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, raw)
		if err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
		}
	})
	u, err := neturl.Parse(raw)
	if err != nil {
		tb.Fatal(err)
	}
	q := u.Query()
	q.Set("schema", schema)
	q.Set("pool_max_conns", "20")
	u.RawQuery = q.Encode()
	store, err := idem.OpenStore(context.Background(), u.String(), &idem.OpenConfig{Migrate: true})
	if err != nil {
		tb.Fatalf("pgstore: %v", err)
	}
	return store
}

// wfPebbleStore opens the embedded store in a temporary directory, as
// idem serve --store file:DIR does.
func wfPebbleStore(tb testing.TB) idem.Store {
	tb.Helper()
	store, err := idem.OpenStore(context.Background(), "file:"+tb.TempDir(), nil)
	if err != nil {
		tb.Fatalf("pebblestore: %v", err)
	}
	return store
}

// wfStores are the stores measured, by stack name: PostgreSQL, then the
// embedded store.
var wfStores = []struct {
	name string
	open func(testing.TB) idem.Store
}{{"pg", wfPGStore}, {"pebble", wfPebbleStore}}

// wfStacks are the stacks of every store.
func wfStacks(tb testing.TB, record bool) []*wfServed {
	var out []*wfServed
	for _, s := range wfStores {
		out = append(out, newWFServed(tb, s.name, s.open(tb), record))
	}
	return out
}

// TestWorkflowBenchOnce checks what the benchmark measures, on each
// store: one instance of each workflow type (the document with the
// benchmark's client and with declare's default one, and the Go-defined
// workflow), started through the API, succeeds after three requests to
// the stub, and all send the same requests: POST /a1, /a2, /a3 with the body
// {"order":"<id>"}, Content-Type application/json, the fencing token, and
// the Idempotency-Key of each the step key the instance's history
// records for that action.
func TestWorkflowBenchOnce(t *testing.T) {
	t.Parallel()
	for _, st := range wfStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			w := newWFServed(t, st.name, st.open(t), true)
			ctx := context.Background()
			types := []string{wfDeclType, wfGoType, wfDeclDefaultType}
			got := make([][]wfStubRequest, len(types))
			for i, typ := range types {
				id := wfID("once-" + w.name + "-" + typ)
				if err := w.startAPI(ctx, typ, id); err != nil {
					t.Fatal(err)
				}
				in, err := w.client.GetWorkflow(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				keys := map[string]string{} // action → step key
				for _, e := range in.History {
					if e.Kind == "action_completed" {
						keys[e.Action] = e.StepKey
					}
				}
				reqs := w.stub.requests(id + "/")
				if len(reqs) != wfBenchSteps || len(keys) != wfBenchSteps {
					t.Fatalf("%s: the stub saw %d requests, the history %d completed actions; want %d: %+v", typ, len(reqs), len(keys), wfBenchSteps, reqs)
				}
				for j, r := range reqs {
					action := fmt.Sprintf("a%d", j+1)
					want := wfStubRequest{Method: "POST", Path: "/" + action, Key: keys[action], Token: strconv.FormatInt(in.Token, 10),
						ContentType: "application/json", Body: `{"order":"` + id + `"}`}
					if r != want || r.Key != fmt.Sprintf("%s/%d/%s", id, j+1, action) {
						t.Errorf("%s: request %d: %+v, want %+v", typ, j+1, r, want)
					}
					if string(in.Results[action]) == "" || !strings.HasPrefix(string(in.Results[action]), `{"id":"r`) {
						t.Errorf("%s: result of %s: %s, want the stub's {\"id\":…}", typ, action, in.Results[action])
					}
					// Compare the two types' requests with the ids taken out.
					r.Key = strings.TrimPrefix(r.Key, id)
					r.Body = strings.Replace(r.Body, id, "ID", 1)
					got[i] = append(got[i], r)
				}
			}
			for i := 1; i < len(types); i++ {
				if !slices.Equal(got[0], got[i]) {
					t.Errorf("%s sent\n%+v\n%s sent\n%+v", types[0], got[0], types[i], got[i])
				}
			}
		})
	}
}

// BenchmarkWorkflowServe measures, paired by turns on each store
// (IDEM_BENCH_ROUNDS rounds, default 3, of turns of IDEM_BENCH_TURN,
// default 1s), instances/s at 16 concurrent starters of the declarative
// workflow started through the API (pg-decl, pebble-decl), of the same
// defined in Go (pg-go, pebble-go: the baseline of each store's ratios),
// of the Go one started by engine.Start in process (pg-go-inproc,
// pebble-go-inproc), and of the declarative one with declare's default
// HTTP client, as idem serve parses documents (pg-decl-default,
// pebble-decl-default). Each instance is three steps: steps/s is three
// times instances/s. It ignores b.N: run it with -benchtime 1x.
func BenchmarkWorkflowServe(b *testing.B) {
	rounds := wfEnvInt(b, "IDEM_BENCH_ROUNDS", 3)
	turn := wfEnvDuration(b, "IDEM_BENCH_TURN", time.Second)
	for _, w := range wfStacks(b, false) {
		b.Run(w.name, func(b *testing.B) {
			w.warm(b)
			var sides []bench.Side
			for _, s := range w.sides() {
				sides = append(sides, w.benchSide(s, turn))
			}
			bench.Paired(b, "instances/s", rounds, sides...)
		})
	}
}

// wfFigure is one side's medians over the rounds.
type wfFigure struct {
	store, side, what string
	rate              float64   // instances/s
	ratio             float64   // over the store's Go-defined side through the API in the same round; 0 for it
	ratios            []float64 // each round's ratio
	cpu               float64   // process CPU per instance, µs
	cpuRatio          float64   // median of each round's cpu over the Go-defined side's; 0 for it
	conns             float64   // connections the stub accepted per instance
	p50, p99          time.Duration
}

// TestWorkflowFigures prints the figures of docs/performance.md
// ("Declarative workflows through idem serve") when IDEM_BENCH_FIGURES=1:
// IDEM_BENCH_ROUNDS rounds (default 5) in which every side of both
// stores runs one turn of IDEM_BENCH_TURN (default 2s), the sides of a
// store in an order that rotates from round to round; each side's median
// rate and process CPU per instance, and the medians of each round's
// ratios (rate, CPU) to the store's Go-defined side through the API. It
// skips otherwise.
func TestWorkflowFigures(t *testing.T) {
	if os.Getenv("IDEM_BENCH_FIGURES") != "1" {
		t.Skip("set IDEM_BENCH_FIGURES=1 to measure")
	}
	rounds := wfEnvInt(t, "IDEM_BENCH_ROUNDS", 5)
	turn := wfEnvDuration(t, "IDEM_BENCH_TURN", 2*time.Second)
	load0 := wfLoad()
	stacks := wfStacks(t, false)
	type tally struct {
		rounds []bench.Round
		conns  []float64 // connections the stub accepted per instance, by round
	}
	tallies := make([][]tally, len(stacks))
	for i, w := range stacks {
		w.warm(t)
		tallies[i] = make([]tally, len(w.sides()))
	}
	for r := range rounds {
		for i, w := range stacks {
			sides := w.sides()
			for k := range sides {
				j := (k + r) % len(sides)
				conns := w.stub.conns.Load()
				res, err := w.benchSide(sides[j], turn).Run()
				conns = w.stub.conns.Load() - conns
				if err != nil {
					t.Fatal(err)
				}
				if res.Ops == 0 {
					t.Fatalf("%s-%s: no instance finished in a turn of %s", w.name, sides[j].name, turn)
				}
				tallies[i][j].rounds = append(tallies[i][j].rounds, res)
				tallies[i][j].conns = append(tallies[i][j].conns, float64(conns)/float64(res.Ops))
			}
		}
	}
	var figs []wfFigure
	for i, w := range stacks {
		for j, s := range w.sides() {
			f := wfFigure{store: w.name, side: s.name, what: s.what}
			var rates, cpus, cpuRatios []float64
			var lat []time.Duration
			for r, res := range tallies[i][j].rounds {
				rates = append(rates, res.Rate())
				cpus = append(cpus, float64(res.CPU)/float64(time.Microsecond))
				lat = append(lat, res.Lat...)
				if j > 0 {
					base := tallies[i][0].rounds[r]
					f.ratios = append(f.ratios, res.Rate()/base.Rate())
					if res.CPU > 0 && base.CPU > 0 {
						cpuRatios = append(cpuRatios, float64(res.CPU)/float64(base.CPU))
					}
				}
			}
			slices.Sort(lat)
			f.rate, f.cpu, f.conns = wfMedian(rates), wfMedian(cpus), wfMedian(tallies[i][j].conns)
			if j > 0 {
				f.ratio = wfMedian(f.ratios)
			}
			if len(cpuRatios) > 0 {
				f.cpuRatio = wfMedian(cpuRatios)
			}
			f.p50, f.p99 = lat[(len(lat)-1)/2], lat[(len(lat)-1)*99/100]
			figs = append(figs, f)
		}
	}
	var out strings.Builder
	tw := tabwriter.NewWriter(&out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "store\tside\tinstances/s\tsteps/s\tvs go\tcpu µs/inst\tcpu vs go\tstub conns/inst\tp50 ms\tp99 ms\t")
	for _, f := range figs {
		ratio, cpuRatio := "1", "1"
		if f.ratio > 0 {
			ratio = fmt.Sprintf("%.2fx", f.ratio)
		}
		if f.cpuRatio > 0 {
			cpuRatio = fmt.Sprintf("%.2fx", f.cpuRatio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%s\t%.0f\t%s\t%.3f\t%.2f\t%.2f\t\n", f.store, f.side, f.rate, wfBenchSteps*f.rate, ratio, f.cpu, cpuRatio, f.conns,
			float64(f.p50)/float64(time.Millisecond), float64(f.p99)/float64(time.Millisecond))
	}
	tw.Flush()
	for _, s := range stacks[0].sides() {
		fmt.Fprintf(&out, "%s: %s\n", s.name, s.what)
	}
	for _, f := range figs {
		if f.ratios != nil {
			fmt.Fprintf(&out, "%s-%s ratio by round: %.2f\n", f.store, f.side, f.ratios)
		}
	}
	t.Logf("%d starters, %d rounds of %s turns, load average before %s, after %s; medians:\n%s",
		wfBenchStarters, rounds, turn, load0, wfLoad(), out.String())
}

// wfLoad is the machine's load averages (1, 5 and 15 minutes), or "?".
func wfLoad() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

// wfMedian is the middle of xs (the upper middle of an even count).
func wfMedian(xs []float64) float64 {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// wfEnvInt is the positive integer in the environment variable name, or
// def.
func wfEnvInt(tb testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		tb.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// wfEnvDuration is the positive duration in the environment variable
// name, or def.
func wfEnvDuration(tb testing.TB, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		tb.Fatalf("%s=%q: want a positive duration", name, v)
	}
	return d
}
