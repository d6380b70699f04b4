package idem_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// TestManualClockAfterFunc: a function runs once the clock reaches its
// time (at once for a non-positive delay), in its own goroutine; stop
// before then prevents it and says so, stop after says it did not.
func TestManualClockAfterFunc(t *testing.T) {
	t.Parallel()
	c := idem.NewManualClock(epoch)
	fired := make(chan string, 3)
	stopDue := c.AfterFunc(time.Second, func() { fired <- "due" })
	stopCancelled := c.AfterFunc(time.Second, func() { fired <- "cancelled" })
	c.AfterFunc(0, func() { fired <- "now" })
	if got := <-fired; got != "now" {
		t.Fatalf("fired %q first, want now", got)
	}
	if got := c.Waiters(); got != 2 {
		t.Fatalf("%d waiters, want 2", got)
	}
	if !stopCancelled() {
		t.Fatal("stop before the time reported that it prevented nothing")
	}
	if stopCancelled() {
		t.Fatal("a second stop reported that it prevented the call")
	}
	c.Advance(time.Second - 1)
	if got := c.Waiters(); got != 1 {
		t.Fatalf("%d waiters before the time, want 1", got)
	}
	c.Advance(1)
	if got := <-fired; got != "due" {
		t.Fatalf("fired %q, want due", got)
	}
	if stopDue() {
		t.Fatal("stop after the call reported that it prevented it")
	}
	if got := c.Waiters(); got != 0 || len(fired) != 0 {
		t.Fatalf("%d waiters and %d more calls after the time, want none", got, len(fired))
	}
}

// TestClockSleep: Sleep returns nil once d has passed and the context's
// error when it is done first, on the manual and the system clock.
func TestClockSleep(t *testing.T) {
	t.Parallel()
	c := idem.NewManualClock(epoch)
	slept := make(chan error, 1)
	go func() { slept <- c.Sleep(context.Background(), time.Minute) }()
	waitWaiters(t, c, 1)
	c.Advance(time.Minute)
	if err := <-slept; err != nil {
		t.Fatalf("manual Sleep: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Sleep(ctx, time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("manual Sleep on a done context: %v", err)
	}
	if err := (idem.SystemClock{}).Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("system Sleep on a done context: %v", err)
	}
	if err := (idem.SystemClock{}).Sleep(context.Background(), time.Microsecond); err != nil {
		t.Fatalf("system Sleep: %v", err)
	}
}
