package idem

import (
	"context"
	"sync"
	"time"
)

// Clock is the source of time for a ledger and for stores that judge leases
// in process (memstore, pebblestore). Tests inject a *ManualClock; the
// simulator (package sim) injects a virtual clock that also schedules the
// goroutines waiting on it, which is why waiting goes through the clock
// (AfterFunc, Sleep) and never through the time package directly.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed.
	After(d time.Duration) <-chan time.Time
	// AfterFunc calls f in its own goroutine once d has passed, unless stop
	// is called first; stop reports whether it prevented the call.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
	// Sleep blocks until d has passed or ctx is done, and then returns
	// ctx's error, if any.
	Sleep(ctx context.Context, d time.Duration) error
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// After is time.After.
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// AfterFunc is time.AfterFunc.
func (SystemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Sleep waits for d or ctx.
func (SystemClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	return sleepOn(ctx, t.C)
}

func sleepOn(ctx context.Context, fired <-chan time.Time) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-fired:
		return ctx.Err()
	}
}

// ManualClock is a Clock that moves only when told to. The zero value starts
// at the zero time; NewManualClock starts at a given instant. It is safe for
// concurrent use.
type ManualClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*manualWaiter
}

type manualWaiter struct {
	at time.Time
	ch chan time.Time // After's; nil for AfterFunc's
	f  func()
}

// NewManualClock returns a ManualClock reading start.
func NewManualClock(start time.Time) *ManualClock { return &ManualClock{now: start} }

// Now returns the clock's current reading.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After returns a channel that receives when Advance or Set moves the clock
// to at least now+d. A non-positive d fires at once.
func (c *ManualClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.add(&manualWaiter{ch: ch}, d)
	return ch
}

// AfterFunc calls f in its own goroutine when Advance or Set moves the clock
// to at least now+d. A non-positive d calls it at once.
func (c *ManualClock) AfterFunc(d time.Duration, f func()) func() bool {
	w := &manualWaiter{f: f}
	c.add(w, d)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.waiters {
			if x == w {
				c.waiters = append(c.waiters[:i], c.waiters[i+1:]...)
				return true
			}
		}
		return false
	}
}

// Sleep waits until the clock has moved d forward, or ctx is done.
func (c *ManualClock) Sleep(ctx context.Context, d time.Duration) error {
	return sleepOn(ctx, c.After(d))
}

func (c *ManualClock) add(w *manualWaiter, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w.at = c.now.Add(d)
	if d <= 0 {
		c.fire(w)
		return
	}
	c.waiters = append(c.waiters, w)
}

func (c *ManualClock) fire(w *manualWaiter) {
	if w.f != nil {
		go w.f()
		return
	}
	w.ch <- c.now
}

// Advance moves the clock forward by d and fires the timers that are due.
func (c *ManualClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// Set moves the clock to t (never backwards) and fires the timers that are
// due.
func (c *ManualClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			kept = append(kept, w)
			continue
		}
		c.fire(w)
	}
	clear(c.waiters[len(kept):])
	c.waiters = kept
}

// Waiters returns how many timers are pending; a test uses it to know that a
// goroutine is blocked on the clock before advancing it.
func (c *ManualClock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}
