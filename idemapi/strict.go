package idemapi

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// The strict check runs over a request body before encoding/json decodes
// it, because the decoder is lenient where the API must not be: it replaces
// invalid UTF-8 and lone surrogate escapes with U+FFFD (so keys that differ
// would name one record), matches field names case-insensitively and keeps
// the last of a repeated field. The check walks the body alongside the shape
// of the Go type it will be decoded into, so every refusal names the field.

// shapeKind is what a field holds on the wire.
type shapeKind int

const (
	kindString shapeKind = iota // a JSON string, valid UTF-8
	kindBytes                   // a JSON string holding standard padded base64
	kindInt                     // a JSON integer within int64
	kindObject                  // a JSON object with known field names
	kindMap                     // a JSON object of strings, any names
	kindAny                     // any JSON value (json.RawMessage), text valid, no name twice
)

// maxAnyDepth bounds the nesting of a kindAny value: arrays and objects
// within each other.
const maxAnyDepth = 64

var rawMessageType = reflect.TypeOf(json.RawMessage(nil))

// shape is the expected form of a JSON value.
type shape struct {
	kind   shapeKind
	fields map[string]field  // kindObject, by exact JSON name
	lower  map[string]string // kindObject, lower-cased name to name, for hints
}

// field is a member of an object shape; idx is its bit in a set of seen
// fields.
type field struct {
	name string
	idx  uint
	sh   *shape
}

var shapes sync.Map // reflect.Type -> *shape

// shapeFor returns the shape of the JSON encoding/json reads into t.
// Only the kinds request types use are known; others panic, at the first
// request of such a type, as a bug of this package.
func shapeFor(t reflect.Type) *shape {
	if sh, ok := shapes.Load(t); ok {
		return sh.(*shape)
	}
	sh := buildShape(t)
	shapes.Store(t, sh)
	return sh
}

func buildShape(t reflect.Type) *shape {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == rawMessageType {
		return &shape{kind: kindAny}
	}
	switch t.Kind() {
	case reflect.String:
		return &shape{kind: kindString}
	case reflect.Int, reflect.Int64:
		return &shape{kind: kindInt}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return &shape{kind: kindBytes}
		}
	case reflect.Map:
		if t.Key().Kind() == reflect.String && t.Elem().Kind() == reflect.String {
			return &shape{kind: kindMap}
		}
	case reflect.Struct:
		sh := &shape{kind: kindObject, fields: map[string]field{}, lower: map[string]string{}}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !f.IsExported() || name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			if len(sh.fields) == 64 {
				panic("idemapi: over 64 fields in " + t.String())
			}
			sh.fields[name] = field{name: name, idx: uint(len(sh.fields)), sh: buildShape(f.Type)}
			sh.lower[strings.ToLower(name)] = name
		}
		return sh
	}
	panic("idemapi: no strict shape for " + t.String())
}

// strictError is a refusal of the strict check; its text is the problem's
// detail.
type strictError struct{ detail string }

func (e *strictError) Error() string { return e.detail }

func refuse(format string, args ...any) error {
	return &strictError{detail: fmt.Sprintf(format, args...)}
}

// checkStrict checks that data is exactly one JSON object of shape sh:
// valid JSON and valid UTF-8 throughout (no lone surrogate escapes), field
// names matched exactly and none repeated, every value of the expected
// type, base64 that decodes. null stands for a field left out.
func checkStrict(data []byte, sh *shape) error {
	s := &scanner{data: data, buf: make([]byte, 0, 64)}
	s.space()
	if s.pos == len(data) {
		return refuse("the body is empty; send a JSON object")
	}
	if c := data[s.pos]; c != '{' {
		if what := s.describe(); what != "" {
			return refuse("the body must be a JSON object, not %s", what)
		}
		return s.malformed()
	}
	if err := s.value("", sh); err != nil {
		return err
	}
	s.space()
	if s.pos != len(data) {
		return refuse("unexpected data after the JSON object at byte %d", s.pos)
	}
	return nil
}

type scanner struct {
	data []byte
	pos  int
	buf  []byte // a decoded string
}

func (s *scanner) space() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

