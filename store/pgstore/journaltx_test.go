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
	"github.com/idemkit/idem/workflow"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// txWorld is a one-action workflow ("ship": an automatic transition from
// "placed" to "shipped" whose InTx action inserts a row into the table
// shipments of the store's schema) on a pgstore journal.
type txWorld struct {
	t     *testing.T
	s     *Store
	table string
	clk   *idem.ManualClock
	eng   *workflow.Engine

	mu    sync.Mutex
	calls int
	// during, if set, is called by the action after its INSERT, with the
	// call's number (from 1); its error is the action's.
	during func(ctx context.Context, call int) error
}

func newTxWorld(t *testing.T) *txWorld {
	t.Helper()
	w := &txWorld{t: t, s: newStore(t), clk: idem.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	w.table = w.s.q.schema + ".shipments"
	if _, err := w.s.Pool().Exec(context.Background(), `CREATE TABLE `+w.table+` (id text NOT NULL, action text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	reg := workflow.NewRegistry()
	err := reg.Register(&workflow.Definition{
		Name: "ship", Version: 1, Initial: "placed",
		States: []workflow.State{{Name: "placed"}, {Name: "shipped", Terminal: workflow.Success}},
		Transitions: []workflow.Transition{{From: "placed", To: "shipped", Action: &workflow.Action{
			Name: "ship", InTx: true, NoCompensation: true, Run: w.run,
			Retry: &workflow.RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Second, MaxBackoff: time.Second},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	w.eng, err = workflow.NewEngine(w.s.Journal(), reg, &workflow.EngineConfig{Clock: w.clk, Lease: time.Minute, Rand: func() float64 { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *txWorld) run(ctx context.Context, s *workflow.Step) ([]byte, error) {
	w.mu.Lock()
	w.calls++
	call, during := w.calls, w.during
	w.mu.Unlock()
	tx := StepTx(ctx)
	if tx == nil {
		return nil, errors.New("no StepTx in an InTx action's context")
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+w.table+` (id, action) VALUES ($1, 'ship')`, s.InstanceID); err != nil {
		return nil, err
	}
	if during != nil {
		if err := during(ctx, call); err != nil {
			return nil, err
		}
	}
	return []byte("shipped"), nil
}

// rows counts the committed rows of instance id.
func (w *txWorld) rows(id string) int {
	w.t.Helper()
	var n int
	if err := w.s.Pool().QueryRow(context.Background(), `SELECT count(*) FROM `+w.table+` WHERE id = $1`, id).Scan(&n); err != nil {
		w.t.Fatal(err)
	}
	return n
}

func (w *txWorld) step() int {
	w.t.Helper()
	n, err := w.eng.Step(context.Background())
	if err != nil {
		w.t.Fatalf("Step: %v", err)
	}
	return n
}

func kinds(in *workflow.Instance) []workflow.EntryKind {
	var ks []workflow.EntryKind
	for _, e := range in.History {
		ks = append(ks, e.Kind)
	}
	return ks
}

// TestJournalTxCommitsWithStep: an InTx action's INSERT is invisible
// outside its transaction while the action runs, and commits with the step:
// after the instance succeeds the row is there exactly once.
func TestJournalTxCommitsWithStep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w := newTxWorld(t)
	w.during = func(ctx context.Context, call int) error {
		if n := w.rows("o1"); n != 0 {
			return fmt.Errorf("the action's row is visible outside its transaction before the commit (%d rows)", n)
		}
		// The journal reads in the transaction: the instance as the
		// unit started it.
		got, err := w.s.Journal().Get(ctx, &workflow.GetParams{ID: "o1"})
		if err != nil || got.Instance.Pending == nil || got.Instance.Pending.Action != "ship" {
			return fmt.Errorf("Get in the action: %+v, %v", got, err)
		}
		return nil
	}
	if _, err := w.eng.Start(ctx, "ship", 0, "o1", nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := w.step(); n != 1 { // the action's unit, which also ends it
		t.Errorf("Step did %d units, want 1", n)
	}
	in, err := w.eng.Get(ctx, "o1")
	if err != nil {
		t.Fatal(err)
	}
	if in.Status != workflow.Succeeded || w.rows("o1") != 1 || w.calls != 1 {
		t.Fatalf("instance %s, %d rows, %d calls; want succeeded, 1 row, 1 call", in.Status, w.rows("o1"), w.calls)
	}
	want := []workflow.EntryKind{workflow.EntryStarted, workflow.EntryActionStarted, workflow.EntryActionCompleted,
		workflow.EntryTransition, workflow.EntryFinished}
	if got := kinds(in); !slices.Equal(got, want) {
		t.Errorf("history %v, want %v", got, want)
	}
	if StepTx(ctx) != nil {
		t.Error("StepTx outside an action: not nil")
	}
}

// TestJournalTxConflictRerunsAction: an event that comes in while the
// action runs makes the step's Append conflict; the transaction rolls
// back with the action's INSERT, and the unit runs the action again in a
// fresh one. Two calls, one row.
func TestJournalTxConflictRerunsAction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w := newTxWorld(t)
	inAction, proceed := make(chan struct{}), make(chan struct{})
	w.during = func(ctx context.Context, call int) error {
		if call == 1 {
			close(inAction)
			<-proceed
		}
		return nil
	}
	if _, err := w.eng.Start(ctx, "ship", 0, "o1", nil, nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.eng.Step(ctx)
		done <- err
	}()
	<-inAction
	if dup, err := w.eng.Signal(ctx, "o1", "poke-1", "poke", nil); err != nil || dup {
		t.Fatalf("Signal while the action runs: %v, %v", dup, err)
	}
	close(proceed)
	if err := <-done; err != nil {
		t.Fatalf("Step: %v", err)
	}
	in, err := w.eng.Get(ctx, "o1")
	if err != nil {
		t.Fatal(err)
	}
	if in.Status != workflow.Succeeded || w.rows("o1") != 1 || w.calls != 2 {
		t.Fatalf("instance %s, %d rows, %d calls; want succeeded, 1 row, 2 calls", in.Status, w.rows("o1"), w.calls)
	}
	completed := 0
	for _, e := range in.History {
		if e.Kind == workflow.EntryActionCompleted {
			completed++
		}
	}
	if !slices.Contains(kinds(in), workflow.EntryEventReceived) || completed != 1 {
		t.Errorf("history %v: want the event received and one action_completed", kinds(in))
	}
}

// TestJournalTxFailedAttemptRollsBack: an action that fails after its
// INSERT leaves no row; the history records the failed attempt, and the
// retry's row is the only one.
func TestJournalTxFailedAttemptRollsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w := newTxWorld(t)
	w.during = func(ctx context.Context, call int) error {
		if call == 1 {
			return errors.New("warehouse said no")
		}
		return nil
	}
	if _, err := w.eng.Start(ctx, "ship", 0, "o1", nil, nil); err != nil {
		t.Fatal(err)
	}
	w.step()
	in, err := w.eng.Get(ctx, "o1")
	if err != nil {
		t.Fatal(err)
	}
	last := in.History[len(in.History)-1]
	if in.Status != workflow.Running || in.Attempt != 1 || w.rows("o1") != 0 ||
		last.Kind != workflow.EntryActionFailed || last.Error != "warehouse said no" || last.Attempt != 1 {
		t.Fatalf("after a failed attempt: %s, attempt %d, %d rows, last entry %+v; want running, attempt 1, no row, the failure",
			in.Status, in.Attempt, w.rows("o1"), last)
	}
	w.clk.Advance(time.Second) // the backoff
	w.step()
	if in, err = w.eng.Get(ctx, "o1"); err != nil {
		t.Fatal(err)
	}
	if in.Status != workflow.Succeeded || w.rows("o1") != 1 || w.calls != 2 {
		t.Fatalf("after the retry: %s, %d rows, %d calls; want succeeded, 1 row, 2 calls", in.Status, w.rows("o1"), w.calls)
	}
}

// TestJournalTxAppendAndGet: inside InTx the journal reads its own
// uncommitted Append, others read the committed instance, and a rollback
// undoes the Append; a nested InTx is a savepoint.
func TestJournalTxAppendAndGet(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	j := s.Journal()
	cr, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "i1", Type: "t", Fingerprint: "f", State: "a", Status: workflow.Running}})
	if err != nil {
		t.Fatal(err)
	}
	seq := func(ctx context.Context) int64 {
		t.Helper()
		got, err := j.Get(ctx, &workflow.GetParams{ID: "i1"})
		if err != nil {
			t.Fatal(err)
		}
		return got.Instance.Seq
	}
	boom := errors.New("boom")
	err = j.InTx(ctx, func(tctx context.Context) error {
		in := cr.Instance
		in.State = "b"
		if _, err := j.Append(tctx, &workflow.AppendParams{Instance: in, Entries: []workflow.Entry{{Kind: workflow.EntryTransition}}}); err != nil {
			return err
		}
		if in, out := seq(tctx), seq(ctx); in != 2 || out != 1 {
			t.Errorf("seq inside the transaction %d, outside %d; want 2 and 1", in, out)
		}
		// A nested InTx is a savepoint: its rollback keeps the outer
		// transaction's Append.
		err := j.InTx(tctx, func(nctx context.Context) error {
			if StepTx(nctx) == StepTx(tctx) || StepTx(nctx) == nil {
				t.Error("a nested InTx has the outer transaction, not a savepoint of its own")
			}
			got, err := j.Get(nctx, &workflow.GetParams{ID: "i1"})
			if err != nil {
				return err
			}
			if _, err := j.Append(nctx, &workflow.AppendParams{Instance: got.Instance}); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) || seq(tctx) != 2 {
			t.Errorf("nested InTx: %v, seq after it %d; want boom and 2", err, seq(tctx))
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx returned %v, want fn's error", err)
	}
	if got := seq(ctx); got != 1 {
		t.Errorf("seq after the rollback %d, want 1", got)
	}
	// A committed one stays.
	err = j.InTx(ctx, func(tctx context.Context) error {
		_, err := j.Append(tctx, &workflow.AppendParams{Instance: cr.Instance})
		return err
	})
	if err != nil || seq(ctx) != 2 {
		t.Errorf("committed InTx: %v, seq %d; want nil and 2", err, seq(ctx))
	}
	// A conflicting Append in the transaction is a conflict, as outside.
	err = j.InTx(ctx, func(tctx context.Context) error {
		_, err := j.Append(tctx, &workflow.AppendParams{Instance: cr.Instance}) // seq 1, stored 2
		return err
	})
	wantErr(t, "Append at a stale seq in InTx", err, workflow.ErrConflict)
	wantErr(t, "InTx with a nil function", j.InTx(ctx, nil), idem.ErrInvalid)
}

// TestJournalTxSerializationUnavailable: a transaction that loses a
// serialization conflict at its commit comes out as ErrUnavailable, with
// nothing committed.
func TestJournalTxSerializationUnavailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	j := s.Journal()
	table := s.q.schema + ".skew"
	if _, err := s.Pool().Exec(ctx, `CREATE TABLE `+table+` (v int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	// Write skew: both read the table, both insert, the other commits
	// first; the second committer is the one refused.
	other, err := s.Pool().BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(ctx)
	err = j.InTx(ctx, func(tctx context.Context) error {
		tx := StepTx(tctx)
		for _, q := range []string{`SET TRANSACTION ISOLATION LEVEL SERIALIZABLE`, `SELECT count(*) FROM ` + table} {
			if _, err := tx.Exec(tctx, q); err != nil {
				return err
			}
		}
		if _, err := other.Exec(ctx, `SELECT count(*) FROM `+table); err != nil {
			return err
		}
		if _, err := tx.Exec(tctx, `INSERT INTO `+table+` VALUES (1)`); err != nil {
			return err
		}
		if _, err := other.Exec(ctx, `INSERT INTO `+table+` VALUES (2)`); err != nil {
			return err
		}
		return other.Commit(ctx)
	})
	var pgErr *pgconn.PgError
	if !errors.Is(err, idem.ErrUnavailable) || !errors.As(err, &pgErr) || pgErr.Code != "40001" {
		t.Fatalf("InTx losing a serialization conflict at commit: %v, want ErrUnavailable wrapping 40001", err)
	}
	var vals []int
	rows, err := s.Pool().Query(ctx, `SELECT v FROM `+table+` ORDER BY v`)
	if err != nil {
		t.Fatal(err)
	}
	if vals, err = pgx.CollectRows(rows, pgx.RowTo[int]); err != nil || !slices.Equal(vals, []int{2}) {
		t.Errorf("rows after the conflict: %v, %v; want only the other transaction's [2]", vals, err)
	}
}

func TestWrapTxErr(t *testing.T) {
	for code, want := range map[string]bool{"40001": true, "40P01": true, "08006": true, "23505": false, "25P02": false} {
		err := wrapTxErr("op", fmt.Errorf("commit: %w", &pgconn.PgError{Code: code}))
		if got := errors.Is(err, idem.ErrUnavailable); got != want {
			t.Errorf("wrapTxErr(%s) wraps ErrUnavailable: %v, want %v", code, got, want)
		}
	}
}

// TestStartInTxNeedsTxJournal: a journal that runs no transactions
// refuses to start a definition with an InTx action; pgstore's accepts it.
func TestStartInTxNeedsTxJournal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w := newTxWorld(t)
	reg := workflow.NewRegistry()
	def := &workflow.Definition{
		Name: "ship", Version: 1, Initial: "placed",
		States: []workflow.State{{Name: "placed"}, {Name: "shipped", Terminal: workflow.Success}},
		Transitions: []workflow.Transition{{From: "placed", To: "shipped", Action: &workflow.Action{
			Name: "ship", InTx: true, NoCompensation: true, Run: w.run}}},
	}
	if err := reg.Register(def); err != nil {
		t.Fatal(err)
	}
	mem, err := workflow.NewEngine(workflow.NewMemJournal(), reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = mem.Start(ctx, "ship", 0, "o1", nil, nil)
	wantErr(t, "Start of an InTx workflow on a MemJournal", err, idem.ErrInvalid)
	if _, err := mem.Get(ctx, "o1"); !errors.Is(err, idem.ErrNotFound) {
		t.Errorf("refused Start stored the instance: Get %v", err)
	}
	if _, err := w.eng.Start(ctx, "ship", 0, "o1", nil, nil); err != nil {
		t.Errorf("Start on a pgstore journal: %v", err)
	}
}
