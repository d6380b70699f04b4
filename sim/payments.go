package sim

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
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

type httpRequest struct {
	key, body string
	reply     *Mailbox
}

type httpResponse struct {
	key    string
	req    string // the body of the request answered
	status int
	body   string
}

// payment is a client's own record of one logical charge.
type payment struct {
	key, body string
	acked     bool
	ack       httpResponse
	answers   []httpResponse // every final answer to the original request
	misuse    []httpResponse // final answers to the same key with another body
}

func setupPayments(w *World, store *Store) func() {
	var handler http.Handler
	api := w.NewProcess("api", func(p *Process) {
		// A restart builds everything again from the durable store.
		ledger, err := idem.New(store, &idem.Config{Clock: w.Clock(), Lease: paymentLease})
		if err != nil {
			panic(err)
		}
		handler = idemhttp.Middleware(ledger, &idemhttp.Config{
			Logger: slog.New(slog.DiscardHandler),
		})(chargeHandler(w))
	}).Crashable()
	api.Start()

	serve := func(req httpRequest) {
		if !api.Alive() {
			return // connection refused: the client times out
		}
		api.Go("req", func() {
			r := httptest.NewRequest(http.MethodPost, "/v1/charges", strings.NewReader(req.body))
			r.Header.Set(idemhttp.HeaderKey, req.key)
			r.Header.Set("Authorization", "Bearer tenant-1")
			r.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			handler.ServeHTTP(rec, r)
			resp := httpResponse{key: req.key, req: req.body, status: rec.Code, body: rec.Body.String()}
			w.Log("respond", req.key, strconv.Itoa(resp.status))
			w.Send("response "+req.key, func() { req.reply.Deliver(resp) })
		})
	}

	var all []*payment
	byKey := map[string]*payment{}
	record := func(r httpResponse) {
		p := byKey[r.key]
		if p == nil || !final(r.status) {
			return
		}
		if r.req != p.body {
			p.misuse = append(p.misuse, r)
		} else {
			p.answers = append(p.answers, r)
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
				if r, ok := call(w, box, serve, p.key, p.body, record); ok {
					p.acked, p.ack = true, r
				}
				if w.Chance(0.25) {
					// A client bug: the key reused for another charge.
					call(w, box, serve, p.key, `{"amount":999999}`, record)
				}
			}
		})
	}

	return func() {
		// Answers that arrived after their client moved on count too.
		for _, box := range boxes {
			for _, m := range box.msgs {
				record(m.(httpResponse))
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
				case r.status == http.StatusUnprocessableEntity:
				case p.acked:
					w.Violate("no-mismatch-replay", p.key, fmt.Sprintf("a key with a stored outcome, reused with another body, got %d %s", r.status, r.body))
				case strings.Contains(r.body, `"request":`+p.body):
					w.Violate("no-mismatch-replay", p.key, fmt.Sprintf("a key reused with another body got the original's answer %d %s", r.status, r.body))
				}
			}
			if !p.acked {
				continue
			}
			effects := 0
			if p.ack.status == http.StatusCreated {
				effects = 1
			}
			store.Acked(p.key, []byte(p.ack.body), effects)
			for _, r := range p.answers {
				if r.status != p.ack.status || r.body != p.ack.body {
					w.Violate("same-outcome", p.key, fmt.Sprintf("one answer was %d %s, another %d %s", p.ack.status, p.ack.body, r.status, r.body))
					break
				}
			}
		}
		store.Free(paymentLease, keys...)
	}
}

// final reports whether a status ends a request: stored (201, 402) or
// refused for good (422).
func final(status int) bool {
	return status == http.StatusCreated || status == http.StatusPaymentRequired || status == http.StatusUnprocessableEntity
}

// call sends one logical request until a final answer, retrying timeouts,
// 409 and 5xx with the same key, at most 10 times. Every answer that
// arrives is recorded; late ones for earlier requests too.
func call(w *World, box *Mailbox, serve func(httpRequest), key, body string, record func(httpResponse)) (httpResponse, bool) {
	for range 10 {
		req := httpRequest{key: key, body: body, reply: box}
		w.Log("request", key, body)
		w.Send("request "+key, func() { serve(req) })
		deadline := w.Now().Add(2 * time.Second)
		for {
			left := deadline.Sub(w.Now())
			if left <= 0 {
				break
			}
			m, ok := box.Recv(left)
			if !ok {
				break // timed out: retry
			}
			r := m.(httpResponse)
			record(r)
			if r.key != key || r.req != body {
				continue // a late answer to an earlier request
			}
			if final(r.status) {
				return r, true
			}
			break // 409 in flight, 5xx: retry after a pause
		}
		if err := w.Sleep(w.Between(50*time.Millisecond, 400*time.Millisecond)); err != nil {
			break
		}
	}
	return httpResponse{}, false
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
