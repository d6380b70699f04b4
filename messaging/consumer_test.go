package messaging_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
)

var t0 = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

const lease = 10 * time.Second

func newLedger(t *testing.T) (*idem.Ledger, *idem.ManualClock) {
	t.Helper()
	clk := idem.NewManualClock(t0)
	l, err := idem.New(memstore.New(&memstore.Config{Clock: clk}), &idem.Config{Clock: clk, Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, clk
}

func newConsumer(t *testing.T, l *idem.Ledger, h messaging.Handler, cfg *messaging.Config) *messaging.Consumer {
	t.Helper()
	c, err := messaging.NewConsumer(l, h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func msg(id, payload string) *messaging.Message {
	return &messaging.Message{ID: id, Subject: "orders", Payload: []byte(payload), Delivery: 1}
}

func TestAckThenDuplicate(t *testing.T) {
	l, _ := newLedger(t)
	var runs atomic.Int32
	var gotKey string
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		runs.Add(1)
		gotKey, _ = idem.KeyFrom(ctx)
		return nil
	}, nil)
	ctx := context.Background()
	d := c.Handle(ctx, msg("m1", "order-1"))
	if d.Action != messaging.Ack || d.Key != "m1" || d.Err != nil || d.Delay != 0 {
		t.Fatalf("first delivery: %+v, want Ack of key m1", d)
	}
	if gotKey != "m1" {
		t.Fatalf("the handler's context carries key %q, want m1", gotKey)
	}
	rec, err := l.Get(ctx, "messages", "m1")
	if err != nil || rec.State != idem.StateCompleted || rec.Outcome.Meta["messaging"] != "handled" {
		t.Fatalf("stored record %+v (%v), want completed as handled", rec, err)
	}
	for range 3 {
		d = c.Handle(ctx, msg("m1", "order-1"))
		if d.Action != messaging.AckDuplicate || d.Err != nil {
			t.Fatalf("duplicate: %+v, want AckDuplicate", d)
		}
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

func TestBusinessKey(t *testing.T) {
	l, _ := newLedger(t)
	var keys []string
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		k, _ := idem.KeyFrom(ctx)
		keys = append(keys, k)
		return nil
	}, &messaging.Config{Scope: "payments", Key: func(m *messaging.Message) string { return "order:" + m.Headers["order"] }})
	ctx := context.Background()
	a, b := msg("id-1", "charge 5"), msg("id-2", "charge 5") // a producer resent under a new id
	a.Headers = map[string]string{"order": "7"}
	b.Headers = map[string]string{"order": "7"}
	if d := c.Handle(ctx, a); d.Action != messaging.Ack || d.Key != "order:7" {
		t.Fatalf("first: %+v", d)
	}
	if d := c.Handle(ctx, b); d.Action != messaging.AckDuplicate || d.Key != "order:7" {
		t.Fatalf("resent under another id: %+v, want AckDuplicate", d)
	}
	if len(keys) != 1 || keys[0] != "order:7" {
		t.Fatalf("handler ran with keys %q, want once with order:7", keys)
	}
	if _, err := l.Get(ctx, "payments", "order:7"); err != nil {
		t.Fatalf("record not in the configured scope: %v", err)
	}
}

func TestInFlightElsewhereIsRetriedAfterTheLease(t *testing.T) {
	l, clk := newLedger(t)
	started, finish := make(chan struct{}), make(chan struct{})
	var runs atomic.Int32
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		runs.Add(1)
		close(started)
		<-finish
		return nil
	}, nil)
	ctx := context.Background()
	first := make(chan messaging.Decision)
	go func() { first <- c.Handle(ctx, msg("m1", "x")) }()
	<-started
	clk.Advance(3 * time.Second) // short of the first heartbeat (lease/3)
	d := c.Handle(ctx, msg("m1", "x"))
	if d.Action != messaging.Retry || d.Delay != 7*time.Second || !errors.Is(d.Err, idem.ErrInFlight) {
		t.Fatalf("duplicate while in flight: %+v, want Retry after 7s (the lease left)", d)
	}
	close(finish)
	if d := <-first; d.Action != messaging.Ack {
		t.Fatalf("original: %+v", d)
	}
	if d := c.Handle(ctx, msg("m1", "x")); d.Action != messaging.AckDuplicate {
		t.Fatalf("redelivery after the original: %+v, want AckDuplicate", d)
	}
	if runs.Load() != 1 {
		t.Fatalf("handler ran %d times", runs.Load())
	}
}

