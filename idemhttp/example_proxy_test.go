package idemhttp_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
)

// A Proxy in front of a service that knows nothing of idempotency keys:
// what `idem proxy --upstream URL` runs.
func ExampleProxy() {
	charges := 0
	service := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		charges++
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "charge %d\n", charges)
	}))
	defer service.Close()
	upstream, err := url.Parse(service.URL)
	if err != nil {
		log.Fatal(err)
	}

	ledger, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		log.Fatal(err)
	}
	proxy := httptest.NewServer(&idemhttp.Proxy{Ledger: ledger, Upstream: upstream})
	defer proxy.Close()

	for range 2 { // a client retries with the same key
		req, _ := http.NewRequest(http.MethodPost, proxy.URL+"/charges", strings.NewReader(`{"amount":100}`))
		req.Header.Set("Idempotency-Key", `"order-42"`)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		fmt.Print(res.StatusCode, " ", res.Header.Get("Idempotent-Replayed"), " ", string(body))
	}
	fmt.Println("charges:", charges)
	// Output:
	// 201 false charge 1
	// 201 true charge 1
	// charges: 1
}
