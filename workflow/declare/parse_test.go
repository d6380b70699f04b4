package declare_test

import (
	"os"
	"testing"

	"github.com/idemkit/idem/workflow/declare"
)

func TestTestdataParses(t *testing.T) {
	for _, f := range []string{"testdata/order.yaml", "testdata/route.json"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		def, err := declare.Parse(data, f, &declare.Options{Vars: map[string]string{"token": "t"}})
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		t.Logf("%s: %s v%d %d states %d transitions", f, def.Name, def.Version, len(def.States), len(def.Transitions))
	}
}
