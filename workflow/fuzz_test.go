package workflow_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/workflow"
)

// byteSource hands out the fuzzer's bytes, then zeros.
type byteSource []byte

func (b *byteSource) next() byte {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c
}

func (b *byteSource) pick(from ...string) string { return from[int(b.next())%len(from)] }

// rare is true for one byte in sixteen: the generator breaks a rule that
// seldom, so that whole definitions are often valid.
func (b *byteSource) rare() bool { return b.next()%16 == 0 }

type generator struct {
	b       byteSource
	actions int
}

func (g *generator) action() *workflow.Action {
	b := &g.b
	if b.next()%3 != 0 {
		return nil
	}
	g.actions++
	a := &workflow.Action{Name: string(rune('r' + g.actions%8)), Run: noop}
	if b.rare() {
		a.Name = b.pick("r", "s", "")
	}
	if b.rare() {
		a.Run = nil
	}
	if b.next()%2 == 0 {
		a.Compensate = noop
	} else {
		a.NoCompensation = true
	}
	if b.rare() {
		a.Compensate, a.NoCompensation = nil, b.next()%2 == 0
		if a.NoCompensation {
			a.Compensate = noop
		}
	}
	if b.rare() {
		a.OnExhausted = workflow.Exhausted(b.pick("unwind", "park", "other"))
	}
	if b.next()%4 == 0 {
		a.Retry = &workflow.RetryPolicy{
			MaxAttempts:    int(b.next() % 8),
			InitialBackoff: time.Duration(b.next()%4) * time.Second,
			MaxBackoff:     time.Duration(b.next()%8) * time.Second,
			Multiplier:     float64(b.next() % 4),
			Jitter:         float64(b.next()%4) / 4,
		}
		if b.rare() {
			a.Retry.Jitter = float64(int8(b.next())) / 16
			a.Retry.Multiplier = float64(int8(b.next())) / 16
			a.Retry.MaxAttempts = int(int8(b.next()))
			a.Retry.InitialBackoff = time.Duration(int8(b.next()))
		}
	}
	return a
}

// definitionFrom builds a small definition, valid or not, from bytes:
// each rule is broken now and then (a name repeated, missing or naming no
// state, a timeout leading nowhere, ...), so that every rule gets exercised
// and valid definitions still come out often.
func definitionFrom(data []byte) *workflow.Definition {
	g := &generator{b: byteSource(data)}
	b := &g.b
	names := []string{"a", "b", "c", "d", "e", "f", "", "q"}
	events := []string{"x", "y", "z"}
	d := &workflow.Definition{Name: "w", Version: 1, Initial: "a"}
	if b.rare() {
		d.Name = ""
	}
	if b.rare() {
		d.Version = int(int8(b.next()))
	}
	if b.rare() {
		d.Initial = b.pick(names...)
	}
	n := 2 + int(b.next())%5
	for i := range n {
		s := workflow.State{Name: names[i]}
		if b.rare() {
			s.Name = b.pick(names[:7]...)
		}
		switch {
		case i == n-1 && !b.rare():
			s.Terminal = workflow.Success
		case i == 0 && !b.rare():
		default:
			switch b.next() % 4 {
			case 2:
				s.Terminal = workflow.Success
			case 3:
				s.Terminal = workflow.Failure
			}
		}
		if s.Terminal == workflow.NotTerminal && b.next()%3 == 0 {
			s.Timeout = time.Duration(1+b.next()%4) * time.Second
			s.TimeoutEvent = b.pick("done", "done", "x", "y")
			if b.rare() {
				s.Timeout = time.Duration(int8(b.next())) * time.Second
				s.TimeoutEvent = b.pick(append(events, "")...)
			}
		}
		s.OnEnter = g.action()
		d.States = append(d.States, s)
	}
	state := func() string {
		if b.rare() {
			return b.pick(names...)
		}
		return names[int(b.next())%n]
	}
	// Some non-terminal states but the last go on automatically to the
	// next one: that is then their only transition, and they have no
	// timeout, unless broken.
	auto := make([]bool, n)
	for i := range n - 1 {
		auto[i] = d.States[i].Terminal == workflow.NotTerminal && b.next()%3 == 0
		if auto[i] && !b.rare() {
			d.States[i].Timeout, d.States[i].TimeoutEvent = 0, ""
		}
	}
	// A spanning tree from the first state, unless broken (a state after
	// an automatic one is reached by its automatic transition), then a
	// way to the last state from every other non-terminal one, then
	// random transitions, now and then automatic.
	for i := 1; i < n; i++ {
		if auto[i-1] {
			continue
		}
		from := 0
		for j := range i {
			if d.States[j].Terminal == workflow.NotTerminal && !auto[j] && b.next()%2 == 0 {
				from = j
			}
		}
		if !b.rare() {
			d.Transitions = append(d.Transitions, workflow.Transition{From: names[from], Event: "to_" + names[i], To: names[i], Action: g.action()})
		}
	}
	for i := range n - 1 {
		switch {
		case auto[i]:
			t := workflow.Transition{From: names[i], To: names[i+1], Action: g.action()}
			if b.rare() {
				t.To = state() // perhaps back: a cycle
			}
			d.Transitions = append(d.Transitions, t)
		case d.States[i].Terminal == workflow.NotTerminal && !b.rare():
			d.Transitions = append(d.Transitions, workflow.Transition{From: names[i], Event: "done", To: names[n-1]})
		}
	}
	for range int(b.next()) % 8 {
		t := workflow.Transition{From: state(), Event: b.pick(append(events, "")...), To: state(), Action: g.action()}
		d.Transitions = append(d.Transitions, t)
	}
	return d
}

