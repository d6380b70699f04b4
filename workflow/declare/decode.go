package declare

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
)

// fields lists, for each kind of object of a document, the fields it
// accepts. The decoder refuses any other, and a test keeps
// docs/workflow-schema.json in step with it.
var fields = map[string][]string{
	"document":   {"name", "version", "initial", "vars", "defaults", "states", "transitions"},
	"defaults":   {"headers", "timeout", "retry"},
	"state":      {"name", "terminal", "timeout", "timeout_event", "on_enter"},
	"transition": {"from", "event", "to", "action"},
	"action":     {"name", "request", "compensate", "no_compensation", "retry", "on_exhausted", "next"},
	"request":    {"method", "url", "headers", "body", "timeout"},
	"retry":      {"max_attempts", "initial_backoff", "max_backoff", "multiplier", "jitter"},
	"rule":       {"when", "event"},
	"when":       {"path", "equals", "in"},
}

// pos is a place in a document, from line 1 and column 1.
type pos struct{ line, col int }

// The decoded document: the structure of docs/declarative-workflows.md,
// with the position of every element.
type document struct {
	name        string
	version     int
	initial     string
	vars        map[string]string
	defaults    defaultsDoc
	states      []stateDoc
	transitions []transitionDoc

	at    pos            // the document itself
	keyAt map[string]pos // top-level fields by name
}

type defaultsDoc struct {
	headers []header
	timeout time.Duration
	retry   *retryDoc
}

type header struct {
	name  string
	value *tmpl
}

type retryDoc struct {
	at                         pos
	maxAttempts                int
	initialBackoff, maxBackoff time.Duration
	multiplier, jitter         float64
}

type stateDoc struct {
	at           pos
	path         string
	name         string
	terminal     string
	timeout      time.Duration
	timeoutEvent string
	onEnter      *actionDoc
}

type transitionDoc struct {
	at              pos
	path            string
	from, event, to string
	action          *actionDoc
}

type actionDoc struct {
	at             pos
	path           string
	name           string
	request        *requestDoc
	compensate     *requestDoc
	noCompensation bool
	retry          *retryDoc
	onExhausted    string
	next           []ruleDoc
}

type requestDoc struct {
	at      pos
	path    string
	method  string
	url     *tmpl
	headers []header
	body    *value // nil: no body
	timeout time.Duration
}

type ruleDoc struct {
	at    pos
	path  string
	when  *whenDoc // nil: matches anything
	event string
}

type whenDoc struct {
	path   []string
	equals *value   // or
	in     []*value // one of these
}

// value is a JSON value of a document (a request body, a rule's
// operand), with templates in its strings.
type value struct {
	at   pos
	kind valueKind
	b    bool
	num  string // JSON text of a number
	str  string
	t    *tmpl // the template of a string in a body
	arr  []*value
	keys []string
	obj  []*value
}

type valueKind int

const (
	nullValue valueKind = iota
	boolValue
	numberValue
	stringValue
	arrayValue
	objectValue
)

// decoder turns a parsed document into a document, collecting every
// problem as an *Error wrapping ErrSyntax.
type decoder struct {
	file string
	errs []*Error
}

func (d *decoder) fail(at pos, path, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: at.line, Column: at.col, Path: path, Problem: fmt.Sprintf(format, args...), err: ErrSyntax})
}

func tokenPos(tk *token.Token) pos {
	if tk == nil || tk.Position == nil {
		return pos{1, 1}
	}
	return pos{tk.Position.Line, tk.Position.Column}
}

// nodePos is where a node starts: a block mapping at its first key (its
// token is the first ':'), anything else at its token.
func nodePos(n ast.Node) pos {
	if m, ok := n.(*ast.MappingNode); ok && !m.IsFlowStyle && len(m.Values) > 0 {
		return nodePos(m.Values[0].Key)
	}
	if mv, ok := n.(*ast.MappingValueNode); ok {
		return nodePos(mv.Key)
	}
	if n == nil {
		return pos{1, 1}
	}
	return tokenPos(n.GetToken())
}

// parseDocument parses data (YAML, or JSON when its first non-space byte
// is '{') and decodes it: the document as far as it decoded (nil if it did
// not parse) and its problems.
func parseDocument(data []byte, file string) (doc *document, errs []*Error) {
	d := &decoder{file: file}
	root, err := d.parse(data)
	if err != nil {
		return nil, []*Error{err}
	}
	return d.document(root), d.errs
}