func TestRetryableFailureReleasesAndBacksOff(t *testing.T) {
	l, clk := newLedger(t)
	ctx := context.Background()
	runs := 0
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		runs++
		if runs <= 2 {
			return fmt.Errorf("downstream busy %d", runs)
		}
		return nil
	}, nil)
	for i, want := range []time.Duration{time.Second, 2 * time.Second} {
		d := c.Handle(ctx, msg("m1", "x"))
		if d.Action != messaging.Retry || d.Delay != want || d.Err == nil || !strings.Contains(d.Err.Error(), fmt.Sprintf("downstream busy %d", i+1)) {
			t.Fatalf("attempt %d: %+v, want Retry after %s with the handler's error", i+1, d, want)
		}
		rec, err := l.Get(ctx, "messages", "m1")
		if err != nil || rec.State != idem.StateReleased || rec.Attempts != i+1 {
			t.Fatalf("after attempt %d the key is %+v (%v), want released", i+1, rec, err)
		}
		clk.Advance(d.Delay)
	}
	if d := c.Handle(ctx, msg("m1", "x")); d.Action != messaging.Ack {
		t.Fatalf("third attempt: %+v, want Ack", d)
	}
	if runs != 3 {
		t.Fatalf("handler ran %d times, want 3", runs)
	}
	if d := c.Handle(ctx, msg("m1", "x")); d.Action != messaging.AckDuplicate {
		t.Fatalf("after success: %+v", d)
	}
}

type deadLetters struct {
	mu    sync.Mutex
	calls []deadLetter
	fail  int // fail this many calls first
}

type deadLetter struct {
	id       string
	attempts []messaging.Attempt
	err      error
}

func (dl *deadLetters) hook(ctx context.Context, m *messaging.Message, attempts []messaging.Attempt, err error) error {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	dl.calls = append(dl.calls, deadLetter{m.ID, attempts, err})
	if dl.fail > 0 {
		dl.fail--
		return errors.New("dead-letter queue down")
	}
	return nil
}

func TestAttemptsExhaustedDeadLettersWithEveryAttempt(t *testing.T) {
	l, clk := newLedger(t)
	ctx := context.Background()
	var dl deadLetters
	runs := 0
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		runs++
		return fmt.Errorf("boom %d", runs)
	}, &messaging.Config{MaxAttempts: 3, DeadLetter: dl.hook})
	var d messaging.Decision
	for i := range 3 {
		d = c.Handle(ctx, msg("m1", "x"))
		if i < 2 && d.Action != messaging.Retry {
			t.Fatalf("attempt %d: %+v, want Retry", i+1, d)
		}
		clk.Advance(time.Second)
	}
	if d.Action != messaging.DeadLetter || d.Err == nil || d.Err.Error() != "boom 3" {
		t.Fatalf("last attempt: %+v, want DeadLetter with boom 3", d)
	}
	if len(dl.calls) != 1 {
		t.Fatalf("dead-letter hook called %d times, want 1", len(dl.calls))
	}
	got := dl.calls[0]
	if got.id != "m1" || got.err.Error() != "boom 3" || len(got.attempts) != 3 {
		t.Fatalf("hook got %+v", got)
	}
	for i, a := range got.attempts {
		if want := fmt.Sprintf("boom %d", i+1); a.Error != want || !a.At.Equal(t0.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("attempt %d recorded as %+v, want %q at %s", i+1, a, want, t0.Add(time.Duration(i)*time.Second))
		}
	}
	// Completed as failed: duplicates are acked, the handler does not run.
	d = c.Handle(ctx, msg("m1", "x"))
	var oe *idem.OutcomeError
	if d.Action != messaging.AckDuplicate || !errors.As(d.Err, &oe) || oe.Message != "boom 3" {
		t.Fatalf("duplicate of a dead letter: %+v, want AckDuplicate with the failure", d)
	}
	if runs != 3 || len(dl.calls) != 1 {
		t.Fatalf("handler ran %d times, hook %d; want 3 and 1", runs, len(dl.calls))
	}
	// Ledger.Do sees the same failure.
	_, err := l.Do(ctx, "messages", "m1", messaging.PayloadFingerprint(msg("m1", "x")), func(context.Context, *idem.Claim) (idem.Outcome, error) {
		t.Fatal("ran")
		return idem.Outcome{}, nil
	})
	if !errors.As(err, &oe) || oe.Message != "boom 3" {
		t.Fatalf("Ledger.Do on the key: %v", err)
	}
}

