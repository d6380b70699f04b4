package declare

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/idemkit/idem/workflow"
)

// ErrSyntax is wrapped by every *Error about the document itself: it does
// not parse as JSON or YAML, has an unknown field, a value of the wrong
// type, a missing required field, or a template or rule that cannot work
// (unbalanced braces, an unknown root, steps.NAME naming no action,
// vars.NAME naming no variable).
var ErrSyntax = errors.New("declare: syntax error")

// DefaultClient sends the requests of documents parsed without
// Options.Client: a 30 s timeout, and up to 64 idle connections kept per
// host (net/http's default keeps 2), since an engine's workers call the
// same few services at once; with 2, most requests would open a new
// connection.
var DefaultClient = &http.Client{Timeout: 30 * time.Second, Transport: defaultTransport()}

func defaultTransport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 64
	return t
}

// Options are what Parse needs beyond the document.
type Options struct {
	// Client sends the actions' requests. Nil: DefaultClient.
	Client *http.Client
	// Vars are the values of {{vars.NAME}} in URLs, headers and bodies,
	// such as base URLs and tokens. They override the document's vars of
	// the same name; they do not enter the definition's fingerprint.
	Vars map[string]string
}

// Error is one problem in a document, at a line and column (from 1) of
// its file. Parse and LoadDir return every problem they find, each an
// *Error, joined with errors.Join; read them with errors.As, or split
// the joined error with its Unwrap() []error.
//
// Unwrap returns ErrSyntax for a problem of the document itself, or, for
// a rule of workflow.Validate the document breaks, the
// *workflow.DefinitionError (which wraps workflow.ErrInvalidDefinition):
// its Path and Problem are the Error's, and Line and Column are those of
// the state, transition or action it names.
type Error struct {
	// File is the name given to Parse, or the file's path under LoadDir.
	File string
	// Line and Column locate the element at fault, from 1.
	Line, Column int
	// Path names the element: a path into the document for a syntax
	// error ("transitions[1].action.request.url"), the
	// workflow.DefinitionError's Path for a definition error
	// (`states[2] "charged"`).
	Path string
	// Problem says what is wrong.
	Problem string

	err error
}

// Error returns "order.yaml:12:5: transitions[1].action.request.url:
// <problem>".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Problem)
	return b.String()
}

// Unwrap returns ErrSyntax or the *workflow.DefinitionError.
func (e *Error) Unwrap() error {
	if e.err == nil {
		return ErrSyntax
	}
	return e.err
}

// Parse reads a declarative workflow definition, JSON if its first
// non-space byte is '{' and YAML otherwise, and returns it validated
// (workflow.Validate passed), with actions that send HTTP requests and
// Source set to data, so that its fingerprint covers the document. name
// is the file name errors carry ("order.yaml"). opts may be nil.
//
// A document with problems returns nil and an error joining one *Error
// per problem, in document order: its syntax problems (ErrSyntax), or,
// when it has none, the rules of workflow.Validate it breaks
// (workflow.ErrInvalidDefinition); a document that does not decode is
// not validated.
func Parse(data []byte, name string, opts *Options) (*workflow.Definition, error) {
	def, _, err := parse(data, name, opts)
	return def, err
}

func parse(data []byte, name string, opts *Options) (*workflow.Definition, *document, error) {
	doc, errs := parseDocument(data, name)
	if doc == nil {
		if len(errs) == 0 { // cannot happen: a document that did not decode says why
			errs = append(errs, &Error{File: name, Line: 1, Column: 1, Problem: "the document cannot be read"})
		}
		return nil, nil, joinErrors(errs)
	}
	if opts == nil {
		opts = &Options{}
	}
	c := &compiler{doc: doc, file: name, client: opts.Client, vars: map[string]string{}, actions: map[string]bool{}, errs: errs}
	if c.client == nil {
		c.client = DefaultClient
	}
	for k, v := range doc.vars {
		c.vars[k] = v
	}
	for k, v := range opts.Vars {
		c.vars[k] = v
	}
	c.checkRefs()
	if len(c.errs) > 0 {
		return nil, nil, joinErrors(c.errs)
	}
	def := c.build(bytes.Clone(data))
	c.validate(def)
	if len(c.errs) > 0 {
		return nil, nil, joinErrors(c.errs)
	}
	return def, doc, nil
}

func joinErrors(errs []*Error) error {
	sortErrors(errs)
	all := make([]error, len(errs))
	for i, e := range errs {
		all[i] = e
	}
	return errors.Join(all...)
}

