package messaging_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
)

// versioned reads "entity@version" from the Subject.
func versioned(m *messaging.Message) (string, int64, bool) {
	e, v, ok := strings.Cut(m.Subject, "@")
	if !ok {
		return "", 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return e, n, err == nil
}

func vmsg(entity string, v int64) *messaging.Message {
	return &messaging.Message{ID: fmt.Sprintf("%s-%d", entity, v), Subject: fmt.Sprintf("%s@%d", entity, v), Payload: []byte("x")}
}

// applier is a consumer that records the order it applied messages in.
type applier struct {
	c       *messaging.Consumer
	applied []string
	fail    map[string]int // fail this message id so many times
}

func newApplier(t *testing.T, l *idem.Ledger) *applier {
	a := &applier{fail: map[string]int{}}
	a.c = newConsumer(t, l, func(ctx context.Context, m *messaging.Message) error {
		if a.fail[m.ID] > 0 {
			a.fail[m.ID]--
			return errors.New("not now")
		}
		a.applied = append(a.applied, m.ID)
		return nil
	}, nil)
	return a
}

func newGuard(t *testing.T, l *idem.Ledger, cfg messaging.GuardConfig) *messaging.Guard {
	t.Helper()
	cfg.Versioned = versioned
	g, err := messaging.NewGuard(l, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func expect(t *testing.T, what string, d messaging.Decision, action messaging.Action) {
	t.Helper()
	if d.Action != action {
		t.Fatalf("%s: %+v, want %s", what, d, action)
	}
}

func TestGuardInOrderAndStale(t *testing.T) {
	l, _ := newLedger(t)
	ctx := context.Background()
	a := newApplier(t, l)
	g := newGuard(t, l, messaging.GuardConfig{})
	for v := int64(1); v <= 3; v++ {
		expect(t, fmt.Sprintf("version %d", v), g.Handle(ctx, vmsg("acct", v), a.c.Handle), messaging.Ack)
	}
	expect(t, "version 2 again", g.Handle(ctx, vmsg("acct", 2), a.c.Handle), messaging.AckSuperseded)
	// Another entity has its own order; unversioned messages pass through.
	expect(t, "other entity", g.Handle(ctx, vmsg("other", 1), a.c.Handle), messaging.Ack)
	expect(t, "unversioned", g.Handle(ctx, msg("plain", "x"), a.c.Handle), messaging.Ack)
	if got := strings.Join(a.applied, " "); got != "acct-1 acct-2 acct-3 other-1 plain" {
		t.Fatalf("applied %s", got)
	}
	d := g.Handle(ctx, vmsg("acct", 0), a.c.Handle)
	if d.Action != messaging.DeadLetter || !errors.Is(d.Err, idem.ErrInvalid) {
		t.Fatalf("version 0: %+v", d)
	}
}

func TestGuardHoldsAGapUntilItFills(t *testing.T) {
	l, clk := newLedger(t)
	ctx := context.Background()
	a := newApplier(t, l)
	g := newGuard(t, l, messaging.GuardConfig{MaxGap: time.Minute})
	expect(t, "v1", g.Handle(ctx, vmsg("acct", 1), a.c.Handle), messaging.Ack)
	d := g.Handle(ctx, vmsg("acct", 3), a.c.Handle)
	if d.Action != messaging.Retry || d.Delay != time.Second || !errors.Is(d.Err, messaging.ErrGap) {
		t.Fatalf("v3 before v2: %+v, want Retry after 1s with ErrGap", d)
	}
	clk.Advance(time.Second)
	// v2 fails once: not recorded as applied, v3 still waits.
	a.fail["acct-2"] = 1
	expect(t, "v2 failing", g.Handle(ctx, vmsg("acct", 2), a.c.Handle), messaging.Retry)
	expect(t, "v3 still", g.Handle(ctx, vmsg("acct", 3), a.c.Handle), messaging.Retry)
	clk.Advance(time.Second)
	expect(t, "v2", g.Handle(ctx, vmsg("acct", 2), a.c.Handle), messaging.Ack)
	expect(t, "v3 after the gap filled", g.Handle(ctx, vmsg("acct", 3), a.c.Handle), messaging.Ack)
	if got := strings.Join(a.applied, " "); got != "acct-1 acct-2 acct-3" {
		t.Fatalf("applied %s", got)
	}
}

func TestGuardReportsAGapPastMaxGap(t *testing.T) {
	l, clk := newLedger(t)
	ctx := context.Background()
	a := newApplier(t, l)
	var gaps []messaging.Gap
	cfg := messaging.GuardConfig{MaxGap: 10 * time.Second, GapRetry: 5 * time.Second,
		OnGap: func(ctx context.Context, m *messaging.Message, gap messaging.Gap) error {
			gaps = append(gaps, gap)
			return nil
		}}
	g := newGuard(t, l, cfg)
	expect(t, "v1", g.Handle(ctx, vmsg("acct", 1), a.c.Handle), messaging.Ack)
	since := clk.Now()
	for _, step := range []struct{ advance, delay time.Duration }{{0, 5 * time.Second}, {7 * time.Second, 3 * time.Second}} {
		clk.Advance(step.advance)
		d := g.Handle(ctx, vmsg("acct", 4), a.c.Handle)
		if d.Action != messaging.Retry || d.Delay != step.delay {
			t.Fatalf("v4 at +%s: %+v, want Retry after %s", clk.Now().Sub(since), d, step.delay)
		}
	}
	// A restart: a new guard over the same ledger remembers when v4 was
	// first held back.
	g = newGuard(t, l, cfg)
	clk.Advance(3 * time.Second)
	expect(t, "v4 past MaxGap", g.Handle(ctx, vmsg("acct", 4), a.c.Handle), messaging.Ack)
	if len(gaps) != 1 || gaps[0] != (messaging.Gap{Entity: "acct", Last: 1, Version: 4, Since: since}) {
		t.Fatalf("gaps reported: %+v", gaps)
	}
	expect(t, "v2 late", g.Handle(ctx, vmsg("acct", 2), a.c.Handle), messaging.AckSuperseded)
	expect(t, "v3 late", g.Handle(ctx, vmsg("acct", 3), a.c.Handle), messaging.AckSuperseded)
	expect(t, "v5", g.Handle(ctx, vmsg("acct", 5), a.c.Handle), messaging.Ack)
	if got := strings.Join(a.applied, " "); got != "acct-1 acct-4 acct-5" {
		t.Fatalf("applied %s", got)
	}
}

func TestGuardRestartContinues(t *testing.T) {
	l, _ := newLedger(t)
	ctx := context.Background()
	a := newApplier(t, l)
	g := newGuard(t, l, messaging.GuardConfig{})
	expect(t, "v1", g.Handle(ctx, vmsg("acct", 1), a.c.Handle), messaging.Ack)
	expect(t, "v2", g.Handle(ctx, vmsg("acct", 2), a.c.Handle), messaging.Ack)
	// A new process: new consumer and guard over the same store.
	b := newApplier(t, l)
	g = newGuard(t, l, messaging.GuardConfig{})
	expect(t, "v2 again", g.Handle(ctx, vmsg("acct", 2), b.c.Handle), messaging.AckSuperseded)
	expect(t, "v3", g.Handle(ctx, vmsg("acct", 3), b.c.Handle), messaging.Ack)
	if got := strings.Join(b.applied, " "); got != "acct-3" {
		t.Fatalf("after restart applied %s", got)
	}
}

// TestGuardRecordsADuplicateAsApplied: the consumer handled v1 but the
// guard's record of it did not happen (a crash); the redelivery is a
// duplicate for the consumer and is recorded then.
func TestGuardRecordsADuplicateAsApplied(t *testing.T) {
	l, _ := newLedger(t)
	ctx := context.Background()
	a := newApplier(t, l)
	g := newGuard(t, l, messaging.GuardConfig{})
	expect(t, "v1 without the guard", a.c.Handle(ctx, vmsg("acct", 1)), messaging.Ack)
	expect(t, "v1 through the guard", g.Handle(ctx, vmsg("acct", 1), a.c.Handle), messaging.AckDuplicate)
	expect(t, "v2", g.Handle(ctx, vmsg("acct", 2), a.c.Handle), messaging.Ack)
	expect(t, "v1 again", g.Handle(ctx, vmsg("acct", 1), a.c.Handle), messaging.AckSuperseded)
}

func TestGuardSerialisesAnEntity(t *testing.T) {
	l, clk := newLedger(t)
	ctx := context.Background()
	g := newGuard(t, l, messaging.GuardConfig{})
	started, finish := make(chan struct{}), make(chan struct{})
	first := make(chan messaging.Decision)
	go func() {
		first <- g.Handle(ctx, vmsg("acct", 1), func(ctx context.Context, m *messaging.Message) messaging.Decision {
			close(started)
			<-finish
			return messaging.Decision{Action: messaging.Ack}
		})
	}()
	<-started
	clk.Advance(2 * time.Second)
	d := g.Handle(ctx, vmsg("acct", 1), func(context.Context, *messaging.Message) messaging.Decision {
		t.Fatal("ran while the entity is held")
		return messaging.Decision{}
	})
	if d.Action != messaging.Retry || d.Delay != lease-2*time.Second || !errors.Is(d.Err, idem.ErrInFlight) {
		t.Fatalf("second message of a held entity: %+v", d)
	}
	close(finish)
	expect(t, "first", <-first, messaging.Ack)
	expect(t, "after", g.Handle(ctx, vmsg("acct", 1), nil), messaging.AckSuperseded)
}

func TestNewGuardBadConfig(t *testing.T) {
	l, _ := newLedger(t)
	for _, cfg := range []*messaging.GuardConfig{nil, {}, {Versioned: versioned, MaxGap: -1}, {Versioned: versioned, Scope: strings.Repeat("s", 300)}} {
		if _, err := messaging.NewGuard(l, cfg); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("NewGuard(%+v): %v, want ErrInvalid", cfg, err)
		}
	}
	if _, err := messaging.NewGuard(nil, &messaging.GuardConfig{Versioned: versioned}); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("nil ledger: %v", err)
	}
}
