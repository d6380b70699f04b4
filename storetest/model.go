package storetest

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/idemkit/idem"
)

// This file is the sequential specification of one key of a store: the
// model that both the linearizability check and the state machine compare
// the store's answers with. It is written from the store contract (the
// idem.Store and Record documentation, summarised in docs/architecture.md),
// independently of internal/transition, so that the two can
// disagree.
//
// Times are int64 nanoseconds on the store's clock. The linearizability
// check runs every operation at time 0 with leases and windows far longer
// than the run, so nothing expires there; the state machine runs on a
// ManualClock and passes its readings.

type opKind uint8

const (
	opBegin opKind = iota
	opComplete
	opRelease
	opExtend
	opCheckpoint
	opGet
	opDelete
)

var opNames = [...]string{"Begin", "Complete", "Release", "Extend", "Checkpoint", "Get", "Delete"}

func (k opKind) String() string { return opNames[k] }

// modelOp is one call on one key.
type modelOp struct {
	Kind        opKind
	Key         string
	Now         int64 // the store's clock when the call took effect
	Fingerprint string
	Token       int64
	Lease       time.Duration
	Window      time.Duration
	Retention   time.Duration
	Data        string // outcome or checkpoint data
	Meta        string // encoded outcome meta (encodeMeta)
	MetaMap     map[string]string
	Point       string
	// ExactTime: compare lease ends and retry-after exactly (ManualClock).
	ExactTime bool
}

// errClass is the sentinel an error wraps, as the model sees it.
type errClass string

const (
	errNone      errClass = ""
	errLeaseLost errClass = "lease lost"
	errCompleted errClass = "completed"
	errNotFound  errClass = "not found"
)

func classify(err error) errClass {
	switch {
	case err == nil:
		return errNone
	case errors.Is(err, idem.ErrLeaseLost):
		return errLeaseLost
	case errors.Is(err, idem.ErrCompleted):
		return errCompleted
	case errors.Is(err, idem.ErrNotFound):
		return errNotFound
	}
	return errClass("unexpected: " + err.Error())
}

// modelResult is what a store answered, reduced to what the model checks.
type modelResult struct {
	Err        errClass
	Decision   idem.Decision // Begin
	HasRecord  bool          // Begin: a record came back
	Takeover   bool
	RetryAfter time.Duration
	// The record, for Begin (acquired, replay) and Get.
	Fingerprint   string
	State         idem.State
	Token         int64
	Attempts      int
	LeaseUntil    int64 // 0 when the answer did not carry it
	Expires       int64
	HasOutcome    bool
	Data, Meta    string
	HasCheckpoint bool
	Point, CpData string
}

// resultOf reduces a record. base is the time 0 of the model's clock.
func (r *modelResult) setRecord(rec *idem.Record, base time.Time) {
	r.HasRecord = true
	r.Fingerprint = rec.Fingerprint
	r.State = rec.State
	r.Token = rec.Token
	r.Attempts = rec.Attempts
	if !rec.LeaseUntil.IsZero() {
		r.LeaseUntil = int64(rec.LeaseUntil.Sub(base))
	}
	if !rec.Expires.IsZero() {
		r.Expires = int64(rec.Expires.Sub(base))
	}
	if rec.Outcome != nil {
		r.HasOutcome = true
		r.Data = string(rec.Outcome.Data)
		r.Meta = encodeMeta(rec.Outcome.Meta)
	}
	if rec.Checkpoint != nil {
		r.HasCheckpoint = true
		r.Point = rec.Checkpoint.Point
		r.CpData = string(rec.Checkpoint.Data)
	}
}

// encodeMeta makes outcome metadata comparable; nil and empty are the same.
func encodeMeta(m map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "%q=%q;", k, m[k])
	}
	return b.String()
}

// modelRecord is the spec's record of one key. The zero value is "no
// record". It holds only comparable values so porcupine can compare states.
type modelRecord struct {
	Exists        bool
	Fingerprint   string
	State         idem.State
	Token         int64
	Attempts      int
	LeaseUntil    int64
	Window        time.Duration
	Retention     time.Duration
	HasCheckpoint bool
	Point, CpData string
	Data, Meta    string // outcome, when completed
	Expires       int64
	RetainUntil   int64
}

// keyState is the model's state of one key: its record and the greatest
// token it ever had, which outlives deletion and expiry.
type keyState struct {
	Rec      modelRecord
	MaxToken int64
}

// live: the record counts for Begin (pending, or completed within its
// window).
func (r *modelRecord) live(now int64) bool {
	switch {
	case !r.Exists:
		return false
	case r.State == idem.StatePending:
		return true
	case r.State == idem.StateCompleted:
		return now < r.Expires
	}
	return false
}

