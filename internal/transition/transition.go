// Package transition holds the ledger's state transitions as pure functions
// of (current record, parameters, now). Stores that keep records as values
// (memstore, pebblestore) load the record under a per-key lock, call one of
// these, and persist what it returns; the SQL and Lua stores express the
// same rules in their own language and storetest checks they agree.
package transition

import (
	"fmt"
	"maps"
	"time"

	"github.com/idemkit/idem"
)

// Live reports whether rec still counts: it is absent to Begin when nil,
// released, or completed with its dedup window over.
func Live(rec *idem.Record, now time.Time) bool {
	if rec == nil {
		return false
	}
	switch rec.State {
	case idem.StateCompleted:
		return now.Before(rec.Expires)
	case idem.StatePending:
		return true
	}
	return false
}

// Sweepable reports whether Sweep may remove rec at now. A pending record
// with a live lease is never sweepable, whatever its RetainUntil says.
func Sweepable(rec *idem.Record, now time.Time) bool {
	if rec.State == idem.StatePending && now.Before(rec.LeaseUntil) {
		return false
	}
	return !now.Before(rec.RetainUntil)
}

// Begin decides a Begin. next is the record to store, nil when nothing
// changes. token returns a fresh fencing token greater than its argument.
func Begin(cur *idem.Record, p *idem.BeginParams, now time.Time, token func(after int64) int64) (res *idem.BeginResult, next *idem.Record) {
	d, takeover, retryAfter := Decide(cur, p, now)
	switch d {
	case idem.Mismatch:
		return &idem.BeginResult{Decision: idem.Mismatch}, nil
	case idem.Replay:
		return &idem.BeginResult{Decision: idem.Replay, Record: Clone(cur)}, nil
	case idem.InFlight:
		return &idem.BeginResult{Decision: idem.InFlight, Record: Clone(cur), RetryAfter: retryAfter}, nil
	}
	next = new(idem.Record)
	*next = Acquire(cur, takeover, p, now, token)
	if takeover {
		next.Checkpoint = CloneCheckpoint(next.Checkpoint)
	}
	return &idem.BeginResult{Decision: idem.Acquired, Record: Clone(next), Takeover: takeover}, next
}

// Decide is what a Begin on cur finds at now: Mismatch, Replay, InFlight
// with the time left on the lease, or Acquired, taking an expired lease
// over when takeover. It allocates nothing; Acquire makes the record.
func Decide(cur *idem.Record, p *idem.BeginParams, now time.Time) (d idem.Decision, takeover bool, retryAfter time.Duration) {
	if !Live(cur, now) {
		return idem.Acquired, false, 0
	}
	switch {
	case cur.Fingerprint != p.Fingerprint:
		return idem.Mismatch, false, 0
	case cur.State == idem.StateCompleted:
		return idem.Replay, false, 0
	case now.Before(cur.LeaseUntil):
		return idem.InFlight, false, cur.LeaseUntil.Sub(now)
	}
	return idem.Acquired, true, 0
}

// Acquire returns the record an acquiring Begin stores in place of cur
// (nil when absent), takeover as Decide said. A takeover keeps cur's
// checkpoint: the result shares it.
func Acquire(cur *idem.Record, takeover bool, p *idem.BeginParams, now time.Time, token func(after int64) int64) idem.Record {
	if takeover {
		// Pending with an expired lease: take over, keeping the checkpoint.
		next := *cur
		next.Token = token(cur.Token)
		next.Attempts++
		setLease(&next, now, p)
		return next
	}
	next := idem.Record{
		Scope:       p.Scope,
		Key:         p.Key,
		Fingerprint: p.Fingerprint,
		State:       idem.StatePending,
		Attempts:    1,
		Created:     now,
	}
	var after int64
	if cur != nil {
		after = cur.Token
		if cur.State == idem.StateReleased {
			// Only the attempt count survives a release.
			next.Attempts = cur.Attempts + 1
			next.Created = cur.Created
		}
	}
	next.Token = token(after)
	setLease(&next, now, p)
	return next
}

func setLease(r *idem.Record, now time.Time, p *idem.BeginParams) {
	r.Window = p.Window
	r.Retention = p.Retention
	r.LeaseUntil = now.Add(p.Lease)
	r.Expires = time.Time{}
	r.RetainUntil = r.LeaseUntil.Add(p.Window)
}

