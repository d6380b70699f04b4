package pgstore

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
	"github.com/idemkit/idem/internal/wait"
	"github.com/idemkit/idem/messaging"
	"github.com/jackc/pgx/v5"
)

// inboxFixture is a store with a business table, orders (id, note), whose
// id is not unique: a message applied twice shows as two rows.
type inboxFixture struct {
	s      *Store
	orders string
	runs   atomic.Int64 // handler runs
}

func newInboxFixture(t *testing.T) *inboxFixture {
	t.Helper()
	f := &inboxFixture{s: newStore(t)}
	f.orders = pgx.Identifier{f.s.Schema(), "orders"}.Sanitize()
	if _, err := f.s.Pool().Exec(context.Background(), `CREATE TABLE `+f.orders+` (id text NOT NULL, note text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return f
}

// count is the number of order rows with id.
func (f *inboxFixture) count(t *testing.T, id string) int {
	t.Helper()
	var n int
	if err := f.s.Pool().QueryRow(context.Background(), `SELECT count(*) FROM `+f.orders+` WHERE id = $1`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// insert is a handler that writes the order row, then returns fail.
func (f *inboxFixture) insert(fail error) InboxHandler {
	return func(ctx context.Context, tx pgx.Tx, m *messaging.Message) error {
		f.runs.Add(1)
		if _, err := tx.Exec(ctx, `INSERT INTO `+f.orders+` (id, note) VALUES ($1, $2)`, m.ID, string(m.Payload)); err != nil {
			return err
		}
		return fail
	}
}

func (f *inboxFixture) record(t *testing.T, scope, key string) *idem.Record {
	t.Helper()
	rec, err := f.s.Get(context.Background(), &idem.KeyParams{Scope: scope, Key: key})
	if err != nil {
		t.Fatalf("record %s/%s: %v", scope, key, err)
	}
	return rec
}

// The handler's row and the dedup record commit together: after an Ack
// both are there; a redelivery (the crash between commit and ack) is a
// duplicate that runs nothing; a failed handler leaves neither.
func TestInboxCommitsTogether(t *testing.T) {
	t.Parallel()
	f := newInboxFixture(t)
	ctx := context.Background()
	in := f.s.Inbox(nil)
	m := &messaging.Message{ID: "order-1", Subject: "orders", Payload: []byte("first"), Delivery: 1}
	var sawKey string
	d := in.Handle(ctx, m, func(ctx context.Context, tx pgx.Tx, m *messaging.Message) error {
		sawKey, _ = idem.KeyFrom(ctx)
		return f.insert(nil)(ctx, tx, m)
	})
	if d.Action != messaging.Ack || d.Key != "order-1" || d.Err != nil {
		t.Fatalf("first delivery: %+v, want ack of key order-1", d)
	}
	if sawKey != "order-1" {
		t.Errorf("the handler's ctx carries key %q, want order-1", sawKey)
	}
	if n := f.count(t, "order-1"); n != 1 {
		t.Fatalf("%d order rows after the ack, want 1", n)
	}
	if rec := f.record(t, DefaultInboxScope, "order-1"); rec.State != idem.StateCompleted || rec.Attempts != 1 {
		t.Fatalf("dedup record after the ack: %s attempts %d, want completed at attempt 1", rec.State, rec.Attempts)
	}
	// The adapter died before acking: the broker delivers it again, to
	// this consumer or another.
	for i := range 3 {
		m2 := *m
		m2.Delivery = 2 + i
		d := f.s.Inbox(nil).Handle(ctx, &m2, f.insert(nil))
		if d.Action != messaging.AckDuplicate || d.Key != "order-1" {
			t.Fatalf("redelivery %d: %+v, want ack-duplicate", i+1, d)
		}
	}
	if n, runs := f.count(t, "order-1"), f.runs.Load(); n != 1 || runs != 1 {
		t.Errorf("after 3 redeliveries: %d order rows, %d handler runs; want 1 and 1", n, runs)
	}

	// A handler that wrote its row and then failed: the row rolls back
	// with the claim; only the counted failure is left.
	d = in.Handle(ctx, &messaging.Message{ID: "order-2", Payload: []byte("x")}, f.insert(errors.New("stock service down")))
	if d.Action != messaging.Retry || d.Delay != time.Second || d.Err == nil || !strings.Contains(d.Err.Error(), "stock service down") {
		t.Fatalf("failed handler: %+v, want retry after 1s with its error", d)
	}
	if n := f.count(t, "order-2"); n != 0 {
		t.Errorf("a failed handler left %d order rows, want 0", n)
	}
	rec := f.record(t, DefaultInboxScope, "order-2")
	if rec.State != idem.StateReleased || rec.Attempts != 1 {
		t.Errorf("record after a failure: %s attempts %d, want released with 1 attempt", rec.State, rec.Attempts)
	}
	// The next delivery runs it again; both commit.
	d = in.Handle(ctx, &messaging.Message{ID: "order-2", Payload: []byte("x")}, f.insert(nil))
	if d.Action != messaging.Ack {
		t.Fatalf("second delivery after a failure: %+v, want ack", d)
	}
	rec = f.record(t, DefaultInboxScope, "order-2")
	if n := f.count(t, "order-2"); n != 1 || rec.State != idem.StateCompleted || rec.Attempts != 2 || rec.Checkpoint != nil {
		t.Errorf("after the retry: %d rows, record %s attempts %d checkpoint %v; want 1 row, completed at attempt 2 without failure lines",
			n, rec.State, rec.Attempts, rec.Checkpoint)
	}
	if a, err := in.Attempts(ctx, "order-2"); err != nil || a != nil {
		t.Errorf("Attempts of a handled key: %v %v, want none", a, err)
	}
}

// Failures are counted in the database: MaxAttempts failures (across
// Inbox values, as across processes) dead-letter the message with every
// attempt, roll back every write, and later deliveries are duplicates.
func TestInboxRetriesThenDeadLetters(t *testing.T) {
	t.Parallel()
	f := newInboxFixture(t)
	ctx := context.Background()
	var dead []messaging.Attempt
	var deadErr error
	deadCalls := 0
	cfg := &InboxConfig{Scope: "orders", MaxAttempts: 3,
		DeadLetter: func(ctx context.Context, m *messaging.Message, attempts []messaging.Attempt, err error) error {
			deadCalls++
			dead, deadErr = attempts, err
			if k, _ := idem.KeyFrom(ctx); k != m.ID {
				t.Errorf("dead-letter hook's ctx key %q, want %q", k, m.ID)
			}
			return nil
		}}
	m := &messaging.Message{ID: "order-9", Payload: []byte("p")}
	var got []messaging.Decision
	for i := range 3 {
		got = append(got, f.s.Inbox(cfg).Handle(ctx, m, f.insert(fmt.Errorf("attempt %d failed", i+1))))
	}
	want := []struct {
		a     messaging.Action
		delay time.Duration
	}{{messaging.Retry, time.Second}, {messaging.Retry, 2 * time.Second}, {messaging.DeadLetter, 0}}
	for i, d := range got {
		if d.Action != want[i].a || d.Delay != want[i].delay || d.Err == nil {
			t.Errorf("delivery %d: %s after %s (%v), want %s after %s", i+1, d.Action, d.Delay, d.Err, want[i].a, want[i].delay)
		}
	}
	if deadCalls != 1 || len(dead) != 3 || deadErr == nil || deadErr.Error() != "attempt 3 failed" {
		t.Fatalf("dead-letter hook: %d calls with %d attempts and %v, want 1 call with 3 attempts and the last error", deadCalls, len(dead), deadErr)
	}
	for i, a := range dead {
		if a.Error != fmt.Sprintf("attempt %d failed", i+1) || a.At.IsZero() || (i > 0 && a.At.Before(dead[i-1].At)) {
			t.Errorf("attempt %d: %+v", i+1, a)
		}
	}
	if n := f.count(t, "order-9"); n != 0 {
		t.Errorf("%d order rows after 3 failed attempts, want 0", n)
	}
	rec := f.record(t, "orders", "order-9")
	if rec.State != idem.StateCompleted || rec.Outcome == nil || rec.Outcome.Meta[failedMeta] != "attempt 3 failed" {
		t.Errorf("dead-lettered record: %s %+v, want completed as failed", rec.State, rec.Outcome)
	}
	// A ledger sees the failure too.
	l, err := idem.New(f.s, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.Do(ctx, "orders", "order-9", rec.Fingerprint, func(context.Context, *idem.Claim) (idem.Outcome, error) {
		t.Error("the ledger ran a dead-lettered key")
		return idem.Outcome{}, nil
	})
	var oe *idem.OutcomeError
	if !errors.As(err, &oe) || oe.Message != "attempt 3 failed" {
		t.Errorf("ledger Do of a dead-lettered key: %v, want its failed outcome", err)
	}
	runs := f.runs.Load()
	if d := f.s.Inbox(cfg).Handle(ctx, m, f.insert(nil)); d.Action != messaging.AckDuplicate || f.runs.Load() != runs ||
		!errors.As(d.Err, &oe) || oe.Message != "attempt 3 failed" {
		t.Errorf("delivery after the dead letter: %+v (handler runs %d -> %d), want ack-duplicate with the recorded failure, without a run", d, runs, f.runs.Load())
	}

	// A Permanent error dead-letters at once.
	deadCalls = 0
	d := f.s.Inbox(cfg).Handle(ctx, &messaging.Message{ID: "order-10"}, f.insert(messaging.Permanent(errors.New("no such product"))))
	if d.Action != messaging.DeadLetter || deadCalls != 1 || len(dead) != 1 || f.count(t, "order-10") != 0 {
		t.Errorf("permanent error: %+v, hook calls %d with %d attempts, %d rows; want dead-letter at once, 1 call, 1 attempt, 0 rows",
			d, deadCalls, len(dead), f.count(t, "order-10"))
	}
	// A hook that fails keeps the message: Retry, and the next delivery
	// fails (or succeeds) again.
	failing := *cfg
	failing.DeadLetter = func(context.Context, *messaging.Message, []messaging.Attempt, error) error {
		return errors.New("dlq down")
	}
	d = f.s.Inbox(&failing).Handle(ctx, &messaging.Message{ID: "order-11"}, f.insert(messaging.Permanent(errors.New("bad"))))
	if d.Action != messaging.Retry || !strings.Contains(d.Err.Error(), "dlq down") {
		t.Errorf("a failing dead-letter hook: %+v, want retry", d)
	}
	if rec := f.record(t, "orders", "order-11"); rec.State != idem.StateReleased {
		t.Errorf("after a failing hook the record is %s, want released (the message is not given up)", rec.State)
	}
}

// Concurrent deliveries of one message: the handler runs once, the
// others wait for its transaction and are acked as duplicates.
func TestInboxConcurrentDuplicates(t *testing.T) {
	t.Parallel()
	f := newInboxFixture(t)
	ctx := context.Background()
	in := f.s.Inbox(nil)
	const n = 6
	gate := make(chan struct{})
	entered := make(chan struct{}, n)
	h := func(ctx context.Context, tx pgx.Tx, m *messaging.Message) error {
		entered <- struct{}{}
		<-gate
		return f.insert(nil)(ctx, tx, m)
	}
	m := &messaging.Message{ID: "order-c", Payload: []byte("c")}
	decisions := make([]messaging.Decision, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { decisions[i] = in.Handle(ctx, m, h) })
	}
	<-entered // one delivery holds the key
	// The others wait for its row lock, in the server.
	wait.For(t, fmt.Sprintf("%d deliveries to wait for the first's lock", n-1), func() bool {
		var waiting int
		err := f.s.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'`,
			f.s.Schema()).Scan(&waiting)
		return err == nil && waiting == n-1
	})
	close(gate)
	wg.Wait()
	acks, dups := 0, 0
	for _, d := range decisions {
		switch d.Action {
		case messaging.Ack:
			acks++
		case messaging.AckDuplicate:
			dups++
		default:
			t.Errorf("a concurrent delivery: %+v", d)
		}
	}
	if acks != 1 || dups != n-1 || f.runs.Load() != 1 || f.count(t, "order-c") != 1 {
		t.Errorf("%d concurrent deliveries: %d acks, %d duplicates, %d handler runs, %d rows; want 1, %d, 1, 1",
			n, acks, dups, f.runs.Load(), f.count(t, "order-c"), n-1)
	}
}

