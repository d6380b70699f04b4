package workflow

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Validate reports every way the definition breaks the rules below, as one
// error joining a *DefinitionError per problem (each wraps
// ErrInvalidDefinition and names the state, transition or action), or nil.
//
//   - Name is non-empty and Version positive; there is at least one state.
//   - State names are non-empty and unique; Terminal is "", "success" or
//     "failure"; at least one state is a success terminal.
//   - Initial names a state.
//   - Every transition's From and To name states.
//   - No transition leaves a terminal state, and a terminal state has no
//     timeout.
//   - At most one transition per state and event.
//   - A transition with an empty Event is automatic (see Transition.Event):
//     a state has at most one, and a state that has one has no other
//     transition leaving it (no event would ever apply) and no timeout (it
//     is left at once). A cycle made only of automatic transitions without
//     actions would spin forever and is refused, naming its states.
//   - Every state is reachable from Initial, and from every non-terminal
//     state some terminal state is reachable.
//   - Every action (of a transition or a state's OnEnter) has a Name unique
//     in the definition, a Run, and exactly one of Compensate and
//     NoCompensation; its retry policy's values are in range, and
//     OnExhausted is "", "unwind" or "park".
//   - A timeout is positive and comes with a TimeoutEvent, for which a
//     transition leaves the state; a TimeoutEvent comes with a timeout.
func (d *Definition) Validate() error {
	v := validator{d: d, auto: make(map[string]int)}
	v.run()
	return errors.Join(v.errs...)
}

type validator struct {
	d       *Definition
	errs    []error
	index   map[string]int // state name -> index of its first occurrence
	actions map[string]string
	auto    map[string]int // state name -> index of its first automatic transition
}

// automatic returns the index of the first automatic transition leaving
// the state named name, or -1.
func (v *validator) automatic(name string) int {
	if j, ok := v.auto[name]; ok {
		return j
	}
	return -1
}

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &DefinitionError{Path: path, Problem: fmt.Sprintf(format, args...)})
}

func statePath(i int, name string) string { return fmt.Sprintf("states[%d] %q", i, name) }

// transitionPath names a transition: `transitions[3] "a" --go--> "b"`, or
// for an automatic one `transitions[3] "a" --> "b"` (an event always stands
// between the dashes, quoted if it holds one, so the two cannot be
// confused).
func transitionPath(i int, t *Transition) string {
	if t.Event == "" {
		return fmt.Sprintf("transitions[%d] %q --> %q", i, t.From, t.To)
	}
	return fmt.Sprintf("transitions[%d] %q --%s--> %q", i, t.From, quoteEvent(t.Event), t.To)
}

// quoteEvent writes an event bare when it reads unambiguously inside an
// arrow, quoted otherwise (spaces, dashes, quotes, newlines).
func quoteEvent(e string) string {
	if strings.ContainsAny(e, " -\"\\>") || strings.ContainsFunc(e, func(r rune) bool { return r < 0x20 || r == 0x7f || r > 0x7e }) {
		return fmt.Sprintf("%q", e)
	}
	return e
}

func (v *validator) run() {
	d := v.d
	if d.Name == "" {
		v.add("name", "is empty")
	}
	if d.Version <= 0 {
		v.add("version", "must be positive, got %d", d.Version)
	}
	if len(d.States) == 0 {
		v.add("states", "there are none")
	}
	v.index = make(map[string]int, len(d.States))
	success := false
	for i := range d.States {
		s := &d.States[i]
		p := statePath(i, s.Name)
		if s.Name == "" {
			v.add(p, "name is empty")
		} else if j, dup := v.index[s.Name]; dup {
			v.add(p, "duplicate of states[%d]", j)
		} else {
			v.index[s.Name] = i
		}
		switch s.Terminal {
		case NotTerminal, Failure:
		case Success:
			success = true
		default:
			v.add(p, "terminal %q is not \"\", \"success\" or \"failure\"", s.Terminal)
		}
	}
	if len(d.States) > 0 && !success {
		v.add("states", "no state is a success terminal")
	}
	initialOK := false
	if d.Initial == "" {
		v.add("initial", "is empty")
	} else if _, ok := v.index[d.Initial]; !ok {
		v.add(fmt.Sprintf("initial %q", d.Initial), "is not a state")
	} else {
		initialOK = true
	}

	// Transitions.
	seen := make(map[[2]string]int)
	for i := range d.Transitions {
		t := &d.Transitions[i]
		p := transitionPath(i, t)
		fi, fromOK := v.index[t.From]
		if !fromOK {
			v.add(p, "from %q is not a state", t.From)
		}
		if _, ok := v.index[t.To]; !ok {
			v.add(p, "to %q is not a state", t.To)
		}
		if fromOK && d.States[fi].Terminal != NotTerminal {
			v.add(p, "leaves terminal state %q", t.From)
		}
		k := [2]string{t.From, t.Event}
		switch j, dup := seen[k]; {
		case dup && t.Event == "":
			v.add(p, "another automatic transition leaves %q: transitions[%d]", t.From, j)
		case dup:
			v.add(p, "another transition leaves %q on the same event: transitions[%d]", t.From, j)
		default:
			seen[k] = i
			if t.Event == "" {
				v.auto[t.From] = i
			}
		}
	}
	// A state with an automatic transition is left by it alone.
	for i := range d.Transitions {
		t := &d.Transitions[i]
		if j := v.automatic(t.From); j >= 0 && t.Event != "" {
			v.add(transitionPath(i, t), "%q is left at once by automatic transition transitions[%d]: no event applies there", t.From, j)
		}
	}

	// Timeouts.
	for i := range d.States {
		s := &d.States[i]
		p := statePath(i, s.Name)
		switch {
		case s.Timeout < 0:
			v.add(p, "timeout %s is negative", s.Timeout)
		case s.Timeout > 0 && s.Terminal != NotTerminal:
			v.add(p, "terminal state has a timeout")
		case s.Timeout > 0 && v.automatic(s.Name) >= 0:
			v.add(p, "timeout %s never fires: automatic transition transitions[%d] leaves the state at once", s.Timeout, v.automatic(s.Name))
		case s.Timeout > 0 && s.TimeoutEvent == "":
			v.add(p, "timeout %s has no timeout_event", s.Timeout)
		case s.Timeout > 0:
			if _, ok := seen[[2]string{s.Name, s.TimeoutEvent}]; !ok {
				v.add(p, "timeout_event %q leads nowhere: no transition leaves the state on it", s.TimeoutEvent)
			}
		case s.TimeoutEvent != "":
			v.add(p, "timeout_event %q without a positive timeout", s.TimeoutEvent)
		}
	}

	// Actions, in the order they appear: state entries, then transitions.
	v.actions = make(map[string]string)
	for i := range d.States {
		if a := d.States[i].OnEnter; a != nil {
			v.action(statePath(i, d.States[i].Name)+" on_enter", a)
		}
	}
	for i := range d.Transitions {
		if a := d.Transitions[i].Action; a != nil {
			v.action(transitionPath(i, &d.Transitions[i]), a)
		}
	}

	v.automaticCycles()

	// Reachability, over the transitions whose ends are states.
	if initialOK {
		fwd := v.closure(d.Initial, false)
		for i := range d.States {
			s := &d.States[i]
			if v.index[s.Name] == i && !fwd[s.Name] {
				v.add(statePath(i, s.Name), "unreachable from initial state %q", d.Initial)
			}
		}
	}
	back := v.closure("", true)
	for i := range d.States {
		s := &d.States[i]
		if s.Terminal == NotTerminal && v.index[s.Name] == i && s.Name != "" && !back[s.Name] {
			v.add(statePath(i, s.Name), "no terminal state is reachable from it")
		}
	}
}

