package declare_test

import (
	"errors"
	"os"
	"testing"

	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/declare"
)

// FuzzParse: no document makes Parse panic; every error is an *Error
// wrapping ErrSyntax or ErrInvalidDefinition; an accepted document is a
// valid definition and parses again to the same fingerprint.
func FuzzParse(f *testing.F) {
	for _, file := range []string{"testdata/order.yaml", "testdata/route.json"} {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(head))
	f.Add([]byte(head + "      next: [{when: {path: a.0, in: [1, x, {y: null}]}, event: go}]\n"))
	f.Add([]byte("name: w\nversion: 1\ninitial: a\nstates: [{name: a, terminal: success}]\n"))
	f.Add([]byte(`{"name": "w", "version": 1, "initial": "a", "states": [{"name": "a", "terminal": "success"}]}`))
	f.Add([]byte("a: [1, 2\n"))
	f.Add([]byte("name: &x w\ninitial: *x\n"))
	opts := &declare.Options{Vars: map[string]string{"stock": "http://s", "payments": "http://p", "shipping": "http://h", "token": "t", "risk": "http://r"}}
	f.Fuzz(func(t *testing.T, data []byte) {
		def, err := declare.Parse(data, "f.yaml", opts)
		if err != nil {
			if def != nil {
				t.Fatal("a definition and an error")
			}
			list := errorList(err)
			if len(list) == 0 {
				t.Fatalf("no *Error in %v", err)
			}
			for _, e := range list {
				if !errors.Is(e, declare.ErrSyntax) && !errors.Is(e, workflow.ErrInvalidDefinition) {
					t.Fatalf("%v wraps neither sentinel", e)
				}
				if e.Line < 1 || e.Column < 1 || e.File != "f.yaml" {
					t.Fatalf("%v has no place", e)
				}
			}
			return
		}
		if err := def.Validate(); err != nil {
			t.Fatalf("accepted an invalid definition: %v", err)
		}
		again, err := declare.Parse(data, "f.yaml", opts)
		if err != nil || again.Fingerprint() != def.Fingerprint() {
			t.Fatalf("re-parse: %v", err)
		}
	})
}