// A key handled with one payload is never applied with another; bad
// messages are dead-lettered with ErrInvalid.
func TestInboxMismatchAndBadInput(t *testing.T) {
	t.Parallel()
	f := newInboxFixture(t)
	ctx := context.Background()
	var hookErr error
	in := f.s.Inbox(&InboxConfig{DeadLetter: func(_ context.Context, _ *messaging.Message, _ []messaging.Attempt, err error) error {
		hookErr = err
		return nil
	}})
	if d := in.Handle(ctx, &messaging.Message{ID: "k", Payload: []byte("a")}, f.insert(nil)); d.Action != messaging.Ack {
		t.Fatalf("first: %+v", d)
	}
	d := in.Handle(ctx, &messaging.Message{ID: "k", Payload: []byte("b")}, f.insert(nil))
	if d.Action != messaging.DeadLetter || !errors.Is(d.Err, idem.ErrFingerprintMismatch) || !errors.Is(hookErr, idem.ErrFingerprintMismatch) {
		t.Errorf("same key, other payload: %+v (hook got %v), want dead-letter with ErrFingerprintMismatch", d, hookErr)
	}
	if f.runs.Load() != 1 || f.count(t, "k") != 1 {
		t.Errorf("mismatch ran the handler: %d runs, %d rows", f.runs.Load(), f.count(t, "k"))
	}
	onMismatch := f.s.Inbox(&InboxConfig{OnMismatch: func(context.Context, *messaging.Message) error { return errors.New("later") }})
	if d := onMismatch.Handle(ctx, &messaging.Message{ID: "k", Payload: []byte("b")}, f.insert(nil)); d.Action != messaging.Retry {
		t.Errorf("OnMismatch that fails: %+v, want retry", d)
	}
	for _, c := range []struct {
		name string
		m    *messaging.Message
	}{{"nil message", nil}, {"empty id", &messaging.Message{}}, {"NUL in the id", &messaging.Message{ID: "a\x00b"}}} {
		d := in.Handle(ctx, c.m, f.insert(nil))
		if d.Action != messaging.DeadLetter || !errors.Is(d.Err, idem.ErrInvalid) {
			t.Errorf("%s: %+v, want dead-letter with ErrInvalid", c.name, d)
		}
	}
	if d := in.Handle(ctx, &messaging.Message{ID: "z"}, nil); d.Action != messaging.Retry || !errors.Is(d.Err, idem.ErrInvalid) {
		t.Errorf("nil handler: %+v, want retry with ErrInvalid", d)
	}
	if f.runs.Load() != 1 {
		t.Errorf("bad input ran the handler")
	}
}