// owned checks that token is the current owner of cur. An owner whose lease
// ran out but that nobody took over is still the owner: the fencing token,
// not the clock, decides, so a paused owner that wakes late loses nothing
// unless a successor exists.
func owned(cur *idem.Record, token int64) error {
	switch {
	case cur == nil:
		return fmt.Errorf("%w: no record for the key", idem.ErrLeaseLost)
	case cur.Token != token:
		return fmt.Errorf("%w: token %d is not current", idem.ErrLeaseLost, token)
	case cur.State == idem.StateCompleted:
		return fmt.Errorf("%w: token %d", idem.ErrCompleted, token)
	case cur.State != idem.StatePending:
		return fmt.Errorf("%w: token %d was released", idem.ErrLeaseLost, token)
	}
	return nil
}

// Complete stores the outcome when p.Token is the live owner.
func Complete(cur *idem.Record, p *idem.CompleteParams, now time.Time) (*idem.Record, error) {
	c, err := CompleteRecord(cur, p, now)
	if err != nil {
		return nil, err
	}
	c.Outcome = CloneOutcome(&p.Outcome)
	return &c, nil
}

// CompleteRecord is Complete without the outcome: the completed record
// with a nil Outcome, for a store that keeps p.Outcome in its own form.
func CompleteRecord(cur *idem.Record, p *idem.CompleteParams, now time.Time) (idem.Record, error) {
	if err := owned(cur, p.Token); err != nil {
		return idem.Record{}, err
	}
	next := *cur // the checkpoint goes and the outcome is replaced: no deep copy
	next.State = idem.StateCompleted
	next.Completed = now
	next.Expires = now.Add(cur.Window)
	next.RetainUntil = now.Add(max(cur.Window, cur.Retention))
	next.Checkpoint = nil
	next.Outcome = nil
	return next, nil
}

// Release gives the key back after a retryable failure.
func Release(cur *idem.Record, p *idem.ReleaseParams, now time.Time) (*idem.Record, error) {
	if err := owned(cur, p.Token); err != nil {
		return nil, err
	}
	return &idem.Record{
		Scope:       cur.Scope,
		Key:         cur.Key,
		State:       idem.StateReleased,
		Token:       cur.Token,
		Attempts:    cur.Attempts,
		Created:     cur.Created,
		LeaseUntil:  now,
		Expires:     now,
		RetainUntil: now.Add(cur.Window),
		Window:      cur.Window,
		Retention:   cur.Retention,
	}, nil
}

// Extend moves the lease end to now + p.Lease.
func Extend(cur *idem.Record, p *idem.ExtendParams, now time.Time) (*idem.Record, error) {
	if err := owned(cur, p.Token); err != nil {
		return nil, err
	}
	next := Clone(cur)
	next.LeaseUntil = now.Add(p.Lease)
	next.RetainUntil = next.LeaseUntil.Add(cur.Window)
	return next, nil
}

// Checkpoint records a recovery point.
func Checkpoint(cur *idem.Record, p *idem.CheckpointParams, now time.Time) (*idem.Record, error) {
	if err := owned(cur, p.Token); err != nil {
		return nil, err
	}
	next := Clone(cur)
	next.Checkpoint = &idem.Checkpoint{Point: p.Point, Data: append([]byte{}, p.Data...)}
	return next, nil
}

// Clone returns a deep copy of r, so callers never share byte slices with a
// store.
func Clone(r *idem.Record) *idem.Record {
	if r == nil {
		return nil
	}
	c := *r
	c.Checkpoint = CloneCheckpoint(r.Checkpoint)
	c.Outcome = CloneOutcome(r.Outcome)
	return &c
}

// CloneCheckpoint returns a deep copy of cp (nil for nil).
func CloneCheckpoint(cp *idem.Checkpoint) *idem.Checkpoint {
	if cp == nil {
		return nil
	}
	return &idem.Checkpoint{Point: cp.Point, Data: append([]byte{}, cp.Data...)}
}

// CloneOutcome returns a deep copy of o (nil for nil).
func CloneOutcome(o *idem.Outcome) *idem.Outcome {
	if o == nil {
		return nil
	}
	// maps.Clone keeps a nil map nil and an empty one empty.
	return &idem.Outcome{Data: append([]byte{}, o.Data...), Meta: maps.Clone(o.Meta)}
}
