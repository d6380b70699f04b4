package sim

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/msghook"
	"github.com/idemkit/idem/internal/wfhook"
)

// A Mutant is a deliberately broken ledger store, workflow engine, message
// consumer or outbox relay: the simulator must catch every one of them.
// Each wraps a correct store and breaks one rule, or (the workflow,
// consumer and relay mutants, Wrap nil) breaks one rule of the workflow
// engines of the workflows scenario, or of the messaging.Consumer or
// messaging.Relay of the messages scenario, through internal hooks.
type Mutant struct {
	Name string
	Doc  string
	Wrap func(w *World, inner idem.Store) idem.Store
	// engine breaks the workflow engine; nil for a ledger mutant.
	engine func(w *World) wfhook.Hooks
	// consumer breaks the messaging consumer; nil for the others. ack
	// acks the delivery whose handling ctx belongs to.
	consumer func(ack func(ctx context.Context, key string)) msghook.Hooks
	// relay breaks the outbox relays; nil for the others.
	relay func(w *World) msghook.RelayHooks
}

// Mutants lists the broken ledgers the simulator is proven against.
var Mutants = []Mutant{
	{"check-then-set", "Begin reads the record, then writes it in a second step: two callers both see the key free",
		func(w *World, inner idem.Store) idem.Store { return &checkThenSet{Store: inner, w: w} }, nil, nil, nil},
	{"record-before-run", "Begin stores an outcome as soon as it acquires, before the work ran",
		func(w *World, inner idem.Store) idem.Store { return &recordBeforeRun{Store: inner} }, nil, nil, nil},
	{"ignore-token", "Complete, Release, Extend and Checkpoint ignore the fencing token",
		func(w *World, inner idem.Store) idem.Store { return &ignoreToken{Store: inner} }, nil, nil, nil},
	{"replay-mismatch", "a key reused with another fingerprint replays the stored outcome",
		func(w *World, inner idem.Store) idem.Store { return &replayMismatch{Store: inner} }, nil, nil, nil},
	{"release-completed", "Complete releases the key instead of keeping the outcome",
		func(w *World, inner idem.Store) idem.Store { return &releaseCompleted{Store: inner, w: w} }, nil, nil, nil},
	{Name: "commit-before-action", Doc: "the workflow engine commits a transition before its action runs",
		engine: func(*World) wfhook.Hooks { return wfhook.Hooks{CommitBeforeAction: true} }},
	{Name: "compensate-twice", Doc: "the workflow engine runs a compensation again after a crash, under a new key",
		engine: func(*World) wfhook.Hooks { return wfhook.Hooks{CompensateAgain: true} }},
	{Name: "keep-token", Doc: "the workflow engine keeps an instance's fencing token when it takes the instance over",
		engine: func(*World) wfhook.Hooks { return wfhook.Hooks{KeepToken: true} }},
	{Name: "forget-step-key", Doc: "the workflow engine gives every attempt of an action a fresh step key",
		engine: func(w *World) wfhook.Hooks {
			return wfhook.Hooks{StepKey: func(key string) string { return fmt.Sprintf("%s#%08x", key, w.Rand().Uint32()) }}
		}},
	{Name: "record-before-handler", Doc: "the message consumer records a key as handled before its handler runs, as Watermill's deduplicator does",
		consumer: func(func(context.Context, string)) msghook.Hooks { return msghook.Hooks{RecordBeforeHandler: true} }},
	{Name: "ack-before-commit", Doc: "the broker adapter acks a message before its outcome is recorded",
		consumer: func(ack func(context.Context, string)) msghook.Hooks { return msghook.Hooks{BeforeCommit: ack} }},
	{Name: "mark-before-publish", Doc: "the outbox relay marks a row sent before it publishes it",
		relay: func(*World) msghook.RelayHooks { return msghook.RelayHooks{MarkBeforePublish: true} }},
	{Name: "new-id-per-attempt", Doc: "the outbox relay publishes every attempt of a row under a fresh message id",
		relay: func(w *World) msghook.RelayHooks {
			return msghook.RelayHooks{MessageID: func(id string) string { return fmt.Sprintf("%s#%08x", id, w.Rand().Uint32()) }}
		}},
	{Name: "publish-past-failure", Doc: "the outbox relay goes on with an entity's later rows after one failed to publish",
		relay: func(*World) msghook.RelayHooks { return msghook.RelayHooks{PublishPastFailure: true} }},
}

// MutantNamed returns the mutant called name.
func MutantNamed(name string) (Mutant, bool) {
	i := slices.IndexFunc(Mutants, func(m Mutant) bool { return m.Name == name })
	if i < 0 {
		return Mutant{}, false
	}
	return Mutants[i], true
}

