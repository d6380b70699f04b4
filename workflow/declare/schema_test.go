package declare

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestSchemaMatchesParser keeps docs/workflow-schema.json in step with the
// fields the decoder accepts: the document's properties and those of each
// $defs object are the fields of the same kind.
func TestSchemaMatchesParser(t *testing.T) {
	data, err := os.ReadFile("../../docs/workflow-schema.json")
	if err != nil {
		t.Fatal(err)
	}
	type object struct {
		Schema     string                     `json:"$schema"`
		Properties map[string]json.RawMessage `json:"properties"`
		Required   []string                   `json:"required"`
		Additional json.RawMessage            `json:"additionalProperties"`
	}
	var schema struct {
		object
		Defs map[string]object `json:"$defs"`
	}
	if err := json.Unmarshal(data, &schema); err != nil {
		t.Fatal(err)
	}
	if schema.Schema != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("$schema %q", schema.Schema)
	}
	keys := func(m map[string]json.RawMessage) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	for kind, want := range fields {
		o := schema.object
		if kind != "document" {
			var ok bool
			if o, ok = schema.Defs[kind]; !ok {
				t.Errorf("$defs has no %q", kind)
				continue
			}
		}
		want = slices.Sorted(slices.Values(want))
		if got := keys(o.Properties); !slices.Equal(got, want) {
			t.Errorf("%s: schema properties %v, parser fields %v", kind, got, want)
		}
		if string(o.Additional) != "false" {
			t.Errorf("%s: the schema allows unknown fields", kind)
		}
	}
	if want := []string{"name", "version", "initial", "states"}; !slices.Equal(schema.Required, want) {
		t.Errorf("required %v, want %v", schema.Required, want)
	}
}

// TestDocExamplesParse parses every complete document of the docs (the
// ```yaml and ```json blocks of docs/declarative-workflows.md) and of
// testdata.
func TestDocExamplesParse(t *testing.T) {
	data, err := os.ReadFile("../../docs/declarative-workflows.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```(yaml|json)\n(.*?)```").FindAllStringSubmatch(string(data), -1)
	if len(blocks) < 2 {
		t.Fatalf("%d examples found", len(blocks))
	}
	opts := &Options{Vars: map[string]string{"token": "t"}}
	for i, b := range blocks {
		def, err := Parse([]byte(b[2]), "example", opts)
		if err != nil {
			t.Errorf("example %d (%s): %v", i, b[1], err)
			continue
		}
		if b[1] == "yaml" && strings.HasPrefix(b[2], "name: order") && len(def.Transitions) != 8 {
			t.Errorf("order saga: %d transitions", len(def.Transitions))
		}
	}
	files, _ := os.ReadDir("testdata")
	n := 0
	for _, f := range files {
		if f.IsDir() {
			continue
		}
		src, err := os.ReadFile("testdata/" + f.Name())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(src, f.Name(), opts); err != nil {
			t.Errorf("%s: %v", f.Name(), err)
		}
		n++
	}
	if n < 2 {
		t.Errorf("%d testdata documents", n)
	}
}
