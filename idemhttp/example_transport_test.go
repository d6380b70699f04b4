package idemhttp_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/idemkit/idem/idemhttp"
)

// A client whose POSTs carry an Idempotency-Key and are retried with it:
// the server answers 503 once, and the retry reuses the key.
func ExampleTransport() {
	var (
		mu   sync.Mutex
		keys []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		keys = append(keys, r.Header.Get(idemhttp.HeaderKey))
		first := len(keys) == 1
		mu.Unlock()
		if first {
			w.Header().Set("Retry-After", "0")
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "charged once")
	}))
	defer srv.Close()

	client := &http.Client{Transport: idemhttp.Transport(&idemhttp.TransportConfig{
		BaseDelay: 10 * time.Millisecond,
		Timeout:   10 * time.Second,
	})}
	resp, err := client.Post(srv.URL+"/charges", "application/json", strings.NewReader(`{"amount":500}`))
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)

	fmt.Println(resp.StatusCode, string(body))
	mu.Lock()
	defer mu.Unlock()
	fmt.Println("attempts:", len(keys))
	fmt.Println("same key:", keys[0] == keys[1])
	// Output:
	// 201 charged once
	// attempts: 2
	// same key: true
}