// checkThenSet looks, yields, then takes the key by deleting whatever is
// there and beginning afresh: the hand-rolled "look in a table, then act".
type checkThenSet struct {
	idem.Store
	w *World
}

func (m *checkThenSet) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	rec, err := m.Store.Get(ctx, &idem.KeyParams{Scope: p.Scope, Key: p.Key})
	if err != nil && !errors.Is(err, idem.ErrNotFound) {
		return nil, err
	}
	now := m.w.Now()
	if rec != nil {
		switch {
		case rec.Fingerprint != p.Fingerprint && (rec.State == idem.StateCompleted && now.Before(rec.Expires) || rec.State == idem.StatePending && now.Before(rec.LeaseUntil)):
			return &idem.BeginResult{Decision: idem.Mismatch}, nil
		case rec.State == idem.StateCompleted && now.Before(rec.Expires):
			return &idem.BeginResult{Decision: idem.Replay, Record: rec}, nil
		case rec.State == idem.StatePending && now.Before(rec.LeaseUntil):
			return &idem.BeginResult{Decision: idem.InFlight, RetryAfter: rec.LeaseUntil.Sub(now)}, nil
		}
	}
	if err := m.w.Yield(); err != nil { // the gap between the look and the act
		return nil, err
	}
	if err := m.Store.Delete(ctx, &idem.KeyParams{Scope: p.Scope, Key: p.Key}); err != nil && !errors.Is(err, idem.ErrNotFound) {
		return nil, err
	}
	return m.Store.Begin(ctx, p)
}

// recordBeforeRun completes with an empty outcome right after acquiring.
type recordBeforeRun struct{ idem.Store }

func (m *recordBeforeRun) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	res, err := m.Store.Begin(ctx, p)
	if err != nil || res.Decision != idem.Acquired {
		return res, err
	}
	if _, err := m.Store.Complete(ctx, &idem.CompleteParams{Scope: p.Scope, Key: p.Key, Token: res.Record.Token,
		Outcome: idem.Outcome{Meta: map[string]string{"status": "200"}}}); err != nil {
		return nil, err
	}
	return res, nil
}

// ignoreToken writes with whatever token is current.
type ignoreToken struct{ idem.Store }

func (m *ignoreToken) current(ctx context.Context, scope, key string) int64 {
	rec, err := m.Store.Get(ctx, &idem.KeyParams{Scope: scope, Key: key})
	if err != nil {
		return 0
	}
	return rec.Token
}

func (m *ignoreToken) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	q := *p
	q.Token = m.current(ctx, p.Scope, p.Key)
	return m.Store.Complete(ctx, &q)
}

func (m *ignoreToken) Release(ctx context.Context, p *idem.ReleaseParams) error {
	q := *p
	q.Token = m.current(ctx, p.Scope, p.Key)
	return m.Store.Release(ctx, &q)
}

func (m *ignoreToken) Extend(ctx context.Context, p *idem.ExtendParams) (*idem.Record, error) {
	q := *p
	q.Token = m.current(ctx, p.Scope, p.Key)
	return m.Store.Extend(ctx, &q)
}

func (m *ignoreToken) Checkpoint(ctx context.Context, p *idem.CheckpointParams) error {
	q := *p
	q.Token = m.current(ctx, p.Scope, p.Key)
	return m.Store.Checkpoint(ctx, &q)
}

// replayMismatch answers a fingerprint mismatch with the stored outcome.
type replayMismatch struct{ idem.Store }

func (m *replayMismatch) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	res, err := m.Store.Begin(ctx, p)
	if err != nil || res.Decision != idem.Mismatch {
		return res, err
	}
	rec, err := m.Store.Get(ctx, &idem.KeyParams{Scope: p.Scope, Key: p.Key})
	if err != nil || rec.State != idem.StateCompleted {
		return res, nil
	}
	return &idem.BeginResult{Decision: idem.Replay, Record: rec}, nil
}

// releaseCompleted releases where it should complete, and says it
// completed.
type releaseCompleted struct {
	idem.Store
	w *World
}

func (m *releaseCompleted) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	if err := m.Store.Release(ctx, &idem.ReleaseParams{Scope: p.Scope, Key: p.Key, Token: p.Token}); err != nil {
		return nil, fmt.Errorf("complete: %w", err)
	}
	now := m.w.Now()
	return &idem.Record{Scope: p.Scope, Key: p.Key, State: idem.StateCompleted, Token: p.Token,
		Outcome: &p.Outcome, Created: now, Completed: now, Expires: now.Add(idem.DefaultWindow)}, nil
}
