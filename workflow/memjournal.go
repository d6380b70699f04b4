package workflow

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/idemkit/idem"
)

// MemJournal is a Journal in memory: for tests and for programs whose
// instances need not survive the process. The zero value is ready to use.
type MemJournal struct {
	mu        sync.Mutex
	instances map[string]*Instance
}

// NewMemJournal returns an empty MemJournal.
func NewMemJournal() *MemJournal { return new(MemJournal) }

var _ Journal = (*MemJournal)(nil)

// copyInstance copies in deeply; withHistory says whether to copy its
// history too.
func copyInstance(in *Instance, withHistory bool) *Instance {
	c := *in
	c.Input = slices.Clone(in.Input)
	if in.Pending != nil {
		p := *in.Pending
		p.Input = slices.Clone(p.Input)
		c.Pending = &p
	}
	c.Inbox = slices.Clone(in.Inbox)
	for i := range c.Inbox {
		c.Inbox[i].Payload = slices.Clone(c.Inbox[i].Payload)
	}
	c.Seen = slices.Clone(in.Seen)
	if in.Results != nil {
		c.Results = make(map[string][]byte, len(in.Results))
		for k, v := range in.Results {
			c.Results[k] = slices.Clone(v)
		}
	}
	c.Done = slices.Clone(in.Done)
	for i := range c.Done {
		c.Done[i].Input = slices.Clone(c.Done[i].Input)
		c.Done[i].Result = slices.Clone(c.Done[i].Result)
	}
	c.History = nil
	if withHistory {
		c.History = slices.Clone(in.History)
	}
	return &c
}

func (j *MemJournal) appendEntries(in *Instance, entries []Entry) {
	for _, e := range entries {
		e.Seq = int64(len(in.History)) + 1
		in.History = append(in.History, e)
	}
}

// Create implements Journal.
func (j *MemJournal) Create(ctx context.Context, p *CreateParams) (*CreateResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p == nil || p.Instance == nil || p.Instance.ID == "" {
		return nil, fmt.Errorf("%w: create: instance with an id required", idem.ErrInvalid)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.instances == nil {
		j.instances = map[string]*Instance{}
	}
	old := j.instances[p.Instance.ID]
	switch {
	case old != nil && p.Replace:
		if old.Seq != p.ReplaceSeq {
			return nil, fmt.Errorf("%w: create %q: seq is %d, not %d", ErrConflict, old.ID, old.Seq, p.ReplaceSeq)
		}
		in := copyInstance(p.Instance, false)
		in.Seq = old.Seq + 1
		in.History = old.History
		j.appendEntries(in, p.Entries)
		j.instances[in.ID] = in
		return &CreateResult{Instance: copyInstance(in, true), Created: true}, nil
	case old != nil:
		if old.Fingerprint != p.Instance.Fingerprint {
			return nil, fmt.Errorf("%w: instance %q was started with another type or input", idem.ErrFingerprintMismatch, old.ID)
		}
		return &CreateResult{Instance: copyInstance(old, true)}, nil
	case p.Replace:
		return nil, fmt.Errorf("%w: create %q: nothing to replace", ErrConflict, p.Instance.ID)
	}
	in := copyInstance(p.Instance, false)
	in.Seq = 1
	j.appendEntries(in, p.Entries)
	j.instances[in.ID] = in
	return &CreateResult{Instance: copyInstance(in, true), Created: true}, nil
}

// Get implements Journal.
func (j *MemJournal) Get(ctx context.Context, p *GetParams) (*GetResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	in := j.instances[p.ID]
	if in == nil {
		return nil, fmt.Errorf("%w: instance %q", idem.ErrNotFound, p.ID)
	}
	return &GetResult{Instance: copyInstance(in, true)}, nil
}

// Append implements Journal.
func (j *MemJournal) Append(ctx context.Context, p *AppendParams) (*AppendResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	old := j.instances[p.Instance.ID]
	if old == nil {
		return nil, fmt.Errorf("%w: instance %q", idem.ErrNotFound, p.Instance.ID)
	}
	if old.Seq != p.Instance.Seq {
		return nil, fmt.Errorf("%w: instance %q: seq is %d, not %d", ErrConflict, old.ID, old.Seq, p.Instance.Seq)
	}
	in := copyInstance(p.Instance, false)
	in.Seq = old.Seq + 1
	in.History = old.History
	j.appendEntries(in, p.Entries)
	j.instances[in.ID] = in
	return &AppendResult{Seq: in.Seq}, nil
}

// List implements Journal.
func (j *MemJournal) List(ctx context.Context, p *ListParams) (*ListResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	j.mu.Lock()
	ids := make([]string, 0, len(j.instances))
	for id := range j.instances {
		if id > p.After {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	res := &ListResult{}
	for _, id := range ids {
		in := j.instances[id]
		if p.Type != "" && in.Type != p.Type || p.State != "" && in.State != p.State || p.Status != "" && in.Status != p.Status {
			continue
		}
		if !p.Due.IsZero() && (in.WakeAt.IsZero() || in.WakeAt.After(p.Due)) {
			continue
		}
		if !p.FinishedBefore.IsZero() && (!in.Status.Finished() || !in.Finished.Before(p.FinishedBefore)) {
			continue
		}
		if len(res.Instances) == limit {
			res.Next = res.Instances[limit-1].ID
			break
		}
		res.Instances = append(res.Instances, copyInstance(in, false))
	}
	j.mu.Unlock()
	return res, nil
}

// Delete implements Journal.
func (j *MemJournal) Delete(ctx context.Context, p *DeleteParams) (*DeleteResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	old := j.instances[p.ID]
	if old == nil {
		return nil, fmt.Errorf("%w: instance %q", idem.ErrNotFound, p.ID)
	}
	if old.Seq != p.Seq {
		return nil, fmt.Errorf("%w: instance %q: seq is %d, not %d", ErrConflict, old.ID, old.Seq, p.Seq)
	}
	delete(j.instances, p.ID)
	return &DeleteResult{}, nil
}
