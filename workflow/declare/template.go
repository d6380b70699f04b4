package declare

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/idemkit/idem/workflow"
)

// tmpl is a compiled template: literal text and {{PATH}} references.
type tmpl struct {
	parts []part
	at    pos
	path  string // where in the document, for errors
}

type part struct {
	lit string
	ref *ref // nil: lit
}

// ref is one {{PATH}}: root is input, event, steps, instance, step or
// vars; name is the action (steps) or variable (vars); sub the rest.
type ref struct {
	text string // as written between the braces, trimmed
	root string
	name string
	sub  []string
}

// exact reports whether the template is a single reference and nothing
// else: in a body it is replaced by the JSON value itself.
func (t *tmpl) exact() bool { return len(t.parts) == 1 && t.parts[0].ref != nil }

// refs lists the template's references.
func (t *tmpl) refs() []*ref {
	var rs []*ref
	for _, p := range t.parts {
		if p.ref != nil {
			rs = append(rs, p.ref)
		}
	}
	return rs
}

// template compiles s, reporting unbalanced braces and bad paths. It
// returns a template even on error (the decoder's errors stop Parse).
func (d *decoder) template(s string, at pos, path string) *tmpl {
	t := &tmpl{at: at, path: path}
	rest := s
	for rest != "" {
		open := strings.Index(rest, "{{")
		close := strings.Index(rest, "}}")
		if open < 0 {
			if close >= 0 {
				d.fail(at, path, "unbalanced braces: %q closes no {{", "}}")
				return t
			}
			t.parts = append(t.parts, part{lit: rest})
			break
		}
		if close >= 0 && close < open {
			d.fail(at, path, "unbalanced braces: %q closes no {{", "}}")
			return t
		}
		if open > 0 {
			t.parts = append(t.parts, part{lit: rest[:open]})
		}
		rest = rest[open+2:]
		end := strings.Index(rest, "}}")
		if end < 0 {
			d.fail(at, path, "unbalanced braces: {{ without }}")
			return t
		}
		inner := rest[:end]
		rest = rest[end+2:]
		if strings.Contains(inner, "{{") {
			d.fail(at, path, "unbalanced braces: {{ inside {{ }}")
			return t
		}
		r, err := parseRef(strings.TrimSpace(inner))
		if err != nil {
			d.fail(at, path, "{{%s}}: %v", inner, err)
			return t
		}
		t.parts = append(t.parts, part{ref: r})
	}
	return t
}

var roots = "input, event, steps.NAME, instance.id, step.key, step.token, step.attempt, vars.NAME"

func parseRef(text string) (*ref, error) {
	if text == "" {
		return nil, errors.New("empty path")
	}
	segs, err := splitPath(text)
	if err != nil {
		return nil, err
	}
	r := &ref{text: text, root: segs[0]}
	switch r.root {
	case "input", "event":
		r.sub = segs[1:]
	case "steps":
		if len(segs) < 2 {
			return nil, errors.New("steps needs an action name: steps.NAME")
		}
		r.name, r.sub = segs[1], segs[2:]
	case "vars":
		if len(segs) != 2 {
			return nil, errors.New("vars takes one name: vars.NAME")
		}
		r.name = segs[1]
	case "instance":
		if len(segs) != 2 || segs[1] != "id" {
			return nil, errors.New("instance has only instance.id")
		}
		r.name = segs[1]
	case "step":
		if len(segs) != 2 || (segs[1] != "key" && segs[1] != "token" && segs[1] != "attempt") {
			return nil, errors.New("step has step.key, step.token and step.attempt")
		}
		r.name = segs[1]
	default:
		return nil, fmt.Errorf("unknown root %q (known: %s)", r.root, roots)
	}
	return r, nil
}

// splitPath splits a dotted path ("items.0.sku") into its segments, each
// made of letters, digits, '_' and '-'.
func splitPath(p string) ([]string, error) {
	segs := strings.Split(p, ".")
	for _, s := range segs {
		if s == "" {
			return nil, fmt.Errorf("path %q has an empty segment", p)
		}
		for _, r := range s {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
				return nil, fmt.Errorf("path %q: %q is not allowed in a path (letters, digits, _ and -)", p, r)
			}
		}
	}
	return segs, nil
}

// scope is what templates read while one step runs.
type scope struct {
	step  *workflow.Step
	vars  map[string]string
	event bool // the step was started by an event (not automatic, not an entry action)
}

// errMissing marks a template path with no value.
var errMissing = errors.New("no value")