// LoadDir parses every *.json, *.yaml and *.yml file of dir (not its
// subdirectories), in the order of their names, with Parse; errors name
// each file by its path. It returns the definitions of the files that
// parsed, and an error joining every problem of every file (nil if there
// is none), including two files that define the same name and version.
func LoadDir(dir string, opts *Options) ([]*workflow.Definition, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("declare: %w", err)
	}
	var defs []*workflow.Definition
	var errs []error
	type where struct {
		file string
		at   pos
	}
	seen := map[string]where{}
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if e.IsDir() || (ext != ".json" && ext != ".yaml" && ext != ".yml") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("declare: %w", err))
			continue
		}
		def, doc, err := parse(data, path, opts)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		k := fmt.Sprintf("%q version %d", def.Name, def.Version)
		at := doc.keyAt["version"]
		if prev, dup := seen[k]; dup {
			errs = append(errs, &Error{File: path, Line: at.line, Column: at.col, Path: "version",
				Problem: fmt.Sprintf("%s is also defined by %s:%d:%d", k, prev.file, prev.at.line, prev.at.col),
				err:     &workflow.DefinitionError{Path: "version", Problem: k + " is defined twice"}})
			continue
		}
		seen[k] = where{path, at}
		defs = append(defs, def)
	}
	return defs, errors.Join(errs...)
}

// compiler turns a decoded document into a definition.
type compiler struct {
	doc     *document
	file    string
	client  *http.Client
	vars    map[string]string
	actions map[string]bool
	errs    []*Error
}

func (c *compiler) fail(at pos, path string, err error, format string, args ...any) {
	c.errs = append(c.errs, &Error{File: c.file, Line: at.line, Column: at.col, Path: path, Problem: fmt.Sprintf(format, args...), err: err})
}

// each calls f for every action of the document, with the state it
// leads to and whether an event starts it.
func (c *compiler) each(f func(a *actionDoc, target string, event bool)) {
	for _, s := range c.doc.states {
		if s.onEnter != nil {
			f(s.onEnter, s.name, false)
		}
	}
	for _, t := range c.doc.transitions {
		if t.action != nil {
			f(t.action, t.to, t.event != "")
		}
	}
}

// checkRefs checks that every steps.NAME names an action and every
// vars.NAME a variable.
func (c *compiler) checkRefs() {
	c.each(func(a *actionDoc, _ string, _ bool) { c.actions[a.name] = true })
	check := func(t *tmpl) {
		if t == nil {
			return
		}
		for _, r := range t.refs() {
			switch r.root {
			case "steps":
				if !c.actions[r.name] {
					c.fail(t.at, t.path, ErrSyntax, "{{%s}}: no action is named %q", r.text, r.name)
				}
			case "vars":
				if _, ok := c.vars[r.name]; !ok {
					c.fail(t.at, t.path, ErrSyntax, "{{%s}}: no variable %q in the document's vars or Options.Vars", r.text, r.name)
				}
			}
		}
	}
	for _, h := range c.doc.defaults.headers {
		check(h.value)
	}
	c.each(func(a *actionDoc, _ string, _ bool) {
		for _, r := range []*requestDoc{a.request, a.compensate} {
			if r == nil {
				continue
			}
			check(r.url)
			for _, h := range r.headers {
				check(h.value)
			}
			for _, t := range r.body.templates() {
				check(t)
			}
		}
	})
}

func (c *compiler) build(source []byte) *workflow.Definition {
	d := c.doc
	def := &workflow.Definition{Name: d.name, Version: d.version, Initial: d.initial, Source: source}
	for _, s := range d.states {
		def.States = append(def.States, workflow.State{Name: s.name, Terminal: workflow.Terminal(s.terminal),
			Timeout: s.timeout, TimeoutEvent: s.timeoutEvent, OnEnter: c.action(s.onEnter, false)})
	}
	for _, t := range d.transitions {
		def.Transitions = append(def.Transitions, workflow.Transition{From: t.from, Event: t.event, To: t.to,
			Action: c.action(t.action, t.event != "")})
	}
	return def
}

func (c *compiler) action(a *actionDoc, event bool) *workflow.Action {
	if a == nil {
		return nil
	}
	wa := &workflow.Action{Name: a.name, NoCompensation: a.noCompensation, OnExhausted: workflow.Exhausted(a.onExhausted)}
	if a.request != nil {
		wa.Run = c.executor(a, a.request, "request", event).run
	}
	if a.compensate != nil {
		wa.Compensate = c.executor(a, a.compensate, "compensate", event).run
	}
	r := a.retry
	if r == nil {
		r = c.doc.defaults.retry
	}
	if r != nil {
		wa.Retry = &workflow.RetryPolicy{MaxAttempts: r.maxAttempts, InitialBackoff: r.initialBackoff,
			MaxBackoff: r.maxBackoff, Multiplier: r.multiplier, Jitter: r.jitter}
	}
	if len(a.next) > 0 {
		wa.Next = nextFunc(a.next)
	}
	return wa
}

