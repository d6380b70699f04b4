package idemotel

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem"
)

// ScopeName is the instrumentation scope of idemotel's tracer and meter.
const ScopeName = "github.com/idemkit/idem/idemotel"

// Attribute keys idemotel sets on spans and metrics. None of them ever
// holds a raw key, a payload or a body: keys are recorded as
// idem.KeyDigest.
const (
	AttrOperation   = attribute.Key("idem.operation")                // ledger operation: begin, complete, release, extend, checkpoint, sweep
	AttrOutcome     = attribute.Key("idem.outcome")                  // what became of an operation (see the metrics' documentation)
	AttrKeyDigest   = attribute.Key("idem.key.digest")               // idem.KeyDigest of the key
	AttrAttempt     = attribute.Key("idem.attempt")                  // the owner's attempt number
	AttrTakeover    = attribute.Key("idem.takeover")                 // a Begin took over an expired lease
	AttrReplayed    = attribute.Key("idem.replayed")                 // a request or message was answered from the stored outcome
	AttrAction      = attribute.Key("idem.message.action")           // a consumer's Decision: ack, ack-duplicate, ack-superseded, retry, dead-letter
	AttrDelivery    = attribute.Key("idem.message.delivery")         // the broker's delivery count
	AttrWfType      = attribute.Key("idem.workflow.type")            // the workflow definition's name
	AttrWfStatus    = attribute.Key("idem.workflow.status")          // a finished instance's status: succeeded, failed, cancelled
	AttrWfAction    = attribute.Key("idem.workflow.action")          // the action's name
	AttrWfComp      = attribute.Key("idem.workflow.compensation")    // the action's compensation ran
	AttrWfID        = attribute.Key("idem.workflow.instance.digest") // idem.KeyDigest of the instance id
	AttrWfRun       = attribute.Key("idem.workflow.run")             // the run of the instance id, from 1
	AttrStepOutcome = attribute.Key("idem.workflow.step.outcome")    // ok, kept, failed
	AttrRecordState = attribute.Key("idem.record.state")             // a ledger record's state: pending, completed, released
)

// Config configures Telemetry. Nil or zero fields mean the global
// providers of package otel and the W3C trace-context propagator.
type Config struct {
	// TracerProvider makes the spans. Default otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// MeterProvider makes the instruments. Default
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// Propagator reads and writes trace context in HTTP and message
	// headers. Default propagation.TraceContext{} (W3C traceparent and
	// tracestate).
	Propagator propagation.TextMapPropagator
	// MaxOpenInstances bounds the workflow instance spans held open
	// between Start and the end of the instance (see Observer.Started).
	// Default 10000; past it an instance gets no span of its own.
	MaxOpenInstances int
	// OperationDurations records idem.ledger.operation.duration, the
	// duration of each ledger operation's store call. Off by default: it
	// is two histogram records per request, a third of what idemotel
	// costs a request that is not sampled (the spans carry the same
	// durations).
	OperationDurations bool
}

// Telemetry turns idem's hooks into OpenTelemetry spans and metrics: it is
// an idem.Observer (idem.Config.Observer), wraps HTTP handlers and
// transports (Handler, Transport), observes message consumers and relays
// (ObserveMessage, Publisher, OutboxRound), and workflow engines
// (Workflow). It is safe for concurrent use. docs/observability.md lists
// every span, metric and attribute.
type Telemetry struct {
	tracer trace.Tracer
	meter  metric.Meter
	prop   propagation.TextMapPropagator

	// The ledger's counters are atomics that observable counters read at
	// collection: counting an operation costs an atomic add.
	ops         [len(opNames) * len(outcomeNames)]atomic.Int64
	outcomes    [len(kindNames)]atomic.Int64
	takeovers   atomic.Int64
	expirations atomic.Int64
	retries     atomic.Int64
	retryOK     atomic.Int64
	opDuration  metric.Float64Histogram // nil unless Config.OperationDurations
	tti         metric.Float64Histogram

	httpDuration metric.Float64Histogram

	consumed     metric.Int64Counter
	redeliveries metric.Int64Counter
	deadLetters  metric.Int64Counter
	msgDuration  metric.Float64Histogram
	outboxDue    metric.Int64Gauge
	outboxLag    metric.Float64Gauge
	publishes    metric.Int64Counter

	wfStarted     metric.Int64Counter
	wfFinished    metric.Int64Counter
	stepDuration  metric.Float64Histogram
	compensations metric.Int64Counter

	maxOpen   int
	mu        sync.Mutex
	instances map[string]trace.Span // open instance spans by id and run

	httpSets sync.Map // httpKey -> []metric.RecordOption
}

