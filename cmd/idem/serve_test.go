package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/crashtest"
)

// idemBin is the idem binary, built once by TestMain.
var idemBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "idem-serve-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	idemBin = filepath.Join(dir, "idem")
	// -buildvcs=auto records the revision where git can tell it
	// (TestVersion), whatever GOFLAGS says.
	build := exec.Command("go", "build", "-buildvcs=auto", "-o", idemBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	code := 1
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building idem:", err)
	} else {
		code = m.Run()
		if failed := openAPIFailures(); len(failed) > 0 && code == 0 {
			fmt.Fprintf(os.Stderr, "%d exchanges did not match docs/openapi.yaml (printed above)\n", len(failed))
			code = 1
		}
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running `idem serve`.
type proc struct {
	cmd    *exec.Cmd
	addr   string // host:port it listens on
	token  string // the generated token, if any
	lines  chan string
	stderr *crashtest.Buffer
	exited chan struct{}
	err    error // of Wait, once exited is closed
}

// startServe starts `idem serve args...` in dir and waits until it says
// where it listens.
func startServe(t *testing.T, dir string, args ...string) *proc {
	t.Helper()
	p, err := tryServe(t, dir, args...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func tryServe(t *testing.T, dir string, args ...string) (*proc, error) {
	t.Helper()
	p, err := spawn(t, dir, append([]string{"serve"}, args...)...)
	if err != nil {
		return nil, err
	}
	deadline := time.After(30 * time.Second)
	for p.addr == "" {
		select {
		case line, ok := <-p.lines:
			if !ok {
				<-p.exited
				return nil, fmt.Errorf("idem serve %s exited (%v) before listening; stderr:\n%s", strings.Join(args, " "), p.err, p.stderr)
			}
			if a, found := strings.CutPrefix(line, "idem serve: listening on http://"); found {
				p.addr = a
			}
		case <-deadline:
			return nil, fmt.Errorf("idem serve did not say where it listens in 30s; stderr:\n%s", p.stderr)
		}
	}
	return p, nil
}

// spawn starts `idem args...` in dir, feeding its stdout lines to p.lines
// and its stderr to p.stderr; the process is killed when the test ends.
func spawn(t *testing.T, dir string, args ...string) (*proc, error) {
	t.Helper()
	cmd := exec.Command(idemBin, args...)
	cmd.Dir = dir
	p := &proc{cmd: cmd, lines: make(chan string, 100), stderr: &crashtest.Buffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	// A pipe of our own, not StdoutPipe: Wait closes StdoutPipe's reading
	// end once the process exits, which could lose its last lines (the
	// clean stop line) before the scanner read them.
	out, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		out.Close()
		return nil, err
	}
	go func() {
		defer out.Close()
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	return p, nil
}

// next returns the next stdout line.
func (p *proc) next(t *testing.T) string {
	t.Helper()
	select {
	case line := <-p.lines:
		return line
	case <-time.After(10 * time.Second):
		t.Fatalf("no more output; stderr:\n%s", p.stderr)
		return ""
	}
}

// stop sends sig and returns the exit code.
func (p *proc) stop(t *testing.T, sig os.Signal) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("idem serve still running 30s after %v; stderr:\n%s", sig, p.stderr)
	}
	return p.cmd.ProcessState.ExitCode()
}

func runIdem(t *testing.T, dir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(idemBin, args...)
	cmd.Dir = dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

type client struct {
	base, token string
	http        *http.Client
}

// newClient returns a client of the server at addr whose every exchange
// is checked against docs/openapi.yaml (checkedTransport).
func newClient(addr, token string) *client {
	c := newUncheckedClient(addr, token)
	c.http.Transport = &checkedTransport{next: c.http.Transport}
	return c
}

// newUncheckedClient is newClient without the check, for benchmarks.
func newUncheckedClient(addr, token string) *client {
	return &client{base: "http://" + addr, token: token, http: &http.Client{
		Timeout:   20 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64},
	}}
}

// do sends v (none when nil) as JSON and returns the status and body of
// the answer, or an error for a failed round trip.
func (c *client) do(method, path string, v any) (status int, data []byte, err error) {
	var body io.Reader
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			return 0, nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		return 0, nil, err
	}
	if v != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err = io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, data, nil
}

// post sends v as JSON and decodes a 200 answer into out; it returns the
// status, or an error for a failed round trip.
func (c *client) post(path string, v, out any) (int, error) {
	status, data, err := c.do(http.MethodPost, path, v)
	if err != nil {
		return 0, err
	}
	if status == http.StatusOK && out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return status, fmt.Errorf("decode %s: %w", data, err)
		}
	}
	return status, nil
}

