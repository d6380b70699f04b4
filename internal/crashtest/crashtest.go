// Package crashtest runs the real-process crash tests: the test binary
// re-executed as a child process (selected by an environment variable its
// TestMain or a named test reads), SIGKILLed at a chosen moment and
// started again, while the parent collects the lines the children print
// and polls real conditions with a deadline.
//
// The parent side:
//
//	r := &crashtest.Runner{T: t, Env: []string{"IDEM_X_SCHEMA=" + schema}, NameEnv: "IDEM_X_NAME"}
//	p := r.Start()
//	crashtest.Until(t, 20*time.Second, "a row", func() bool { ... })
//	p = r.Restart(p) // SIGKILL, then a fresh child
//
// The child side ends when the parent closes its stdin (or dies):
//
//	ctx, cancel := crashtest.ChildContext(2 * time.Minute)
//	defer cancel()
package crashtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Lines collects the whole lines the children (and, through Printf, the
// parent) print, and passes each on to Notify when set. The zero value is
// ready to use.
type Lines struct {
	mu  sync.Mutex
	all []string
	// Notify, when set before the first line, receives every line; a
	// full channel drops the line rather than block the child's output.
	Notify chan string
}

// Writer returns an io.Writer for one child's stdout: it adds each whole
// line written to l.
func (l *Lines) Writer() io.Writer { return &lineWriter{l: l} }

// Printf adds the line (or lines) of the formatted text to l.
func (l *Lines) Printf(format string, args ...any) {
	for _, s := range strings.Split(strings.TrimSuffix(fmt.Sprintf(format, args...), "\n"), "\n") {
		l.add(s)
	}
}

// All returns a copy of the lines so far.
func (l *Lines) All() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.all...)
}

func (l *Lines) add(s string) {
	l.mu.Lock()
	l.all = append(l.all, s)
	l.mu.Unlock()
	if l.Notify != nil {
		select {
		case l.Notify <- s:
		default:
		}
	}
}

type lineWriter struct {
	l    *Lines
	part []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.part = append(w.part, p...)
	for {
		i := bytes.IndexByte(w.part, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.l.add(string(w.part[:i]))
		w.part = w.part[i+1:]
	}
}

// Buffer is a bytes.Buffer safe to read while a child writes to it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Proc is a running child process.
type Proc struct {
	// Name is the child's name, "PREFIX" followed by its start number;
	// the child finds it in its Runner.NameEnv variable.
	Name string
	// Cmd is the child's command, started.
	Cmd *exec.Cmd
	// Stderr holds what the child wrote to its stderr (and its stdout
	// when the Runner has no Out).
	Stderr Buffer

	stdin io.Closer
	once  sync.Once
	err   error
}

// Kill SIGKILLs the child (on Unix) and waits until it is gone. It is a
// no-op on a child already stopped.
func (p *Proc) Kill() {
	p.once.Do(func() {
		_ = p.Cmd.Process.Kill()
		_ = p.stdin.Close()
		p.err = p.Cmd.Wait()
	})
}

// Stop asks the child to stop by closing its stdin, and returns how it
// exited.
func (p *Proc) Stop() error {
	p.once.Do(func() {
		_ = p.stdin.Close()
		p.err = p.Cmd.Wait()
	})
	return p.err
}

// Runner starts children: this test binary re-executed, or Path.
type Runner struct {
	// T is the parent test; Start fails it when a child cannot start,
	// and its cleanup kills the children still running.
	T testing.TB
	// Path is the program to run; empty means the test binary itself
	// (os.Args[0]).
	Path string
	// Args are the child's arguments; nil with an empty Path means
	// "-test.run=^$" (TestMain picks the child's role), and a test
	// binary child runs one named test with "-test.run=^TestName$".
	Args []string
	// Env is added to the parent's environment for every child.
	Env []string
	// NameEnv, when set, is the variable that carries each child's Name.
	NameEnv string
	// Prefix starts each child's Name; empty means "p".
	Prefix string
	// Out receives the children's stdout line by line; nil sends it to
	// each child's Stderr buffer.
	Out *Lines

	mu      sync.Mutex
	started int
	killed  map[string]bool
	procs   []*Proc
	cleanup bool
}

// Start starts a child.
func (r *Runner) Start() *Proc {
	t := r.T
	t.Helper()
	r.mu.Lock()
	r.started++
	n := r.started
	if !r.cleanup {
		r.cleanup = true
		t.Cleanup(r.killAll)
	}
	r.mu.Unlock()
	prefix := r.Prefix
	if prefix == "" {
		prefix = "p"
	}
	p := &Proc{Name: prefix + strconv.Itoa(n)}
	path, args := r.Path, r.Args
	if path == "" {
		path = os.Args[0]
		if args == nil {
			args = []string{"-test.run=^$"}
		}
	}
	p.Cmd = exec.Command(path, args...)
	p.Cmd.Env = append(os.Environ(), r.Env...)
	if r.NameEnv != "" {
		p.Cmd.Env = append(p.Cmd.Env, r.NameEnv+"="+p.Name)
	}
	if r.Out != nil {
		p.Cmd.Stdout = r.Out.Writer()
	} else {
		p.Cmd.Stdout = &p.Stderr
	}
	p.Cmd.Stderr = &p.Stderr
	stdin, err := p.Cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdin = stdin
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.procs = append(r.procs, p)
	r.mu.Unlock()
	return p
}

// Restart SIGKILLs p, records it as killed, and starts a fresh child.
func (r *Runner) Restart(p *Proc) *Proc {
	r.T.Helper()
	r.Kill(p)
	return r.Start()
}

// Kill SIGKILLs p and records it as killed.
func (r *Runner) Kill(p *Proc) {
	p.Kill()
	r.mu.Lock()
	if r.killed == nil {
		r.killed = map[string]bool{}
	}
	r.killed[p.Name] = true
	r.mu.Unlock()
}

// Started returns how many children Start started.
func (r *Runner) Started() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.started
}

