package workflow_test

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/idemkit/idem/workflow"
)

func TestDOTOrderSaga(t *testing.T) {
	t.Parallel()
	const want = `digraph "order v1" {
	rankdir=LR;
	node [shape=box, style=rounded];
	start [shape=point, label=""];
	s0 [label="pending"];
	s1 [label="reserved"];
	s2 [label="charged"];
	s3 [label="shipped", shape=doublecircle, color="#1e7e34", fontcolor="#1e7e34"];
	s4 [label="cancelled\non enter / notify_customer", shape=doubleoctagon, color="#bd2130", fontcolor="#bd2130"];
	s5 [label="rejected", shape=doubleoctagon, color="#bd2130", fontcolor="#bd2130"];
	start -> s0;
	s0 -> s1 [label="place / reserve_stock"];
	s0 -> s5 [label="out_of_stock"];
	s1 -> s2 [label="pay / charge_card"];
	s1 -> s4 [label="cancel"];
	s1 -> s4 [label="payment_timeout (after 15m0s)", style=dashed];
	s2 -> s3 [label="dispatch / ship_parcel"];
	s2 -> s4 [label="cancel"];
}
`
	if got := orderSaga().DOT(); got != want {
		t.Errorf("DOT() =\n%s\nwant:\n%s", got, want)
	}
}

// autoChain runs reserve, charge and ship one after the other from Start
// alone: every transition is automatic. It is the example of
// docs/workflows.md, "Automatic transitions".
func autoChain() *workflow.Definition {
	return &workflow.Definition{
		Name: "order-auto", Version: 1, Initial: "start",
		States: []workflow.State{
			{Name: "start"},
			{Name: "reserved"},
			{Name: "charged"},
			{Name: "shipped", Terminal: workflow.Success},
		},
		Transitions: []workflow.Transition{
			{From: "start", To: "reserved",
				Action: &workflow.Action{Name: "reserve_stock", Run: noop, Compensate: noop}},
			{From: "reserved", To: "charged",
				Action: &workflow.Action{Name: "charge_card", Run: noop, Compensate: noop}},
			{From: "charged", To: "shipped",
				Action: &workflow.Action{Name: "ship_parcel", Run: noop, Compensate: noop}},
		},
	}
}

// An automatic transition is labelled with its action's name alone, and
// without an action it has no label at all; event transitions beside it
// keep their "event / action" labels.
func TestRenderAutomatic(t *testing.T) {
	t.Parallel()
	d := autoChain()
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	const mermaid = `stateDiagram-v2
    state "start" as s0
    state "reserved" as s1
    state "charged" as s2
    state "shipped" as s3
    [*] --> s0
    s0 --> s1 : reserve_stock
    s1 --> s2 : charge_card
    s2 --> s3 : ship_parcel
    s3 --> [*]
    classDef success fill:#d4edda,stroke:#1e7e34
    classDef failure fill:#f8d7da,stroke:#bd2130
    class s3 success
`
	if got := d.Mermaid(); got != mermaid {
		t.Errorf("Mermaid() =\n%s\nwant:\n%s", got, mermaid)
	}

	// Shipping waits for an event (or its timeout) now, and the last step
	// does nothing.
	d.States[2].Timeout, d.States[2].TimeoutEvent = time.Hour, "late"
	d.States = slices.Insert(d.States, 3, workflow.State{Name: "packed"})
	d.States = append(d.States, workflow.State{Name: "lost", Terminal: workflow.Failure})
	d.Transitions[2] = workflow.Transition{From: "charged", Event: "dispatch", To: "packed", Action: d.Transitions[2].Action}
	d.Transitions = append(d.Transitions,
		workflow.Transition{From: "charged", Event: "late", To: "lost"},
		workflow.Transition{From: "packed", To: "shipped"})
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	const mermaid2 = `stateDiagram-v2
    state "start" as s0
    state "reserved" as s1
    state "charged" as s2
    state "packed" as s3
    state "shipped" as s4
    state "lost" as s5
    [*] --> s0
    s0 --> s1 : reserve_stock
    s1 --> s2 : charge_card
    s2 --> s3 : dispatch / ship_parcel
    s2 --> s5 : late (after 1h0m0s)
    s3 --> s4
    s4 --> [*]
    s5 --> [*]
    classDef success fill:#d4edda,stroke:#1e7e34
    classDef failure fill:#f8d7da,stroke:#bd2130
    class s4 success
    class s5 failure
`
	if got := d.Mermaid(); got != mermaid2 {
		t.Errorf("Mermaid() =\n%s\nwant:\n%s", got, mermaid2)
	}
	const dot = `digraph "order-auto v1" {
	rankdir=LR;
	node [shape=box, style=rounded];
	start [shape=point, label=""];
	s0 [label="start"];
	s1 [label="reserved"];
	s2 [label="charged"];
	s3 [label="packed"];
	s4 [label="shipped", shape=doublecircle, color="#1e7e34", fontcolor="#1e7e34"];
	s5 [label="lost", shape=doubleoctagon, color="#bd2130", fontcolor="#bd2130"];
	start -> s0;
	s0 -> s1 [label="reserve_stock"];
	s1 -> s2 [label="charge_card"];
	s2 -> s3 [label="dispatch / ship_parcel"];
	s2 -> s5 [label="late (after 1h0m0s)", style=dashed];
	s3 -> s4;
}
`
	if got := d.DOT(); got != dot {
		t.Errorf("DOT() =\n%s\nwant:\n%s", got, dot)
	}
}