// sweepable: Sweep may remove the record (and a store that expires records
// by itself may already have). A pending record with a live lease never is.
func (r *modelRecord) sweepable(now int64) bool {
	if !r.Exists || (r.State == idem.StatePending && now < r.LeaseUntil) {
		return false
	}
	return now >= r.RetainUntil
}

// step checks that the store's answer res to op is one the spec allows in
// state s, and returns the state after it. A record that Sweep may remove
// may also have gone already: both readings are tried. why says what
// differed when ok is false.
func step(s keyState, op modelOp, res modelResult) (ok bool, next keyState, why string) {
	next, why = stepRecord(s, op, res)
	if why == "" {
		return true, next, ""
	}
	if s.Rec.sweepable(op.Now) {
		gone := keyState{MaxToken: s.MaxToken}
		if n, why2 := stepRecord(gone, op, res); why2 == "" {
			return true, n, ""
		}
	}
	return false, s, why
}

func stepRecord(s keyState, op modelOp, res modelResult) (keyState, string) {
	r := s.Rec
	now := op.Now
	switch op.Kind {
	case opBegin:
		return stepBegin(s, op, res)
	case opGet:
		if !r.Exists {
			return s, wantClass(res, errNotFound)
		}
		if why := wantClass(res, errNone); why != "" {
			return s, why
		}
		return s, sameRecord(r, res, op.ExactTime)
	case opDelete:
		if !r.Exists {
			return s, wantClass(res, errNotFound)
		}
		s.Rec = modelRecord{}
		return s, wantClass(res, errNone)
	}
	// Complete, Release, Extend, Checkpoint: only the current owner.
	switch {
	case !r.Exists || r.Token != op.Token || r.State == idem.StateReleased:
		return s, wantClass(res, errLeaseLost)
	case r.State == idem.StateCompleted:
		return s, wantClass(res, errCompleted)
	}
	if why := wantClass(res, errNone); why != "" {
		return s, why
	}
	switch op.Kind {
	case opComplete:
		r.State = idem.StateCompleted
		r.Data, r.Meta = op.Data, op.Meta
		r.Expires = now + int64(r.Window)
		r.RetainUntil = now + int64(max(r.Window, r.Retention))
		r.HasCheckpoint, r.Point, r.CpData = false, "", ""
	case opRelease:
		// Only the token and the attempt count survive a release.
		r = modelRecord{Exists: true, State: idem.StateReleased, Token: r.Token, Attempts: r.Attempts,
			Window: r.Window, Retention: r.Retention, RetainUntil: now + int64(r.Window)}
	case opExtend:
		r.LeaseUntil = now + int64(op.Lease)
		r.RetainUntil = r.LeaseUntil + int64(r.Window)
		if op.ExactTime && res.LeaseUntil != 0 && res.LeaseUntil != r.LeaseUntil {
			return s, fmt.Sprintf("lease until %s, want %s", time.Duration(res.LeaseUntil), time.Duration(r.LeaseUntil))
		}
	case opCheckpoint:
		r.HasCheckpoint, r.Point, r.CpData = true, op.Point, op.Data
	}
	s.Rec = r
	return s, ""
}

func stepBegin(s keyState, op modelOp, res modelResult) (keyState, string) {
	r := s.Rec
	now := op.Now
	if why := wantClass(res, errNone); why != "" {
		return s, why
	}
	if r.live(now) {
		switch {
		case r.Fingerprint != op.Fingerprint:
			if res.Decision != idem.Mismatch {
				return s, fmt.Sprintf("decision %s, want %s", res.Decision, idem.Mismatch)
			}
			if res.HasRecord {
				return s, "a mismatch returned a record"
			}
			return s, ""
		case r.State == idem.StateCompleted:
			if res.Decision != idem.Replay {
				return s, fmt.Sprintf("decision %s, want %s", res.Decision, idem.Replay)
			}
			if !res.HasOutcome || res.Data != r.Data || res.Meta != r.Meta {
				return s, fmt.Sprintf("replayed outcome %q %s, want %q %s", trim(res.Data), res.Meta, trim(r.Data), r.Meta)
			}
			return s, ""
		case now < r.LeaseUntil:
			if res.Decision != idem.InFlight {
				return s, fmt.Sprintf("decision %s, want %s", res.Decision, idem.InFlight)
			}
			want := time.Duration(r.LeaseUntil - now)
			if res.RetryAfter <= 0 || res.RetryAfter > want || (op.ExactTime && res.RetryAfter != want) {
				return s, fmt.Sprintf("retry after %s, want %s", res.RetryAfter, want)
			}
			return s, ""
		}
		// A pending record whose lease ran out: taken over, checkpoint kept.
		r.Attempts++
		return acquired(s, r, op, res, true)
	}
	attempts := 1
	if r.Exists && r.State == idem.StateReleased {
		attempts = r.Attempts + 1
	}
	r = modelRecord{Exists: true, Fingerprint: op.Fingerprint, Attempts: attempts}
	return acquired(s, r, op, res, false)
}

