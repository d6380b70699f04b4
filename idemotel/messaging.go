package idemotel

import (
	"context"
	"maps"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
)

// ObserveMessage is a messaging.Config.Observe: a consumer span per
// delivery ("process <subject>"), a child of the traceparent in the
// message's headers (as Publisher sends it) when there is one. It
// carries messaging.destination.name, idem.message.delivery, the
// Decision's idem.message.action, idem.key.digest of the dedup key and
// idem.replayed for a duplicate; the ledger operations and the handler's
// work are its children. It counts idem.messages.consumed,
// idem.messages.redeliveries and idem.messages.dead_letters and records
// idem.messages.duration.
func (t *Telemetry) ObserveMessage(ctx context.Context, m *messaging.Message) (context.Context, func(*messaging.Decision)) {
	start := time.Now()
	if len(m.Headers) > 0 {
		ctx = t.prop.Extract(ctx, propagation.MapCarrier(m.Headers))
	}
	ctx, span := t.tracer.Start(ctx, "process "+m.Subject, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithTimestamp(start))
	subject, delivery := m.Subject, m.Delivery
	if delivery > 1 {
		t.redeliveries.Add(ctx, 1, metric.WithAttributes(attribute.String("messaging.destination.name", subject)))
	}
	return ctx, func(d *messaging.Decision) {
		end := time.Now()
		action := d.Action.String()
		attrs := metric.WithAttributes(attribute.String("messaging.destination.name", subject), AttrAction.String(action))
		t.consumed.Add(ctx, 1, attrs)
		t.msgDuration.Record(ctx, end.Sub(start).Seconds(), attrs)
		if d.Action == messaging.DeadLetter {
			t.deadLetters.Add(ctx, 1, metric.WithAttributes(attribute.String("messaging.destination.name", subject)))
		}
		if span.IsRecording() {
			kv := []attribute.KeyValue{attribute.String("messaging.destination.name", subject),
				AttrDelivery.Int(delivery), AttrAction.String(action),
				AttrReplayed.Bool(d.Action == messaging.AckDuplicate)}
			if d.Key != "" {
				kv = append(kv, AttrKeyDigest.String(idem.KeyDigest(d.Key)))
			}
			span.SetAttributes(kv...)
			if d.Err != nil && d.Action != messaging.AckDuplicate {
				span.SetStatus(codes.Error, action)
			}
		}
		span.End(trace.WithTimestamp(end))
	}
}

// Publisher wraps an outbox relay's Publisher with a producer span per
// publish ("publish <subject>", a child of the relay's context) that
// carries messaging.destination.name and idem.key.digest of the message
// id (a consumer's default dedup key, so the consumer's span has the same
// digest), and sends the span's W3C traceparent as a message header (on a
// copy of the headers), for adapters that publish headers. It counts
// idem.outbox.publishes by outcome.
func (t *Telemetry) Publisher(p messaging.Publisher) messaging.Publisher {
	return messaging.PublisherFunc(func(ctx context.Context, m *messaging.OutboxMessage) error {
		ctx, span := t.tracer.Start(ctx, "publish "+m.Subject, trace.WithSpanKind(trace.SpanKindProducer))
		defer span.End()
		out := *m
		out.Headers = maps.Clone(m.Headers)
		if out.Headers == nil {
			out.Headers = map[string]string{}
		}
		t.prop.Inject(ctx, propagation.MapCarrier(out.Headers))
		span.SetAttributes(attribute.String("messaging.destination.name", m.Subject),
			AttrKeyDigest.String(idem.KeyDigest(m.ID)), AttrAttempt.Int(m.Attempt))
		err := p.Publish(ctx, &out)
		outcome := "ok"
		if err != nil {
			outcome = "error"
			span.SetStatus(codes.Error, "publish failed")
		}
		t.publishes.Add(ctx, 1, metric.WithAttributes(attribute.String("messaging.destination.name", m.Subject), AttrOutcome.String(outcome)))
		return err
	})
}

// OutboxRound is a messaging.RelayConfig.OnRound: it sets idem.outbox.due
// to the due rows of the round and idem.outbox.lag to how long the oldest
// unsent row has waited (0 when none is, or when the outbox cannot tell:
// see messaging.UnsentAger).
func (t *Telemetry) OutboxRound(ctx context.Context, round messaging.RelayRound) {
	t.outboxDue.Record(ctx, int64(round.Due))
	t.outboxLag.Record(ctx, round.Lag().Seconds())
}
