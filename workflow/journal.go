package workflow

import (
	"context"
	"time"
)

// Status is where an instance is in its life, beside the state of its
// definition it is in.
type Status string

// The values of Status.
const (
	// Running: the instance moves forward, or waits for an event.
	Running Status = "running"
	// Unwinding: the instance runs the compensations of its completed
	// actions, latest first, before it ends failed or cancelled.
	Unwinding Status = "unwinding"
	// Parked: an action (or a compensation) failed for good and its
	// definition said park; an operator retries or cancels it.
	Parked Status = "parked"
	// Succeeded: the instance reached a Success terminal state.
	Succeeded Status = "succeeded"
	// Failed: the instance reached a Failure terminal state, or an action
	// failed for good and the instance was unwound.
	Failed Status = "failed"
	// Cancelled: the instance was cancelled and unwound.
	Cancelled Status = "cancelled"
)

// Finished reports whether the status is final: succeeded, failed or
// cancelled.
func (s Status) Finished() bool { return s == Succeeded || s == Failed || s == Cancelled }

// Instance is one run of a workflow definition, as the journal keeps it.
// The engine writes it; callers read it (Engine.Get, Engine.List).
type Instance struct {
	ID      string
	Type    string
	Version int
	// Run counts the runs of this id: 1, then one more each time a reuse
	// policy lets a finished id start again.
	Run   int
	Input []byte
	// Fingerprint identifies the start request (type and input): a start
	// of the same id with another fingerprint is refused.
	Fingerprint string
	State       string
	Status      Status
	// Seq is the journal's version of the instance; every Append must
	// name the Seq it read (compare-and-set).
	Seq int64
	// Owner names the engine (EngineConfig.ID) that holds the instance's
	// lease, "" when none does: an instance is advanced by one engine at a
	// time.
	Owner string `json:",omitempty"`
	// Token is the instance's fencing token: it grows by one each time an
	// engine takes the instance, and actions get it (Step.Token) to pass
	// downstream, which can refuse a lower one than it has seen.
	Token int64
	// LeaseUntil is when Owner's lease runs out; another engine may take
	// the instance over after it.
	LeaseUntil time.Time
	// Steps is the number of step numbers used, in every run of the id:
	// step keys never repeat, not even across runs.
	Steps int
	// Entered counts state entries; it names timeout events.
	Entered int
	// Pending is the action in progress, nil when the instance waits.
	Pending *PendingAction `json:",omitempty"`
	// Attempt is how many attempts of the current action or compensation
	// failed so far.
	Attempt int
	// NotBefore delays the next attempt (a retry's backoff).
	NotBefore time.Time
	// Inbox holds the events received and not yet processed, in order.
	Inbox []InboxEvent `json:",omitempty"`
	// Seen holds the id of every event received, for deduplication.
	Seen []string `json:",omitempty"`
	// Done lists the completed actions that have a compensation, in the
	// order they completed.
	Done []DoneAction `json:",omitempty"`
	// Results holds the result of the latest completion of each action
	// that completed, by action name: later actions read it (Step.Results),
	// as declarative definitions' templates do.
	Results map[string][]byte `json:",omitempty"`
	// Undone is how many of Done, from the end, have been compensated.
	Undone int
	// EndStatus is the status an unwinding ends with (Failed, Cancelled).
	EndStatus Status `json:",omitempty"`
	// ParkedFrom is the status a parked instance returns to on Retry.
	ParkedFrom Status `json:",omitempty"`
	// CancelRequested is set by Cancel; the worker that owns the instance
	// acts on it.
	CancelRequested bool
	CancelReason    string `json:",omitempty"`
	// Error is the last failure that parked or failed the instance.
	Error string `json:",omitempty"`
	// TimeoutAt is when the current state's timeout fires, zero if none.
	TimeoutAt time.Time
	// WakeAt is when a worker next has something to do for the instance
	// (an event, an action, a retry, a timeout), zero if nothing until an
	// event or operator arrives. Journals index it.
	WakeAt   time.Time
	Created  time.Time
	Updated  time.Time
	Finished time.Time
	// History is the append-only log of everything that happened, filled
	// by Get (not by List).
	History []Entry `json:",omitempty"`
}

// PendingAction is the action an instance is running.
type PendingAction struct {
	Step    int
	Action  string
	OnEnter bool // the state's OnEnter, else the transition's action
	Event   string
	EventID string
	From    string
	To      string
	Input   []byte
	// Token is the instance's Token when the action's state was last
	// recorded by its owner, or when an engine took the instance from a
	// clean release. A lower one than the instance's means an owner in
	// between may have run an attempt and died before recording it.
	Token int64 `json:",omitempty"`
}

// InboxEvent is an event received and not yet processed.
type InboxEvent struct {
	ID      string
	Event   string
	Payload []byte
}

// DoneAction is a completed action that has a compensation.
type DoneAction struct {
	Step   int
	Action string
	Key    string
	Input  []byte
	Result []byte
}

// EntryKind says what a history entry records.
type EntryKind string