// Bucket bounds in seconds: time to idempotence spans milliseconds to a
// day; request, store call and step durations sub-millisecond to minutes.
var (
	ttiBuckets      = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400}
	durationBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
)

// New returns Telemetry over cfg's providers (nil: the global ones).
func New(cfg *Config) (*Telemetry, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if c.Propagator == nil {
		c.Propagator = propagation.TraceContext{}
	}
	if c.MaxOpenInstances <= 0 {
		c.MaxOpenInstances = 10000
	}
	t := &Telemetry{tracer: c.TracerProvider.Tracer(ScopeName), meter: c.MeterProvider.Meter(ScopeName),
		prop: c.Propagator, maxOpen: c.MaxOpenInstances, instances: map[string]trace.Span{}}
	m := t.meter
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	histogram := func(name, desc string, bounds []float64) metric.Float64Histogram {
		h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc), metric.WithExplicitBucketBoundaries(bounds...))
		errs = append(errs, err)
		return h
	}
	observable := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	ops := observable("idem.ledger.operations", "{operation}", "Ledger operations by operation and outcome.")
	outcomes := observable("idem.ledger.outcomes", "{outcome}", "What keys came to: acquired, replayed, in_flight, mismatch, lease_lost, takeover.")
	takeovers := observable("idem.lease.takeovers", "{takeover}", "Begins that took over an expired lease.")
	expirations := observable("idem.ledger.expirations", "{record}", "Expired records removed by sweeps.")
	retries := observable("idem.retry.attempts", "{attempt}", "Retries that ran: acquired Begins of a key's second or later attempt.")
	retryOK := observable("idem.retry.successes", "{attempt}", "Retries that stored an outcome: Completes of a second or later attempt.")
	if c.OperationDurations {
		t.opDuration = histogram("idem.ledger.operation.duration", "Duration of the store call of a ledger operation.", durationBuckets)
	}
	t.tti = histogram("idem.time_to_idempotence", "Time from a key's first attempt to its stored outcome.", ttiBuckets)
	_, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for i := range t.ops {
			if n := t.ops[i].Load(); n > 0 {
				o.ObserveInt64(ops, n, opSets[i])
			}
		}
		for i := range t.outcomes {
			if n := t.outcomes[i].Load(); n > 0 {
				o.ObserveInt64(outcomes, n, kindSets[i])
			}
		}
		for _, c := range []struct {
			inst metric.Int64ObservableCounter
			n    *atomic.Int64
		}{{takeovers, &t.takeovers}, {expirations, &t.expirations}, {retries, &t.retries}, {retryOK, &t.retryOK}} {
			if n := c.n.Load(); n > 0 {
				o.ObserveInt64(c.inst, n)
			}
		}
		return nil
	}, ops, outcomes, takeovers, expirations, retries, retryOK)
	errs = append(errs, err)
	t.httpDuration = histogram("idem.http.server.request.duration", "Duration of HTTP requests through Handler.", durationBuckets)
	t.consumed = counter("idem.messages.consumed", "{message}", "Deliveries a Consumer handled, by decision.")
	t.redeliveries = counter("idem.messages.redeliveries", "{message}", "Deliveries the broker counted as second or later.")
	t.deadLetters = counter("idem.messages.dead_letters", "{message}", "Messages given up on (dead-lettered).")
	t.msgDuration = histogram("idem.messages.duration", "Duration of Consumer.Handle, handler included.", durationBuckets)
	due, err := m.Int64Gauge("idem.outbox.due", metric.WithUnit("{message}"),
		metric.WithDescription("Due outbox rows the relay's last round read (at most its batch): the outbox backlog."))
	errs = append(errs, err)
	t.outboxDue = due
	lag, err := m.Float64Gauge("idem.outbox.lag", metric.WithUnit("s"),
		metric.WithDescription("How long the oldest unsent outbox row has waited, at the relay's last round (0: none)."))
	errs = append(errs, err)
	t.outboxLag = lag
	t.publishes = counter("idem.outbox.publishes", "{message}", "Outbox publishes by outcome (ok, error).")
	t.wfStarted = counter("idem.workflow.instances.started", "{instance}", "Workflow instances started, by type.")
	t.wfFinished = counter("idem.workflow.instances.finished", "{instance}", "Workflow instances finished, by type and status.")
	t.stepDuration = histogram("idem.workflow.step.duration", "Duration of workflow actions and compensations.", durationBuckets)
	t.compensations = counter("idem.workflow.compensations", "{compensation}", "Compensations run, by type, action and outcome.")
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return t, nil
}

