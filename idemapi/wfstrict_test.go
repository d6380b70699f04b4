package idemapi

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
)

// FuzzCheckStrictAnyJSON: a start body the strict check accepts is valid
// JSON and UTF-8, decodes, and its input holds no object with a name twice
// and nothing deeper than maxAnyDepth (+1 for the body itself); anything
// else is refused with a *strictError.
func FuzzCheckStrictAnyJSON(f *testing.F) {
	for _, s := range []string{
		`{"type":"order","id":"o1","input":{"sku":"A1","qty":2,"tags":["a",null,true,1.5e3]}}`,
		`{"type":"order","id":"o1","input":{"a":1,"a":2}}`, `{"type":"o","id":"i","input":"\ud800"}`,
		`{"type":"o","id":"i","input":[[[[]]]]}`, `{"type":"o","id":"i","input":[1,]}`, `{"type":"o","id":"i","input":01}`,
		`{"type":"o","id":"i","input":{"\u0061":1,"a":2}}`, "{\"type\":\"o\",\"id\":\"i\",\"input\":\"\xff\"}",
		`{"type":"o","id":"i","input":nul}`, `{"type":"o","id":"i","input":{}}`,
	} {
		f.Add([]byte(s))
	}
	sh := shapeFor(reflect.TypeFor[*StartWorkflowRequest]())
	f.Fuzz(func(t *testing.T, body []byte) {
		err := checkStrict(body, sh)
		if err != nil {
			if _, ok := err.(*strictError); !ok {
				t.Fatalf("error %T %v", err, err)
			}
			return
		}
		if !json.Valid(body) || !utf8.Valid(body) {
			t.Fatalf("accepted invalid JSON or UTF-8: %q", body)
		}
		var v StartWorkflowRequest
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("accepted %q, which does not decode: %v", body, err)
		}
		if len(v.Input) > 0 {
			depth, dup := walkJSON(t, v.Input)
			if dup || depth > maxAnyDepth+1 {
				t.Fatalf("accepted input %q: depth %d, a name twice %v", v.Input, depth, dup)
			}
		}
	})
}

// walkJSON returns how deep data nests and whether an object repeats a
// name (as decoded, escapes resolved).
func walkJSON(t *testing.T, data []byte) (maxDepth int, dup bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		names  map[string]bool
		object bool
		key    bool // the next token of an object is a name
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return maxDepth, dup
		}
		if len(stack) > 0 {
			top := stack[len(stack)-1]
			if top.object && top.key {
				if name, ok := tok.(string); ok {
					if top.names[name] {
						dup = true
					}
					top.names[name] = true
					top.key = false
					continue
				}
			} else if top.object {
				top.key = true
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{names: map[string]bool{}, object: true, key: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].object {
				stack[len(stack)-1].key = true
			}
		}
		maxDepth = max(maxDepth, len(stack))
	}
}

func TestWalkJSON(t *testing.T) {
	for _, c := range []struct {
		in    string
		depth int
		dup   bool
	}{
		{`1`, 0, false}, {`{"a":1,"b":[{"a":2}]}`, 3, false}, {`{"a":{"x":1},"a":2}`, 2, true},
		{`[{"a":1,"\u0061":2}]`, 2, true}, {`{"a":[1,2],"b":{"c":{}}}`, 3, false},
	} {
		if d, dup := walkJSON(t, []byte(c.in)); d != c.depth || dup != c.dup {
			t.Errorf("walkJSON(%s) = %d, %v; want %d, %v", c.in, d, dup, c.depth, c.dup)
		}
	}
}