// A message the handler sends through the outbox gets an id derived from
// the inbound message's key, and is enqueued only if the handler commits.
func TestInboxHandlerEnqueues(t *testing.T) {
	t.Parallel()
	f := newInboxFixture(t)
	ctx := context.Background()
	in := f.s.Inbox(nil)
	h := func(fail error) InboxHandler {
		return func(ctx context.Context, tx pgx.Tx, m *messaging.Message) error {
			if err := f.s.Enqueue(ctx, tx, &OutboxMessage{Step: "confirm", Entity: "order-e", Subject: "orders.confirmed", Payload: m.Payload}); err != nil {
				return err
			}
			return fail
		}
	}
	if d := in.Handle(ctx, &messaging.Message{ID: "in-1", Payload: []byte("e")}, h(errors.New("boom"))); d.Action != messaging.Retry {
		t.Fatalf("failing: %+v", d)
	}
	if d := in.Handle(ctx, &messaging.Message{ID: "in-1", Payload: []byte("e")}, h(nil)); d.Action != messaging.Ack {
		t.Fatalf("succeeding: %+v", d)
	}
	rows := outboxRows(t, f.s)
	if len(rows) != 1 || rows[0].id != "in-1/confirm" || rows[0].entity != "order-e" || rows[0].seq != 1 || rows[0].payload != "e" {
		t.Errorf("outbox after a failed and a committed attempt: %+v, want the one row in-1/confirm, seq 1", rows)
	}
}