// FuzzValidate checks that Validate never panics, that it refuses with
// *DefinitionErrors only, and that a definition it accepts has the
// properties the engine relies on, checked here independently.
func FuzzValidate(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 2, 0, 0, 0, 2, 2, 1, 1, 0, 1})
	f.Add([]byte{0, 1, 0, 3, 0, 1, 1, 1, 2, 1, 1, 1, 3, 1, 1, 3, 0, 0, 1, 1, 1, 1, 2, 1, 1, 0, 1, 2, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		d := definitionFrom(data)
		err := d.Validate()
		_, _, _ = d.Mermaid(), d.DOT(), d.Fingerprint()
		regErr := new(workflow.Registry).Register(d)
		if (err == nil) != (regErr == nil) {
			t.Fatalf("Validate() = %v but Register() = %v", err, regErr)
		}
		checkAutomaticProblems(t, d, err)
		if err != nil {
			if !errors.Is(err, workflow.ErrInvalidDefinition) {
				t.Fatalf("error does not wrap ErrInvalidDefinition: %v", err)
			}
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
				if _, ok := e.(*workflow.DefinitionError); !ok {
					t.Fatalf("joined error %T %v is not a *DefinitionError", e, e)
				}
			}
			return
		}
		checkAccepted(t, d)
	})
}

