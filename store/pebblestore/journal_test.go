package pebblestore

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/restarttest"
	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/journaltest"
)

func TestJournalConformance(t *testing.T) {
	t.Parallel()
	journaltest.Run(t, func(t *testing.T) workflow.Journal {
		s, err := Open(t.TempDir(), &Config{SweepInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s.Journal()
	})
}

func TestJournalSameForAStore(t *testing.T) {
	t.Parallel()
	s, err := Open(t.TempDir(), &Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Journal() != s.Journal() {
		t.Fatal("Store.Journal returned two journals: their locks would not exclude each other")
	}
}

// TestJournalReopen: what a journal acknowledged is there after the
// store is closed and opened again, the indexes too.
func TestJournalReopen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := Open(dir, &Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	j := s.Journal()
	for _, id := range []string{"a", "b", "c"} {
		in := &workflow.Instance{ID: id, Type: "order", Fingerprint: "f", State: "pending", Status: workflow.Running, Input: []byte(id), WakeAt: t0}
		if _, err := j.Create(ctx, &workflow.CreateParams{Instance: in, Entries: []workflow.Entry{{Kind: workflow.EntryStarted, At: t0}}}); err != nil {
			t.Fatal(err)
		}
	}
	g, err := j.Get(ctx, &workflow.GetParams{ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	a := g.Instance
	a.History = nil
	a.State, a.Status, a.WakeAt, a.Finished = "shipped", workflow.Succeeded, time.Time{}, t0.Add(time.Minute)
	if _, err := j.Append(ctx, &workflow.AppendParams{Instance: a, Entries: []workflow.Entry{{Kind: workflow.EntryTransition, To: "shipped"}, {Kind: workflow.EntryFinished}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Delete(ctx, &workflow.DeleteParams{ID: "c", Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Get(ctx, &workflow.GetParams{ID: "a"}); !errors.Is(err, idem.ErrClosed) {
		t.Fatalf("Get after Close: %v; want ErrClosed", err)
	}

	s, err = Open(dir, &Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	j = s.Journal()
	g, err = j.Get(ctx, &workflow.GetParams{ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if in := g.Instance; in.Seq != 2 || in.State != "shipped" || in.Status != workflow.Succeeded || string(in.Input) != "a" ||
		!in.Finished.Equal(t0.Add(time.Minute)) || len(in.History) != 3 || in.History[1].To != "shipped" || in.History[2].Seq != 3 || !in.History[0].At.Equal(t0) {
		t.Fatalf("a after reopen: %+v", in)
	}
	if _, err := j.Get(ctx, &workflow.GetParams{ID: "c"}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("c after reopen: %v; want ErrNotFound", err)
	}
	for _, c := range []struct {
		p    workflow.ListParams
		want []string
	}{
		{workflow.ListParams{}, []string{"a", "b"}},
		{workflow.ListParams{Due: t0}, []string{"b"}},
		{workflow.ListParams{Status: workflow.Succeeded}, []string{"a"}},
	} {
		r, err := j.List(ctx, &c.p)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, in := range r.Instances {
			ids = append(ids, in.ID)
		}
		if !slices.Equal(ids, c.want) {
			t.Errorf("List(%+v) after reopen = %v, want %v", c.p, ids, c.want)
		}
	}
	// The compare-and-set goes on from the persisted Seq.
	b, _ := j.Get(ctx, &workflow.GetParams{ID: "b"})
	b.Instance.History = nil
	if r, err := j.Append(ctx, &workflow.AppendParams{Instance: b.Instance, Entries: []workflow.Entry{{Kind: workflow.EntryEventReceived}}}); err != nil || r.Seq != 2 {
		t.Fatalf("Append after reopen: %+v, %v", r, err)
	}
	if r, _ := j.Get(ctx, &workflow.GetParams{ID: "b"}); r.Instance.History[1].Seq != 2 {
		t.Fatalf("entry numbering after reopen: %+v", r.Instance.History)
	}
}

// TestJournalAppendSynced: every Append is fsynced before it returns.
func TestJournalAppendSynced(t *testing.T) {
	t.Parallel()
	fs := &syncCountingFS{FS: vfs.Default}
	s, err := Open(t.TempDir(), &Config{SweepInterval: -1, fs: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	j := s.Journal()
	res, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "a", Fingerprint: "f"}})
	if err != nil {
		t.Fatal(err)
	}
	in := res.Instance
	for range 5 {
		before := fs.syncs.Load()
		r, err := j.Append(ctx, &workflow.AppendParams{Instance: in, Entries: []workflow.Entry{{Kind: workflow.EntryTransition}}})
		if err != nil {
			t.Fatal(err)
		}
		if fs.syncs.Load() == before {
			t.Fatal("Append returned without a sync")
		}
		in.Seq = r.Seq
	}
}

// TestJournalEngineRestart runs the order saga across restarts of the
// process (restarttest.Run): each phase opens the store, builds an engine
// over its journal, does some work and closes the store, leaving work
// queued for the next.
func TestJournalEngineRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	restarttest.Run(t, func(t *testing.T, clk idem.Clock) (workflow.Journal, func() error) {
		s, err := Open(dir, &Config{Clock: clk, SweepInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		return s.Journal(), s.Close
	})
}