// acquired checks an Acquired answer; the store picks the token, which must
// exceed every token the key ever had.
func acquired(s keyState, r modelRecord, op modelOp, res modelResult, takeover bool) (keyState, string) {
	switch {
	case res.Decision != idem.Acquired:
		return s, fmt.Sprintf("decision %s, want %s", res.Decision, idem.Acquired)
	case !res.HasRecord:
		return s, "acquired without a record"
	case res.Token <= s.MaxToken || res.Token <= 0:
		return s, fmt.Sprintf("token %d, want one greater than %d", res.Token, s.MaxToken)
	case res.Takeover != takeover:
		return s, fmt.Sprintf("takeover %v, want %v", res.Takeover, takeover)
	case res.Attempts != r.Attempts:
		return s, fmt.Sprintf("attempts %d, want %d", res.Attempts, r.Attempts)
	case res.State != "" && res.State != idem.StatePending:
		return s, fmt.Sprintf("state %s, want %s", res.State, idem.StatePending)
	case res.HasCheckpoint != r.HasCheckpoint || res.Point != r.Point || res.CpData != r.CpData:
		return s, fmt.Sprintf("checkpoint %v %q %q, want %v %q %q", res.HasCheckpoint, res.Point, trim(res.CpData),
			r.HasCheckpoint, r.Point, trim(r.CpData))
	}
	r.State = idem.StatePending
	r.Token = res.Token
	r.LeaseUntil = op.Now + int64(op.Lease)
	r.Window, r.Retention = op.Window, op.Retention
	r.RetainUntil = r.LeaseUntil + int64(op.Window)
	r.Expires = 0
	r.Data, r.Meta = "", ""
	if op.ExactTime && res.LeaseUntil != 0 && res.LeaseUntil != r.LeaseUntil {
		return s, fmt.Sprintf("lease until %s, want %s", time.Duration(res.LeaseUntil), time.Duration(r.LeaseUntil))
	}
	s.Rec = r
	s.MaxToken = res.Token
	return s, ""
}

// sameRecord compares a Get answer with the model's record.
func sameRecord(r modelRecord, res modelResult, exact bool) string {
	switch {
	case res.State != r.State:
		return fmt.Sprintf("state %s, want %s", res.State, r.State)
	case res.Token != r.Token:
		return fmt.Sprintf("token %d, want %d", res.Token, r.Token)
	case res.Attempts != r.Attempts:
		return fmt.Sprintf("attempts %d, want %d", res.Attempts, r.Attempts)
	case r.State != idem.StateReleased && res.Fingerprint != r.Fingerprint:
		return fmt.Sprintf("fingerprint %q, want %q", res.Fingerprint, r.Fingerprint)
	}
	switch r.State {
	case idem.StateCompleted:
		if !res.HasOutcome || res.Data != r.Data || res.Meta != r.Meta {
			return fmt.Sprintf("outcome %v %q %s, want %q %s", res.HasOutcome, trim(res.Data), res.Meta, trim(r.Data), r.Meta)
		}
		if exact && res.Expires != r.Expires {
			return fmt.Sprintf("expires %s, want %s", time.Duration(res.Expires), time.Duration(r.Expires))
		}
	case idem.StatePending:
		if res.HasCheckpoint != r.HasCheckpoint || res.Point != r.Point || res.CpData != r.CpData {
			return fmt.Sprintf("checkpoint %v %q %q, want %v %q %q", res.HasCheckpoint, res.Point, trim(res.CpData),
				r.HasCheckpoint, r.Point, trim(r.CpData))
		}
		if res.HasOutcome {
			return "a pending record has an outcome"
		}
		if exact && res.LeaseUntil != r.LeaseUntil {
			return fmt.Sprintf("lease until %s, want %s", time.Duration(res.LeaseUntil), time.Duration(r.LeaseUntil))
		}
	}
	return ""
}

func wantClass(res modelResult, want errClass) string {
	if res.Err != want {
		if want == errNone {
			return fmt.Sprintf("error %q, want none", res.Err)
		}
		return fmt.Sprintf("error %q, want %q", res.Err, want)
	}
	return ""
}

// trim shortens outcome bytes for messages.
func trim(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%s…(%d bytes)", s[:40], len(s))
	}
	return s
}