// resolve returns the JSON value a reference names.
func (s *scope) resolve(r *ref) (json.RawMessage, error) {
	var doc []byte
	switch r.root {
	case "instance":
		return jsonString(s.step.InstanceID), nil
	case "step":
		switch r.name {
		case "key":
			return jsonString(s.step.Key), nil
		case "token":
			return json.RawMessage(strconv.FormatInt(s.step.Token, 10)), nil
		default:
			return json.RawMessage(strconv.Itoa(s.step.Attempt)), nil
		}
	case "vars":
		v, ok := s.vars[r.name]
		if !ok {
			return nil, fmt.Errorf("{{%s}}: %w", r.text, errMissing)
		}
		return jsonString(v), nil
	case "input":
		doc = asJSON(s.step.InstanceInput)
	case "event":
		doc = []byte("null")
		if s.event && len(s.step.Input) > 0 && !bytes.Equal(s.step.Input, s.step.InstanceInput) {
			doc = asJSON(s.step.Input)
		}
	case "steps":
		res, ok := s.step.Results[r.name]
		if !ok {
			return nil, fmt.Errorf("{{%s}}: %w: action %q has not completed", r.text, errMissing, r.name)
		}
		doc = asJSON(res)
	}
	v, ok := walk(doc, r.sub)
	if !ok {
		return nil, fmt.Errorf("{{%s}}: %w", r.text, errMissing)
	}
	return v, nil
}

// asJSON returns b if it is JSON, else b as a JSON string; nothing is null.
func asJSON(b []byte) []byte {
	if len(bytes.TrimSpace(b)) == 0 {
		return []byte("null")
	}
	if json.Valid(b) {
		return b
	}
	return jsonString(string(b))
}

func jsonString(s string) json.RawMessage {
	b, _ := json.Marshal(s)
	return b
}

// walk returns the value at path inside the JSON document doc.
func walk(doc []byte, path []string) (json.RawMessage, bool) {
	cur := json.RawMessage(doc)
	for _, seg := range path {
		t := bytes.TrimLeft(cur, " \t\r\n")
		switch {
		case len(t) > 0 && t[0] == '{':
			var m map[string]json.RawMessage
			if json.Unmarshal(t, &m) != nil {
				return nil, false
			}
			v, ok := m[seg]
			if !ok {
				return nil, false
			}
			cur = v
		case len(t) > 0 && t[0] == '[':
			var a []json.RawMessage
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || json.Unmarshal(t, &a) != nil || i >= len(a) {
				return nil, false
			}
			cur = a[i]
		default:
			return nil, false
		}
	}
	return bytes.TrimSpace(cur), true
}

// text renders the template as a string: each reference's value as text
// (a string raw, anything else as JSON).
func (t *tmpl) text(s *scope) (string, error) {
	var b strings.Builder
	for _, p := range t.parts {
		if p.ref == nil {
			b.WriteString(p.lit)
			continue
		}
		v, err := s.resolve(p.ref)
		if err != nil {
			return "", err
		}
		if len(v) > 0 && v[0] == '"' {
			var str string
			if json.Unmarshal(v, &str) == nil {
				b.WriteString(str)
				continue
			}
		}
		var c bytes.Buffer
		if json.Compact(&c, v) != nil {
			return "", fmt.Errorf("{{%s}}: not JSON", p.ref.text)
		}
		b.Write(c.Bytes())
	}
	return b.String(), nil
}

// render writes the body as JSON, replacing each string that is exactly
// one reference by its JSON value and interpolating the others.
func (v *value) render(b []byte, s *scope) ([]byte, error) {
	switch v.kind {
	case stringValue:
		if v.t == nil {
			return v.appendJSON(b), nil
		}
		if v.t.exact() {
			raw, err := s.resolve(v.t.parts[0].ref)
			if err != nil {
				return nil, err
			}
			var c bytes.Buffer
			if json.Compact(&c, raw) != nil {
				return nil, fmt.Errorf("{{%s}}: not JSON", v.t.parts[0].ref.text)
			}
			return append(b, c.Bytes()...), nil
		}
		str, err := v.t.text(s)
		if err != nil {
			return nil, err
		}
		return append(b, jsonString(str)...), nil
	case arrayValue:
		b = append(b, '[')
		for i, e := range v.arr {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = e.render(b, s); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	case objectValue:
		b = append(b, '{')
		for i, k := range v.keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(append(b, jsonString(k)...), ':')
			var err error
			if b, err = v.obj[i].render(b, s); err != nil {
				return nil, err
			}
		}
		return append(b, '}'), nil
	}
	return v.appendJSON(b), nil
}

// templates lists every template of a value.
func (v *value) templates() []*tmpl {
	if v == nil {
		return nil
	}
	var ts []*tmpl
	if v.t != nil {
		ts = append(ts, v.t)
	}
	for _, e := range v.arr {
		ts = append(ts, e.templates()...)
	}
	for _, e := range v.obj {
		ts = append(ts, e.templates()...)
	}
	return ts
}
