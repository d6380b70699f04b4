package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem/workflow"
)

// TestJournalAppendsBatched: many instances appended at once go in
// batches (fewer transactions than Appends), and each Append still gets
// its own answer: its new Seq, or ErrConflict for a stale one, which
// fails no other in its batch.
func TestJournalAppendsBatched(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t)
	j := s.Journal()
	const instances, appends = 24, 15
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range instances {
		in := &workflow.Instance{ID: fmt.Sprint("b", i), Type: "t", Version: 1, Run: 1, Fingerprint: "f", State: "s", Status: workflow.Running, Created: t0}
		if _, err := j.Create(ctx, &workflow.CreateParams{Instance: in, Entries: []workflow.Entry{{Kind: workflow.EntryStarted, At: t0}}}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conflicts := 0
	for i := range instances {
		wg.Go(func() {
			id := fmt.Sprint("b", i)
			seq := int64(1)
			for n := range appends {
				in := &workflow.Instance{ID: id, Type: "t", Version: 1, Run: 1, Fingerprint: "f", State: fmt.Sprint("s", n), Status: workflow.Running, Seq: seq, Created: t0}
				res, err := j.Append(ctx, &workflow.AppendParams{Instance: in, Entries: []workflow.Entry{{Kind: workflow.EntryTransition, At: t0, To: in.State}}})
				if err != nil {
					t.Errorf("%s append %d: %v", id, n, err)
					return
				}
				if res.Seq != seq+1 {
					t.Errorf("%s: seq %d after %d", id, res.Seq, seq)
				}
				// The same Seq again is stale now.
				if _, err := j.Append(ctx, &workflow.AppendParams{Instance: in}); !errors.Is(err, workflow.ErrConflict) {
					t.Errorf("%s: stale append: %v", id, err)
				} else {
					mu.Lock()
					conflicts++
					mu.Unlock()
				}
				seq = res.Seq
			}
		})
	}
	wg.Wait()
	if conflicts != instances*appends {
		t.Fatalf("%d conflicts, want %d", conflicts, instances*appends)
	}
	for i := range instances {
		res, err := j.Get(ctx, &workflow.GetParams{ID: fmt.Sprint("b", i)})
		if err != nil {
			t.Fatal(err)
		}
		in := res.Instance
		if in.Seq != appends+1 || in.State != fmt.Sprint("s", appends-1) || len(in.History) != appends+1 {
			t.Fatalf("%s: seq %d state %s history %d", in.ID, in.Seq, in.State, len(in.History))
		}
		for k, e := range in.History {
			if e.Seq != int64(k+1) {
				t.Fatalf("%s: entry %d has seq %d", in.ID, k, e.Seq)
			}
		}
	}
	batched, batches := j.batchedAppends.Load(), j.appendBatches.Load()
	if batches == 0 || batched < 2*batches {
		t.Fatalf("%d appends in %d batches: no batching", batched, batches)
	}
	t.Logf("%d appends (and %d refused) by %d callers; %d of them in %d batches", instances*appends, conflicts, instances, batched, batches)
}
