package idemotel

import (
	"context"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
)

// Workflow returns the workflow.Observer of t, for
// workflow.EngineConfig.Observer.
//
// An instance gets one span ("workflow <type>") from Start to its end,
// a child of Start's context (the HTTP request that started it), with
// idem.workflow.type, idem.workflow.instance.digest, idem.workflow.run and,
// once it ends, idem.workflow.status. The span lives in this process: it
// is held open (up to Config.MaxOpenInstances) while the instance runs,
// and an instance started or finished by another process, or after a
// restart, gets a span per advance instead. Each action and compensation
// gets a span ("workflow.step <action>" or "workflow.compensate
// <action>"), a child of the instance's, with idem.key.digest of its step
// key: a request the action sends through Transport, or a message it
// enqueues, joins the trace below it.
func (t *Telemetry) Workflow() workflow.Observer { return wfObserver{t} }

type wfObserver struct{ t *Telemetry }

func instanceKey(in *workflow.Instance) string { return in.ID + "\x00" + strconv.Itoa(in.Run) }

func (o wfObserver) startInstance(ctx context.Context, in *workflow.Instance) trace.Span {
	_, span := o.t.tracer.Start(ctx, "workflow "+in.Type, trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(AttrWfType.String(in.Type), AttrWfID.String(idem.KeyDigest(in.ID)), AttrWfRun.Int(in.Run)))
	return span
}

// Started implements workflow.Observer.
func (o wfObserver) Started(ctx context.Context, in *workflow.Instance) {
	t := o.t
	t.wfStarted.Add(ctx, 1, metric.WithAttributes(AttrWfType.String(in.Type)))
	span := o.startInstance(ctx, in)
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.instances) >= t.maxOpen {
		span.End()
		return
	}
	t.instances[instanceKey(in)] = span
}

// Advance implements workflow.Observer.
func (o wfObserver) Advance(ctx context.Context, in *workflow.Instance) (context.Context, func(*workflow.Instance, error)) {
	t := o.t
	k := instanceKey(in)
	t.mu.Lock()
	span, held := t.instances[k]
	t.mu.Unlock()
	if !held {
		span = o.startInstance(ctx, in)
	}
	ctx = trace.ContextWithSpan(ctx, span)
	typ := in.Type
	return ctx, func(in *workflow.Instance, err error) {
		finished := in.Status.Finished()
		if finished {
			t.wfFinished.Add(ctx, 1, metric.WithAttributes(AttrWfType.String(typ), AttrWfStatus.String(string(in.Status))))
			span.SetAttributes(AttrWfStatus.String(string(in.Status)))
			if in.Status != workflow.Succeeded {
				span.SetStatus(codes.Error, string(in.Status))
			}
		}
		if !held {
			span.End()
			return
		}
		if finished {
			t.mu.Lock()
			delete(t.instances, k)
			t.mu.Unlock()
			span.End()
		}
	}
}

// Step implements workflow.Observer.
func (o wfObserver) Step(ctx context.Context, in *workflow.Instance, s workflow.StepInfo) (context.Context, func(bool, error)) {
	t := o.t
	start := time.Now()
	name := "workflow.step "
	if s.Compensation {
		name = "workflow.compensate "
	}
	ctx, span := t.tracer.Start(ctx, name+s.Action, trace.WithSpanKind(trace.SpanKindInternal), trace.WithTimestamp(start),
		trace.WithAttributes(AttrWfType.String(in.Type), AttrWfAction.String(s.Action), AttrWfComp.Bool(s.Compensation),
			AttrKeyDigest.String(idem.KeyDigest(s.Key)), AttrAttempt.Int(s.Attempt)))
	typ := in.Type
	return ctx, func(kept bool, err error) {
		end := time.Now()
		outcome := "ok"
		switch {
		case err != nil:
			outcome = "failed"
			span.SetStatus(codes.Error, "step failed")
		case kept:
			outcome = "kept"
		}
		span.SetAttributes(AttrStepOutcome.String(outcome))
		span.End(trace.WithTimestamp(end))
		attrs := metric.WithAttributes(AttrWfType.String(typ), AttrWfAction.String(s.Action),
			AttrWfComp.Bool(s.Compensation), AttrStepOutcome.String(outcome))
		t.stepDuration.Record(ctx, end.Sub(start).Seconds(), attrs)
		if s.Compensation {
			t.compensations.Add(ctx, 1, metric.WithAttributes(AttrWfType.String(typ), AttrWfAction.String(s.Action),
				AttrStepOutcome.String(outcome)))
		}
	}
}

// ObserveLedgerSize registers the observable gauge idem.ledger.records:
// the records store holds, read each time metrics are collected. A store
// with the idem.StateSizer capability reports one point per state, with
// the attribute idem.record.state (pending, completed, released), so the
// points add up to the total; a store with idem.Sizer only reports one
// point without attributes; a store with neither reports nothing.
func (t *Telemetry) ObserveLedgerSize(store idem.Store) error {
	var observe func(ctx context.Context, o metric.Int64Observer) error
	if ss, ok := store.(idem.StateSizer); ok {
		states := []idem.State{idem.StatePending, idem.StateCompleted, idem.StateReleased}
		attrs := make([]metric.ObserveOption, len(states))
		for i, st := range states {
			attrs[i] = metric.WithAttributes(AttrRecordState.String(string(st)))
		}
		observe = func(ctx context.Context, o metric.Int64Observer) error {
			n, err := ss.SizeByState(ctx)
			if err != nil {
				return nil // nothing to report: the next collection tries again
			}
			for i, st := range states {
				o.Observe(n[st], attrs[i])
			}
			return nil
		}
	} else if sizer, ok := store.(idem.Sizer); ok {
		observe = func(ctx context.Context, o metric.Int64Observer) error {
			n, err := sizer.Size(ctx)
			if err != nil {
				return nil // nothing to report: the next collection tries again
			}
			o.Observe(n)
			return nil
		}
	} else {
		return nil
	}
	_, err := t.meter.Int64ObservableGauge("idem.ledger.records", metric.WithUnit("{record}"),
		metric.WithDescription("Records held by the store (may be approximate)."),
		metric.WithInt64Callback(observe))
	return err
}