func TestPermanentDeadLettersAtOnce(t *testing.T) {
	l, _ := newLedger(t)
	ctx := context.Background()
	dl := deadLetters{fail: 1}
	runs := 0
	bad := errors.New("malformed order")
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		runs++
		return messaging.Permanent(bad)
	}, &messaging.Config{DeadLetter: dl.hook})
	// The hook fails the first time: Retry, and the next delivery
	// dead-letters without running the handler again.
	d := c.Handle(ctx, msg("m1", "x"))
	if d.Action != messaging.Retry || !errors.Is(d.Err, bad) {
		t.Fatalf("hook failed: %+v, want Retry", d)
	}
	d = c.Handle(ctx, msg("m1", "x"))
	if d.Action != messaging.DeadLetter || d.Err == nil || d.Err.Error() != bad.Error() {
		t.Fatalf("second delivery: %+v, want DeadLetter", d)
	}
	if runs != 1 || len(dl.calls) != 2 {
		t.Fatalf("handler ran %d times, hook %d; want 1 and 2", runs, len(dl.calls))
	}
	for _, call := range dl.calls {
		if len(call.attempts) != 1 || call.attempts[0].Error != "malformed order" || !call.attempts[0].At.Equal(t0) {
			t.Fatalf("hook got attempts %+v", call.attempts)
		}
	}
	if !messaging.IsPermanent(messaging.Permanent(bad)) || messaging.IsPermanent(bad) || messaging.Permanent(nil) != nil {
		t.Fatal("IsPermanent/Permanent")
	}
}

func TestCrashedAttemptsCount(t *testing.T) {
	l, clk := newLedger(t)
	ctx := context.Background()
	var dl deadLetters
	runs := 0
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error { runs++; return nil },
		&messaging.Config{MaxAttempts: 2, DeadLetter: dl.hook})
	fp := messaging.PayloadFingerprint(msg("m1", "poison"))
	for range 2 { // two consumers die holding the key (a poison message)
		if _, err := l.Begin(ctx, "messages", "m1", fp); err != nil {
			t.Fatal(err)
		}
		clk.Advance(lease)
	}
	d := c.Handle(ctx, msg("m1", "poison"))
	if d.Action != messaging.DeadLetter || !errors.Is(d.Err, messaging.ErrAttemptsExhausted) {
		t.Fatalf("third owner: %+v, want DeadLetter (attempts exhausted)", d)
	}
	if runs != 0 || len(dl.calls) != 1 || len(dl.calls[0].attempts) != 2 {
		t.Fatalf("handler ran %d times; hook calls %+v", runs, dl.calls)
	}
	for _, a := range dl.calls[0].attempts {
		if !a.At.IsZero() || !strings.HasPrefix(a.Error, "no record") {
			t.Fatalf("a crashed attempt recorded as %+v", a)
		}
	}
}

