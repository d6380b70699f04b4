package sim

import (
	"fmt"
	"hash/fnv"
	"strings"
	"time"
)

// Trace is the record of one run: what each task did, when, to which key.
// Two runs of one seed have equal traces.
type Trace struct {
	steps []Step
}

// Step is one line of a trace.
type Step struct {
	At   time.Duration // virtual time since the world began
	Task string
	Op   string
	Key  string
	Note string
}

func (s Step) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%9s %-22s %-10s", s.At.Round(time.Microsecond), s.Task, s.Op)
	if s.Key != "" {
		b.WriteString(" key=" + s.Key)
	}
	if s.Note != "" {
		b.WriteString(" " + s.Note)
	}
	return b.String()
}

func newTrace() *Trace { return &Trace{steps: make([]Step, 0, 256)} }

func (t *Trace) add(at time.Duration, task, op, key, note string) {
	t.steps = append(t.steps, Step{At: at, Task: task, Op: op, Key: key, Note: note})
}

// Steps returns every step.
func (t *Trace) Steps() []Step { return t.steps }

// Hash is a digest of the whole trace: equal for two runs of one seed.
func (t *Trace) Hash() uint64 {
	h := fnv.New64a()
	for _, s := range t.steps {
		fmt.Fprintf(h, "%d\x00%s\x00%s\x00%s\x00%s\n", s.At, s.Task, s.Op, s.Key, s.Note)
	}
	return h.Sum64()
}

// About returns the last n steps that name key, and the crashes and pauses
// among them, up to the first violation on key: the short story of how it
// broke.
func (t *Trace) About(key string, n int) []Step {
	end := len(t.steps)
	for i, s := range t.steps {
		if s.Op == "VIOLATION" && s.Key == key {
			end = i + 1
			break
		}
	}
	var out []Step
	for i := end - 1; i >= 0 && len(out) < n; i-- {
		s := t.steps[i]
		if s.Key == key || (key != "" && s.Key == "" && (s.Op == "crash" || s.Op == "pause")) {
			out = append(out, s)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}
