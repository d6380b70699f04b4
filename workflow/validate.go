package workflow

import (
	"errors"
	"fmt"
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
//   - Every transition has a non-empty Event, and From and To name states.
//   - No transition leaves a terminal state, and a terminal state has no
//     timeout.
//   - At most one transition per state and event.
//   - Every state is reachable from Initial, and from every non-terminal
//     state some terminal state is reachable.
//   - Every action (of a transition or a state's OnEnter) has a Name unique
//     in the definition, a Run, and exactly one of Compensate and
//     NoCompensation; its retry policy's values are in range, and
//     OnExhausted is "", "unwind" or "park".
//   - A timeout is positive and comes with a TimeoutEvent, for which a
//     transition leaves the state; a TimeoutEvent comes with a timeout.
func (d *Definition) Validate() error {
	v := validator{d: d}
	v.run()
	return errors.Join(v.errs...)
}

type validator struct {
	d       *Definition
	errs    []error
	index   map[string]int // state name -> index of its first occurrence
	actions map[string]string
}

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &DefinitionError{Path: path, Problem: fmt.Sprintf(format, args...)})
}

func statePath(i int, name string) string { return fmt.Sprintf("states[%d] %q", i, name) }

func transitionPath(i int, t *Transition) string {
	return fmt.Sprintf("transitions[%d] %q --%s--> %q", i, t.From, quoteEvent(t.Event), t.To)
}

// quoteEvent writes an event bare when it reads unambiguously inside an
// arrow, quoted otherwise (empty, spaces, dashes, quotes, newlines).
func quoteEvent(e string) string {
	if e == "" || strings.ContainsAny(e, " -\"\\>") || strings.ContainsFunc(e, func(r rune) bool { return r < 0x20 || r == 0x7f || r > 0x7e }) {
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
		if t.Event == "" {
			v.add(p, "event is empty")
		}
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
		if j, dup := seen[k]; dup {
			v.add(p, "another transition leaves %q on the same event: transitions[%d]", t.From, j)
		} else {
			seen[k] = i
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