func (v *validator) action(owner string, a *Action) {
	p := owner + " action"
	if a.Name == "" {
		p += ` ""`
		v.add(p, "name is empty")
	} else {
		p += fmt.Sprintf(" %q", a.Name)
		if prev, dup := v.actions[a.Name]; dup {
			v.add(p, "name already used by %s", prev)
		} else {
			v.actions[a.Name] = owner
		}
	}
	if a.Run == nil {
		v.add(p, "run is nil")
	}
	switch {
	case a.Compensate == nil && !a.NoCompensation:
		v.add(p, "declares neither compensate nor no_compensation")
	case a.Compensate != nil && a.NoCompensation:
		v.add(p, "declares both compensate and no_compensation")
	}
	switch a.OnExhausted {
	case "", Unwind, Park:
	default:
		v.add(p, "on_exhausted %q is not \"unwind\" or \"park\"", a.OnExhausted)
	}
	for _, prob := range a.Retry.validate() {
		v.add(p+" retry", "%s", prob)
	}
}

// automaticCycles reports each cycle made only of automatic transitions
// without actions, once, at the state of the cycle that comes first in the
// definition, naming the states in the order the instance would spin
// through them. Such a state has no other way out (any other transition is
// an error of its own), so an instance entering the cycle would move
// forever without doing anything.
func (v *validator) automaticCycles() {
	d := v.d
	next := make(map[string]string)
	for from, j := range v.auto {
		t := &d.Transitions[j]
		if _, ok := v.index[from]; !ok || t.Action != nil {
			continue
		}
		if _, ok := v.index[t.To]; ok {
			next[from] = t.To
		}
	}
	const (
		unseen = iota
		onPath
		done
	)
	color := make(map[string]int)
	for i := range d.States {
		start := d.States[i].Name
		if v.index[start] != i || color[start] != unseen {
			continue
		}
		var path []string
		n, ok := start, true
		for ok && color[n] == unseen {
			color[n] = onPath
			path = append(path, n)
			n, ok = next[n]
		}
		if ok && color[n] == onPath {
			// path ends with the cycle through n; start it at its first
			// state in definition order.
			cycle := path[slices.Index(path, n):]
			first := 0
			for k, m := range cycle {
				if v.index[m] < v.index[cycle[first]] {
					first = k
				}
			}
			var names []string
			for k := range len(cycle) + 1 {
				names = append(names, strconv.Quote(cycle[(first+k)%len(cycle)]))
			}
			f := cycle[first]
			v.add(statePath(v.index[f], f), "automatic transitions without actions cycle forever: %s", strings.Join(names, " --> "))
		}
		for _, m := range path {
			color[m] = done
		}
	}
}

// closure returns the states reachable from start over transitions
// (backward: the states from which a terminal state is reachable, start
// ignored).
func (v *validator) closure(start string, backward bool) map[string]bool {
	d := v.d
	adj := make(map[string][]string)
	for _, t := range d.Transitions {
		if _, ok := v.index[t.From]; !ok {
			continue
		}
		if _, ok := v.index[t.To]; !ok {
			continue
		}
		if backward {
			adj[t.To] = append(adj[t.To], t.From)
		} else {
			adj[t.From] = append(adj[t.From], t.To)
		}
	}
	reached := make(map[string]bool)
	var queue []string
	if backward {
		for _, s := range d.States {
			if s.Terminal != NotTerminal && !reached[s.Name] {
				reached[s.Name] = true
				queue = append(queue, s.Name)
			}
		}
	} else {
		reached[start] = true
		queue = append(queue, start)
	}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		for _, m := range adj[n] {
			if !reached[m] {
				reached[m] = true
				queue = append(queue, m)
			}
		}
	}
	return reached
}