var _ idem.Observer = (*Telemetry)(nil)

// Outcome names of idem.ledger.operations for operations other than a
// successful Begin (which counts under its decision: acquired, replay,
// in_flight, mismatch).
const (
	outcomeCompleted        = "completed"
	outcomeReleased         = "released"
	outcomeExtended         = "extended"
	outcomeCheckpointed     = "checkpointed"
	outcomeSwept            = "swept"
	outcomeLeaseLost        = "lease_lost"
	outcomeAlreadyCompleted = "already_completed"
	outcomeError            = "error"
)

var successOutcome = map[idem.Op]string{
	idem.OpComplete:   outcomeCompleted,
	idem.OpRelease:    outcomeReleased,
	idem.OpExtend:     outcomeExtended,
	idem.OpCheckpoint: outcomeCheckpointed,
	idem.OpSweep:      outcomeSwept,
}

// The operations and outcomes of the ledger's counters, and their
// attribute sets, made once.
var (
	opNames = [...]idem.Op{idem.OpBegin, idem.OpComplete, idem.OpRelease, idem.OpExtend, idem.OpCheckpoint, idem.OpSweep}
	// outcomeNames are idem.ledger.operations' outcomes.
	outcomeNames = [...]string{string(idem.Acquired), string(idem.Replay), string(idem.InFlight), string(idem.Mismatch),
		outcomeCompleted, outcomeReleased, outcomeExtended, outcomeCheckpointed, outcomeSwept,
		outcomeLeaseLost, outcomeAlreadyCompleted, outcomeError}
	// kindNames are idem.ledger.outcomes' outcomes.
	kindNames = [...]string{"acquired", "replayed", "in_flight", "mismatch", "lease_lost", "takeover"}

	opSets         [len(opNames) * len(outcomeNames)]metric.ObserveOption
	kindSets       [len(kindNames)]metric.ObserveOption
	opDurSets      = map[idem.Op][]metric.RecordOption{}
	opIndex        = map[idem.Op]int{}
	outIndex       = map[string]int{}
	kindOfDecision = map[idem.Decision]int{idem.Acquired: 0, idem.Replay: 1, idem.InFlight: 2, idem.Mismatch: 3}
)

// Indexes in kindNames of the outcomes that are not decisions.
const (
	kindLeaseLost = 4
	kindTakeover  = 5
)

// set returns attrs as a measurement option.
func set(attrs ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(attrs...))
}

func init() {
	for i, op := range opNames {
		opIndex[op] = i
		opDurSets[op] = []metric.RecordOption{set(AttrOperation.String(string(op)))}
		for j, o := range outcomeNames {
			opSets[i*len(outcomeNames)+j] = set(AttrOperation.String(string(op)), AttrOutcome.String(o))
		}
	}
	for j, o := range outcomeNames {
		outIndex[o] = j
	}
	for i, k := range kindNames {
		kindSets[i] = set(AttrOutcome.String(k))
	}
}

