package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemclient"
	"github.com/idemkit/idem/workflow"
)

// The order saga of examples/order-saga, end to end: reserve → charge
// (through idem proxy in front of a payment stub that does not honour
// Idempotency-Key) → wait for "packed" → ship, on PostgreSQL with two
// idem serve workers, one of them SIGKILLed mid-run and restarted.
const (
	sagaOrders   = 200
	sagaDecline  = 7   // the stub declines the charge of every 7th order
	sagaParallel = 40  // orders driven at once
	sagaKillAt   = 80  // SIGKILL worker 0 once this many orders started
	sagaDeadline = 100 // seconds for every order to finish
)

// sagaCancel says whether order n is cancelled, and when: "early" right
// after its start, "late" once it is charged (instead of "packed").
func sagaCancel(n int) string {
	switch n % 10 {
	case 0:
		return "early"
	case 5:
		return "late"
	}
	return ""
}

// startStub runs the stub binary on a free port and returns its base URL.
func startStub(t *testing.T, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(errPipe)
		for sc.Scan() {
			if _, a, ok := strings.Cut(sc.Text(), "stub listening on "); ok {
				addr <- a
			}
		}
		close(addr)
	}()
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatal("the stub exited before listening")
		}
		return "http://" + a
	case <-time.After(30 * time.Second):
		t.Fatal("the stub did not say where it listens in 30s")
	}
	return ""
}

// sagaWorkers are the two serve processes and a client of each.
type sagaWorkers struct {
	t       *testing.T
	dir     string
	args    []string
	mu      sync.Mutex
	procs   [2]*proc
	clients [2]*idemclient.Client
}

func (w *sagaWorkers) start(i int) error {
	p, err := tryServe(w.t, w.dir, w.args...)
	if err != nil {
		return err
	}
	c, err := idemclient.New("http://"+p.addr, "ops-0123456789", nil)
	if err != nil {
		return err
	}
	w.t.Cleanup(func() { _ = c.Close() })
	w.mu.Lock()
	w.procs[i], w.clients[i] = p, c
	w.mu.Unlock()
	return nil
}

func (w *sagaWorkers) client(i int) *idemclient.Client {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.clients[i%2]
}

// call runs f on the worker n picks, then on the other one, until it
// succeeds, fatal says it will not, or ctx ends: a worker may be dead
// for a while. Every call the saga makes is idempotent.
func (w *sagaWorkers) call(ctx context.Context, n int, f func(*idemclient.Client) error, fatal func(error) bool) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := n; ; i++ {
		err := f(w.client(i))
		if err == nil || fatal != nil && fatal(err) {
			return err
		}
		if i%2 != n%2 { // both tried: wait a little
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
			case <-tick.C:
			}
		}
	}
}

// await polls order id until done says so.
func (w *sagaWorkers) await(ctx context.Context, n int, id string, done func(*idemapi.Workflow) bool) (*idemapi.Workflow, error) {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		var wf *idemapi.Workflow
		err := w.call(ctx, n, func(c *idemclient.Client) (err error) {
			wf, err = c.GetWorkflow(ctx, id)
			return err
		}, nil)
		if err != nil {
			return nil, err
		}
		if done(wf) {
			return wf, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w; now %s/%s", id, ctx.Err(), wf.State, wf.Status)
		case <-tick.C:
		}
	}
}

func finished(wf *idemapi.Workflow) bool {
	switch workflow.Status(wf.Status) {
	case workflow.Succeeded, workflow.Failed, workflow.Cancelled:
		return true
	}
	return false
}

