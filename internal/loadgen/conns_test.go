package loadgen

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConns: the request is sent as configured, with a numbered key or
// none; statuses outside 2xx, a contradicting Idempotent-Replayed and a
// connection the server closed are errors, and the next Send dials again.
func TestConns(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		key := r.Header.Get("Idempotency-Key")
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("X-A")+" "+key+" "+string(body))
		mu.Unlock()
		switch key {
		case `"p-7"`:
			w.WriteHeader(http.StatusConflict)
		case `"p-8"`:
			w.Header().Set("Idempotent-Replayed", "true")
		case `"p-9"`:
			panic(http.ErrAbortHandler) // the connection is cut
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer srv.Close()
	c, err := DialConns(srv.Listener.Addr().String(), 2, Request{Method: "PUT", Target: "/o?x=1", Header: []string{"X-A: b"}, Body: []byte("hi")}, "p-", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(0, 1, "false"); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(1, -1, ""); err != nil {
		t.Fatal(err)
	}
	var status StatusError
	if err := c.Send(0, 7, ""); !errors.As(err, &status) || status != 409 || err.Error() != "status 409" {
		t.Errorf("409: %v", err)
	}
	if err := c.Send(0, 8, "false"); !errors.Is(err, ErrReplayed) {
		t.Errorf("replayed true for a new key: %v", err)
	}
	if err := c.Send(0, 8, "true"); err != nil {
		t.Errorf("replayed true for a replay: %v", err)
	}
	if err := c.Send(1, 9, ""); err == nil {
		t.Error("a cut connection is no error")
	}
	if err := c.Send(1, 2, "false"); err != nil {
		t.Errorf("after a cut connection: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{`PUT /o?x=1 b "p-1" hi`, `PUT /o?x=1 b  hi`, `PUT /o?x=1 b "p-7" hi`, `PUT /o?x=1 b "p-8" hi`,
		`PUT /o?x=1 b "p-8" hi`, `PUT /o?x=1 b "p-9" hi`, `PUT /o?x=1 b "p-2" hi`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the server saw\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
