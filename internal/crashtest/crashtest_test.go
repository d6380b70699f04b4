package crashtest

import (
	"fmt"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"
)

const childEnv = "IDEM_CRASHTEST_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		// A child of TestRunner: say who it is, wait for the parent.
		ctx, cancel := ChildContext(time.Minute)
		defer cancel()
		say := Say()
		say("ready %s", os.Getenv("IDEM_CRASHTEST_TEST_NAME"))
		<-ctx.Done()
		fmt.Fprintln(os.Stderr, "child: stdin closed")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestRunner: children start with their name, print whole lines to the
// shared Lines, die by SIGKILL on Restart (recorded as killed) and exit 0
// when Stop closes their stdin.
func TestRunner(t *testing.T) {
	out := Lines{Notify: make(chan string, 8)}
	r := &Runner{T: t, Prefix: "c", NameEnv: "IDEM_CRASHTEST_TEST_NAME", Out: &out, Env: []string{childEnv + "=1"}}
	p := r.Start()
	Until(t, 10*time.Second, "c1 to be ready", func() bool { return slices.Contains(out.All(), "ready c1") }, r.Log)
	if l := <-out.Notify; l != "ready c1" {
		t.Errorf("notified %q, want ready c1", l)
	}
	first := p
	p = r.Restart(p)
	if ws, ok := first.Cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("c1 ended %v, want killed by SIGKILL", first.Cmd.ProcessState)
	}
	if p.Name != "c2" || r.Started() != 2 || !r.Killed()["c1"] || r.Killed()["c2"] {
		t.Errorf("after a restart: %s, %d started, killed %v; want c2, 2, c1 only", p.Name, r.Started(), r.Killed())
	}
	Until(t, 10*time.Second, "c2 to be ready", func() bool { return slices.Contains(out.All(), "ready c2") }, r.Log)
	if err := p.Stop(); err != nil {
		t.Errorf("c2 stopped with %v (stderr %q), want exit 0", err, p.Stderr.String())
	}
	if got := p.Stderr.String(); got != "child: stdin closed\n" {
		t.Errorf("c2 stderr %q", got)
	}
	out.Printf("parent %d\nline", 1)
	if all := out.All(); !slices.Equal(all, []string{"ready c1", "ready c2", "parent 1", "line"}) {
		t.Errorf("lines %q", all)
	}
}