// Killed returns the names of the children Kill or Restart killed, as a
// set.
func (r *Runner) Killed() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]bool, len(r.killed))
	for k := range r.killed {
		m[k] = true
	}
	return m
}

// KilledNames returns the names of the killed children.
func (r *Runner) KilledNames() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.killed))
	for k := range r.killed {
		out = append(out, k)
	}
	return out
}

// Log logs the stderr of every child started, for a failing test.
func (r *Runner) Log() {
	r.mu.Lock()
	procs := append([]*Proc(nil), r.procs...)
	r.mu.Unlock()
	for _, p := range procs {
		if s := p.Stderr.String(); s != "" {
			r.T.Logf("%s stderr:\n%s", p.Name, s)
		}
	}
}

func (r *Runner) killAll() {
	r.mu.Lock()
	procs := append([]*Proc(nil), r.procs...)
	r.mu.Unlock()
	for _, p := range procs {
		p.Kill()
	}
}

// Until polls cond every few milliseconds until it holds, and fails the
// test naming what it waited for when timeout passes first; onTimeout,
// when not nil, runs before the failure (to log the children's output).
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool, onTimeout ...func()) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			for _, f := range onTimeout {
				f()
			}
			t.Fatalf("waited %v for %s", timeout, what)
		}
		<-time.After(5 * time.Millisecond)
	}
}

// Rand returns a random source for a test's chaos schedule, seeded from
// the clock on the given stream; it logs the seed.
func Rand(t testing.TB, stream uint64) *rand.Rand {
	t.Helper()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(uint64(seed), stream))
}

// ChildContext is the context of a child: it ends when the parent closes
// the child's stdin (or dies) or after limit, whichever comes first.
func ChildContext(limit time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	return ctx, cancel
}

// Say returns a printf for a child's stdout that writes each line whole,
// safe for concurrent use.
func Say() func(format string, args ...any) {
	var mu sync.Mutex
	return func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(os.Stdout, strings.TrimSuffix(format, "\n")+"\n", args...)
	}
}