type beginAnswer struct {
	Decision     string        `json:"decision"`
	Token        int64         `json:"token"`
	Takeover     bool          `json:"takeover"`
	Outcome      *idem.Outcome `json:"outcome"`
	RetryAfterMS int64         `json:"retry_after_ms"`
}

type beginBody struct {
	Scope       string `json:"scope"`
	Key         string `json:"key"`
	Fingerprint string `json:"fingerprint"`
}

type completeBody struct {
	Scope   string       `json:"scope"`
	Key     string       `json:"key"`
	Token   int64        `json:"token"`
	Outcome idem.Outcome `json:"outcome"`
}

// cycle runs begin + complete on a fresh key; status is the first non-200
// answer, err a failed round trip.
func (c *client) cycle(scope, key string, data []byte) (status int, err error) {
	var b beginAnswer
	if status, err := c.post("/v1/begin", beginBody{Scope: scope, Key: key, Fingerprint: "f"}, &b); err != nil || status != 200 {
		return status, err
	}
	if b.Decision != "acquired" {
		return 0, fmt.Errorf("begin %s: %s", key, b.Decision)
	}
	return c.post("/v1/complete", completeBody{Scope: scope, Key: key, Token: b.Token, Outcome: idem.Outcome{Data: data}}, nil)
}