func (d *decoder) syntax(at pos, format string, args ...any) *Error {
	return &Error{File: d.file, Line: at.line, Column: at.col, Problem: fmt.Sprintf(format, args...), err: ErrSyntax}
}

// parse returns the one document's root node.
func (d *decoder) parse(data []byte) (root ast.Node, e *Error) {
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		// JSON: hold it to JSON's grammar (no trailing commas, comments
		// or YAML forms), which YAML's flow style would let through.
		if err := json.Unmarshal(data, new(json.RawMessage)); err != nil {
			var se *json.SyntaxError
			at := pos{1, 1}
			msg := err.Error()
			if errors.As(err, &se) {
				at = offsetPos(data, int(se.Offset)-1) // Offset counts the offending byte
				msg = se.Error()
			}
			return nil, d.syntax(at, "invalid JSON: %s", msg)
		}
	}
	if !utf8.Valid(data) {
		return nil, d.syntax(pos{1, 1}, "the document is not UTF-8")
	}
	defer func() {
		// The parser is third-party code: no input may make Parse panic.
		if r := recover(); r != nil {
			root, e = nil, d.syntax(pos{1, 1}, "the document cannot be parsed")
		}
	}()
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		var ye interface {
			GetToken() *token.Token
			GetMessage() string
		}
		if errors.As(err, &ye) {
			return nil, d.syntax(tokenPos(ye.GetToken()), "%s", ye.GetMessage())
		}
		return nil, d.syntax(pos{1, 1}, "%s", err)
	}
	var docs []*ast.DocumentNode
	for _, doc := range f.Docs {
		if doc != nil && doc.Body != nil {
			docs = append(docs, doc)
		}
	}
	switch {
	case len(docs) == 0:
		return nil, d.syntax(pos{1, 1}, "the document is empty")
	case len(docs) > 1:
		return nil, d.syntax(nodePos(docs[1].Body), "a file holds one document, this is a second")
	}
	return docs[0].Body, nil
}

// offsetPos turns a byte offset into a line and column (in bytes, from 1).
func offsetPos(data []byte, off int) pos {
	off = min(max(off, 0), len(data))
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := off - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return pos{line, col}
}

// plain strips what the decoder does not support around a node (refusing
// anchors, aliases and tags) and comments; nil if refused.
func (d *decoder) plain(n ast.Node, path string) ast.Node {
	switch v := n.(type) {
	case *ast.AnchorNode:
		d.fail(nodePos(n), path, "anchors are not supported")
		return nil
	case *ast.AliasNode:
		d.fail(nodePos(n), path, "aliases are not supported")
		return nil
	case *ast.TagNode:
		d.fail(nodePos(n), path, "tags are not supported")
		return nil
	case *ast.CommentGroupNode, *ast.CommentNode:
		return nil
	case *ast.MappingValueNode:
		// A single "key: value" pair parses as itself, not as a mapping.
		return &ast.MappingNode{BaseNode: v.BaseNode, Start: v.Start, Values: []*ast.MappingValueNode{v}}
	}
	return n
}

