package idemhttp

import (
	"errors"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// heartbeat extends the leases of a middleware's running first
// executions every third of the lease, from one clock timer armed while
// any runs, instead of a timer per request: starting and stopping a timer
// for each request cost more than most handlers, which end long before a
// lease needs extending. An execution is extended at most a third of the
// lease after it started and every third of the lease after that, each
// extension in its own clock goroutine, so a slow store call for one key
// delays no other.
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
	head  *execution  // running executions, linked through beatPrev/beatNext
	timer func() bool // stops the armed tick; nil when none is armed
	gen   uint64      // tells a tick that fired after it was stopped from the armed one
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
	if h.timer == nil {
		h.arm()
	}
}

// remove stops extending ex's lease; the timer stops with the last one.
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
	if h.head == nil && h.timer != nil {
		h.timer()
		h.timer = nil
	}
}

// arm schedules the next tick; h.mu is held.
func (h *heartbeat) arm() {
	h.gen++
	gen := h.gen
	h.timer = h.clock.AfterFunc(h.lease/3, func() { h.tick(gen) })
}

func (h *heartbeat) tick(gen uint64) {
	h.mu.Lock()
	if gen != h.gen || h.timer == nil {
		h.mu.Unlock()
		return // stopped after it fired, or superseded
	}
	var due []*execution
	for ex := h.head; ex != nil; ex = ex.beatNext {
		due = append(due, ex)
	}
	h.arm()
	h.mu.Unlock()
	for _, ex := range due {
		h.clock.AfterFunc(0, func() { h.extend(ex) })
	}
}

func (h *heartbeat) extend(ex *execution) {
	err := ex.claim.Extend(ex.finish, h.lease)
	if errors.Is(err, idem.ErrLeaseLost) || errors.Is(err, idem.ErrCompleted) {
		h.remove(ex)
		ex.ctx.lose(err)
	}
}