func (c *compiler) executor(a *actionDoc, r *requestDoc, what string, event bool) *executor {
	x := &executor{action: a.name, what: what, req: r, defaults: c.doc.defaults.headers,
		timeout: r.timeout, client: c.client, vars: c.vars, event: event}
	if x.timeout == 0 {
		x.timeout = c.doc.defaults.timeout
	}
	return x
}

// nextFunc compiles rules into an Action.Next: the event of the first
// rule whose when matches the result, "" if none does.
func nextFunc(rules []ruleDoc) func([]byte) string {
	type rule struct {
		path  []string
		any   bool
		wants []any
		event string
	}
	var rs []rule
	for _, r := range rules {
		cr := rule{event: r.event, any: r.when == nil}
		if r.when != nil {
			cr.path = r.when.path
			ops := r.when.in
			if r.when.equals != nil {
				ops = []*value{r.when.equals}
			}
			for _, v := range ops {
				var x any
				_ = json.Unmarshal(v.appendJSON(nil), &x)
				cr.wants = append(cr.wants, x)
			}
		}
		rs = append(rs, cr)
	}
	return func(result []byte) string {
		doc := asJSON(result)
		for _, r := range rs {
			if r.any {
				return r.event
			}
			raw, ok := walk(doc, r.path)
			if !ok {
				continue
			}
			var got any
			if json.Unmarshal(raw, &got) != nil {
				continue
			}
			for _, w := range r.wants {
				if reflect.DeepEqual(got, w) {
					return r.event
				}
			}
		}
		return ""
	}
}

// validate runs workflow.Validate and maps each problem to its line, and
// checks that every next rule's event leads somewhere.
func (c *compiler) validate(def *workflow.Definition) {
	if err := def.Validate(); err != nil {
		var list []error
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			list = j.Unwrap()
		} else {
			list = []error{err}
		}
		for _, e := range list {
			var de *workflow.DefinitionError
			if !errors.As(e, &de) {
				c.fail(c.doc.at, "", e, "%v", e)
				continue
			}
			c.fail(c.locate(def, de.Path), de.Path, de, "%s", de.Problem)
		}
	}
	// An event a rule chooses is processed in the state the action led
	// to: a transition must leave that state on it.
	leaves := map[[2]string]bool{}
	for _, t := range c.doc.transitions {
		leaves[[2]string{t.from, t.event}] = true
	}
	c.each(func(a *actionDoc, target string, _ bool) {
		for _, r := range a.next {
			if !leaves[[2]string{target, r.event}] {
				de := &workflow.DefinitionError{Path: r.path + ".event",
					Problem: fmt.Sprintf("event %q leads nowhere: no transition leaves %q on it", r.event, target)}
				c.fail(r.at, de.Path, de, "%s", de.Problem)
			}
		}
	})
}

// locate returns the position of the element a DefinitionError's path
// names.
func (c *compiler) locate(def *workflow.Definition, path string) pos {
	d := c.doc
	for _, k := range []string{"name", "version", "initial", "states"} {
		if path == k || strings.HasPrefix(path, k+" ") {
			if at, ok := d.keyAt[k]; ok {
				return at
			}
			return d.at
		}
	}
	action := func(base string, a *actionDoc, at pos) (pos, bool) {
		if path == base {
			return at, true
		}
		if a != nil && strings.HasPrefix(path, base+" action ") {
			if strings.HasSuffix(path, " retry") && a.retry != nil {
				return a.retry.at, true
			}
			return a.at, true
		}
		return pos{}, false
	}
	for i, s := range d.states {
		base := fmt.Sprintf("states[%d] %q", i, def.States[i].Name)
		if at, ok := action(base, nil, s.at); ok {
			return at
		}
		if s.onEnter != nil && strings.HasPrefix(path, base+" on_enter") {
			at, _ := action(base+" on_enter", s.onEnter, s.onEnter.at)
			return at
		}
	}
	for i, t := range d.transitions {
		if at, ok := action(transitionPath(i, &def.Transitions[i]), t.action, t.at); ok {
			return at
		}
	}
	return d.at
}

// transitionPath names a transition as workflow.Validate does.
func transitionPath(i int, t *workflow.Transition) string {
	if t.Event == "" {
		return fmt.Sprintf("transitions[%d] %q --> %q", i, t.From, t.To)
	}
	e := t.Event
	if strings.ContainsAny(e, " -\"\\>") || strings.ContainsFunc(e, func(r rune) bool { return r < 0x20 || r == 0x7f || r > 0x7e }) {
		e = fmt.Sprintf("%q", e)
	}
	return fmt.Sprintf("transitions[%d] %q --%s--> %q", i, t.From, e, t.To)
}
