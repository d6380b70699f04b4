package sim

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
)

// payments: clients charge cards through the idemhttp middleware in front
// of a payments handler, over a network that drops, duplicates, delays and
// reorders; the server crashes and restarts; the store fails before and
// after committing. Clients retry with the same key until they get a
// final answer, and some reuse a key for another charge (which must be
// refused, never replayed).
var payments = &Scenario{
	Name: "payments",
	Doc:  "clients retrying payments through the HTTP middleware; crashes, a lossy network, store failpoints",
	Faults: Faults{
		Crash: 0.004, RestartAfter: 1500 * time.Millisecond,
		Drop: 0.05, Duplicate: 0.1, MinDelay: time.Millisecond, MaxDelay: 30 * time.Millisecond,
	},
	Failpoints: Failpoints{BeforeCommit: 0.02, AfterCommit: 0.02, Latency: 3 * time.Millisecond},
	Setup:      setupPayments,
}

const (
	paymentClients  = 3
	paymentsPerUser = 2
	paymentLease    = time.Second
)

// payment is a client's own record of one logical charge.
type payment struct {
	key, body string
	acked     bool
	ack       HTTPAnswer
	answers   []HTTPAnswer // every final answer to the original request
	misuse    []HTTPAnswer // final answers to the same key with another body
}

func setupPayments(w *World, store *Store) func() {
	api := w.NewHTTPServer("api", func() http.Handler {
		ledger, err := idem.New(store, &idem.Config{Clock: w.Clock(), Lease: paymentLease})
		if err != nil {
			panic(err)
		}
		return idemhttp.Middleware(ledger, &idemhttp.Config{
			Logger: slog.New(slog.DiscardHandler),
		})(chargeHandler(w))
	})
	api.Process().Crashable()

	var all []*payment
	byKey := map[string]*payment{}
	// A request's tag is its key and body.
	record := func(a HTTPAnswer) {
		key, body, _ := strings.Cut(a.Tag, " ")
		p := byKey[key]
		if p == nil || !FinalStatus(a.Status) {
			return
		}
		if body != p.body {
			p.misuse = append(p.misuse, a)
		} else {
			p.answers = append(p.answers, a)
		}
	}
	var boxes []*Mailbox
	for c := range paymentClients {
		box := w.NewMailbox()
		boxes = append(boxes, box)
		var mine []*payment
		for i := range paymentsPerUser {
			p := &payment{key: fmt.Sprintf("c%d-p%d", c, i), body: fmt.Sprintf(`{"amount":%d}`, 100*(c+1)+i)}
			mine = append(mine, p)
			all = append(all, p)
			byKey[p.key] = p
		}
		w.Go(fmt.Sprintf("client%d", c), func() {
			for _, p := range mine {
				// One logical request: the same key on every attempt.
				if a, ok := w.CallHTTP(api, box, p.key+" "+p.body, chargeRequest(p.key, p.body), record, 10); ok {
					p.acked, p.ack = true, a
				}
				if w.Chance(0.25) {
					// A client bug: the key reused for another charge.
					other := `{"amount":999999}`
					w.CallHTTP(api, box, p.key+" "+other, chargeRequest(p.key, other), record, 10)
				}
			}
		})
	}

	return func() {
		// Answers that arrived after their client moved on count too.
		for _, box := range boxes {
			for _, m := range box.Pending() {
				record(m.(HTTPAnswer))
			}
		}
		var keys []string
		for _, p := range all {
			keys = append(keys, p.key)
			w.AtMostOnce(p.key)
			for _, r := range p.misuse {
				// Refused (422) is right. A fresh execution is right only
				// if the original never completed; the original's answer
				// is never right.
				switch {
				case r.Status == http.StatusUnprocessableEntity:
				case p.acked:
					w.Violate("no-mismatch-replay", p.key, fmt.Sprintf("a key with a stored outcome, reused with another body, got %d %s", r.Status, r.Body))
				case strings.Contains(r.Body, `"request":`+p.body):
					w.Violate("no-mismatch-replay", p.key, fmt.Sprintf("a key reused with another body got the original's answer %d %s", r.Status, r.Body))
				}
			}
			if !p.acked {
				continue
			}
			effects := 0
			if p.ack.Status == http.StatusCreated {
				effects = 1
			}
			store.Acked(p.key, []byte(p.ack.Body), effects, responseBody)
			for _, r := range p.answers {
				if r.Status != p.ack.Status || r.Body != p.ack.Body {
					w.Violate("same-outcome", p.key, fmt.Sprintf("one answer was %d %s, another %d %s", p.ack.Status, p.ack.Body, r.Status, r.Body))
					break
				}
			}
		}
		store.Free(paymentLease, keys...)
	}
}

// chargeRequest makes the request of one charge.
func chargeRequest(key, body string) func() *http.Request {
	return func() *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/v1/charges", strings.NewReader(body))
		r.Header.Set(idemhttp.HeaderKey, key)
		r.Header.Set("Authorization", "Bearer tenant-1")
		r.Header.Set("Content-Type", "application/json")
		return r
	}
}

// chargeHandler is the application: it works a while, then declines (402,
// kept), fails transiently (503, released) or charges (201) and stages
// the charge, which commits with the stored outcome.
func chargeHandler(w *World) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		key := r.Header.Get(idemhttp.HeaderKey)
		body, _ := io.ReadAll(r.Body)
		if w.Sleep(w.Between(0, 400*time.Millisecond)) != nil {
			return
		}
		rw.Header().Set("Content-Type", "application/json")
		switch x := w.Rand().IntN(10); {
		case x == 0:
			rw.WriteHeader(http.StatusServiceUnavailable)
		case x == 1:
			rw.WriteHeader(http.StatusPaymentRequired)
			fmt.Fprintf(rw, `{"error":"card_declined","decline":"dc_%08x","request":%s}`, w.Rand().Uint32(), body)
		default:
			id := fmt.Sprintf("ch_%08x", w.Rand().Uint32())
			w.Stage(key, id)
			rw.WriteHeader(http.StatusCreated)
			fmt.Fprintf(rw, `{"id":%q,"request":%s}`, id, body)
		}
	}
}

// responseBody is the body of the response the middleware stored as o.
func responseBody(o idem.Outcome) ([]byte, error) {
	_, _, body, err := idemhttp.StoredResponse(&o)
	return body, err
}