// The values of EntryKind.
const (
	EntryStarted          EntryKind = "started"
	EntryEventReceived    EntryKind = "event_received"
	EntryEventRejected    EntryKind = "event_rejected"
	EntryTimeoutFired     EntryKind = "timeout_fired"
	EntryActionStarted    EntryKind = "action_started"
	EntryActionFailed     EntryKind = "action_failed"
	EntryActionCompleted  EntryKind = "action_completed"
	EntryTransition       EntryKind = "transition"
	EntryCancelRequested  EntryKind = "cancel_requested"
	EntryUnwinding        EntryKind = "unwinding"
	EntryCompensated      EntryKind = "compensated"
	EntryCompensateFailed EntryKind = "compensate_failed"
	EntryParked           EntryKind = "parked"
	EntryRetried          EntryKind = "retried"
	EntryResumed          EntryKind = "resumed"
	EntryFinished         EntryKind = "finished"
)

// Entry is one line of an instance's history.
type Entry struct {
	// Seq numbers the entries of an instance from 1; the journal sets it.
	Seq      int64
	At       time.Time
	Kind     EntryKind
	Run      int
	State    string        `json:",omitempty"` // the state after the entry
	Event    string        `json:",omitempty"`
	EventID  string        `json:",omitempty"`
	From     string        `json:",omitempty"`
	To       string        `json:",omitempty"`
	Action   string        `json:",omitempty"`
	StepKey  string        `json:",omitempty"`
	Token    int64         `json:",omitempty"`
	Attempt  int           `json:",omitempty"`
	Replayed bool          `json:",omitempty"` // the ledger replayed the step's result
	Error    string        `json:",omitempty"`
	Reason   string        `json:",omitempty"`
	Status   Status        `json:",omitempty"` // the status after the entry
	Duration time.Duration `json:",omitempty"`
}

// Journal keeps workflow instances and their histories. It is shaped like
// idem.Store: small, one params and one result type per method, so that
// durable implementations (an embedded store, PostgreSQL) follow the
// memory one, MemJournal. Implementations are safe for concurrent use and
// copy what they are given and what they return.
type Journal interface {
	// Create stores a new instance (Seq 1), idempotently by id: when the
	// id exists with the same Fingerprint, it returns the existing
	// instance with Created false; with another, an error wrapping
	// idem.ErrFingerprintMismatch. With Replace, it replaces the
	// existing instance whose Seq is ReplaceSeq (a new run of a finished
	// id) or fails with ErrConflict; the history goes on.
	Create(ctx context.Context, p *CreateParams) (*CreateResult, error)
	// Get returns an instance with its history, or an error wrapping
	// idem.ErrNotFound.
	Get(ctx context.Context, p *GetParams) (*GetResult, error)
	// Append replaces the instance's fields with p.Instance's (but
	// History) and appends p.Entries to its history, atomically, if the
	// stored Seq is p.Instance.Seq; else it changes nothing and returns
	// an error wrapping ErrConflict. The new Seq is one more.
	Append(ctx context.Context, p *AppendParams) (*AppendResult, error)
	// List returns instances (without history) matching every filter
	// set, ordered by id, a page at a time.
	List(ctx context.Context, p *ListParams) (*ListResult, error)
	// Delete removes an instance and its history if its Seq is p.Seq
	// (ErrConflict otherwise; idem.ErrNotFound if none).
	Delete(ctx context.Context, p *DeleteParams) (*DeleteResult, error)
}

// TxJournal is a Journal that runs a function in a transaction of its
// own database, in which its Append joins: the actions marked InTx run in
// it, so that their writes and the step's journal entry commit together or
// not at all. pgstore.Journal is one; its actions read the transaction
// with pgstore.StepTx(ctx).
type TxJournal interface {
	Journal
	// InTx begins a transaction, calls fn with a context that carries it,
	// and commits it if fn returns nil, else rolls it back and returns
	// fn's error. An Append with that context runs in the transaction.
	InTx(ctx context.Context, fn func(ctx context.Context) error) error
}

// CreateParams are Journal.Create's.
type CreateParams struct {
	Instance   *Instance
	Entries    []Entry
	Replace    bool
	ReplaceSeq int64
}

// CreateResult is Journal.Create's.
type CreateResult struct {
	Instance *Instance
	Created  bool
}

// GetParams are Journal.Get's.
type GetParams struct{ ID string }

// GetResult is Journal.Get's.
type GetResult struct{ Instance *Instance }

// AppendParams are Journal.Append's.
type AppendParams struct {
	Instance *Instance
	Entries  []Entry
}

// AppendResult is Journal.Append's.
type AppendResult struct{ Seq int64 }

// ListParams are Journal.List's filters; a zero field matches everything.
type ListParams struct {
	Type   string
	State  string
	Status Status
	// Due, if set, keeps the instances a worker has work for by then:
	// WakeAt set and not after Due.
	Due time.Time
	// FinishedBefore, if set, keeps finished instances that finished
	// before it.
	FinishedBefore time.Time
	// After is the id after which the page starts ("" from the first).
	After string
	// Limit bounds the page; 0 means 100.
	Limit int
}

// ListResult is Journal.List's.
type ListResult struct {
	Instances []*Instance
	// Next is the After of the next page, "" after the last.
	Next string
}

// DeleteParams are Journal.Delete's.
type DeleteParams struct {
	ID  string
	Seq int64
}

// DeleteResult is Journal.Delete's.
type DeleteResult struct{}