// operationOutcome is what became of ev, as idem.ledger.operations counts
// it.
func operationOutcome(ev *idem.Event) string {
	switch {
	case ev.Err == nil && ev.Op == idem.OpBegin:
		return string(ev.Decision)
	case ev.Err == nil:
		return successOutcome[ev.Op]
	case errors.Is(ev.Err, idem.ErrLeaseLost):
		return outcomeLeaseLost
	case errors.Is(ev.Err, idem.ErrCompleted):
		return outcomeAlreadyCompleted
	case ev.Op == idem.OpBegin && errors.Is(ev.Err, idem.ErrFingerprintMismatch):
		return string(idem.Mismatch)
	case ev.Op == idem.OpBegin && errors.Is(ev.Err, idem.ErrInFlight):
		return string(idem.InFlight)
	}
	return outcomeError
}

// Observe records one ledger operation: its metrics, and a span (named
// "idem.<operation>", a child of ctx's span) that covers the store call.
// A Begin's decision is also set on ctx's span (idem.outcome), so an HTTP
// request's or a message's span tells what the ledger answered.
func (t *Telemetry) Observe(ctx context.Context, ev *idem.Event) {
	parent := trace.SpanFromContext(ctx)
	recording := parent.IsRecording()
	// The metrics get ctx, for exemplars, only when its span is sampled
	// (the SDK keeps exemplars of sampled spans only): reading a span
	// from some contexts allocates.
	mctx := context.Background()
	if recording {
		mctx = ctx
	}
	outcome := operationOutcome(ev)
	if i, ok := opIndex[ev.Op]; ok {
		t.ops[i*len(outcomeNames)+outIndex[outcome]].Add(1)
		if t.opDuration != nil {
			t.opDuration.Record(mctx, ev.Duration.Seconds(), opDurSets[ev.Op]...)
		}
	}
	if ev.Op == idem.OpBegin {
		if k, ok := kindOfDecision[idem.Decision(outcome)]; ok {
			t.outcomes[k].Add(1)
		}
		if ev.Err == nil && ev.Decision == idem.Acquired && ev.Attempt > 1 {
			t.retries.Add(1)
		}
	}
	if outcome == outcomeLeaseLost {
		t.outcomes[kindLeaseLost].Add(1)
	}
	if ev.Takeover {
		t.takeovers.Add(1)
		t.outcomes[kindTakeover].Add(1)
	}
	if ev.Op == idem.OpComplete && ev.Err == nil {
		t.tti.Record(mctx, ev.TimeToIdempotence.Seconds())
		if ev.Attempt > 1 {
			t.retryOK.Add(1)
		}
	}
	if ev.Op == idem.OpSweep && ev.Deleted > 0 {
		t.expirations.Add(int64(ev.Deleted))
	}

	if ev.Op == idem.OpBegin && recording {
		parent.SetAttributes(AttrOutcome.String(outcome))
	}
	if !recording && ev.Op != idem.OpSweep {
		// A ledger operation of work nobody records (an untraced caller,
		// a request the sampler left out) makes no span: the span would
		// not be recorded either, and skipping it costs nothing.
		return
	}
	end := time.Now()
	_, span := t.tracer.Start(ctx, "idem."+string(ev.Op), trace.WithTimestamp(end.Add(-ev.Duration)),
		trace.WithSpanKind(trace.SpanKindInternal))
	if span.IsRecording() {
		attrs := []attribute.KeyValue{AttrOperation.String(string(ev.Op)), AttrOutcome.String(outcome)}
		if d := ev.KeyDigest(); d != "" {
			attrs = append(attrs, AttrKeyDigest.String(d))
		}
		if ev.Attempt > 0 {
			attrs = append(attrs, AttrAttempt.Int(ev.Attempt))
		}
		if ev.Takeover {
			attrs = append(attrs, AttrTakeover.Bool(true))
		}
		span.SetAttributes(attrs...)
		if outcome == outcomeError {
			span.SetStatus(codes.Error, "store error")
		}
	}
	span.End(trace.WithTimestamp(end))
}