// object is a mapping of a document whose fields are known.
type object struct {
	d      *decoder
	path   string
	at     pos
	fields map[string]*ast.MappingValueNode
	order  []string
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// object decodes n as a mapping of the given kind, refusing unknown
// fields; nil if n is not a mapping.
func (d *decoder) object(n ast.Node, path, kind string) *object {
	n = d.plain(n, path)
	if n == nil {
		return nil
	}
	m, ok := n.(*ast.MappingNode)
	if !ok {
		d.fail(nodePos(n), path, "must be a mapping, not %s", describe(n))
		return nil
	}
	o := &object{d: d, path: path, at: nodePos(m), fields: map[string]*ast.MappingValueNode{}}
	allowed := fields[kind]
	for _, mv := range m.Values {
		key, ok := d.key(mv, path)
		if !ok {
			continue
		}
		if kind == "action" && key == "in_tx" {
			d.fail(nodePos(mv.Key), join(path, key), "not allowed: an HTTP action never runs in the journal's transaction")
			continue
		}
		if kind != "" && !contains(allowed, key) {
			d.fail(nodePos(mv.Key), join(path, key), "unknown field %q (%s accepts %s)", key, kindName(kind), strings.Join(allowed, ", "))
			continue
		}
		o.fields[key] = mv
		o.order = append(o.order, key)
	}
	return o
}

func kindName(kind string) string {
	if kind == "rule" {
		return "a next rule"
	}
	if kind == "document" {
		return "the document"
	}
	if kind == "action" {
		return "an action"
	}
	return "a " + kind
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// key returns the text of a mapping key, which must be a scalar.
func (d *decoder) key(mv *ast.MappingValueNode, path string) (string, bool) {
	switch k := mv.Key.(type) {
	case *ast.StringNode:
		return k.Value, true
	case *ast.MergeKeyNode:
		d.fail(nodePos(k), path, "merge keys (<<) are not supported")
		return "", false
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.NullNode:
		return k.GetToken().Value, true
	default:
		d.fail(nodePos(mv.Key), path, "a key must be a plain string")
		return "", false
	}
}

func describe(n ast.Node) string {
	switch v := n.(type) {
	case *ast.MappingNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.StringNode:
		if _, ok := scalarString(v); !ok {
			return "a number"
		}
		return "a string"
	case *ast.LiteralNode:
		return "a string"
	case *ast.IntegerNode:
		return "an integer"
	case *ast.FloatNode, *ast.InfinityNode, *ast.NanNode:
		return "a number"
	case *ast.BoolNode:
		return "a boolean"
	case *ast.NullNode:
		return "null"
	default:
		return fmt.Sprintf("%s", v.Type())
	}
}

func (o *object) has(name string) bool { _, ok := o.fields[name]; return ok }

// value returns the node of a field, with its path and position.
func (o *object) value(name string) (ast.Node, string, pos, bool) {
	mv, ok := o.fields[name]
	if !ok {
		return nil, "", pos{}, false
	}
	path := join(o.path, name)
	n := o.d.plain(mv.Value, path)
	if n == nil {
		return nil, path, pos{}, false
	}
	return n, path, nodePos(n), true
}

func (o *object) require(names ...string) {
	for _, n := range names {
		if !o.has(n) {
			o.d.fail(o.at, join(o.path, n), "missing required field %q", n)
		}
	}
}

func (o *object) str(name string) string {
	n, path, at, ok := o.value(name)
	if !ok {
		return ""
	}
	s, ok := scalarString(n)
	if !ok {
		o.d.fail(at, path, "must be a string, not %s", describe(n))
	}
	return s
}

// scalarString returns the text of a string node (plain, quoted or a
// block literal).
func scalarString(n ast.Node) (string, bool) {
	switch v := n.(type) {
	case *ast.StringNode:
		if v.Token != nil && v.Token.Type == token.StringType && jsonNumber.MatchString(v.Value) {
			return "", false // a plain 1e3 is a number
		}
		return v.Value, true
	case *ast.LiteralNode:
		if v.Value == nil {
			return "", true
		}
		return v.Value.Value, true
	}
	return "", false
}

var jsonNumber = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$`)

func (o *object) boolean(name string) bool {
	n, path, at, ok := o.value(name)
	if !ok {
		return false
	}
	b, ok := n.(*ast.BoolNode)
	if !ok {
		o.d.fail(at, path, "must be true or false, not %s", describe(n))
		return false
	}
	return b.Value
}

func (o *object) integer(name string, positive bool) int {
	n, path, at, ok := o.value(name)
	if !ok {
		return 0
	}
	i, ok := n.(*ast.IntegerNode)
	var v int64
	if ok {
		switch x := i.Value.(type) {
		case int64:
			v = x
		case uint64:
			ok = x <= math.MaxInt32
			v = int64(x)
		default:
			ok = false
		}
	}
	if !ok || v > math.MaxInt32 || v < math.MinInt32 {
		o.d.fail(at, path, "must be an integer, not %s", describeNumber(n))
		return 0
	}
	if positive && v <= 0 {
		o.d.fail(at, path, "must be positive, not %d", v)
		return 0
	}
	return int(v)
}

func describeNumber(n ast.Node) string {
	if _, ok := n.(*ast.IntegerNode); ok {
		return "an integer out of range"
	}
	return describe(n)
}

func (o *object) number(name string) float64 {
	n, path, at, ok := o.value(name)
	if !ok {
		return 0
	}
	switch v := n.(type) {
	case *ast.IntegerNode:
		switch x := v.Value.(type) {
		case int64:
			return float64(x)
		case uint64:
			return float64(x)
		}
	case *ast.FloatNode:
		return v.Value
	case *ast.StringNode:
		if v.Token != nil && v.Token.Type == token.StringType && jsonNumber.MatchString(v.Value) {
			f, err := strconv.ParseFloat(v.Value, 64)
			if err == nil {
				return f
			}
		}
	}
	o.d.fail(at, path, "must be a number, not %s", describe(n))
	return 0
}

// duration reads a Go duration string ("15m", "1h30m", "500ms").
func (o *object) duration(name string, positive bool) time.Duration {
	n, path, at, ok := o.value(name)
	if !ok {
		return 0
	}
	s, ok := scalarString(n)
	if !ok {
		o.d.fail(at, path, "must be a duration string such as \"15m\", not %s", describe(n))
		return 0
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		o.d.fail(at, path, "%q is not a duration such as \"15m\" or \"1h30m\"", s)
		return 0
	}
	if positive && dur <= 0 {
		o.d.fail(at, path, "must be positive, not %s", s)
		return 0
	}
	return dur
}

// list returns the entries of a list field.
func (o *object) list(name string) ([]ast.Node, string) {
	n, path, at, ok := o.value(name)
	if !ok {
		return nil, path
	}
	s, ok := n.(*ast.SequenceNode)
	if !ok {
		o.d.fail(at, path, "must be a list, not %s", describe(n))
		return nil, path
	}
	return s.Values, path
}

// stringMap reads a mapping of strings (vars, headers), in document order.
func (o *object) stringMap(name string) (keys, values []string, ats []pos, paths []string, keyAts []pos) {
	n, path, _, ok := o.value(name)
	if !ok {
		return
	}
	m := o.d.object(n, path, "")
	if m == nil {
		return
	}
	for _, k := range m.order {
		s := m.str(k)
		n, p, at, _ := m.value(k)
		if n == nil {
			continue
		}
		keys, values, ats, paths = append(keys, k), append(values, s), append(ats, at), append(paths, p)
		keyAts = append(keyAts, nodePos(m.fields[k].Key))
	}
	return
}

func (d *decoder) document(root ast.Node) *document {
	o := d.object(root, "", "document")
	if o == nil {
		return nil
	}
	doc := &document{at: o.at, keyAt: map[string]pos{}, vars: map[string]string{}}
	for k, mv := range o.fields {
		doc.keyAt[k] = nodePos(mv.Key)
	}
	o.require("name", "version", "initial", "states")
	doc.name = o.str("name")
	doc.version = o.integer("version", true)
	doc.initial = o.str("initial")
	keys, vals, _, _, _ := o.stringMap("vars")
	for i, k := range keys {
		doc.vars[k] = vals[i]
	}
	if n, path, _, ok := o.value("defaults"); ok {
		if do := d.object(n, path, "defaults"); do != nil {
			doc.defaults.headers = d.headers(do)
			doc.defaults.timeout = do.duration("timeout", true)
			doc.defaults.retry = d.retry(do)
		}
	}
	states, path := o.list("states")
	for i, n := range states {
		p := fmt.Sprintf("%s[%d]", path, i)
		so := d.object(n, p, "state")
		if so == nil {
			continue
		}
		so.require("name")
		s := stateDoc{at: so.at, path: p, name: so.str("name"), terminal: so.str("terminal"),
			timeout: so.duration("timeout", false), timeoutEvent: so.str("timeout_event")}
		if an, ap, _, ok := so.value("on_enter"); ok {
			s.onEnter = d.action(an, ap)
		}
		doc.states = append(doc.states, s)
	}
	transitions, path := o.list("transitions")
	for i, n := range transitions {
		p := fmt.Sprintf("%s[%d]", path, i)
		to := d.object(n, p, "transition")
		if to == nil {
			continue
		}
		to.require("from", "to")
		t := transitionDoc{at: to.at, path: p, from: to.str("from"), event: to.str("event"), to: to.str("to")}
		if an, ap, _, ok := to.value("action"); ok {
			t.action = d.action(an, ap)
		}
		doc.transitions = append(doc.transitions, t)
	}
	return doc
}

func (d *decoder) headers(o *object) []header {
	keys, vals, ats, paths, keyAts := o.stringMap("headers")
	var hs []header
	for i, k := range keys {
		if !validHeaderName(k) {
			d.fail(keyAts[i], paths[i], "%q is not a valid header name", k)
			continue
		}
		switch strings.ToLower(k) {
		case "idempotency-key", "fencing-token":
			d.fail(keyAts[i], paths[i], "%s is set by the executor (the step key or the fencing token)", k)
			continue
		}
		hs = append(hs, header{name: k, value: d.template(vals[i], ats[i], paths[i])})
	}
	return hs
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r > 0x7e || r <= ' ' || strings.ContainsRune("\"(),/:;<=>?@[\\]{}", r) {
			return false
		}
	}
	return true
}

func (d *decoder) retry(o *object) *retryDoc {
	n, path, _, ok := o.value("retry")
	if !ok {
		return nil
	}
	ro := d.object(n, path, "retry")
	if ro == nil {
		return nil
	}
	return &retryDoc{at: ro.at, maxAttempts: ro.integer("max_attempts", false),
		initialBackoff: ro.duration("initial_backoff", false), maxBackoff: ro.duration("max_backoff", false),
		multiplier: ro.number("multiplier"), jitter: ro.number("jitter")}
}

var methodRE = regexp.MustCompile(`^[A-Z]+$`)

func (d *decoder) request(o *object, name string) *requestDoc {
	n, path, _, ok := o.value(name)
	if !ok {
		return nil
	}
	ro := d.object(n, path, "request")
	if ro == nil {
		return nil
	}
	ro.require("url")
	r := &requestDoc{at: ro.at, path: path, method: "POST", timeout: ro.duration("timeout", true)}
	if ro.has("method") {
		r.method = ro.str("method")
		if _, p, at, ok := ro.value("method"); ok && !methodRE.MatchString(r.method) {
			d.fail(at, p, "%q is not an HTTP method in capitals, such as POST", r.method)
		}
	}
	if un, up, at, ok := ro.value("url"); ok {
		if s, ok := scalarString(un); ok {
			r.url = d.template(s, at, up)
		} else {
			d.fail(at, up, "must be a string, not %s", describe(un))
		}
	}
	r.headers = d.headers(ro)
	if bn, bp, _, ok := ro.value("body"); ok {
		r.body = d.value(bn, bp, true)
	}
	return r
}

func (d *decoder) action(n ast.Node, path string) *actionDoc {
	o := d.object(n, path, "action")
	if o == nil {
		return nil
	}
	a := &actionDoc{at: o.at, path: path}
	o.require("name", "request")
	a.name = o.str("name")
	a.request = d.request(o, "request")
	a.compensate = d.request(o, "compensate")
	a.noCompensation = o.boolean("no_compensation")
	a.retry = d.retry(o)
	a.onExhausted = o.str("on_exhausted")
	rules, rpath := o.list("next")
	for i, rn := range rules {
		p := fmt.Sprintf("%s[%d]", rpath, i)
		ro := d.object(rn, p, "rule")
		if ro == nil {
			continue
		}
		ro.require("event")
		r := ruleDoc{at: ro.at, path: p, event: ro.str("event")}
		if _, ep, at, ok := ro.value("event"); ok && r.event == "" {
			d.fail(at, ep, "is empty")
		}
		if wn, wp, _, ok := ro.value("when"); ok {
			r.when = d.when(wn, wp)
		}
		if i > 0 && a.next[i-1].when == nil {
			d.fail(r.at, p, "never applies: next[%d] has no when and matches every result", i-1)
		}
		a.next = append(a.next, r)
	}
	return a
}

func (d *decoder) when(n ast.Node, path string) *whenDoc {
	o := d.object(n, path, "when")
	if o == nil {
		return nil
	}
	w := &whenDoc{}
	if o.has("path") {
		p := o.str("path")
		if _, pp, at, ok := o.value("path"); ok && p != "" {
			segs, err := splitPath(p)
			if err != nil {
				d.fail(at, pp, "%v", err)
			}
			w.path = segs
		}
	}
	if en, ep, _, ok := o.value("equals"); ok {
		w.equals = d.value(en, ep, false)
	}
	if in, ip := o.list("in"); o.has("in") {
		for i, n := range in {
			if v := d.value(n, fmt.Sprintf("%s[%d]", ip, i), false); v != nil {
				w.in = append(w.in, v)
			}
		}
		if _, _, at, ok := o.value("in"); ok && len(in) == 0 {
			d.fail(at, ip, "is empty: the rule would never apply")
		}
	}
	if o.has("equals") == o.has("in") {
		d.fail(o.at, path, "needs exactly one of equals and in")
	}
	return w
}

// value decodes any JSON value; strings become templates if tmpl.
func (d *decoder) value(n ast.Node, path string, tmpl bool) *value {
	n = d.plain(n, path)
	if n == nil {
		return nil
	}
	v := &value{at: nodePos(n)}
	switch x := n.(type) {
	case *ast.NullNode:
		v.kind = nullValue
	case *ast.BoolNode:
		v.kind, v.b = boolValue, x.Value
	case *ast.IntegerNode:
		v.kind = numberValue
		switch i := x.Value.(type) {
		case int64:
			v.num = strconv.FormatInt(i, 10)
		case uint64:
			v.num = strconv.FormatUint(i, 10)
		default:
			d.fail(v.at, path, "unsupported integer")
		}
	case *ast.FloatNode:
		v.kind, v.num = numberValue, strconv.FormatFloat(x.Value, 'g', -1, 64)
	case *ast.InfinityNode, *ast.NanNode:
		d.fail(v.at, path, "%s has no JSON form", x.GetToken().Value)
		return nil
	case *ast.StringNode, *ast.LiteralNode:
		s, ok := scalarString(n)
		if !ok { // a plain number such as 1e3
			f, err := strconv.ParseFloat(n.(*ast.StringNode).Value, 64)
			if err != nil || math.IsInf(f, 0) {
				d.fail(v.at, path, "number out of range")
				return nil
			}
			v.kind, v.num = numberValue, strconv.FormatFloat(f, 'g', -1, 64)
			break
		}
		v.kind, v.str = stringValue, s
		if tmpl {
			v.t = d.template(s, v.at, path)
		}
	case *ast.SequenceNode:
		v.kind = arrayValue
		for i, e := range x.Values {
			if ev := d.value(e, fmt.Sprintf("%s[%d]", path, i), tmpl); ev != nil {
				v.arr = append(v.arr, ev)
			}
		}
	case *ast.MappingNode:
		v.kind = objectValue
		o := d.object(x, path, "")
		if o == nil {
			return nil
		}
		for _, k := range o.order {
			vn := o.fields[k].Value
			if ev := d.value(vn, join(path, k), tmpl); ev != nil {
				v.keys = append(v.keys, k)
				v.obj = append(v.obj, ev)
			}
		}
	default:
		d.fail(v.at, path, "unsupported %s", describe(n))
		return nil
	}
	return v
}

// appendJSON writes v as JSON (templates left as written).
func (v *value) appendJSON(b []byte) []byte {
	switch v.kind {
	case nullValue:
		return append(b, "null"...)
	case boolValue:
		return strconv.AppendBool(b, v.b)
	case numberValue:
		return append(b, v.num...)
	case stringValue:
		s, _ := json.Marshal(v.str)
		return append(b, s...)
	case arrayValue:
		b = append(b, '[')
		for i, e := range v.arr {
			if i > 0 {
				b = append(b, ',')
			}
			b = e.appendJSON(b)
		}
		return append(b, ']')
	default:
		b = append(b, '{')
		for i, k := range v.keys {
			if i > 0 {
				b = append(b, ',')
			}
			s, _ := json.Marshal(k)
			b = append(append(b, s...), ':')
			b = v.obj[i].appendJSON(b)
		}
		return append(b, '}')
	}
}

// sortErrors orders errors by their place in the document.
func sortErrors(errs []*Error) {
	sort.SliceStable(errs, func(i, j int) bool {
		if errs[i].Line != errs[j].Line {
			return errs[i].Line < errs[j].Line
		}
		return errs[i].Column < errs[j].Column
	})
}
