package idemtest_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/idemtest"
)

// A handler that creates one order per idempotency key, checked under
// duplicates, crashes and a lossy network.
func ExampleHandler() {
	var mu sync.Mutex
	made := map[string]string{} // idempotency key -> order
	create := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		key := r.Header.Get(idemhttp.HeaderKey)
		if _, ok := made[key]; !ok {
			made[key] = string(body) // an upsert keyed by the idempotency key
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, made[key])
	})

	t := &testing.T{} // in a test: the test's t
	idemtest.Handler(t, create, func() *http.Request {
		return httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(`{"sku":"a"}`))
	}, &idemtest.Options{
		Reset:   func() { mu.Lock(); clear(made); mu.Unlock() },
		Effects: func() int { mu.Lock(); defer mu.Unlock(); return len(made) },
	})
}