func TestMismatchIsNeverApplied(t *testing.T) {
	l, _ := newLedger(t)
	ctx := context.Background()
	var dl deadLetters
	var applied []string
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		applied = append(applied, string(m.Payload))
		return nil
	}, &messaging.Config{DeadLetter: dl.hook})
	c.Handle(ctx, msg("m1", "order-1"))
	d := c.Handle(ctx, msg("m1", "order-2"))
	if d.Action != messaging.DeadLetter || !errors.Is(d.Err, idem.ErrFingerprintMismatch) {
		t.Fatalf("other payload under m1: %+v, want DeadLetter with a mismatch", d)
	}
	if len(applied) != 1 || applied[0] != "order-1" {
		t.Fatalf("applied %q", applied)
	}
	if len(dl.calls) != 1 || dl.calls[0].attempts != nil || !errors.Is(dl.calls[0].err, idem.ErrFingerprintMismatch) {
		t.Fatalf("hook calls %+v", dl.calls)
	}

	// OnMismatch replaces the dead-letter hook; its failure is a Retry.
	var seen []string
	fail := true
	c = newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error { return nil }, &messaging.Config{
		DeadLetter: dl.hook,
		OnMismatch: func(ctx context.Context, m *messaging.Message) error {
			seen = append(seen, string(m.Payload))
			if fail {
				fail = false
				return errors.New("report queue down")
			}
			return nil
		}})
	if d := c.Handle(ctx, msg("m1", "order-3")); d.Action != messaging.Retry || !errors.Is(d.Err, idem.ErrFingerprintMismatch) {
		t.Fatalf("OnMismatch failed: %+v, want Retry", d)
	}
	if d := c.Handle(ctx, msg("m1", "order-3")); d.Action != messaging.DeadLetter || !errors.Is(d.Err, idem.ErrFingerprintMismatch) {
		t.Fatalf("OnMismatch: %+v, want DeadLetter", d)
	}
	if len(seen) != 2 || len(dl.calls) != 1 {
		t.Fatalf("OnMismatch saw %q, dead-letter hook %d calls", seen, len(dl.calls))
	}
}

func TestBadInput(t *testing.T) {
	l, _ := newLedger(t)
	ctx := context.Background()
	var dl deadLetters
	h := func(ctx context.Context, m *messaging.Message) error { t.Fatal("handler ran"); return nil }
	c := newConsumer(t, l, h, &messaging.Config{DeadLetter: dl.hook})
	if d := c.Handle(ctx, msg("", "x")); d.Action != messaging.DeadLetter || !errors.Is(d.Err, idem.ErrInvalid) {
		t.Fatalf("empty id: %+v", d)
	}
	if d := c.Handle(ctx, msg(strings.Repeat("k", 300), "x")); d.Action != messaging.DeadLetter || !errors.Is(d.Err, idem.ErrInvalid) {
		t.Fatalf("oversized id: %+v", d)
	}
	if d := c.Handle(ctx, nil); d.Action != messaging.DeadLetter || !errors.Is(d.Err, idem.ErrInvalid) {
		t.Fatalf("nil message: %+v", d)
	}
	if len(dl.calls) != 2 {
		t.Fatalf("hook calls %d, want 2", len(dl.calls))
	}
	for _, bad := range []struct {
		l   *idem.Ledger
		h   messaging.Handler
		cfg *messaging.Config
	}{
		{nil, h, nil}, {l, nil, nil},
		{l, h, &messaging.Config{MaxAttempts: -1}},
		{l, h, &messaging.Config{Lease: -time.Second}},
		{l, h, &messaging.Config{MaxResult: -1}},
		{l, h, &messaging.Config{Scope: strings.Repeat("s", 250)}},
	} {
		if _, err := messaging.NewConsumer(bad.l, bad.h, bad.cfg); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("NewConsumer(%+v): %v, want ErrInvalid", bad.cfg, err)
		}
	}
}

