// Command stub plays the three services of the order saga example: stock
// (reservations), payments (charges and refunds) and shipping. It honours
// Idempotency-Key as Stripe does: the first answer for a key is the
// answer to every later request with that key, and only the first
// request applies anything. It counts what it applied, per order, so a
// test can check that every charge and every refund happened once.
//
//	stub -addr 127.0.0.1:9100 -decline 7 -unavailable 0.1 -latency 20ms
//
// A charge of an order whose number is a multiple of -decline is declined
// (402); a share -unavailable of first requests fail with 503 and a
// Retry-After of one second, before anything is applied. -latency D
// holds every answer D after the request applied, as a slow service
// would. With
// -payments-dedup=false the payments routes ignore Idempotency-Key and
// apply every request, as a payment service without idempotency would:
// put idem proxy in front of them.
//
// Routes (JSON bodies):
//
//	POST   /stock/reservations        {"order": "o-12", "sku": "book", "qty": 2}  201 {"id": "r-o-12"}
//	DELETE /stock/reservations/{id}                                             200 {"released": "r-o-12"}
//	POST   /payments/charges          {"order": "o-12", "amount": 1500}         201 {"id": "c-o-12", "status": "captured"}, 402 declined
//	POST   /payments/charges/{id}/refund                                        200 {"refunded": "c-o-12"}
//	POST   /shipping/shipments        {"order": "o-12"}                         201 {"id": "s-o-12"}
//	GET    /stats                                                               200 {"orders": {"o-12": {"reserve": 1, ...}}, "requests": 12, "replays": 3}
//
// Requests without an Idempotency-Key are refused (400).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"hash/fnv"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

type answer struct {
	status int
	body   []byte
}

type stub struct {
	decline     int
	unavailable float64
	payDedup    bool
	latency     time.Duration

	mu       sync.Mutex
	answers  map[string]answer         // by Idempotency-Key
	failed   map[string]bool           // keys whose first request failed
	applied  map[string]map[string]int // order -> what -> times applied
	requests int
	replays  int
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9100", "address to listen on; port 0 picks a free port (logged)")
	decline := flag.Int("decline", 7, "decline the charge of every order whose number is a multiple of this (0: none)")
	unavailable := flag.Float64("unavailable", 0, "share of first requests answered 503 with Retry-After: 1")
	latency := flag.Duration("latency", 0, "how long each request that applies something takes, as a slow service would (keeps requests in flight)")
	payDedup := flag.Bool("payments-dedup", true, "honour Idempotency-Key on /payments too; false plays a payment service that does not, for idem proxy to front")
	flag.Parse()
	s := &stub{decline: *decline, unavailable: *unavailable, payDedup: *payDedup, latency: *latency, answers: map[string]answer{}, failed: map[string]bool{}, applied: map[string]map[string]int{}}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	// The address listened on, also when -addr asked for port 0.
	log.Printf("stub listening on %s", ln.Addr())
	log.Fatal(http.Serve(ln, s))
}

func (s *stub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/stats" {
		s.mu.Lock()
		b, _ := json.Marshal(map[string]any{"orders": s.applied, "requests": s.requests, "replays": s.replays})
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		http.Error(w, `{"error":"Idempotency-Key required"}`, http.StatusBadRequest)
		return
	}
	var in struct {
		Order  string `json:"order"`
		SKU    string `json:"sku"`
		Qty    int    `json:"qty"`
		Amount int    `json:"amount"`
	}
	if r.Body != nil && r.ContentLength != 0 {
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&in); err != nil {
			http.Error(w, `{"error":"bad JSON"}`, http.StatusBadRequest)
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	if a, ok := s.answers[key]; ok && (s.payDedup || !strings.HasPrefix(r.URL.Path, "/payments/")) {
		s.replays++
		write(w, a)
		return
	}
	if s.unavailable > 0 && chance(key) < s.unavailable && !s.failed[key] {
		// The key's first request fails before anything is applied.
		s.failed[key] = true
		w.Header().Set("Retry-After", "1")
		write(w, answer{http.StatusServiceUnavailable, []byte(`{"error":"try again"}`)})
		return
	}
	a := s.apply(r, in.Order, in.Amount)
	s.answers[key] = a
	if s.latency > 0 {
		// Applied, not yet answered: a client that gives up (or dies)
		// now does not know that it was.
		s.mu.Unlock()
		time.Sleep(s.latency)
		s.mu.Lock()
	}
	write(w, a)
}

// apply does what the request asks, once per key.
func (s *stub) apply(r *http.Request, order string, amount int) answer {
	p := strings.Trim(r.URL.Path, "/")
	parts := strings.Split(p, "/")
	count := func(order, what string) {
		if s.applied[order] == nil {
			s.applied[order] = map[string]int{}
		}
		s.applied[order][what]++
	}
	ok := func(status int, v any) answer {
		b, _ := json.Marshal(v)
		return answer{status, b}
	}
	switch {
	case r.Method == http.MethodPost && p == "stock/reservations":
		count(order, "reserve")
		return ok(http.StatusCreated, map[string]string{"id": "r-" + order})
	case r.Method == http.MethodDelete && len(parts) == 3 && parts[0] == "stock" && parts[1] == "reservations":
		count(strings.TrimPrefix(parts[2], "r-"), "release")
		return ok(http.StatusOK, map[string]string{"released": parts[2]})
	case r.Method == http.MethodPost && p == "payments/charges":
		if n := orderNumber(order); s.decline > 0 && n%s.decline == 0 {
			return ok(http.StatusPaymentRequired, map[string]string{"error": "card declined"})
		}
		count(order, "charge")
		return ok(http.StatusCreated, map[string]any{"id": "c-" + order, "status": "captured", "amount": amount})
	case r.Method == http.MethodPost && len(parts) == 4 && parts[0] == "payments" && parts[1] == "charges" && parts[3] == "refund":
		count(strings.TrimPrefix(parts[2], "c-"), "refund")
		return ok(http.StatusOK, map[string]string{"refunded": parts[2]})
	case r.Method == http.MethodPost && p == "shipping/shipments":
		count(order, "ship")
		return ok(http.StatusCreated, map[string]string{"id": "s-" + order})
	}
	return ok(http.StatusNotFound, map[string]string{"error": "no route " + r.Method + " " + r.URL.Path})
}

func write(w http.ResponseWriter, a answer) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	w.Write(a.body)
}

// orderNumber is the number at the end of an order id ("o-12": 12), -1
// if none.
func orderNumber(order string) int {
	i := strings.LastIndexAny(order, "-_")
	n, err := strconv.Atoi(order[i+1:])
	if err != nil {
		return -1
	}
	return n
}

// chance is a number in [0, 1) fixed by key.
func chance(key string) float64 {
	h := fnv.New64a()
	fmt.Fprint(h, key)
	return float64(h.Sum64()%1000) / 1000
}