func (s *scanner) malformed() error {
	if s.pos >= len(s.data) {
		return refuse("the body ends inside a JSON value")
	}
	return refuse("malformed JSON at byte %d", s.pos)
}

// describe names the kind of the value at pos, "" when none starts there.
func (s *scanner) describe() string {
	if s.pos >= len(s.data) {
		return ""
	}
	switch c := s.data[s.pos]; {
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == '"':
		return "a string"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	}
	return ""
}

func kindName(k shapeKind) string {
	switch k {
	case kindString:
		return "a string"
	case kindBytes:
		return "a base64 string"
	case kindInt:
		return "an integer"
	}
	return "an object"
}

// member names field name of the object at path.
func member(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// quoted writes a client's name for a message: quoted, at most 64 bytes.
func quoted(s string) string {
	if len(s) > 64 {
		s = s[:64]
		for !utf8.ValidString(s) && len(s) > 0 {
			s = s[:len(s)-1]
		}
		return strconv.Quote(s) + "…"
	}
	return strconv.Quote(s)
}

// value checks the value at pos against sh; path names it ("" for the
// body).
func (s *scanner) value(path string, sh *shape) error {
	if s.pos >= len(s.data) {
		return s.malformed()
	}
	if sh.kind == kindAny {
		return s.any(path, 0)
	}
	switch c := s.data[s.pos]; {
	case c == 'n':
		return s.literal("null")
	case c == '{' && (sh.kind == kindObject || sh.kind == kindMap):
		return s.object(path, sh)
	case c == '"' && (sh.kind == kindString || sh.kind == kindBytes):
		start := s.pos
		if err := s.str(); err != nil {
			if te, ok := err.(*textError); ok {
				return refuse("%s %s (byte %d)", path, te.why, te.at)
			}
			return err
		}
		if sh.kind == kindBytes {
			if _, err := base64.StdEncoding.DecodeString(string(s.buf)); err != nil {
				return refuse("%s is not valid base64 (standard alphabet, padded), at byte %d", path, start)
			}
		}
		return nil
	case (c == '-' || (c >= '0' && c <= '9')) && sh.kind == kindInt:
		start := s.pos
		integer, err := s.number()
		if err != nil {
			return err
		}
		text := string(s.data[start:s.pos])
		if !integer {
			return refuse("%s must be an integer, not %s", path, text)
		}
		if _, err := strconv.ParseInt(text, 10, 64); err != nil {
			return refuse("%s is out of range: %s", path, text)
		}
		return nil
	}
	what := s.describe()
	if what == "" {
		return s.malformed()
	}
	return refuse("%s must be %s, not %s", path, kindName(sh.kind), what)
}

// any checks any JSON value at pos: strings valid text, no object with a
// name twice, nesting at most maxAnyDepth deep.
func (s *scanner) any(path string, depth int) error {
	if s.pos >= len(s.data) {
		return s.malformed()
	}
	if depth > maxAnyDepth {
		return refuse("%s nests arrays and objects over %d deep", path, maxAnyDepth)
	}
	switch c := s.data[s.pos]; {
	case c == 'n':
		return s.literal("null")
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == '"':
		if err := s.str(); err != nil {
			if te, ok := err.(*textError); ok {
				return refuse("a string in %s %s (byte %d)", path, te.why, te.at)
			}
			return err
		}
		return nil
	case c == '-' || (c >= '0' && c <= '9'):
		_, err := s.number()
		return err
	case c == '[':
		s.pos++
		s.space()
		if s.pos < len(s.data) && s.data[s.pos] == ']' {
			s.pos++
			return nil
		}
		for {
			s.space()
			if err := s.any(path, depth+1); err != nil {
				return err
			}
			s.space()
			if s.pos >= len(s.data) {
				return s.malformed()
			}
			switch s.data[s.pos] {
			case ',':
				s.pos++
			case ']':
				s.pos++
				return nil
			default:
				return s.malformed()
			}
		}
	case c == '{':
		s.pos++
		s.space()
		if s.pos < len(s.data) && s.data[s.pos] == '}' {
			s.pos++
			return nil
		}
		names := map[string]bool{}
		for {
			s.space()
			if s.pos >= len(s.data) || s.data[s.pos] != '"' {
				return s.malformed()
			}
			if err := s.str(); err != nil {
				if te, ok := err.(*textError); ok {
					return refuse("a name in %s %s (byte %d)", path, te.why, te.at)
				}
				return err
			}
			if names[string(s.buf)] {
				return refuse("the name %s appears twice in an object of %s", quoted(string(s.buf)), path)
			}
			names[string(s.buf)] = true
			s.space()
			if s.pos >= len(s.data) || s.data[s.pos] != ':' {
				return s.malformed()
			}
			s.pos++
			s.space()
			if err := s.any(path, depth+1); err != nil {
				return err
			}
			s.space()
			if s.pos >= len(s.data) {
				return s.malformed()
			}
			switch s.data[s.pos] {
			case ',':
				s.pos++
			case '}':
				s.pos++
				return nil
			default:
				return s.malformed()
			}
		}
	}
	return s.malformed()
}

func (s *scanner) literal(word string) error {
	if !strings.HasPrefix(string(s.data[s.pos:min(len(s.data), s.pos+len(word))]), word) {
		return s.malformed()
	}
	s.pos += len(word)
	return nil
}

// object checks an object at pos, a struct's (sh.fields) or a map's.
// Messages are built on the way out only: the path of a field is
// concatenated when it is needed.
func (s *scanner) object(path string, sh *shape) error {
	s.pos++                // {
	var seen uint64        // kindObject: bits of field.idx
	var seenNames []string // kindMap
	s.space()
	if s.pos < len(s.data) && s.data[s.pos] == '}' {
		s.pos++
		return nil
	}
	for {
		s.space()
		if s.pos >= len(s.data) || s.data[s.pos] != '"' {
			return s.malformed()
		}
		if err := s.str(); err != nil {
			if te, ok := err.(*textError); ok {
				where := path
				if where == "" {
					where = "the body"
				}
				what := "a field name in "
				if sh.kind == kindMap {
					what = "a name in "
				}
				return refuse("%s%s %s (byte %d)", what, where, te.why, te.at)
			}
			return err
		}
		var name string
		var valueShape *shape
		switch sh.kind {
		case kindObject:
			f, ok := sh.fields[string(s.buf)]
			if !ok {
				name = string(s.buf)
				if exact, ok := sh.lower[strings.ToLower(name)]; ok {
					return refuse("unknown field %s: field names are case-sensitive (did you mean %q?)", quoted(member(path, name)), exact)
				}
				return refuse("unknown field %s", quoted(member(path, name)))
			}
			if seen&(1<<f.idx) != 0 {
				return refuse("field %s appears twice", quoted(member(path, f.name)))
			}
			seen |= 1 << f.idx
			name, valueShape = f.name, f.sh
		default:
			name, valueShape = string(s.buf), stringShape
			for _, n := range seenNames {
				if n == name {
					return refuse("field %s appears twice", quoted(member(path, name)))
				}
			}
			seenNames = append(seenNames, name)
		}
		s.space()
		if s.pos >= len(s.data) || s.data[s.pos] != ':' {
			return s.malformed()
		}
		s.pos++
		s.space()
		var fieldPath string
		if sh.kind == kindMap {
			fieldPath = path + "[" + quoted(name) + "]"
		} else {
			fieldPath = member(path, name)
		}
		if err := s.value(fieldPath, valueShape); err != nil {
			return err
		}
		s.space()
		if s.pos >= len(s.data) {
			return s.malformed()
		}
		switch s.data[s.pos] {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return nil
		default:
			return s.malformed()
		}
	}
}

var stringShape = &shape{kind: kindString}

// textError is a string that is no text: invalid UTF-8 or a lone
// surrogate escape. The caller names the string.
type textError struct {
	why string
	at  int
}

func (e *textError) Error() string { return e.why }

// str reads the string at pos into s.buf, decoded. Invalid UTF-8 or a
// lone surrogate escape is a *textError.
func (s *scanner) str() error {
	s.pos++ // "
	s.buf = s.buf[:0]
	notText := func(why string) error {
		return &textError{why: why, at: s.pos}
	}
	for {
		if s.pos >= len(s.data) {
			return s.malformed()
		}
		c := s.data[s.pos]
		switch {
		case c == '"':
			s.pos++
			return nil
		case c < 0x20:
			return refuse("malformed JSON at byte %d: a control character in a string (escape it)", s.pos)
		case c == '\\':
			r, err := s.escape()
			if err != nil {
				if err == errSurrogate {
					return notText("holds a lone UTF-16 surrogate escape, which is no character")
				}
				return err
			}
			s.buf = utf8.AppendRune(s.buf, r)
		case c < utf8.RuneSelf:
			// A run of plain ASCII at once: base64 outcomes are megabytes.
			end := s.pos + 1
			for end < len(s.data) {
				if b := s.data[end]; b < 0x20 || b == '"' || b == '\\' || b >= utf8.RuneSelf {
					break
				}
				end++
			}
			s.buf = append(s.buf, s.data[s.pos:end]...)
			s.pos = end
		default:
			r, n := utf8.DecodeRune(s.data[s.pos:])
			if r == utf8.RuneError && n <= 1 {
				return notText("is not valid UTF-8")
			}
			s.buf = append(s.buf, s.data[s.pos:s.pos+n]...)
			s.pos += n
		}
	}
}

var errSurrogate = &strictError{detail: "surrogate"}

// escape reads the escape sequence at pos (at its backslash).
func (s *scanner) escape() (rune, error) {
	if s.pos+1 >= len(s.data) {
		s.pos = len(s.data)
		return 0, s.malformed()
	}
	c := s.data[s.pos+1]
	switch c {
	case '"', '\\', '/':
		s.pos += 2
		return rune(c), nil
	case 'b':
		s.pos += 2
		return '\b', nil
	case 'f':
		s.pos += 2
		return '\f', nil
	case 'n':
		s.pos += 2
		return '\n', nil
	case 'r':
		s.pos += 2
		return '\r', nil
	case 't':
		s.pos += 2
		return '\t', nil
	case 'u':
		r, ok := s.hex4(s.pos + 2)
		if !ok {
			return 0, s.malformed()
		}
		at := s.pos
		s.pos += 6
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			s.pos = at
			return 0, errSurrogate
		case r >= 0xD800 && r <= 0xDBFF:
			if s.pos+1 < len(s.data) && s.data[s.pos] == '\\' && s.data[s.pos+1] == 'u' {
				if lo, ok := s.hex4(s.pos + 2); ok && lo >= 0xDC00 && lo <= 0xDFFF {
					s.pos += 6
					return 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00), nil
				}
			}
			s.pos = at
			return 0, errSurrogate
		}
		return r, nil
	}
	s.pos++
	return 0, refuse("malformed JSON at byte %d: unknown escape", s.pos)
}

