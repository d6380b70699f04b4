package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/wait"
	"github.com/idemkit/idem/messaging"
)

// storedRow is an outbox row as the tests read it.
type storedRow struct {
	id, entity, subject, payload, lastError string
	seq                                     int64
	attempts                                int
	sent                                    bool
	next                                    *time.Time
}

// outboxRows reads the whole outbox in id order.
func outboxRows(t *testing.T, s *Store) []storedRow {
	t.Helper()
	rows, err := s.Pool().Query(context.Background(), `SELECT message_id, entity, subject, payload, coalesce(last_error, ''), seq, attempts,
		sent_at IS NOT NULL, next_attempt_at FROM `+s.q.schema+`.outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []storedRow
	for rows.Next() {
		var r storedRow
		var payload []byte
		if err := rows.Scan(&r.id, &r.entity, &r.subject, &payload, &r.lastError, &r.seq, &r.attempts, &r.sent, &r.next); err != nil {
			t.Fatal(err)
		}
		r.payload = string(payload)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// enqueue enqueues ms in one transaction and commits it when commit.
func enqueue(t *testing.T, s *Store, commit bool, ms ...*OutboxMessage) {
	t.Helper()
	ctx := context.Background()
	tx, err := s.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for _, m := range ms {
		if err := s.Enqueue(ctx, tx, m); err != nil {
			t.Fatalf("Enqueue %+v: %v", m, err)
		}
	}
	if commit {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOutboxEnqueueInTx(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	// A rolled-back transaction enqueues nothing, and takes no seq.
	enqueue(t, s, false, &OutboxMessage{ID: "gone", Entity: "e", Subject: "s"})
	if rows := outboxRows(t, s); len(rows) != 0 {
		t.Fatalf("outbox after a rollback: %+v, want empty", rows)
	}
	// The id derives from the key in ctx (a workflow step's, an HTTP
	// request's) and the step name.
	kctx := idem.WithKey(ctx, "req-7")
	tx, err := s.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	m1 := &OutboxMessage{Step: "reserve", Entity: "e", Subject: "stock.reserve", Payload: []byte("p1"), Headers: map[string]string{"h": "v"}}
	if err := s.Enqueue(kctx, tx, m1); err != nil {
		t.Fatal(err)
	}
	if m1.ID != "req-7/reserve" || m1.Seq != 1 {
		t.Errorf("enqueued %q seq %d, want req-7/reserve seq 1 (the rolled-back one took none)", m1.ID, m1.Seq)
	}
	m2 := &OutboxMessage{Parent: "wf-1/step-3", Step: "email", Entity: "e", Subject: "mail", Payload: []byte("p2")}
	if err := s.Enqueue(kctx, tx, m2); err != nil || m2.ID != "wf-1/step-3/email" || m2.Seq != 2 {
		t.Errorf("explicit parent: %q seq %d %v, want wf-1/step-3/email seq 2", m2.ID, m2.Seq, err)
	}
	// The same message again (its step ran again): nothing new.
	again := &OutboxMessage{Step: "reserve", Entity: "e", Subject: "stock.reserve", Payload: []byte("p1")}
	if err := s.Enqueue(kctx, tx, again); err != nil || again.Seq != 0 {
		t.Errorf("the same message again: seq %d %v, want seq 0 and no error", again.Seq, err)
	}
	// Another message under its id: refused, and tx goes on.
	other := &OutboxMessage{Step: "reserve", Entity: "e", Subject: "stock.reserve", Payload: []byte("changed")}
	if err := s.Enqueue(kctx, tx, other); !errors.Is(err, idem.ErrFingerprintMismatch) {
		t.Errorf("another payload under the id: %v, want ErrFingerprintMismatch", err)
	}
	for _, c := range []struct {
		name string
		ctx  context.Context
		m    *OutboxMessage
	}{
		{"no id, no key", ctx, &OutboxMessage{Step: "x", Subject: "s"}},
		{"no step", kctx, &OutboxMessage{Subject: "s"}},
		{"no subject", ctx, &OutboxMessage{ID: "a"}},
		{"long id", ctx, &OutboxMessage{ID: string(make([]byte, 600)), Subject: "s"}},
		{"nil message", ctx, nil},
	} {
		if err := s.Enqueue(c.ctx, tx, c.m); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", c.name, err)
		}
	}
	if err := s.Enqueue(ctx, nil, &OutboxMessage{ID: "a", Subject: "s"}); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("nil tx: %v, want ErrInvalid", err)
	}
	for _, m := range []*OutboxMessage{{ID: "nul\x00", Subject: "s"}, {ID: "a", Subject: "s\xff"}, {ID: "a", Subject: "s", Headers: map[string]string{"h": "\x00"}}} {
		if err := s.Enqueue(ctx, tx, m); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", *m, err)
		}
	}
	// No entity: ordered with no other.
	if err := s.Enqueue(ctx, tx, &OutboxMessage{ID: "solo", Subject: "s"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit after refused Enqueues: %v", err)
	}
	rows := outboxRows(t, s)
	want := []storedRow{
		{id: "req-7/reserve", entity: "e", subject: "stock.reserve", payload: "p1", seq: 1},
		{id: "wf-1/step-3/email", entity: "e", subject: "mail", payload: "p2", seq: 2},
		{id: "solo", entity: "solo", subject: "s", payload: "", seq: 1},
	}
	if !slices.Equal(rows, want) {
		t.Errorf("outbox:\n got %+v\nwant %+v", rows, want)
	}
}

// recorder is a Publisher that records what it publishes, per entity.
type recorder struct {
	mu    sync.Mutex
	order map[string][]int64 // entity -> seqs, in publish order
	ids   []string
	by    map[string]string // id -> who published it first
	who   string
	fail  func(m *OutboxMessage) error
	calls chan *OutboxMessage
}

func newRecorder(who string) *recorder {
	return &recorder{order: map[string][]int64{}, by: map[string]string{}, who: who}
}

func (r *recorder) Publish(ctx context.Context, m *OutboxMessage) error {
	if r.calls != nil {
		c := *m
		r.calls <- &c
	}
	if r.fail != nil {
		if err := r.fail(m); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.order[m.Entity] = append(r.order[m.Entity], m.Seq)
	r.ids = append(r.ids, m.ID)
	if _, ok := r.by[m.ID]; !ok {
		r.by[m.ID] = r.who
	}
	return nil
}

func (r *recorder) published() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ids)
}

// runRelay runs r until the test ends or stop is called; stop waits for
// Run to return.
func runRelay(t *testing.T, r *Relay) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestRelayOrderPerEntity(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	const entities, per = 5, 8
	// Interleaved: each transaction enqueues one message of every entity.
	for i := range per {
		var ms []*OutboxMessage
		for e := range entities {
			ms = append(ms, &OutboxMessage{ID: fmt.Sprintf("e%d-m%d", e, i), Entity: fmt.Sprintf("e%d", e), Subject: "s"})
		}
		enqueue(t, s, true, ms...)
	}
	rec := newRecorder("r")
	runRelay(t, s.Relay(rec, &RelayConfig{Batch: 7, Workers: 3, PollInterval: 10 * time.Millisecond}))
	wait.For(t, "every message to be published", func() bool { return rec.published() >= entities*per })
	rec.mu.Lock()
	for e := range entities {
		got := rec.order[fmt.Sprintf("e%d", e)]
		want := []int64{1, 2, 3, 4, 5, 6, 7, 8}
		if !slices.Equal(got, want) {
			t.Errorf("entity e%d published in order %v, want %v", e, got, want)
		}
	}
	if len(rec.ids) != entities*per {
		t.Errorf("%d publishes, want %d", len(rec.ids), entities*per)
	}
	rec.mu.Unlock()
	wait.For(t, "every row to be marked sent", func() bool {
		for _, r := range outboxRows(t, s) {
			if !r.sent || r.attempts != 1 {
				return false
			}
		}
		return true
	})
}

// A failing publish is retried after the backoff (the relay's clock),
// holds back the later rows of its entity only, and its attempts and error
// are on its row.
func TestRelayRetryBackoff(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := idem.NewManualClock(start)
	enqueue(t, s, true,
		&OutboxMessage{ID: "a1", Entity: "a", Subject: "s"},
		&OutboxMessage{ID: "a2", Entity: "a", Subject: "s"},
		&OutboxMessage{ID: "b1", Entity: "b", Subject: "s"},
		&OutboxMessage{ID: "b2", Entity: "b", Subject: "s"})
	rec := newRecorder("r")
	var mu sync.Mutex
	var a1Calls []time.Time
	rec.fail = func(m *OutboxMessage) error {
		if m.ID != "a1" {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		a1Calls = append(a1Calls, clock.Now())
		if len(a1Calls) <= 3 {
			return fmt.Errorf("broker refused (attempt %d)", m.Attempt)
		}
		return nil
	}
	var errsMu sync.Mutex
	var errs []error
	runRelay(t, s.Relay(rec, &RelayConfig{Clock: clock, PollInterval: time.Hour, Lease: time.Minute, Workers: 2,
		OnError: func(err error) { errsMu.Lock(); errs = append(errs, err); errsMu.Unlock() }}))
	row := func(id string) storedRow {
		for _, r := range outboxRows(t, s) {
			if r.id == id {
				return r
			}
		}
		t.Fatalf("no row %s", id)
		return storedRow{}
	}
	at := start
	for i, backoff := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		// The relay failed attempt i+1 and sleeps until the row is due (the
		// other clock waiter is its lease's heartbeat).
		wait.For(t, fmt.Sprintf("attempt %d to be recorded and the relay to sleep", i+1), func() bool {
			return row("a1").attempts == i+1 && clock.Waiters() == 2
		})
		r := row("a1")
		if r.sent || r.next == nil || !r.next.Equal(at.Add(backoff)) || r.lastError != fmt.Sprintf("broker refused (attempt %d)", i+1) {
			t.Fatalf("a1 after %d failures: %+v, want next attempt at %v and the error", i+1, r, at.Add(backoff))
		}
		if a2 := row("a2"); a2.sent || a2.attempts != 0 {
			t.Fatalf("a2 behind a failing a1: %+v, want untouched", a2)
		}
		if i == 0 {
			if !row("b1").sent || !row("b2").sent {
				t.Fatalf("entity b is held back by entity a's failure")
			}
		}
		at = at.Add(backoff)
		clock.Set(at)
	}
	wait.For(t, "a1 and a2 to be sent", func() bool { return row("a1").sent && row("a2").sent })
	mu.Lock()
	want := []time.Time{start, start.Add(time.Second), start.Add(3 * time.Second), start.Add(7 * time.Second)}
	if !slices.EqualFunc(a1Calls, want, time.Time.Equal) {
		t.Errorf("a1 published at %v, want %v (1s, 2s, 4s apart)", a1Calls, want)
	}
	mu.Unlock()
	rec.mu.Lock()
	if !slices.Equal(rec.order["a"], []int64{1, 2}) || !slices.Equal(rec.order["b"], []int64{1, 2}) {
		t.Errorf("published %v, want each entity in order once", rec.order)
	}
	rec.mu.Unlock()
	if r := row("a1"); r.attempts != 4 || r.lastError != "" {
		t.Errorf("a1 sent: %+v, want 4 attempts and no error left", r)
	}
	errsMu.Lock()
	if len(errs) != 3 {
		t.Errorf("OnError got %d errors, want the 3 failed publishes: %v", len(errs), errs)
	}
	errsMu.Unlock()
}

// Two relays: one publishes, the other waits for the lease, and takes
// over when the first stops.
func TestRelayTwoRelaysOneActive(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	owner := func() string {
		rec, err := s.Get(ctx, &idem.KeyParams{Scope: RelayScope, Key: "outbox"})
		if err != nil || rec.State != idem.StatePending || rec.Checkpoint == nil {
			return ""
		}
		return string(rec.Checkpoint.Data)
	}
	recA, recB := newRecorder("A"), newRecorder("B")
	cfg := func(name string, o idem.Observer) *RelayConfig {
		return &RelayConfig{Name: name, PollInterval: 10 * time.Millisecond, Lease: 2 * time.Second, Observer: o}
	}
	stopA := runRelay(t, s.Relay(recA, cfg("A", nil)))
	wait.For(t, "relay A to hold the lease", func() bool { return owner() == "A" })
	bWaits := make(chan struct{}, 1)
	runRelay(t, s.Relay(recB, cfg("B", idem.ObserverFunc(func(_ context.Context, ev *idem.Event) {
		if ev.Op == idem.OpBegin && ev.Decision == idem.InFlight {
			select {
			case bWaits <- struct{}{}:
			default:
			}
		}
	}))))
	<-bWaits // B asked and was told A holds it
	for i := range 5 {
		enqueue(t, s, true, &OutboxMessage{ID: fmt.Sprintf("first-%d", i), Entity: "e", Subject: "s"})
	}
	wait.For(t, "A to publish the first 5", func() bool { return recA.published() == 5 })
	<-bWaits // B still waits, after A published
	stopA()  // releases the lease
	wait.For(t, "relay B to take the lease", func() bool { return owner() == "B" })
	for i := range 5 {
		enqueue(t, s, true, &OutboxMessage{ID: fmt.Sprintf("second-%d", i), Entity: "e", Subject: "s"})
	}
	wait.For(t, "B to publish the second 5", func() bool { return recB.published() == 5 })
	recA.mu.Lock()
	recB.mu.Lock()
	defer recA.mu.Unlock()
	defer recB.mu.Unlock()
	if !slices.Equal(recA.order["e"], []int64{1, 2, 3, 4, 5}) || !slices.Equal(recB.order["e"], []int64{6, 7, 8, 9, 10}) {
		t.Errorf("A published %v, B %v; want A 1..5 and B 6..10, none twice", recA.order["e"], recB.order["e"])
	}
}

func TestRelayBadConfig(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	if err := s.Relay(nil, nil).Run(context.Background()); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("Run without a Publisher: %v, want ErrInvalid", err)
	}
}

// A relay whose lease was taken over while it published marks nothing,
// stops, waits for the lease, and publishes the row again (same id) once
// it has the lease back.
func TestRelayFencedMark(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	enqueue(t, s, true, &OutboxMessage{ID: "m1", Entity: "e", Subject: "s"})
	rec := newRecorder("A")
	rec.calls = make(chan *OutboxMessage, 16) // never blocks a publish
	gate := make(chan struct{})
	rec.fail = func(m *OutboxMessage) error { <-gate; return nil }
	lost := make(chan error, 8)
	runRelay(t, s.Relay(rec, &RelayConfig{Name: "A", PollInterval: 10 * time.Millisecond, Lease: 2 * time.Second,
		OnError: func(err error) {
			if errors.Is(err, idem.ErrLeaseLost) {
				select {
				case lost <- err:
				default:
				}
			}
		}}))
	first := <-rec.calls // A is publishing m1
	// Meanwhile the lease goes to another (as after a long pause of A).
	held, err := s.Get(ctx, &idem.KeyParams{Scope: RelayScope, Key: "outbox"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, &idem.KeyParams{Scope: RelayScope, Key: "outbox"}); err != nil {
		t.Fatal(err)
	}
	thief, err := s.Begin(ctx, &idem.BeginParams{Scope: RelayScope, Key: "outbox", Fingerprint: "relay", Lease: time.Minute, Window: time.Hour})
	if err != nil || thief.Decision != idem.Acquired || thief.Record.Token <= held.Token {
		t.Fatalf("taking the lease: %+v %v", thief, err)
	}
	close(gate)
	if err := <-lost; err == nil {
		t.Fatal("no lease loss reported")
	}
	if rows := outboxRows(t, s); rows[0].sent || rows[0].attempts != 0 {
		t.Fatalf("m1 after a fenced mark: %+v, want unsent", rows[0])
	}
	// The thief gives the lease back: A takes it and publishes m1 again.
	if err := s.Release(ctx, &idem.ReleaseParams{Scope: RelayScope, Key: "outbox", Token: thief.Record.Token}); err != nil {
		t.Fatal(err)
	}
	again := <-rec.calls
	if again.ID != first.ID || again.Seq != first.Seq {
		t.Errorf("published again as %q seq %d, want %q seq %d", again.ID, again.Seq, first.ID, first.Seq)
	}
	wait.For(t, "m1 to be marked sent", func() bool { return outboxRows(t, s)[0].sent })
	if n := len(rec.calls); n != 0 {
		t.Errorf("%d more publishes after m1 was sent, want none", n)
	}
}

// The outbox tells when its oldest unsent row was written: the created
// time of the first unsent row, failing or not, and zero once all are
// sent.
func TestOutboxOldestUnsent(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	aged, ok := s.Outbox().(messaging.UnsentAger)
	if !ok {
		t.Fatal("pgstore's outbox is no messaging.UnsentAger")
	}
	oldest := func() time.Time {
		t.Helper()
		at, err := aged.OldestUnsent(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return at
	}
	if at := oldest(); !at.IsZero() {
		t.Fatalf("empty outbox: oldest %v, want zero", at)
	}
	enqueue(t, s, true, &OutboxMessage{ID: "m1", Entity: "e1", Subject: "s"})
	enqueue(t, s, true, &OutboxMessage{ID: "m2", Entity: "e2", Subject: "s"})
	created := map[string]time.Time{}
	rows, err := s.Pool().Query(ctx, `SELECT message_id, id, created FROM `+s.q.schema+`.outbox`)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int64{}
	for rows.Next() {
		var m string
		var id int64
		var at time.Time
		if err := rows.Scan(&m, &id, &at); err != nil {
			t.Fatal(err)
		}
		created[m], ids[m] = at, id
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if at := oldest(); !at.Equal(created["m1"]) {
		t.Fatalf("oldest %v, want m1's created %v", at, created["m1"])
	}
	// m1 failing keeps it the oldest; sent, m2 is.
	holder, err := s.Begin(ctx, &idem.BeginParams{Scope: RelayScope, Key: "outbox", Fingerprint: "relay", Lease: time.Minute, Window: time.Hour})
	if err != nil || holder.Decision != idem.Acquired {
		t.Fatalf("relay lease: %+v %v", holder, err)
	}
	f := messaging.Fence{Key: "outbox", Token: holder.Record.Token}
	if err := s.Outbox().MarkFailed(ctx, f, ids["m1"], "broker down", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if at := oldest(); !at.Equal(created["m1"]) {
		t.Fatalf("after m1 failed: oldest %v, want m1's created %v", at, created["m1"])
	}
	if err := s.Outbox().MarkSent(ctx, f, []int64{ids["m1"]}); err != nil {
		t.Fatal(err)
	}
	if at := oldest(); !at.Equal(created["m2"]) {
		t.Fatalf("after m1 was sent: oldest %v, want m2's created %v", at, created["m2"])
	}
	if err := s.Outbox().MarkSent(ctx, f, []int64{ids["m2"]}); err != nil {
		t.Fatal(err)
	}
	if at := oldest(); !at.IsZero() {
		t.Fatalf("all sent: oldest %v, want zero", at)
	}
}
