package idem

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// KeepAlive extends the claim's lease to lease from now, at most a third
// of the lease after KeepAlive is called and every third of it after that
// (KeepAliveEvery), until stop is called.
//
// When the store refuses an extension (ErrLeaseLost: another owner took
// over; ErrCompleted) or the lease is not one (ErrInvalid: not positive),
// the claim stops being extended and onLost is called with the refusal, so
// the caller can abandon the work. Other errors (a store that is briefly
// unavailable) are retried at the next tick, with two thirds of the lease
// still to run.
//
// stop does not wait for an extension already in progress; one that ends
// after stop returns is harmless, as every owner's write is fenced by its
// token, and does not call onLost.
//
// The extensions run on a context that ctx's cancellation does not end:
// work that goes on after its caller gave up (a client that disconnected)
// keeps its lease until it returns.
//
// Every claim of a ledger with the same lease is extended from one clock
// timer, not a timer per claim: most work ends before its first extension
// is due, so starting and stopping is what must cost little. The timer
// runs while any such claim is kept alive and stops at the first tick
// after none is. Each extension is its own store call, in its own
// goroutine, so a slow call for one key delays no other; a tick that finds
// a claim's previous extension still in progress leaves it be, and the
// claim is extended again as soon as that call returns.
func (c *Claim) KeepAlive(ctx context.Context, lease time.Duration, onLost func(error)) (stop func()) {
	k := &c.alive
	if !c.aliveTaken.CompareAndSwap(false, true) {
		// A second KeepAlive of one claim: the first's extension may
		// still be reading its state.
		k = &keepAlive{}
	}
	k.claim, k.ctx, k.onLost = c, ctx, onLost
	k.beat = c.l.beats.of(lease)
	k.beat.add(k)
	return k.stop
}

// KeepAliveEvery is how often KeepAlive extends a lease of the given
// length: every third of it, so that an extension can fail once and the
// next still comes in time, but at most every millisecond, so that a lease
// shorter than 3 ms (which only a test would give) does not re-arm its
// timer at once, over and over.
func KeepAliveEvery(lease time.Duration) time.Duration {
	return max(lease/3, time.Millisecond)
}

// keepAlive is one KeepAlive's state.
type keepAlive struct {
	claim  *Claim
	ctx    context.Context // the caller's; detached from its cancellation at the first extension
	onLost func(error)
	beat   *heartbeat

	// Guarded by beat.mu.
	prev, next *keepAlive
	listed     bool // in beat's list: not stopped, not lost
	extending  bool // an extension is in progress: a tick does not start another
	missed     bool // a tick came while extending: extend again once it returns
}

func (k *keepAlive) stop() { k.beat.remove(k) }

// heartbeats are a ledger's heartbeats, one per lease length.
type heartbeats struct {
	clock Clock
	last  atomic.Pointer[heartbeat] // the one used last: most callers use one lease
	mu    sync.Mutex
	byLen map[time.Duration]*heartbeat
}

// of returns the heartbeat of leases of length lease.
func (hs *heartbeats) of(lease time.Duration) *heartbeat {
	if h := hs.last.Load(); h != nil && h.lease == lease {
		return h
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	h := hs.byLen[lease]
	if h == nil {
		h = &heartbeat{all: hs, clock: hs.clock, lease: lease}
		h.tickFunc = h.tick
		if hs.byLen == nil {
			hs.byLen = map[time.Duration]*heartbeat{}
		}
		hs.byLen[lease] = h
	}
	hs.last.Store(h)
	return h
}

// forget drops an idle heartbeat, so that leases of many lengths, each
// used once, leave nothing behind. A claim may still be added to it: it
// works as well, it is only no longer found by length.
func (hs *heartbeats) forget(h *heartbeat) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.byLen[h.lease] == h {
		delete(hs.byLen, h.lease)
	}
}

// heartbeat extends the leases of one length of the claims kept alive
// from one clock timer. The first claim added while the timer is idle
// arms it; a tick re-arms it while any claim is listed and leaves it idle
// when none is, so a stream of short-lived claims neither starts nor
// stops timers.
type heartbeat struct {
	all      *heartbeats
	clock    Clock
	lease    time.Duration
	tickFunc func() // tick, bound once

	mu        sync.Mutex
	head      *keepAlive
	armed     bool
	stopTimer func() bool
}

func (h *heartbeat) add(k *keepAlive) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k.listed = true
	k.prev, k.next = nil, h.head
	if h.head != nil {
		h.head.prev = k
	}
	h.head = k
	if !h.armed {
		h.armed = true
		h.stopTimer = h.clock.AfterFunc(KeepAliveEvery(h.lease), h.tickFunc)
	}
}

func (h *heartbeat) remove(k *keepAlive) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.unlink(k)
}

// unlink takes k out of the list; h.mu is held.
func (h *heartbeat) unlink(k *keepAlive) {
	if !k.listed {
		return
	}
	k.listed = false
	if k.prev != nil {
		k.prev.next = k.next
	} else {
		h.head = k.next
	}
	if k.next != nil {
		k.next.prev = k.prev
	}
	k.prev, k.next = nil, nil
}

func (h *heartbeat) tick() {
	h.mu.Lock()
	if h.head == nil {
		h.armed, h.stopTimer = false, nil // the next add arms it again
		h.mu.Unlock()
		h.all.forget(h)
		return
	}
	var due []*keepAlive
	for k := h.head; k != nil; k = k.next {
		if k.extending {
			// A store call still in progress is not doubled: the
			// extension runs again as soon as it returns.
			k.missed = true
			continue
		}
		k.extending = true
		due = append(due, k)
	}
	h.stopTimer = h.clock.AfterFunc(KeepAliveEvery(h.lease), h.tickFunc)
	h.mu.Unlock()
	for _, k := range due {
		h.clock.AfterFunc(0, func() { h.extend(k) })
	}
}

func (h *heartbeat) extend(k *keepAlive) {
	for {
		// One extension of k runs at a time (extending), and the flag is
		// set and cleared under h.mu: k.ctx needs no lock of its own.
		if k.ctx.Done() != nil {
			k.ctx = context.WithoutCancel(k.ctx)
		}
		err := k.claim.Extend(k.ctx, h.lease)
		refused := errors.Is(err, ErrLeaseLost) || errors.Is(err, ErrCompleted) || errors.Is(err, ErrInvalid)
		h.mu.Lock()
		lost := refused && k.listed
		if lost {
			h.unlink(k)
			// The last claim lost: stop the timer now rather than at
			// the next tick. If it already fired, that tick finds the
			// list empty.
			if h.head == nil && h.armed && h.stopTimer() {
				h.armed, h.stopTimer = false, nil
			}
		}
		again := k.missed && k.listed
		k.missed = false
		k.extending = again
		h.mu.Unlock()
		if lost {
			k.onLost(err)
		}
		if !again {
			return
		}
	}
}
