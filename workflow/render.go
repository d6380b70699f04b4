package workflow

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// nodes assigns diagram ids: s0, s1, ... to the states in order (a
// duplicate name shares its first occurrence's id), then to names that
// transitions or Initial use but no state has, so that an invalid
// definition still renders. Names never become ids, which keeps any
// character in a name harmless.
type nodes struct {
	ids   map[string]string
	extra []string // names that are not states, in order of first use
}

func (d *Definition) nodes() *nodes {
	n := &nodes{ids: make(map[string]string)}
	count := 0
	assign := func(name string, extra bool) {
		if _, ok := n.ids[name]; ok {
			return
		}
		n.ids[name] = "s" + strconv.Itoa(count)
		count++
		if extra {
			n.extra = append(n.extra, name)
		}
	}
	for _, s := range d.States {
		assign(s.Name, false)
	}
	assign(d.Initial, true)
	for _, t := range d.Transitions {
		assign(t.From, true)
		assign(t.To, true)
	}
	return n
}

// first reports whether states[i] is the first state with its name.
func (d *Definition) first(i int) bool {
	for j := range i {
		if d.States[j].Name == d.States[i].Name {
			return false
		}
	}
	return true
}

// label is a transition's text: its event, the action it runs, and for a
// state's timeout event how long the state waits. An automatic transition
// (no event) is labelled with its action's name alone, and not at all
// without an action.
// Names go through esc; the words around them are the renderer's own.
func (d *Definition) label(t *Transition, esc func(string) string) (text string, timeout bool) {
	if t.Event == "" {
		if t.Action != nil {
			text = esc(t.Action.Name)
		}
		return text, false
	}
	text = esc(t.Event)
	if t.Action != nil {
		text += " / " + esc(t.Action.Name)
	}
	if s, ok := d.State(t.From); ok && s.Timeout > 0 && s.TimeoutEvent == t.Event {
		return text + " (after " + s.Timeout.String() + ")", true
	}
	return text, false
}

// Mermaid returns the definition as a Mermaid state diagram
// (stateDiagram-v2): the initial state marked by [*] -->, each transition
// labelled "event / action", an automatic transition (no event) with its
// action's name alone or no label, a timeout's transition with "(after d)",
// terminal states leading to [*] and styled by class (success, failure),
// entry actions as notes. States are declared as `state "name" as sN`, and
// every character of a name outside [A-Za-z0-9 _./-] is written as a
// Mermaid entity code (#34; for a quote), so no name can break the
// diagram. The output is deterministic: definition order throughout.
func (d *Definition) Mermaid() string {
	n := d.nodes()
	var b strings.Builder
	b.WriteString("stateDiagram-v2\n")
	for i, s := range d.States {
		if d.first(i) {
			fmt.Fprintf(&b, "    state \"%s\" as %s\n", mermaidText(s.Name), n.ids[s.Name])
		}
	}
	for _, name := range n.extra {
		fmt.Fprintf(&b, "    state \"%s\" as %s\n", mermaidText(name), n.ids[name])
	}
	fmt.Fprintf(&b, "    [*] --> %s\n", n.ids[d.Initial])
	for i := range d.Transitions {
		t := &d.Transitions[i]
		text, _ := d.label(t, mermaidText)
		if text == "" && t.Event == "" {
			fmt.Fprintf(&b, "    %s --> %s\n", n.ids[t.From], n.ids[t.To])
			continue
		}
		fmt.Fprintf(&b, "    %s --> %s : %s\n", n.ids[t.From], n.ids[t.To], text)
	}
	var success, failure []string
	for i, s := range d.States {
		if !d.first(i) {
			continue
		}
		id := n.ids[s.Name]
		if s.OnEnter != nil {
			fmt.Fprintf(&b, "    note right of %s : on enter / %s\n", id, mermaidText(s.OnEnter.Name))
		}
		switch s.Terminal {
		case NotTerminal:
			continue
		case Success:
			success = append(success, id)
		default:
			failure = append(failure, id)
		}
		fmt.Fprintf(&b, "    %s --> [*]\n", id)
	}
	b.WriteString("    classDef success fill:#d4edda,stroke:#1e7e34\n")
	b.WriteString("    classDef failure fill:#f8d7da,stroke:#bd2130\n")
	if len(success) > 0 {
		fmt.Fprintf(&b, "    class %s success\n", strings.Join(success, ","))
	}
	if len(failure) > 0 {
		fmt.Fprintf(&b, "    class %s failure\n", strings.Join(failure, ","))
	}
	return b.String()
}