// TestOrderSaga is issue 15's end to end: 200 orders through the
// examples/order-saga document on two idem serve workers sharing one
// PostgreSQL schema, the payments through idem proxy (another schema) in
// front of a stub that applies every payment request it sees, declines
// every 7th charge and answers 5% of first requests 503. A fifth of the
// orders are cancelled (half right after start, half once charged);
// worker 0 is SIGKILLed after 80 starts and restarted. Every order must
// end shipped, or failed/cancelled with every completed step
// compensated, and the stub must have applied each reservation, charge,
// release, refund and shipment at most once.
func TestOrderSaga(t *testing.T) {
	began := time.Now()
	suffix := strconv.FormatInt(time.Now().UnixNano(), 10)
	serveStore := pgSchemaURL(t, "idem_saga_serve_"+suffix)
	proxyStore := pgSchemaURL(t, "idem_saga_proxy_"+suffix)
	dir := t.TempDir()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	stubBin := filepath.Join(dir, "stub")
	build := exec.Command("go", "build", "-o", stubBin, "./examples/order-saga/stub")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the stub: %v\n%s", err, out)
	}
	for _, s := range []string{serveStore, proxyStore} {
		if out, errOut, code := runIdem(t, dir, "migrate", "--store", s); code != 0 {
			t.Fatalf("idem migrate: exit %d\n%s%s", code, out, errOut)
		}
	}

	stub := startStub(t, stubBin, "-payments-dedup=false", "-decline", strconv.Itoa(sagaDecline), "-unavailable", "0.05", "-latency", "50ms")
	px := startProxy(t, dir, "--upstream", stub, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--store", proxyStore)
	w := &sagaWorkers{t: t, dir: dir, args: []string{
		"--listen", "127.0.0.1:0", "--tokens", writeTokens(t, dir), "--store", serveStore, "--log-level", "error",
		"--workflows", filepath.Join(root, "examples/order-saga/workflows"), "--workflow-lease", "2s",
		"--workflow-var", "stock=" + stub, "--workflow-var", "shipping=" + stub,
		"--workflow-var", "payments=http://" + px.addr,
	}}
	for i := range 2 {
		if err := w.start(i); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), sagaDeadline*time.Second)
	defer cancel()
	var (
		started atomic.Int64
		killed  = make(chan string, 1) // the killed engine's id
		owned   atomic.Int64           // instances it owned when killed
		errs    = make(chan error, sagaOrders)
		final   = make([]*idemapi.Workflow, sagaOrders+1)
		sem     = make(chan struct{}, sagaParallel)
		wg      sync.WaitGroup
	)
	killNow, restarted := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(restarted)
		select {
		case <-killNow:
		case <-ctx.Done():
			close(killed)
			return
		}
		w.mu.Lock()
		p := w.procs[0]
		w.mu.Unlock()
		host, _ := os.Hostname()
		id := fmt.Sprintf("%s-%d", host, p.cmd.Process.Pid)
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
		// The instances it held: the other worker takes them over once
		// their lease (2 s) runs out.
		for after := ""; ; {
			page, err := w.client(1).ListWorkflows(ctx, &idemclient.WorkflowListParams{After: after, Limit: 500})
			if err != nil {
				t.Errorf("listing after the kill: %v", err)
				break
			}
			for _, wf := range page.Workflows {
				if wf.Owner == id {
					owned.Add(1)
				}
			}
			if after = page.Next; after == "" {
				break
			}
		}
		killed <- id
		if err := w.start(0); err != nil {
			t.Errorf("restarting worker 0: %v", err)
		}
	}()
	isFinished := func(err error) bool { return errors.Is(err, workflow.ErrFinished) }
	for n := 1; n <= sagaOrders; n++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(n int) {
			defer func() { <-sem; wg.Done() }()
			id := fmt.Sprintf("o-%d", n)
			err := func() error {
				input := fmt.Sprintf(`{"sku":"book","qty":1,"amount":%d}`, n)
				if err := w.call(ctx, n, func(c *idemclient.Client) error {
					_, _, err := c.StartWorkflow(ctx, &idemapi.StartWorkflowRequest{Type: "order", ID: id, Input: json.RawMessage(input)})
					return err
				}, nil); err != nil {
					return fmt.Errorf("start %s: %w", id, err)
				}
				if started.Add(1) == sagaKillAt {
					close(killNow)
				}
				cancelOrder := func() error {
					err := w.call(ctx, n, func(c *idemclient.Client) error {
						_, err := c.CancelWorkflow(ctx, id, "the customer changed their mind")
						return err
					}, isFinished)
					if isFinished(err) { // declined and unwound before the cancel
						return nil
					}
					return err
				}
				when := sagaCancel(n)
				if when == "early" {
					if err := cancelOrder(); err != nil {
						return fmt.Errorf("cancel %s: %w", id, err)
					}
				} else {
					// "packed" only once charged: an event no transition of
					// the current state takes is rejected.
					wf, err := w.await(ctx, n, id, func(wf *idemapi.Workflow) bool {
						return wf.State == "charged" || wf.Status != string(workflow.Running)
					})
					if err != nil {
						return err
					}
					if wf.State == "charged" && wf.Status == string(workflow.Running) {
						if when == "late" {
							err = cancelOrder()
						} else {
							err = w.call(ctx, n, func(c *idemclient.Client) error {
								_, err := c.SignalWorkflow(ctx, id, "packed-"+id, "packed", nil)
								return err
							}, nil)
						}
						if err != nil {
							return fmt.Errorf("%s %s: %w", when, id, err)
						}
					}
				}
				wf, err := w.await(ctx, n, id, finished)
				final[n] = wf
				return err
			}()
			if err != nil {
				errs <- err
			}
		}(n)
	}
	wg.Wait()
	<-restarted
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	killedID, ok := <-killed
	if !ok {
		t.Fatal("worker 0 was never killed")
	}
	ran := time.Since(began)

	// What the stub applied, per order.
	resp, err := http.Get(stub + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	var stats struct {
		Orders   map[string]map[string]int `json:"orders"`
		Requests int                       `json:"requests"`
		Replays  int                       `json:"replays"`
	}
	err = json.NewDecoder(resp.Body).Decode(&stats)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for order, counts := range stats.Orders {
		for what, c := range counts {
			if c > 1 {
				t.Errorf("%s: the stub applied %s %d times", order, what, c)
			}
		}
	}

	// What the proxy absorbed: begins that replayed a stored answer or
	// found the key in flight never reached the stub.
	var begins []string
	if resp, err := http.Get("http://" + px.admin + "/metrics"); err != nil {
		t.Error(err)
	} else {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, `idem_operations_total{op="begin"`) && !strings.HasSuffix(line, " 0") {
				_, outcome, _ := strings.Cut(line, `outcome="`)
				begins = append(begins, strings.Replace(outcome, `"} `, " ", 1))
			}
		}
		_ = resp.Body.Close()
	}

	var shipped, cancelled, declined, failedOther, acquired, compensations int
	for n := 1; n <= sagaOrders; n++ {
		wf, id := final[n], fmt.Sprintf("o-%d", n)
		got := stats.Orders[id]
		// The history: every completed action, and every compensation.
		var full *idemapi.Workflow
		if err := w.call(ctx, n, func(c *idemclient.Client) (err error) {
			full, err = c.GetWorkflow(ctx, id)
			return err
		}, nil); err != nil {
			t.Fatal(err)
		}
		completed, compensated := map[string]int{}, map[string]int{}
		for _, e := range full.History {
			switch workflow.EntryKind(e.Kind) {
			case workflow.EntryActionCompleted:
				completed[e.Action]++
			case workflow.EntryCompensated:
				compensated[e.Action]++
				compensations++
			}
		}
		if wf.Token > 1 {
			acquired++
		}
		declinedOrder := n%sagaDecline == 0
		switch workflow.Status(wf.Status) {
		case workflow.Succeeded:
			shipped++
			if wf.State != "shipped" || sagaCancel(n) != "" || declinedOrder {
				t.Errorf("%s: succeeded in state %s (cancel %q, declined %v)", id, wf.State, sagaCancel(n), declinedOrder)
			}
			if got["reserve"] != 1 || got["charge"] != 1 || got["ship"] != 1 || got["release"] != 0 || got["refund"] != 0 {
				t.Errorf("%s shipped, but the stub applied %v", id, got)
			}
			if len(compensated) > 0 || completed["reserve"] != 1 || completed["charge"] != 1 || completed["ship"] != 1 {
				t.Errorf("%s shipped with completed %v, compensated %v", id, completed, compensated)
			}
			continue
		case workflow.Cancelled:
			cancelled++
			if sagaCancel(n) == "" {
				t.Errorf("%s: cancelled, but nobody cancelled it", id)
			}
		case workflow.Failed:
			if declinedOrder {
				declined++
			} else {
				failedOther++
				t.Errorf("%s: failed (%s), but its charge is not declined", id, wf.Error)
			}
		default:
			t.Errorf("%s: ended %s", id, wf.Status)
		}
		if declinedOrder && got["charge"] != 0 {
			t.Errorf("%s: declined, but the stub charged it", id)
		}
		// Cancelled once charged, or declined without a cancel: it had
		// reserved (and been charged), so both were undone.
		switch {
		case wf.Status == string(workflow.Cancelled) && sagaCancel(n) == "late":
			if got["reserve"] != 1 || got["charge"] != 1 {
				t.Errorf("%s: cancelled once charged, but the stub applied %v", id, got)
			}
		case declinedOrder && sagaCancel(n) == "":
			if got["reserve"] != 1 {
				t.Errorf("%s: declined, but the stub applied %v", id, got)
			}
		}
		if got["ship"] != 0 || got["release"] != got["reserve"] || got["refund"] != got["charge"] {
			t.Errorf("%s %s: the stub applied %v", id, wf.Status, got)
		}
		for _, a := range []string{"reserve", "charge"} {
			if compensated[a] != completed[a] || completed[a] > 1 || completed[a] != got[a] {
				t.Errorf("%s %s: %s completed %d times, compensated %d, applied %d", id, wf.Status, a, completed[a], compensated[a], got[a])
			}
		}
		if completed["ship"] != 0 || compensated["ship"] != 0 {
			t.Errorf("%s %s: shipped (%v, %v)", id, wf.Status, completed, compensated)
		}
	}
	t.Logf("%d orders in %s: %d shipped, %d cancelled, %d declined (failed and unwound), %d failed otherwise; "+
		"%d compensations; %d instances acquired more than once (Token > 1); engine %s SIGKILLed after %d starts owning %d instances; "+
		"the stub saw %d requests and replayed %d; the proxy's begins: %s",
		sagaOrders, ran.Round(time.Millisecond), shipped, cancelled, declined, failedOther,
		compensations, acquired, killedID, sagaKillAt, owned.Load(), stats.Requests, stats.Replays, strings.Join(begins, ", "))
}