func checkAccepted(t *testing.T, d *workflow.Definition) {
	t.Helper()
	if d.Name == "" || d.Version <= 0 {
		t.Fatalf("accepted name %q version %d", d.Name, d.Version)
	}
	terminal := map[string]workflow.Terminal{}
	success := false
	for _, s := range d.States {
		if _, dup := terminal[s.Name]; dup || s.Name == "" {
			t.Fatalf("accepted state name %q (duplicate or empty)", s.Name)
		}
		terminal[s.Name] = s.Terminal
		success = success || s.Terminal == workflow.Success
	}
	if !success {
		t.Fatalf("accepted without a success terminal")
	}
	if _, ok := terminal[d.Initial]; !ok {
		t.Fatalf("accepted initial %q", d.Initial)
	}
	type key struct{ from, event string }
	out := map[key]bool{}
	actions := map[string]bool{}
	checkAction := func(a *workflow.Action) {
		if a == nil {
			return
		}
		if a.Name == "" || actions[a.Name] || a.Run == nil || (a.Compensate != nil) == a.NoCompensation || a.OnExhausted == "other" {
			t.Fatalf("accepted action %+v", a)
		}
		actions[a.Name] = true
		if r := a.Retry; r != nil && (r.MaxAttempts < 0 || r.InitialBackoff < 0 || r.MaxBackoff < 0 || r.Jitter < 0 || r.Jitter > 1 || (r.Multiplier != 0 && r.Multiplier < 1)) {
			t.Fatalf("accepted retry policy %+v", r)
		}
	}
	for _, s := range d.States {
		checkAction(s.OnEnter)
	}
	leaving := map[string]int{}
	for _, tr := range d.Transitions {
		ft, okFrom := terminal[tr.From]
		_, okTo := terminal[tr.To]
		if !okFrom || !okTo || ft != workflow.NotTerminal || out[key{tr.From, tr.Event}] {
			t.Fatalf("accepted transition %+v", tr)
		}
		out[key{tr.From, tr.Event}] = true
		leaving[tr.From]++
		checkAction(tr.Action)
	}
	for _, s := range d.States {
		if s.Timeout < 0 || (s.Timeout > 0) != (s.TimeoutEvent != "") || (s.Timeout > 0 && !out[key{s.Name, s.TimeoutEvent}]) {
			t.Fatalf("accepted timeout of %+v", s)
		}
		// An automatic transition is the state's only way out, and its
		// timeout could never fire.
		if out[key{s.Name, ""}] && (leaving[s.Name] != 1 || s.Timeout != 0) {
			t.Fatalf("accepted state %+v with an automatic transition among %d", s, leaving[s.Name])
		}
	}
	// No instance spins for ever through automatic transitions without
	// actions: following them from any state stops within len(States)
	// steps.
	for _, s := range d.States {
		at := s.Name
		for step := 0; ; step++ {
			tr, ok := d.Transition(at, "")
			if !ok || tr.Action != nil {
				break
			}
			if step == len(d.States) {
				t.Fatalf("accepted a cycle of automatic transitions without actions through %q", s.Name)
			}
			at = tr.To
		}
	}
	// Reachability by fixed point, a different method from Validate's.
	reach := map[string]bool{d.Initial: true}
	canEnd := map[string]bool{}
	for name, term := range terminal {
		canEnd[name] = term != workflow.NotTerminal
	}
	for changed := true; changed; {
		changed = false
		for _, tr := range d.Transitions {
			if reach[tr.From] && !reach[tr.To] {
				reach[tr.To], changed = true, true
			}
			if canEnd[tr.To] && !canEnd[tr.From] {
				canEnd[tr.From], changed = true, true
			}
		}
	}
	for _, s := range d.States {
		if !reach[s.Name] || !canEnd[s.Name] {
			t.Fatalf("accepted state %q: reachable %v, reaches a terminal %v", s.Name, reach[s.Name], canEnd[s.Name])
		}
	}
}