func writeTokens(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "tokens")
	if err := os.WriteFile(path, []byte("# test tokens\nops-0123456789 *\nbilling-0123456789 billing\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestServeHelp(t *testing.T) {
	t.Parallel()
	out, _, code := runIdem(t, t.TempDir(), "serve", "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"--listen", "127.0.0.1:7070", "--store", "file:./idem-data", "mem:", "--tokens", "TOKEN SCOPE[,SCOPE...]",
		"The scope * binds", "--max-body", "5657944", "--lease", "30s", "--window", "24h", "--drain", "10s",
		"--sweep-interval", "1m", "--log-level", "Example:", "idem serve --listen"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestServeRefusesBadStarts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad-tokens")
	if err := os.WriteFile(bad, []byte("# ok\nt1 a\nt2 a,,b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty-tokens")
	if err := os.WriteFile(empty, []byte("# nobody\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"--listen", "0.0.0.0:0", "--store", "mem:"}, 1, []string{"0.0.0.0:0", "other machines", "loopback", "--tokens FILE"}},
		{[]string{"--listen", ":0", "--store", "mem:"}, 1, []string{"every interface", "loopback"}},
		{[]string{"--tokens", bad, "--store", "mem:", "--listen", "127.0.0.1:0"}, 1, []string{"line 3", "empty scope"}},
		{[]string{"--tokens", empty, "--store", "mem:", "--listen", "127.0.0.1:0"}, 1, []string{"holds no tokens"}},
		{[]string{"--tokens", filepath.Join(dir, "missing"), "--store", "mem:"}, 1, []string{"--tokens", "no such file"}},
		{[]string{"--store", "nosql:x", "--listen", "127.0.0.1:0"}, 1, []string{`--store nosql:x: not a store URL this binary knows: want mem:, file:DIR, postgres://… or redis://… (schemes file, mem, postgres`}},
		{[]string{"--max-body", "0"}, 2, []string{"--max-body must be positive"}},
		{[]string{"--lease", "-1s"}, 2, []string{"--lease must be positive"}},
		{[]string{"--nope"}, 2, []string{"flag provided but not defined", "Usage: idem serve"}},
		{[]string{"extra"}, 2, []string{"unexpected argument"}},
	} {
		_, stderr, code := runIdem(t, dir, append([]string{"serve"}, tc.args...)...)
		if code != tc.code {
			t.Errorf("serve %v: exit %d, want %d; stderr %s", tc.args, code, tc.code, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("serve %v: stderr lacks %q:\n%s", tc.args, w, stderr)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "idem-data")); err == nil {
		t.Error("a refused start created ./idem-data")
	}
}

// TestServeDefaultStart runs `idem serve` with no flags in an empty
// directory: the embedded store in ./idem-data, a token for scope default.
func TestServeDefaultStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p, err := tryServe(t, dir)
	if err != nil {
		if !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		// Another process holds 7070 on this shared machine: everything
		// else stays default.
		t.Logf("127.0.0.1:7070 is taken; checking the other defaults on a free port")
		p = startServe(t, dir, "--listen", "127.0.0.1:0")
	} else if p.addr != "127.0.0.1:7070" {
		t.Fatalf("listens on %s, want 127.0.0.1:7070", p.addr)
	}
	abs, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	if line := p.next(t); line != "idem serve: store file:./idem-data, data in ./idem-data ("+filepath.Join(abs, "idem-data")+")" &&
		line != "idem serve: store file:./idem-data, data in ./idem-data ("+filepath.Join(dir, "idem-data")+")" {
		t.Fatalf("store line %q", line)
	}
	token, ok := strings.CutPrefix(p.next(t), `idem serve: token for scope "default" (new, kept in idem-data/token, mode 0600): `)
	if !ok || len(token) < 40 {
		t.Fatalf("no token line (token %q)", token)
	}
	if st, err := os.Stat(filepath.Join(dir, "idem-data")); err != nil || !st.IsDir() {
		t.Fatalf("./idem-data: %v", err)
	}

	c := newClient(p.addr, token)
	if status, err := c.cycle("default", "k", []byte("v")); err != nil || status != 200 {
		t.Fatalf("cycle in scope default: %d %v", status, err)
	}
	if status, err := c.post("/v1/begin", beginBody{Scope: "other", Key: "k"}, nil); err != nil || status != 403 {
		t.Fatalf("scope other: %d %v, want 403", status, err)
	}
	if status, err := newClient(p.addr, "wrong").post("/v1/begin", beginBody{Scope: "default", Key: "k"}, nil); err != nil || status != 401 {
		t.Fatalf("wrong token: %d %v, want 401", status, err)
	}
	if code := p.stop(t, syscall.SIGINT); code != 0 {
		t.Fatalf("exit %d after SIGINT; stderr:\n%s", code, p.stderr)
	}
}

// TestServeDrainsOnSIGTERMAndRestarts: SIGTERM while many requests are in
// flight; every request succeeds or fails to connect, never a 5xx; the
// process exits 0 and a restart on the same directory replays every
// completed key, with no recovery step.
func TestServeDrainsOnSIGTERMAndRestarts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokens := writeTokens(t, dir)
	store := "file:" + filepath.Join(dir, "data")
	p := startServe(t, dir, "--listen", "127.0.0.1:0", "--store", store, "--tokens", tokens)
	c := newClient(p.addr, "billing-0123456789")

	first := []byte{0xff, 0, '"', 'o', 'k'}
	if status, err := c.cycle("billing", "before", first); err != nil || status != 200 {
		t.Fatalf("first cycle: %d %v", status, err)
	}

	const workers = 32
	var (
		cycles    atomic.Int64
		mu        sync.Mutex
		completed []string
		bad       []string
		wg        sync.WaitGroup
		busy      = make(chan struct{}) // closed when the workers are well under way
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				key := fmt.Sprintf("w%d-%d", w, i)
				status, err := c.cycle("billing", key, []byte(key))
				if err != nil {
					var netErr net.Error
					if !errors.As(err, &netErr) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.ECONNREFUSED) {
						mu.Lock()
						bad = append(bad, fmt.Sprintf("%s: %v", key, err))
						mu.Unlock()
					}
					return // the server is going away
				}
				if status != 200 {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s: status %d", key, status))
					mu.Unlock()
					return
				}
				mu.Lock()
				completed = append(completed, key)
				mu.Unlock()
				if cycles.Add(1) == 4*workers {
					close(busy)
				}
			}
		}()
	}
	select {
	case <-busy:
	case <-time.After(60 * time.Second):
		t.Fatalf("only %d cycles in 60s", cycles.Load())
	}
	code := p.stop(t, syscall.SIGTERM)
	wg.Wait()
	if code != 0 {
		t.Fatalf("exit %d after SIGTERM; stderr:\n%s", code, p.stderr)
	}
	if len(bad) > 0 {
		t.Fatalf("%d requests neither succeeded nor failed to connect, e.g. %s", len(bad), bad[0])
	}
	if !strings.Contains(strings.Join(drain(p.lines), "\n"), "stopped; the store is closed") {
		t.Error("no clean stop line")
	}
	t.Logf("%d cycles completed before the server went away", len(completed))

	// The restart opens the same directory at once and replays.
	p2 := startServe(t, dir, "--listen", "127.0.0.1:0", "--store", store, "--tokens", tokens)
	c2 := newClient(p2.addr, "ops-0123456789")
	check := func(key string, want []byte) {
		t.Helper()
		var b beginAnswer
		if status, err := c2.post("/v1/begin", beginBody{Scope: "billing", Key: key, Fingerprint: "f"}, &b); err != nil || status != 200 {
			t.Fatalf("begin %s after restart: %d %v", key, status, err)
		}
		if b.Decision != "replay" || b.Outcome == nil || !bytes.Equal(b.Outcome.Data, want) {
			t.Fatalf("begin %s after restart = %+v, want a replay of %q", key, b, want)
		}
	}
	check("before", first)
	for _, key := range completed {
		check(key, []byte(key))
	}
	if code := p2.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("second run exit %d; stderr:\n%s", code, p2.stderr)
	}
	if s := p.stderr.String() + p2.stderr.String(); strings.Contains(s, "level=ERROR") || strings.Contains(s, "level=WARN") {
		t.Errorf("errors logged:\n%s", s)
	}
}

