package declare_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/declare"
)

// A two-step workflow whose actions call a service: reserve stock, then
// charge for the reservation, both started by Start alone.
func ExampleParse() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Printf("%s %s %s\n", r.Method, r.URL.Path, body)
		switch r.URL.Path {
		case "/reservations":
			_, _ = io.WriteString(w, `{"id": "r-1"}`)
		case "/charges":
			_, _ = io.WriteString(w, `{"id": "c-1", "status": "captured"}`)
		}
	}))
	defer srv.Close()

	doc := []byte(`
name: checkout
version: 1
initial: new
states:
  - name: new
  - name: reserved
  - {name: paid, terminal: success}
transitions:
  - from: new
    to: reserved
    action:
      name: reserve
      request: {method: POST, url: "{{vars.shop}}/reservations", body: {sku: "{{input.sku}}", qty: "{{input.qty}}"}}
      compensate: {method: DELETE, url: "{{vars.shop}}/reservations/{{steps.reserve.id}}"}
  - from: reserved
    to: paid
    action:
      name: charge
      request: {method: POST, url: "{{vars.shop}}/charges", body: {reservation: "{{steps.reserve.id}}"}}
      no_compensation: true
`)
	def, err := declare.Parse(doc, "checkout.yaml", &declare.Options{Vars: map[string]string{"shop": srv.URL}})
	if err != nil {
		fmt.Println(err)
		return
	}
	types := workflow.NewRegistry()
	if err := types.Register(def); err != nil {
		fmt.Println(err)
		return
	}
	engine, err := workflow.NewEngine(workflow.NewMemJournal(), types, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	if _, err := engine.Start(ctx, "checkout", 0, "cart-7", []byte(`{"sku": "book", "qty": 2}`), nil); err != nil {
		fmt.Println(err)
		return
	}
	for n := 1; n > 0; {
		if n, err = engine.Step(ctx); err != nil {
			fmt.Println(err)
			return
		}
	}
	in, err := engine.Get(ctx, "cart-7")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(in.Status, in.State, string(in.Results["charge"]))

	// A broken document: every problem, with its line.
	_, err = declare.Parse([]byte("name: checkout\nversion: one\ninitial: new\nstates: []\n"), "broken.yaml", nil)
	fmt.Println(err, errors.Is(err, declare.ErrSyntax))
	// Output:
	// POST /reservations {"sku":"book","qty":2}
	// POST /charges {"reservation":"r-1"}
	// succeeded paid {"id": "c-1", "status": "captured"}
	// broken.yaml:2:10: version: must be an integer, not a string true
}