// checkAutomaticProblems compares the problems err reports about automatic
// transitions (those whose text says "automatic transition") with the ones
// a model of the rules expects, both ways: each expected one is reported,
// and nothing else is.
func checkAutomaticProblems(t *testing.T, d *workflow.Definition, err error) {
	t.Helper()
	var got []string
	if err != nil {
		for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
			if de, ok := e.(*workflow.DefinitionError); ok && strings.Contains(de.Problem, "automatic transition") {
				got = append(got, de.Path+": "+de.Problem)
			}
		}
	}
	want := automaticProblems(d)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("problems with automatic transitions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// automaticProblems is the model: what Validate must say about the
// automatic transitions of d, whatever else is wrong with it. The
// generator's events never need quoting in a path.
func automaticProblems(d *workflow.Definition) []string {
	path := func(i int) string {
		tr := d.Transitions[i]
		if tr.Event == "" {
			return fmt.Sprintf("transitions[%d] %q --> %q", i, tr.From, tr.To)
		}
		return fmt.Sprintf("transitions[%d] %q --%s--> %q", i, tr.From, tr.Event, tr.To)
	}
	var want []string
	first := map[string]int{} // state (or any From) -> its first automatic transition
	for i, tr := range d.Transitions {
		if tr.Event != "" {
			continue
		}
		if j, ok := first[tr.From]; ok {
			want = append(want, fmt.Sprintf("%s: another automatic transition leaves %q: transitions[%d]", path(i), tr.From, j))
		} else {
			first[tr.From] = i
		}
	}
	for i, tr := range d.Transitions {
		if j, ok := first[tr.From]; ok && tr.Event != "" {
			want = append(want, fmt.Sprintf("%s: %q is left at once by automatic transition transitions[%d]: no event applies there", path(i), tr.From, j))
		}
	}
	index := map[string]int{} // state -> its first index; "" names none
	for i, s := range d.States {
		if _, dup := index[s.Name]; !dup && s.Name != "" {
			index[s.Name] = i
		}
		if j, ok := first[s.Name]; ok && s.Timeout > 0 && s.Terminal == workflow.NotTerminal {
			want = append(want, fmt.Sprintf("states[%d] %q: timeout %s never fires: automatic transition transitions[%d] leaves the state at once", i, s.Name, s.Timeout, j))
		}
	}
	// A cycle: from a state, the first automatic transitions without
	// actions between states lead back to it. It is reported at its state
	// of least index, walked from there.
	next := func(name string) (string, bool) {
		j, ok := first[name]
		if !ok || d.Transitions[j].Action != nil {
			return "", false
		}
		_, known := index[d.Transitions[j].To]
		return d.Transitions[j].To, known
	}
	for name, i := range index {
		cycle := []string{fmt.Sprintf("%q", name)}
		least := true
		at, ok := next(name)
		for range len(d.States) {
			if !ok || at == name {
				break
			}
			least = least && index[at] > i
			cycle = append(cycle, fmt.Sprintf("%q", at))
			at, ok = next(at)
		}
		if ok && at == name && least {
			want = append(want, fmt.Sprintf("states[%d] %q: automatic transitions without actions cycle forever: %s --> %q", i, name, strings.Join(cycle, " --> "), name))
		}
	}
	return want
}

// The fuzz target's generator does produce valid definitions, so the
// checks of an accepted one run.
func TestFuzzGeneratorReachesValid(t *testing.T) {
	t.Parallel()
	valid, validAuto, refusedAuto, refusedCycle := 0, 0, 0, 0
	for i := range 20000 {
		data := make([]byte, 64)
		x := uint32(i)*2654435761 + 1
		for j := range data {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			data[j] = byte(x)
		}
		d := definitionFrom(data)
		err := d.Validate()
		checkAutomaticProblems(t, d, err)
		if err == nil {
			valid++
			checkAccepted(t, d)
			if slices.ContainsFunc(d.Transitions, func(tr workflow.Transition) bool { return tr.Event == "" }) {
				validAuto++
			}
		} else if strings.Contains(err.Error(), "automatic transition") {
			refusedAuto++
			if strings.Contains(err.Error(), "cycle forever") {
				refusedCycle++
			}
		}
	}
	if valid < 100 || validAuto < 50 || refusedAuto < 50 || refusedCycle < 10 {
		t.Fatalf("among 20000 generated definitions only %d valid, %d valid with automatic transitions, %d refused for them, %d for a cycle", valid, validAuto, refusedAuto, refusedCycle)
	}
	t.Logf("among 20000 generated definitions %d valid, %d valid with automatic transitions, %d refused for them, %d for a cycle", valid, validAuto, refusedAuto, refusedCycle)
}
