// Package leakcheck fails a test binary that leaves goroutines of this
// project running after its tests: a leaked heartbeat or sweeper is a bug
// that only shows in production.
package leakcheck

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Main runs the tests, then waits up to five seconds for goroutines started
// by idem code to end, and fails the binary naming the ones that do not.
// Use it as: func TestMain(m *testing.M) { leakcheck.Main(m) }.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main for a TestMain that has cleanup of its own to do before it
// exits: it returns the exit code instead of exiting.
func Run(m *testing.M) int {
	code := m.Run()
	if code == 0 {
		if leaked := wait(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "leakcheck: goroutines still running after the tests:\n%s\n", leaked)
			code = 1
		}
	}
	return code
}

func wait(d time.Duration) string {
	deadline := time.Now().Add(d)
	for {
		leaked := ours()
		if leaked == "" || time.Now().After(deadline) {
			return leaked
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ours returns the stacks of goroutines created by github.com/idemkit code,
// other than this one.
func ours() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var leaked []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "leakcheck.") || strings.Contains(g, "testing.(*M).") {
			continue
		}
		if strings.Contains(g, "created by github.com/idemkit/") {
			leaked = append(leaked, g)
		}
	}
	return strings.Join(leaked, "\n\n")
}
