package workflow_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
)

func TestMemJournal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	j := workflow.NewMemJournal()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	in := &workflow.Instance{ID: "a", Type: "order", Fingerprint: "f1", State: "pending", Status: workflow.Running, Input: []byte("in")}
	res, err := j.Create(ctx, &workflow.CreateParams{Instance: in, Entries: []workflow.Entry{{Kind: workflow.EntryStarted, At: t0}}})
	if err != nil || !res.Created || res.Instance.Seq != 1 || len(res.Instance.History) != 1 || res.Instance.History[0].Seq != 1 {
		t.Fatalf("create: %+v, %v", res, err)
	}
	in.Input[0] = 'X' // the journal keeps its own copy
	res, err = j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "a", Fingerprint: "f1"}})
	if err != nil || res.Created || string(res.Instance.Input) != "in" || res.Instance.State != "pending" {
		t.Fatalf("create again: %+v, %v", res, err)
	}
	if _, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "a", Fingerprint: "f2"}}); !errors.Is(err, idem.ErrFingerprintMismatch) {
		t.Fatalf("create with another fingerprint: %v", err)
	}
	if _, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: ""}}); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("create without id: %v", err)
	}

	// Append is a compare-and-set on Seq: of two writers that read Seq 1,
	// one wins.
	got, _ := j.Get(ctx, &workflow.GetParams{ID: "a"})
	w1, w2 := got.Instance, *got.Instance
	w1.State = "reserved"
	w2.State = "cancelled"
	if r, err := j.Append(ctx, &workflow.AppendParams{Instance: w1, Entries: []workflow.Entry{{Kind: workflow.EntryTransition}, {Kind: workflow.EntryFinished}}}); err != nil || r.Seq != 2 {
		t.Fatalf("append: %+v, %v", r, err)
	}
	if _, err := j.Append(ctx, &workflow.AppendParams{Instance: &w2, Entries: []workflow.Entry{{Kind: workflow.EntryTransition}}}); !errors.Is(err, workflow.ErrConflict) {
		t.Fatalf("stale append: %v", err)
	}
	got, _ = j.Get(ctx, &workflow.GetParams{ID: "a"})
	if g := got.Instance; g.State != "reserved" || g.Seq != 2 || len(g.History) != 3 || g.History[2].Seq != 3 || g.History[0].Kind != workflow.EntryStarted {
		t.Fatalf("after append: %+v", g)
	}
	if _, err := j.Append(ctx, &workflow.AppendParams{Instance: &workflow.Instance{ID: "zz"}}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("append to nothing: %v", err)
	}
	if _, err := j.Get(ctx, &workflow.GetParams{ID: "zz"}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("get nothing: %v", err)
	}

	// Replace: a new run of the id, its history kept.
	if _, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "a", Fingerprint: "f3", Run: 2}, Replace: true, ReplaceSeq: 1}); !errors.Is(err, workflow.ErrConflict) {
		t.Fatalf("replace at a stale seq: %v", err)
	}
	res, err = j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "a", Fingerprint: "f3", Run: 2}, Replace: true, ReplaceSeq: 2,
		Entries: []workflow.Entry{{Kind: workflow.EntryStarted}}})
	if err != nil || res.Instance.Seq != 3 || res.Instance.Run != 2 || len(res.Instance.History) != 4 {
		t.Fatalf("replace: %+v, %v", res, err)
	}

	// List filters and pages; Due keeps what has work by then.
	for _, x := range []*workflow.Instance{
		{ID: "b", Type: "order", State: "pending", Status: workflow.Running, WakeAt: t0},
		{ID: "c", Type: "order", State: "shipped", Status: workflow.Succeeded, Finished: t0},
		{ID: "d", Type: "refund", State: "pending", Status: workflow.Running, WakeAt: t0.Add(time.Hour)},
	} {
		if _, err := j.Create(ctx, &workflow.CreateParams{Instance: x}); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(p *workflow.ListParams) (out []string) {
		t.Helper()
		r, err := j.List(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range r.Instances {
			if x.History != nil {
				t.Fatal("List returned a history")
			}
			out = append(out, x.ID)
		}
		return append(out, "next="+r.Next)
	}
	for _, c := range []struct {
		p    workflow.ListParams
		want string
	}{
		{workflow.ListParams{}, "[a b c d next=]"},
		{workflow.ListParams{Type: "order", State: "pending"}, "[b next=]"},
		{workflow.ListParams{Status: workflow.Running}, "[b d next=]"},
		{workflow.ListParams{Due: t0}, "[b next=]"},
		{workflow.ListParams{Due: t0.Add(time.Hour)}, "[b d next=]"},
		{workflow.ListParams{FinishedBefore: t0.Add(time.Second)}, "[c next=]"},
		{workflow.ListParams{Limit: 2}, "[a b next=b]"},
		{workflow.ListParams{Limit: 2, After: "b"}, "[c d next=]"},
	} {
		if got := ids(&c.p); fmtList(got) != c.want {
			t.Errorf("List(%+v) = %s, want %s", c.p, fmtList(got), c.want)
		}
	}

	if _, err := j.Delete(ctx, &workflow.DeleteParams{ID: "c", Seq: 2}); !errors.Is(err, workflow.ErrConflict) {
		t.Fatalf("delete at a stale seq: %v", err)
	}
	if _, err := j.Delete(ctx, &workflow.DeleteParams{ID: "c", Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Delete(ctx, &workflow.DeleteParams{ID: "c", Seq: 1}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := j.Get(cctx, &workflow.GetParams{ID: "a"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func fmtList(s []string) string {
	out := "["
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out + "]"
}