func (s *scanner) hex4(at int) (rune, bool) {
	if at+4 > len(s.data) {
		return 0, false
	}
	var r rune
	for _, c := range s.data[at : at+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c-'a') + 10
		case c >= 'A' && c <= 'F':
			r |= rune(c-'A') + 10
		default:
			return 0, false
		}
	}
	return r, true
}

// number reads a JSON number at pos; integer reports whether it has
// neither fraction nor exponent.
func (s *scanner) number() (integer bool, err error) {
	d := s.data
	if s.pos < len(d) && d[s.pos] == '-' {
		s.pos++
	}
	digits := func() int {
		n := 0
		for s.pos < len(d) && d[s.pos] >= '0' && d[s.pos] <= '9' {
			s.pos++
			n++
		}
		return n
	}
	switch {
	case s.pos < len(d) && d[s.pos] == '0':
		s.pos++
	case digits() == 0:
		return false, s.malformed()
	}
	integer = true
	if s.pos < len(d) && d[s.pos] == '.' {
		s.pos++
		integer = false
		if digits() == 0 {
			return false, s.malformed()
		}
	}
	if s.pos < len(d) && (d[s.pos] == 'e' || d[s.pos] == 'E') {
		s.pos++
		integer = false
		if s.pos < len(d) && (d[s.pos] == '+' || d[s.pos] == '-') {
			s.pos++
		}
		if digits() == 0 {
			return false, s.malformed()
		}
	}
	return integer, nil
}