// Names with quotes, newlines, backslashes, entity-like text and invalid
// UTF-8 come out escaped, and an invalid definition still renders, its
// unknown states drawn apart.
func TestRenderEscapes(t *testing.T) {
	t.Parallel()
	d := &workflow.Definition{
		Name:    "say \"hi\"\n",
		Version: 3,
		Initial: "a \"b\"",
		States: []workflow.State{
			{Name: "a \"b\"", Timeout: time.Second, TimeoutEvent: "t#1;"},
			{Name: "c\nd\\", Terminal: workflow.Success},
			{Name: "é\xff", Terminal: workflow.Failure},
		},
		Transitions: []workflow.Transition{
			{From: "a \"b\"", Event: "go: now", To: "c\nd\\", Action: &workflow.Action{Name: "x\"y"}},
			{From: "a \"b\"", Event: "t#1;", To: "é\xff"},
			{From: "ghost", Event: "e", To: "a \"b\""},
		},
	}
	const mermaid = `stateDiagram-v2
    state "a #34;b#34;" as s0
    state "c#10;d#92;" as s1
    state "#233;#65533;" as s2
    state "ghost" as s3
    [*] --> s0
    s0 --> s1 : go#58; now / x#34;y
    s0 --> s2 : t#35;1#59; (after 1s)
    s3 --> s0 : e
    s1 --> [*]
    s2 --> [*]
    classDef success fill:#d4edda,stroke:#1e7e34
    classDef failure fill:#f8d7da,stroke:#bd2130
    class s1 success
    class s2 failure
`
	if got := d.Mermaid(); got != mermaid {
		t.Errorf("Mermaid() =\n%s\nwant:\n%s", got, mermaid)
	}
	const dot = `digraph "say \"hi\"\n v3" {
	rankdir=LR;
	node [shape=box, style=rounded];
	start [shape=point, label=""];
	s0 [label="a \"b\""];
	s1 [label="c\nd\\", shape=doublecircle, color="#1e7e34", fontcolor="#1e7e34"];
	s2 [label="é` + "\uFFFD" + `", shape=doubleoctagon, color="#bd2130", fontcolor="#bd2130"];
	s3 [label="ghost", style=dashed];
	start -> s0;
	s0 -> s1 [label="go: now / x\"y"];
	s0 -> s2 [label="t#1; (after 1s)", style=dashed];
	s3 -> s0 [label="e"];
}
`
	if got := d.DOT(); got != dot {
		t.Errorf("DOT() =\n%s\nwant:\n%s", got, dot)
	}
}

var (
	mermaidState = regexp.MustCompile(`^    state "([A-Za-z0-9 _./#;-]*)" as (s[0-9]+)$`)
	mermaidEdge  = regexp.MustCompile(`^    (s[0-9]+|\[\*\]) --> (s[0-9]+|\[\*\])( : [A-Za-z0-9 _./#;()-]*)?$`)
	mermaidOther = regexp.MustCompile(`^(stateDiagram-v2|    note right of s[0-9]+ : on enter / [A-Za-z0-9 _./#;-]*|    classDef (success|failure) [a-z:#0-9,]+|    class s[0-9]+(,s[0-9]+)* (success|failure))$`)
	mermaidCode  = regexp.MustCompile(`#([0-9]+);`)
	dotQuoted    = `"(?:[^"\\\n]|\\.)*"`
	dotLine      = regexp.MustCompile(`^(digraph ` + dotQuoted + ` \{|\trankdir=LR;|\tnode \[shape=box, style=rounded\];|\tstart \[shape=point, label=""\];|\ts[0-9]+ \[label=(` + dotQuoted + `)[^"]*(?:"#[0-9a-f]+"[^"]*)*\];|\t(start|s[0-9]+) -> s[0-9]+( \[label=` + dotQuoted + `(, style=dashed)?\])?;|\})$`)
)

