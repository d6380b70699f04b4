package idemapi_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/memstore"
)

// Mount the ledger API on a service's own mux under /ledger/ and begin a
// key through it.
func ExampleNewServer() {
	store := memstore.New(nil)
	defer store.Close()
	api, err := idemapi.NewServer(store, &idemapi.Config{
		Tokens: map[string][]string{"billing-token": {"billing"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ledger/", http.StripPrefix("/ledger", api))
	mux.HandleFunc("/orders", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "the service's own route\n") })
	srv := httptest.NewServer(mux)
	defer srv.Close()

	req, _ := http.NewRequest("POST", srv.URL+"/ledger/v1/begin",
		strings.NewReader(`{"scope":"billing","key":"order-42","fingerprint":"v1"}`))
	req.Header.Set("Authorization", "Bearer billing-token")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var out idemapi.BeginResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.Status, out.Decision, "attempt", *out.Attempt)
	// Output: 200 OK acquired attempt 1
}
