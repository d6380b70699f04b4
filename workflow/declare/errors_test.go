package declare_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/declare"
)

// head is a valid document's start; the cases append to it.
const head = `name: w
version: 1
initial: a
states:
  - name: a
  - {name: b, terminal: success}
transitions:
  - from: a
    event: go
    to: b
    action:
      name: act
      request: {url: "http://x/{{input.id}}"}
      no_compensation: true
`

func errorList(err error) []*declare.Error {
	var out []*declare.Error
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var de *declare.Error
		if errors.As(err, &de) {
			out = append(out, de)
		}
	}
	walk(err)
	return out
}

func TestSyntaxErrors(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"empty", "", []string{"w.yaml:1:1: the document is empty"}},
		{"comment only", "# nothing\n", []string{"w.yaml:1:1: the document is empty"}},
		{"two documents", "a: b\n---\nc: d\n", []string{"w.yaml:3:1: a file holds one document, this is a second"}},
		{"unclosed list", "name: [1, 2\n", []string{"w.yaml:1:7: sequence end token ']' not found"}},
		{"duplicate key", "name: w\nname: v\n", []string{`w.yaml:2:1: mapping key "name" already defined at [1:1]`}},
		{"not a mapping", "- 1\n- 2\n", []string{"w.yaml:1:1: must be a mapping, not a list"}},
		{"unknown field", "name: w\nversion: 1\ninitial: a\nstates: []\nbogus: 1\n",
			[]string{`w.yaml:5:1: bogus: unknown field "bogus" (the document accepts name, version, initial, vars, defaults, states, transitions)`}},
		{"wrong types", "name: 5\nversion: \"1\"\ninitial: a\nstates: {}\n", []string{
			"w.yaml:1:7: name: must be a string, not an integer",
			"w.yaml:2:10: version: must be an integer, not a string",
			"w.yaml:4:9: states: must be a list, not a mapping"}},
		{"plain number where a string belongs", "name: 1e3\nversion: 1\ninitial: a\nstates: []\n", []string{"w.yaml:1:7: name: must be a string, not a number"}},
		{"version zero", "name: w\nversion: 0\ninitial: a\nstates: []\n", []string{"w.yaml:2:10: version: must be positive, not 0"}},
		{"version float", "name: w\nversion: 1.5\ninitial: a\nstates: []\n", []string{"w.yaml:2:10: version: must be an integer, not a number"}},
		{"missing fields", "name: w\n", []string{
			`w.yaml:1:1: version: missing required field "version"`,
			`w.yaml:1:1: initial: missing required field "initial"`,
			`w.yaml:1:1: states: missing required field "states"`}},
		{"durations", "name: w\nversion: 1\ninitial: a\nstates:\n  - name: a\n    timeout: 15\n  - name: b\n    timeout: 15 minutes\n", []string{
			`w.yaml:6:14: states[0].timeout: must be a duration string such as "15m", not an integer`,
			`w.yaml:8:14: states[1].timeout: "15 minutes" is not a duration such as "15m" or "1h30m"`}},
		{"anchors and aliases", "name: &x w\nversion: 1\ninitial: *x\nstates: []\n", []string{
			"w.yaml:1:7: name: anchors are not supported",
			"w.yaml:3:10: initial: aliases are not supported"}},
		{"tags", "name: !!str w\nversion: 1\ninitial: a\nstates: []\n", []string{"w.yaml:1:7: name: tags are not supported"}},
		{"JSON trailing comma", "{\"name\": \"w\", \"version\": 1,\n \"initial\": \"a\", \"states\": [],}\n",
			[]string{"w.yaml:2:31: invalid JSON: invalid character '}' looking for beginning of object key string"}},
		{"JSON unknown field", "{\"name\": \"w\", \"version\": 1,\n \"initial\": \"a\", \"states\": [], \"extra\": 1}\n",
			[]string{`w.yaml:2:32: extra: unknown field "extra" (the document accepts name, version, initial, vars, defaults, states, transitions)`}},
		{"in_tx", head + "      in_tx: true\n",
			[]string{"w.yaml:15:7: transitions[0].action.in_tx: not allowed: an HTTP action never runs in the journal's transaction"}},
		{"action field type", head + "      on_exhausted: 3\n",
			[]string{"w.yaml:15:21: transitions[0].action.on_exhausted: must be a string, not an integer"}},
		{"retry types", head + "      retry: {max_attempts: x, initial_backoff: 1}\n", []string{
			"w.yaml:15:29: transitions[0].action.retry.max_attempts: must be an integer, not a string",
			`w.yaml:15:49: transitions[0].action.retry.initial_backoff: must be a duration string such as "15m", not an integer`}},
		{"next rules", head + "      next:\n        - {event: x}\n        - {when: {path: a, equals: 1}, event: y}\n        - {when: {path: a}, event: y}\n        - {when: {path: a, equals: 1, in: [1]}, event: y}\n        - {when: {path: 'a..b', in: []}, event: ''}\n", []string{
			"w.yaml:17:11: transitions[0].action.next[1]: never applies: next[0] has no when and matches every result",
			"w.yaml:18:18: transitions[0].action.next[2].when: needs exactly one of equals and in",
			"w.yaml:19:18: transitions[0].action.next[3].when: needs exactly one of equals and in",
			`w.yaml:20:25: transitions[0].action.next[4].when.path: path "a..b" has an empty segment`,
			"w.yaml:20:37: transitions[0].action.next[4].when.in: is empty: the rule would never apply",
			"w.yaml:20:49: transitions[0].action.next[4].event: is empty"}},
		{"templates and requests", head[:strings.Index(head, "      request")] +
			"      request: {url: \"http://x/{{input.id\", headers: {X: \"}}\", Idempotency-Key: k, \"bad name\": v}}\n" +
			"      compensate: {method: get, url: \"{{nope.x}}\", body: {c: \"{{step.when}}\", d: .inf, e: \"{{ {{input}} }}\", f: \"{{}}\"}}\n", []string{
			"w.yaml:13:22: transitions[0].action.request.url: unbalanced braces: {{ without }}",
			`w.yaml:13:58: transitions[0].action.request.headers.X: unbalanced braces: "}}" closes no {{`,
			"w.yaml:13:64: transitions[0].action.request.headers.Idempotency-Key: Idempotency-Key is set by the executor (the step key or the fencing token)",
			`w.yaml:13:84: transitions[0].action.request.headers.bad name: "bad name" is not a valid header name`,
			`w.yaml:14:28: transitions[0].action.compensate.method: "get" is not an HTTP method in capitals, such as POST`,
			`w.yaml:14:38: transitions[0].action.compensate.url: {{nope.x}}: unknown root "nope" (known: input, event, steps.NAME, instance.id, step.key, step.token, step.attempt, vars.NAME)`,
			"w.yaml:14:62: transitions[0].action.compensate.body.c: {{step.when}}: step has step.key, step.token and step.attempt",
			"w.yaml:14:82: transitions[0].action.compensate.body.d: .inf has no JSON form",
			"w.yaml:14:91: transitions[0].action.compensate.body.e: unbalanced braces: {{ inside {{ }}",
			"w.yaml:14:113: transitions[0].action.compensate.body.f: {{}}: empty path"}},
		{"references", head[:strings.Index(head, "      request")] +
			"      request: {url: \"{{vars.base}}/x\", body: {a: \"{{steps.zzz.id}}\", b: \"{{vars.missing}}\"}}\n" +
			"      compensate: {url: \"http://x/{{steps.act.id}}\"}\n", []string{
			`w.yaml:13:74: transitions[0].action.request.body.b: {{vars.missing}}: no variable "missing" in the document's vars or Options.Vars`,
			`w.yaml:13:51: transitions[0].action.request.body.a: {{steps.zzz.id}}: no action is named "zzz"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			def, err := declare.Parse([]byte(tc.doc), "w.yaml", &declare.Options{Vars: map[string]string{"base": "http://b"}})
			if def != nil || err == nil {
				t.Fatalf("accepted:\n%s", tc.doc)
			}
			if !errors.Is(err, declare.ErrSyntax) || errors.Is(err, workflow.ErrInvalidDefinition) {
				t.Errorf("err is not only a syntax error: %v", err)
			}
			list := errorList(err)
			var got []string
			for _, e := range list {
				got = append(got, e.Error())
				if !errors.Is(e, declare.ErrSyntax) {
					t.Errorf("%v does not wrap ErrSyntax", e)
				}
			}
			if strings.Join(got, "\n") != strings.Join(sorted(tc.want), "\n") || err.Error() != strings.Join(got, "\n") {
				t.Errorf("errors\n%s\nwant\n%s", err, strings.Join(sorted(tc.want), "\n"))
			}
		})
	}
}

// sorted orders want as Parse does, by line and column.
func sorted(want []string) []string {
	out := append([]string(nil), want...)
	key := func(s string) (int, int) {
		var l, c int
		parts := strings.SplitN(s, ":", 4)
		for _, r := range parts[1] {
			l = l*10 + int(r-'0')
		}
		for _, r := range parts[2] {
			c = c*10 + int(r-'0')
		}
		return l, c
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			li, ci := key(out[i])
			lj, cj := key(out[j])
			if lj < li || lj == li && cj < ci {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestDefinitionErrorsMapToLines(t *testing.T) {
	doc := `name: w
version: 1
initial: a
states:
  - name: a
  - name: lost
  - {name: b, terminal: success}
  - name: c
    on_enter:
      name: hello
      request: {url: "http://x"}
      no_compensation: true
      retry: {jitter: 2}
      next: [{event: nowhere}]
transitions:
  - from: a
    event: go
    to: b
    action: {name: act, request: {url: "http://x"}}
  - from: b
    event: back
    to: a
  - {from: a, event: c, to: c}
  - {from: c, to: b}
`
	_, err := declare.Parse([]byte(doc), "w.yaml", nil)
	want := []string{
		`w.yaml:6:5: states[1] "lost": unreachable from initial state "a"`,
		`w.yaml:6:5: states[1] "lost": no terminal state is reachable from it`,
		`w.yaml:13:14: states[3] "c" on_enter action "hello" retry: jitter must be between 0 and 1`,
		`w.yaml:14:14: states[3].on_enter.next[0].event: event "nowhere" leads nowhere: no transition leaves "c" on it`,
		`w.yaml:19:13: transitions[0] "a" --go--> "b" action "act": declares neither compensate nor no_compensation`,
		`w.yaml:20:5: transitions[1] "b" --back--> "a": leaves terminal state "b"`,
	}
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Fatalf("errors\n%v\nwant\n%s", err, strings.Join(want, "\n"))
	}
	if !errors.Is(err, workflow.ErrInvalidDefinition) || errors.Is(err, declare.ErrSyntax) {
		t.Errorf("not only a definition error: %v", err)
	}
	list := errorList(err)
	var de *workflow.DefinitionError
	if len(list) != len(want) || !errors.As(list[0], &de) || de.Path != `states[1] "lost"` || list[0].Path != de.Path || list[0].Problem != de.Problem {
		t.Errorf("first error %+v, definition error %+v", list[0], de)
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	good, err := os.ReadFile("testdata/route.json")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"a-route.json": string(good),
		"b-bad.yaml":   "name: w\nversion: 1\ninitial: a\nstates:\n  - name: a\n  - name: b\n    terminal: succes\n",
		"c-dup.yml":    strings.Replace(string(good), `"initial"`, "\n\n\"initial\"", 1),
		"d-notes.txt":  "not a workflow",
		"e-one.yaml":   "name: one\nversion: 3\ninitial: done\nstates: [{name: done, terminal: success}]\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	defs, err := declare.LoadDir(dir, &declare.Options{Vars: map[string]string{"risk": "http://r"}})
	var names []string
	for _, d := range defs {
		names = append(names, d.Name)
	}
	if strings.Join(names, ",") != "route,one" {
		t.Errorf("loaded %v, want route, one", names)
	}
	bad, dup := filepath.Join(dir, "b-bad.yaml"), filepath.Join(dir, "c-dup.yml")
	want := []string{
		bad + `:4:1: states: no state is a success terminal`,
		bad + `:5:5: states[0] "a": no terminal state is reachable from it`,
		bad + `:6:5: states[1] "b": terminal "succes" is not "", "success" or "failure"`,
		bad + `:6:5: states[1] "b": unreachable from initial state "a"`,
		dup + `:3:3: version: "route" version 2 is also defined by ` + filepath.Join(dir, "a-route.json") + ":3:3",
	}
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Fatalf("errors\n%v\nwant\n%s", err, strings.Join(want, "\n"))
	}
	if !errors.Is(err, workflow.ErrInvalidDefinition) || len(errorList(err)) != 5 {
		t.Errorf("%d errors, want 5 definition errors", len(errorList(err)))
	}
	if _, err := declare.LoadDir(filepath.Join(dir, "missing"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing dir: %v", err)
	}
}