// mermaidDecode undoes mermaidText.
func mermaidDecode(s string) string {
	return mermaidCode.ReplaceAllStringFunc(s, func(m string) string {
		n, _ := strconv.Atoi(m[1 : len(m)-1])
		return string(rune(n))
	})
}

// dotDecode undoes dotText for names without other control characters.
func dotDecode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
			if s[i] == 'n' {
				b.WriteByte('\n')
			} else {
				b.WriteByte(s[i])
			}
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// clean is what a name becomes in a diagram: valid UTF-8, and for DOT
// control characters other than newline turned to spaces.
func clean(s string, dot bool) string {
	s = strings.ToValidUTF8(s, string(utf8.RuneError))
	if !dot {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r != '\n' && (r < 0x20 || r == 0x7f) {
			return ' '
		}
		return r
	}, s)
}

// FuzzRender draws a three-state definition whose names come from the
// fuzzer and checks that every line of both diagrams keeps its shape (no
// name can add a line, end a string or a label early) and that each state
// name decodes back from its label.
func FuzzRender(f *testing.F) {
	f.Add("pending", "done", "go", "act")
	f.Add("a \"b\"", "c\nd\\", "e#1;", "x\r\ny")
	f.Add("", "", "", "")
	f.Add("\xff\xfe", "[*]", "-->", "\"; }")
	f.Fuzz(func(t *testing.T, s1, s2, event, action string) {
		d := &workflow.Definition{
			Name: s1 + s2, Version: 1, Initial: s1,
			States: []workflow.State{
				{Name: s1, Timeout: time.Second, TimeoutEvent: event, OnEnter: &workflow.Action{Name: action}},
				{Name: s2, Terminal: workflow.Success},
				{Name: s1 + "!", Terminal: workflow.Failure},
			},
			Transitions: []workflow.Transition{
				{From: s1, Event: event, To: s2, Action: &workflow.Action{Name: action}},
				{From: s1, Event: event + "?", To: s1 + "!"},
				{From: "?" + s2, Event: action, To: s1},
			},
		}
		// The ids the renderer must give: s0, s1, ... to distinct names in
		// order of first use, states first.
		var want []string
		for _, n := range []string{s1, s2, s1 + "!", s1, s1, s2, s1, s1 + "!", "?" + s2, s1} {
			if !slices.Contains(want, n) {
				want = append(want, n)
			}
		}
		var got []string
		for i, line := range strings.Split(strings.TrimSuffix(d.Mermaid(), "\n"), "\n") {
			if m := mermaidState.FindStringSubmatch(line); m != nil {
				if m[2] != fmt.Sprint("s", len(got)) {
					t.Fatalf("Mermaid line %d %q declares %s out of order", i, line, m[2])
				}
				got = append(got, mermaidDecode(m[1]))
				continue
			}
			if !mermaidEdge.MatchString(line) && !mermaidOther.MatchString(line) {
				t.Fatalf("Mermaid line %d %q has an unexpected shape", i, line)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("Mermaid declares %d states %q, want %d", len(got), got, len(want))
		}
		for i := range want {
			if got[i] != clean(want[i], false) {
				t.Errorf("Mermaid s%d decodes to %q, want %q", i, got[i], clean(want[i], false))
			}
		}

		labels := map[string]string{}
		dotLabel := regexp.MustCompile(`^\t(s[0-9]+) \[label="((?:[^"\\]|\\.)*)"`)
		for i, line := range strings.Split(strings.TrimSuffix(d.DOT(), "\n"), "\n") {
			if !dotLine.MatchString(line) {
				t.Fatalf("DOT line %d %q has an unexpected shape", i, line)
			}
			if m := dotLabel.FindStringSubmatch(line); m != nil {
				labels[m[1]] = dotDecode(m[2])
			}
		}
		if len(labels) != len(want) {
			t.Fatalf("DOT declares %d nodes %q, want %d", len(labels), labels, len(want))
		}
		for i, name := range want {
			w := clean(name, true)
			if i == 0 {
				w += "\non enter / " + clean(action, true)
			}
			if got := labels[fmt.Sprint("s", i)]; got != w {
				t.Errorf("DOT s%d label decodes to %q, want %q", i, got, w)
			}
		}
		_ = fmt.Sprint(d.Validate())
	})
}
