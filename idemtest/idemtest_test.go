package idemtest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/idemtest"
	"github.com/idemkit/idem/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

// orders is the application's state: orders by id, and the order each
// idempotency key made (for the careful handler).
type orders struct {
	mu     sync.Mutex
	next   int
	byID   map[string]string
	byKey  map[string]string
	charge int
}

func newOrders() *orders {
	o := &orders{}
	o.Reset()
	return o
}

func (o *orders) Reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.next, o.byID, o.byKey = 0, map[string]string{}, map[string]string{}
}

func (o *orders) Count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.byID)
}

func (o *orders) create(body string) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.next++
	id := fmt.Sprintf("ord_%d", o.next)
	o.byID[id] = body
	return id
}

// naive inserts an order every time it runs.
func (o *orders) naive() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id := o.create(string(body))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]string{"id": id})
	})
}

// careful keys its insert by the idempotency key: a rerun finds the order
// it made and answers the same.
func (o *orders) careful() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		key := r.Header.Get(idemhttp.HeaderKey)
		o.mu.Lock()
		id, ok := o.byKey[key]
		o.mu.Unlock()
		if !ok {
			id = o.create(string(body))
			o.mu.Lock()
			o.byKey[key] = id
			o.mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]string{"id": id})
	})
}

func newOrder() *http.Request {
	return httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(`{"sku":"a"}`))
}

// fakeT records the first failure and stops the check, as t.Fatal would.
type fakeT struct {
	testing.TB
	failure string
}

type stopped struct{}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.failure = fmt.Sprintf(format, args...)
	panic(stopped{})
}

func failure(t *testing.T, check func(tb testing.TB)) string {
	t.Helper()
	f := &fakeT{TB: t}
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(stopped); !ok {
					panic(r)
				}
			}
		}()
		check(f)
	}()
	return f.failure
}

func TestACarefulHandlerPasses(t *testing.T) {
	t.Parallel()
	db := newOrders()
	idemtest.Handler(t, db.careful(), newOrder, &idemtest.Options{Reset: db.Reset, Effects: db.Count})
}

func TestANaiveHandlerFailsOnACrashAndPassesWithout(t *testing.T) {
	t.Parallel()
	db := newOrders()
	msg := failure(t, func(tb testing.TB) {
		idemtest.Handler(tb, db.naive(), newOrder, &idemtest.Options{Reset: db.Reset, Effects: db.Count, Seeds: 500})
	})
	for _, want := range []string{"effects, one clean delivery makes 1", "Options{Seed: ", "key its effect by the idempotency key"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("failure lacks %q:\n%s", want, msg)
		}
	}
	// Without crashes and store failures the middleware alone keeps it
	// to one order per key.
	idemtest.Handler(t, db.naive(), newOrder, &idemtest.Options{Reset: db.Reset, Effects: db.Count, NoCrash: true})
}

func TestAHandlerWhoseAnswersAreNotKeptFails(t *testing.T) {
	t.Parallel()
	db := newOrders()
	never := func(int) bool { return false } // every duplicate runs again
	msg := failure(t, func(tb testing.TB) {
		idemtest.Handler(tb, db.naive(), newOrder, &idemtest.Options{Reset: db.Reset, NoCrash: true,
			Middleware: &idemhttp.Config{Keep: never}})
	})
	if !strings.Contains(msg, "same-outcome broken") || !strings.Contains(msg, "one client got body") {
		t.Fatalf("failure: %s", msg)
	}
}

func TestDo(t *testing.T) {
	t.Parallel()
	db := newOrders()
	careful := func(ctx context.Context, c *idem.Claim) (idem.Outcome, error) {
		// The checkpoint remembers the order across a takeover; the
		// order itself is keyed by the message.
		db.mu.Lock()
		id, ok := db.byKey["message"]
		db.mu.Unlock()
		if !ok {
			id = db.create("m")
			db.mu.Lock()
			db.byKey["message"] = id
			db.mu.Unlock()
		}
		return idem.Outcome{Data: []byte(id)}, nil
	}
	idemtest.Do(t, careful, &idemtest.Options{Reset: db.Reset, Effects: db.Count})

	naive := func(ctx context.Context, c *idem.Claim) (idem.Outcome, error) {
		return idem.Outcome{Data: []byte(db.create("m"))}, nil
	}
	msg := failure(t, func(tb testing.TB) {
		idemtest.Do(tb, naive, &idemtest.Options{Reset: db.Reset, Effects: db.Count, Seeds: 500})
	})
	if !strings.Contains(msg, "the Do made ") || !strings.Contains(msg, "effects, one clean delivery makes 1") {
		t.Fatalf("failure: %s", msg)
	}
}
