package idemhttp

import (
	"errors"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// heartbeat extends the leases of a middleware's running first
// executions every third of the lease (idem.KeepAliveEvery) from one
// clock timer, instead of a timer per request: starting and stopping a
// timer for each request cost
// more than most handlers, which end long before a lease needs extending.
// The first execution that starts while the timer is idle arms it; a tick
// re-arms it while anything runs and leaves it idle when nothing does, so
// a stream of short requests neither starts nor stops timers. An
// execution is extended at most a third of the lease after it started and
// every third of the lease after that, each extension in its own clock
// goroutine, so a slow store call for one key delays no other (and a tick
// that finds one still in progress skips that key, as a timer per
// request re-armed after its call would).
//
// As with idem.Claim.KeepAlive, a refused extension (idem.ErrLeaseLost,
// idem.ErrCompleted) cancels the handler's context with the refusal as
// its cause, other errors are retried at the next tick, and removing an
// execution does not wait for an extension in progress: every owner's
// write is fenced by its token.
type heartbeat struct {
	clock idem.Clock
	lease time.Duration

	mu    sync.Mutex
	head  *execution // running executions, linked through beatPrev/beatNext
	armed bool
}

// add starts extending ex's lease.
func (h *heartbeat) add(ex *execution) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ex.beating = true
	ex.beatNext = h.head
	if h.head != nil {
		h.head.beatPrev = ex
	}
	h.head = ex
	if !h.armed {
		h.armed = true
		h.clock.AfterFunc(idem.KeepAliveEvery(h.lease), h.tick)
	}
}

// remove stops extending ex's lease.
func (h *heartbeat) remove(ex *execution) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !ex.beating {
		return
	}
	ex.beating = false
	if ex.beatPrev != nil {
		ex.beatPrev.beatNext = ex.beatNext
	} else {
		h.head = ex.beatNext
	}
	if ex.beatNext != nil {
		ex.beatNext.beatPrev = ex.beatPrev
	}
	ex.beatPrev, ex.beatNext = nil, nil
}

func (h *heartbeat) tick() {
	h.mu.Lock()
	if h.head == nil {
		h.armed = false // nothing runs: the next add arms it again
		h.mu.Unlock()
		return
	}
	var due []*execution
	for ex := h.head; ex != nil; ex = ex.beatNext {
		if !ex.extending { // a store call still in progress is not doubled
			ex.extending = true
			due = append(due, ex)
		}
	}
	h.clock.AfterFunc(idem.KeepAliveEvery(h.lease), h.tick)
	h.mu.Unlock()
	for _, ex := range due {
		h.clock.AfterFunc(0, func() { h.extend(ex) })
	}
}

func (h *heartbeat) extend(ex *execution) {
	err := ex.claim.Extend(ex.finish, h.lease)
	h.mu.Lock()
	ex.extending = false
	h.mu.Unlock()
	if errors.Is(err, idem.ErrLeaseLost) || errors.Is(err, idem.ErrCompleted) {
		h.remove(ex)
		ex.ctx.lose(err)
	}
}