// TestWorkflowVarFlag: --workflow-var NAME=VALUE repeats, a later NAME
// wins, IDEM_WORKFLOW_VAR sets one when the command line sets none, and
// a value without "=" is a usage error on serve and wf.
func TestWorkflowVarFlag(t *testing.T) {
	t.Setenv("IDEM_WORKFLOW_VAR", "env=from-env")
	o, code := parseServeFlags([]string{"--workflow-var", "stock=http://a", "--workflow-var", "auth=Bearer x=y",
		"--workflow-var", "stock=http://b", "--workflow-lease", "3s"}, io.Discard, io.Discard)
	if code >= 0 {
		t.Fatalf("exit %d", code)
	}
	if want := (workflowVars{"stock": "http://b", "auth": "Bearer x=y"}); !maps.Equal(o.workflowVars, want) || o.workflowLease != 3*time.Second {
		t.Errorf("vars %v lease %s, want %v 3s", o.workflowVars, o.workflowLease, want)
	}
	o, code = parseServeFlags(nil, io.Discard, io.Discard)
	if code >= 0 || !maps.Equal(o.workflowVars, workflowVars{"env": "from-env"}) || o.workflowLease != 30*time.Second {
		t.Errorf("from the environment: exit %d, %v, lease %s", code, o.workflowVars, o.workflowLease)
	}
	for _, bad := range []string{"novalue", "=x", " a=x"} {
		var errOut strings.Builder
		if _, code := parseServeFlags([]string{"--workflow-var", bad}, io.Discard, &errOut); code != 2 || !strings.Contains(errOut.String(), "want NAME=VALUE") {
			t.Errorf("serve --workflow-var %q: exit %d, %q", bad, code, errOut.String())
		}
	}
	if _, code := parseServeFlags([]string{"--workflow-lease", "0s"}, io.Discard, io.Discard); code != 2 {
		t.Errorf("--workflow-lease 0s: exit %d", code)
	}

	// idem wf --store: the documents parse with the vars (graph does not
	// show them); with --server the flag is refused.
	wfDir, err := filepath.Abs("../../examples/order-saga/workflows")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out, errOut, code := runIdem(t, dir, "wf", "graph", "order", "--store", "mem:", "--workflows", wfDir, "--workflow-var", "payments=http://127.0.0.1:1")
	if code != 0 || !strings.Contains(out, "reserved") {
		t.Errorf("wf graph with --workflow-var: exit %d, %q %q", code, out, errOut)
	}
	if _, errOut, code := runIdem(t, dir, "wf", "ls", "--server", "http://127.0.0.1:1", "--token", "x", "--workflow-var", "a=b"); code != 2 || !strings.Contains(errOut, "--workflow-var is for --store") {
		t.Errorf("wf --server --workflow-var: exit %d, %q", code, errOut)
	}
	if _, errOut, code := runIdem(t, dir, "wf", "types", "--store", "mem:", "--workflow-var", "nameless"); code != 2 || !strings.Contains(errOut, "want NAME=VALUE") {
		t.Errorf("wf --workflow-var nameless: exit %d, %q", code, errOut)
	}
	for _, c := range [][]string{{"serve", "--workflow-var NAME=VALUE", "--workflow-lease DURATION", "IDEM_WORKFLOW_VAR"}, {"wf", "--workflow-var NAME=VALUE", "IDEM_WORKFLOW_VAR"}} {
		out, _, code := runIdem(t, dir, c[0], "--help")
		for _, want := range c[1:] {
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("idem %s --help (exit %d) lacks %q", c[0], code, want)
			}
		}
	}
}
