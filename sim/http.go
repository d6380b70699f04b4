package sim

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"time"
)

// HTTPServer serves an http.Handler from a process of the world. Requests
// reach it over the world's network; each runs as a task of the process,
// so a crash kills the requests in progress, and a restart builds the
// handler again, from nothing but what build reaches (the durable store).
type HTTPServer struct {
	w       *World
	proc    *Process
	handler http.Handler
}

// NewHTTPServer starts a process called name serving what build returns.
func (w *World) NewHTTPServer(name string, build func() http.Handler) *HTTPServer {
	s := &HTTPServer{w: w}
	s.proc = w.NewProcess(name, func(*Process) { s.handler = build() })
	s.proc.Start()
	return s
}

// Process returns the server's process, to make it Crashable.
func (s *HTTPServer) Process() *Process { return s.proc }

// HTTPAnswer is a response as a client received it.
type HTTPAnswer struct {
	Tag    string // the tag of the request it answers
	Status int
	Header http.Header
	Body   string
}

// serve runs one delivered request, if the server is up (a request to a
// server that is down is refused: the client times out).
func (s *HTTPServer) serve(newRequest func() *http.Request, tag string, reply *Mailbox) {
	if !s.proc.Alive() {
		return
	}
	s.proc.Go("req", func() {
		r := newRequest()
		rec := httptest.NewRecorder()
		s.handler.ServeHTTP(rec, r)
		ans := HTTPAnswer{Tag: tag, Status: rec.Code, Header: rec.Header(), Body: rec.Body.String()}
		s.w.Log("respond", r.Header.Get("Idempotency-Key"), strconv.Itoa(ans.Status))
		s.w.Send("response", func() { reply.Deliver(ans) })
	})
}

// FinalStatus reports whether an answer ends a logical request: a retry
// with the same key would get the same answer. In flight or lease lost
// (409), timed out (408), rate-limited (429) and 5xx (released, or not
// recorded) are not final.
func FinalStatus(status int) bool {
	switch {
	case status == http.StatusConflict, status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		return false
	case status >= 500:
		return false
	}
	return true
}

// CallHTTP is a client's logical request: it sends what newRequest makes
// to s over the network and waits up to two seconds for the answer,
// retrying after a pause on a time-out or an answer that is not final
// (FinalStatus), at most attempts times. Every answer that arrives at box is passed to seen, late
// ones to earlier requests too. It returns the final answer, if one came.
func (w *World) CallHTTP(s *HTTPServer, box *Mailbox, tag string, newRequest func() *http.Request, seen func(HTTPAnswer), attempts int) (HTTPAnswer, bool) {
	for range attempts {
		w.Log("request", "", tag)
		w.Send("request", func() { s.serve(newRequest, tag, box) })
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
			a := m.(HTTPAnswer)
			seen(a)
			if a.Tag != tag {
				continue // a late answer to an earlier request
			}
			if FinalStatus(a.Status) {
				return a, true
			}
			break // not final (in flight, unavailable): retry after a pause
		}
		if err := w.Sleep(w.Between(50*time.Millisecond, 400*time.Millisecond)); err != nil {
			break
		}
	}
	return HTTPAnswer{}, false
}

// DeliverAtLeastOnce hands a message to a random consumer over the network
// (handle runs as a task of consumers[i]), and again every ackTimeout
// until acked reports true, at most max times: a broker's at-least-once
// delivery. The network may lose or duplicate each delivery.
func (w *World) DeliverAtLeastOnce(what string, consumers []*Process, ackTimeout time.Duration, max int, acked func() bool, handle func(i int)) {
	n := 0
	var deliver func()
	deliver = func() {
		if acked() || n >= max {
			return
		}
		n++
		i := w.rng.IntN(len(consumers))
		w.Send("deliver "+what, func() {
			consumers[i].Go("handle", func() { handle(i) })
		})
		w.at(ackTimeout, deliver)
	}
	deliver()
}