// mermaidText writes s with every rune outside a small safe set as a
// decimal entity code, and invalid UTF-8 as U+FFFD.
func mermaidText(s string) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, string(utf8.RuneError)) {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9',
			r == ' ', r == '_', r == '.', r == '/', r == '-':
			b.WriteRune(r)
		default:
			fmt.Fprintf(&b, "#%d;", r)
		}
	}
	return b.String()
}

// DOT returns the definition as a Graphviz digraph: a point marks the
// initial state, transitions are labelled "event / action" (an automatic
// transition with its action's name alone, or not at all), a timeout's
// transition is dashed and says "(after d)", success terminals are green
// double circles and failure terminals red double octagons, and an entry
// action is a second line of its state's label. Nodes are s0, s1, ...
// with the names in quoted labels (quotes and backslashes escaped,
// newlines as \n), so no name can break the graph. The output is
// deterministic: definition order throughout.
func (d *Definition) DOT() string {
	n := d.nodes()
	var b strings.Builder
	fmt.Fprintf(&b, "digraph \"%s\" {\n", dotText(fmt.Sprintf("%s v%d", d.Name, d.Version)))
	b.WriteString("\trankdir=LR;\n")
	b.WriteString("\tnode [shape=box, style=rounded];\n")
	b.WriteString("\tstart [shape=point, label=\"\"];\n")
	for i, s := range d.States {
		if !d.first(i) {
			continue
		}
		label := dotText(s.Name)
		if s.OnEnter != nil {
			label += `\non enter / ` + dotText(s.OnEnter.Name)
		}
		attrs := ""
		switch s.Terminal {
		case NotTerminal:
		case Success:
			attrs = `, shape=doublecircle, color="#1e7e34", fontcolor="#1e7e34"`
		default:
			attrs = `, shape=doubleoctagon, color="#bd2130", fontcolor="#bd2130"`
		}
		fmt.Fprintf(&b, "\t%s [label=\"%s\"%s];\n", n.ids[s.Name], label, attrs)
	}
	for _, name := range n.extra {
		fmt.Fprintf(&b, "\t%s [label=\"%s\", style=dashed];\n", n.ids[name], dotText(name))
	}
	fmt.Fprintf(&b, "\tstart -> %s;\n", n.ids[d.Initial])
	for i := range d.Transitions {
		t := &d.Transitions[i]
		text, timeout := d.label(t, dotText)
		if text == "" && t.Event == "" {
			fmt.Fprintf(&b, "\t%s -> %s;\n", n.ids[t.From], n.ids[t.To])
			continue
		}
		style := ""
		if timeout {
			style = ", style=dashed"
		}
		fmt.Fprintf(&b, "\t%s -> %s [label=\"%s\"%s];\n", n.ids[t.From], n.ids[t.To], text, style)
	}
	b.WriteString("}\n")
	return b.String()
}

// dotText escapes s for a quoted DOT string used as a label: backslash and
// quote escaped, a newline as the label line break \n, other control
// characters as spaces, invalid UTF-8 as U+FFFD.
func dotText(s string) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, string(utf8.RuneError)) {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == '"':
			b.WriteString(`\"`)
		case r == '\n':
			b.WriteString(`\n`)
		case r < 0x20 || r == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
