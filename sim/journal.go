package sim

import (
	"context"
	"fmt"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
)

// Journal is the durable workflow journal of a world: it wraps a
// workflow.MemJournal with the store's failpoints (a Create or Append
// fails before it commits, or commits and loses its answer) and checks, at
// every read, that an instance's history only ever grows: an entry once
// read never changes nor disappears. Every call is a yield point.
type Journal struct {
	w     *World
	inner *workflow.MemJournal
	fp    Failpoints
	seen  map[string][]workflow.Entry
}

var _ workflow.Journal = (*Journal)(nil)

// NewJournal returns the world's workflow journal, with failpoints fp.
func (w *World) NewJournal(fp Failpoints) *Journal {
	return &Journal{w: w, inner: workflow.NewMemJournal(), fp: fp, seen: map[string][]workflow.Entry{}}
}

// Inner returns the wrapped journal, to read without faults or yields.
func (j *Journal) Inner() *workflow.MemJournal { return j.inner }

func (j *Journal) yield(name, id string) error {
	w := j.w
	if w.cur == nil {
		return nil
	}
	if !w.running() {
		return fmt.Errorf("journal %s: %w", name, ErrCrashed)
	}
	if err := w.Yield(); err != nil {
		return err
	}
	if j.fp.Latency > 0 {
		return w.Sleep(w.Between(0, j.fp.Latency))
	}
	return nil
}

// write runs a Create or Append with the failpoints around it.
func (j *Journal) write(name, id string, op func() error) error {
	w := j.w
	if err := j.yield(name, id); err != nil {
		return err
	}
	if w.Chance(j.fp.BeforeCommit) {
		w.Log("journal-"+name, id, "failpoint journal/before-commit")
		return fmt.Errorf("sim: journal %s failed before commit: %w", name, idem.ErrUnavailable)
	}
	if err := op(); err != nil {
		return err
	}
	w.Log("journal-"+name, id, "")
	if w.Chance(j.fp.AfterCommit) {
		w.Log("journal-"+name, id, "failpoint journal/after-commit")
		return fmt.Errorf("sim: journal %s committed, then its answer was lost: %w", name, idem.ErrUnavailable)
	}
	return nil
}

// Observe checks in's history against every earlier observation of it:
// the earlier history must be a prefix of this one (history-append-only).
func (j *Journal) Observe(in *workflow.Instance) {
	old := j.seen[in.ID]
	if len(in.History) < len(old) {
		j.w.Violate("history-append-only", in.ID, fmt.Sprintf("history shrank from %d to %d entries", len(old), len(in.History)))
		return
	}
	for i := range old {
		if old[i] != in.History[i] {
			j.w.Violate("history-append-only", in.ID, fmt.Sprintf("entry %d changed from %+v to %+v", i+1, old[i], in.History[i]))
			return
		}
	}
	j.seen[in.ID] = in.History
}

// Create implements workflow.Journal.
func (j *Journal) Create(ctx context.Context, p *workflow.CreateParams) (*workflow.CreateResult, error) {
	var res *workflow.CreateResult
	err := j.write("create", p.Instance.ID, func() (err error) {
		res, err = j.inner.Create(ctx, p)
		return err
	})
	return res, err
}

// Append implements workflow.Journal.
func (j *Journal) Append(ctx context.Context, p *workflow.AppendParams) (*workflow.AppendResult, error) {
	var res *workflow.AppendResult
	err := j.write("append", p.Instance.ID, func() (err error) {
		res, err = j.inner.Append(ctx, p)
		return err
	})
	return res, err
}

// Get implements workflow.Journal; it injects no faults.
func (j *Journal) Get(ctx context.Context, p *workflow.GetParams) (*workflow.GetResult, error) {
	if err := j.yield("get", p.ID); err != nil {
		return nil, err
	}
	res, err := j.inner.Get(ctx, p)
	if err == nil {
		j.Observe(res.Instance)
	}
	return res, err
}

// List implements workflow.Journal; it injects no faults.
func (j *Journal) List(ctx context.Context, p *workflow.ListParams) (*workflow.ListResult, error) {
	if err := j.yield("list", ""); err != nil {
		return nil, err
	}
	return j.inner.List(ctx, p)
}

// Delete implements workflow.Journal.
func (j *Journal) Delete(ctx context.Context, p *workflow.DeleteParams) (*workflow.DeleteResult, error) {
	var res *workflow.DeleteResult
	err := j.write("delete", p.ID, func() (err error) {
		res, err = j.inner.Delete(ctx, p)
		return err
	})
	return res, err
}