func drain(lines chan string) []string {
	var out []string
	for l := range lines {
		out = append(out, l)
	}
	return out
}

// TestServeInProcess runs serve itself (so -race covers it) on mem: and
// stops it by cancelling its context.
func TestServeInProcess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	o, code := parseServeFlags([]string{"--listen", "127.0.0.1:0", "--store", "mem:", "--tokens", writeTokens(t, dir), "--sweep-interval", "1ms"}, io.Discard, io.Discard)
	if code >= 0 {
		t.Fatalf("flags refused: %d", code)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outR, outW := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := serve(ctx, o, outW, io.Discard)
		outW.Close()
		errc <- err
	}()
	sc := bufio.NewScanner(outR)
	var addr string
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if a, ok := strings.CutPrefix(sc.Text(), "idem serve: listening on http://"); ok {
			addr = a
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, outR) }()
	if addr == "" {
		t.Fatalf("no listen line in %q", lines)
	}
	c := newClient(addr, "ops-0123456789")
	if status, err := c.cycle("any-scope", "k", nil); err != nil || status != 200 {
		t.Fatalf("cycle: %d %v", status, err)
	}
	var b beginAnswer
	if status, err := c.post("/v1/begin", beginBody{Scope: "any-scope", Key: "k", Fingerprint: "f"}, &b); err != nil || status != 200 || b.Decision != "replay" {
		t.Fatalf("replay: %d %v %+v", status, err, b)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
}

func TestLoopbackOnly(t *testing.T) {
	t.Parallel()
	for addr, ok := range map[string]bool{
		"127.0.0.1:7070": true, "localhost:0": true, "[::1]:80": true, "127.1.2.3:1": true,
		":7070": false, "0.0.0.0:1": false, "[::]:1": false, "10.0.0.1:80": false, "example.com:80": false, "nonsense": false,
	} {
		if err := loopbackOnly(addr); (err == nil) != ok {
			t.Errorf("loopbackOnly(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
}