func TestStoreDownIsRetry(t *testing.T) {
	l, _ := newLedger(t)
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error { t.Fatal("ran"); return nil }, nil)
	l.Close()
	d := c.Handle(context.Background(), msg("m1", "x"))
	if d.Action != messaging.Retry || d.Delay != time.Second || !errors.Is(d.Err, idem.ErrClosed) {
		t.Fatalf("closed store: %+v, want Retry after 1s with ErrClosed", d)
	}
}

func TestDefaultBackoff(t *testing.T) {
	for attempt, want := range map[int]time.Duration{0: time.Second, 1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second,
		6: 32 * time.Second, 7: time.Minute, 100: time.Minute} {
		if got := messaging.DefaultBackoff(attempt); got != want {
			t.Errorf("DefaultBackoff(%d) = %s, want %s", attempt, got, want)
		}
	}
}

func TestActionString(t *testing.T) {
	for a, want := range map[messaging.Action]string{messaging.Ack: "ack", messaging.AckDuplicate: "ack-duplicate",
		messaging.AckSuperseded: "ack-superseded", messaging.Retry: "retry", messaging.DeadLetter: "dead-letter", 0: "Action(0)"} {
		if a.String() != want {
			t.Errorf("%d: %q, want %q", int(a), a.String(), want)
		}
		if a.Acked() != (a != messaging.Retry && a != 0) {
			t.Errorf("%s.Acked() = %v", a, a.Acked())
		}
	}
}

// TestConcurrentDuplicates delivers each of many messages many times from
// many goroutines at once; every delivery retries until acked. The handler
// runs exactly once per key.
func TestConcurrentDuplicates(t *testing.T) {
	l, _ := newLedger(t)
	const messages, copies, workers = 40, 8, 16
	var mu sync.Mutex
	runs := map[string]int{}
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		mu.Lock()
		runs[m.ID]++
		mu.Unlock()
		return nil
	}, nil)
	work := make(chan *messaging.Message)
	var acks, dups atomic.Int32
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for m := range work {
				for {
					d := c.Handle(context.Background(), m)
					if d.Action == messaging.Retry {
						continue // in flight at another worker: redelivered
					}
					switch d.Action {
					case messaging.Ack:
						acks.Add(1)
					case messaging.AckDuplicate:
						dups.Add(1)
					default:
						t.Errorf("%s: %+v", m.ID, d)
					}
					break
				}
			}
		})
	}
	for i := range copies {
		for j := range messages {
			work <- msg(fmt.Sprintf("m%d", (j+i)%messages), fmt.Sprintf("order-%d", (j+i)%messages))
		}
	}
	close(work)
	wg.Wait()
	if len(runs) != messages || acks.Load() != messages || dups.Load() != messages*(copies-1) {
		t.Fatalf("%d keys ran, %d acks, %d duplicates; want %d, %d, %d", len(runs), acks.Load(), dups.Load(), messages, messages, messages*(copies-1))
	}
	for id, n := range runs {
		if n != 1 {
			t.Errorf("%s ran %d times", id, n)
		}
	}
}

func TestPanickingHandlerReleasesTheKey(t *testing.T) {
	l, _ := newLedger(t)
	ctx := context.Background()
	runs := 0
	c := newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		runs++
		if runs == 1 {
			panic("handler bug")
		}
		return nil
	}, nil)
	func() {
		defer func() {
			if r := recover(); r != "handler bug" {
				t.Fatalf("recovered %v, want the handler's panic", r)
			}
		}()
		c.Handle(ctx, msg("m1", "x"))
	}()
	rec, err := l.Get(ctx, "messages", "m1")
	if err != nil || rec.State != idem.StateReleased {
		t.Fatalf("after the panic the key is %+v (%v), want released", rec, err)
	}
	if d := c.Handle(ctx, msg("m1", "x")); d.Action != messaging.Ack || runs != 2 {
		t.Fatalf("redelivery: %+v after %d runs, want Ack on the second", d, runs)
	}
}
