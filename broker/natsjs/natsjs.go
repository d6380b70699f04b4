// Package natsjs connects NATS JetStream (github.com/nats-io/nats.go/jetstream)
// to idem's broker-neutral messaging.Consumer (or any Handler: a
// messaging.Guard in front of one, a pgstore.Inbox): every delivery is
// handed to it, and its Decision becomes the JetStream acknowledgement.
//
//	Decision                          JetStream
//	Ack, AckDuplicate, AckSuperseded  Ack (or DoubleAck with Options.DoubleAck)
//	Retry                             NakWithDelay(Decision.Delay) (Nak when 0)
//	DeadLetter                        Term
//
// Consume reads a pull consumer, the kind JetStream recommends; ConsumePush
// reads a push consumer. Publisher publishes with a Nats-Msg-Id, so the
// stream drops a republish within its duplicate window, and the consumer's
// ledger drops any duplicate that gets through (a republish after the
// window, a redelivery after a crash before the ack).
//
// A message's id (the dedup key by default) is its Nats-Msg-Id header, or
// "<stream>/<stream sequence>" when it has none; see ToMessage.
package natsjs

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Handler decides what becomes of a delivery. *messaging.Consumer is one;
// HandlerFunc makes one of a function, for a messaging.Guard in front of a
// consumer or a pgstore.Inbox, whose handler writes in the inbox's
// transaction:
//
//	natsjs.HandlerFunc(func(ctx context.Context, m *messaging.Message) messaging.Decision {
//		return inbox.Handle(ctx, m, apply)
//	})
type Handler interface {
	Handle(ctx context.Context, m *messaging.Message) messaging.Decision
}

// HandlerFunc is a function as a Handler.
type HandlerFunc func(ctx context.Context, m *messaging.Message) messaging.Decision

// Handle calls f(ctx, m).
func (f HandlerFunc) Handle(ctx context.Context, m *messaging.Message) messaging.Decision {
	return f(ctx, m)
}

// isNil reports whether h is nil, or a nil *messaging.Consumer or
// HandlerFunc in the interface.
func isNil(h Handler) bool {
	switch v := h.(type) {
	case nil:
		return true
	case *messaging.Consumer:
		return v == nil
	case HandlerFunc:
		return v == nil
	}
	return false
}

// Options configures Consume and ConsumePush. A nil *Options means every
// default.
type Options struct {
	// Workers is how many deliveries Consume handles at a time in this
	// process. Default 1. ConsumePush handles one at a time (the push
	// callback is sequential); run several ConsumePush on a queue-group
	// push consumer for more.
	Workers int
	// DoubleAck makes an ack wait for the server's confirmation
	// (DoubleAck): when it returns nil, the server will not redeliver the
	// message. Without it the ack is fire-and-forget, and a lost ack
	// gives a redelivery, which the ledger answers as a duplicate.
	DoubleAck bool
	// MaxNakDelay, if positive, caps the delay of a Retry's
	// NakWithDelay. A Retry of a key in flight elsewhere carries the time
	// left on that owner's lease (up to the whole lease, 30 s by default)
	// so that a twin delivered at the same moment waits for the owner's
	// outcome; a cap makes it come back sooner and ask again (each ask is
	// a delivery and one ledger read).
	MaxNakDelay time.Duration
	// Around, if set, wraps each Handle: it gets the delivery and must
	// call handle (at most once) and return its Decision, or return a
	// Decision of its own. Use it to put an ordering guard in front
	// (guard.Handle(ctx, m, handle)), or to give each delivery a context
	// value (a transaction, a trace span) that lives exactly as long as
	// the delivery's handling.
	Around func(ctx context.Context, m *messaging.Message, handle func(ctx context.Context, m *messaging.Message) messaging.Decision) messaging.Decision
	// OnDecision, if set, is called after each delivery was settled (or
	// failed to be), with the message, the decision and the settling
	// error (nil when the ack, nak or term went out). For logs and
	// metrics; it must not block for long.
	OnDecision func(m *messaging.Message, d messaging.Decision, settleErr error)
	// OnError, if set, receives errors that end no call: a delivery that
	// cannot be read (no JetStream metadata: it is terminated), a failed
	// ack, nak or term, and the pull consumer's transient errors.
	OnError func(err error)
	// PullOptions are passed to jetstream.Consumer.Messages (PullMaxMessages,
	// PullExpiry, PullHeartbeat...).
	PullOptions []jetstream.PullMessagesOpt
}

// ErrNoMetadata wraps the error of a delivery that carries no JetStream
// metadata (a plain NATS message, not a JetStream delivery).
var ErrNoMetadata = errors.New("natsjs: the message has no JetStream metadata")

// MsgIDHeader is the header JetStream deduplicates publishes by, and the
// one ToMessage takes a message's id from.
const MsgIDHeader = jetstream.MsgIDHeader

// ToMessage converts a JetStream delivery into a messaging.Message: ID is
// the Nats-Msg-Id header, or "<stream>/<stream sequence>" when the message
// has none (stable across redeliveries, not across a republish); Delivery
// is the consumer's delivery count (NumDelivered, from 1); Headers holds
// each header's first value (Nats-Msg-Id included). A delivery without
// JetStream metadata gives an error wrapping ErrNoMetadata.
func ToMessage(msg jetstream.Msg) (*messaging.Message, error) {
	if msg == nil {
		return nil, fmt.Errorf("%w: natsjs: nil message", idem.ErrInvalid)
	}
	md, err := msg.Metadata()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoMetadata, err)
	}
	m := &messaging.Message{Subject: msg.Subject(), Payload: msg.Data(), Delivery: int(min(md.NumDelivered, uint64(1<<31-1)))}
	if h := msg.Headers(); len(h) > 0 {
		m.Headers = make(map[string]string, len(h))
		for k, v := range h {
			if len(v) > 0 {
				m.Headers[k] = v[0]
			}
		}
		m.ID = h.Get(MsgIDHeader)
	}
	if m.ID == "" {
		m.ID = md.Stream + "/" + strconv.FormatUint(md.Sequence.Stream, 10)
	}
	return m, nil
}

// Settle tells JetStream what to do with msg after decision d: Ack for
// Ack, AckDuplicate and AckSuperseded (DoubleAck, waiting for the server's
// confirmation, when doubleAck is set); NakWithDelay(d.Delay) for Retry
// (Nak when the delay is not positive); Term for DeadLetter (the message
// was given up on and the dead-letter hook ran: it must never come back).
// An unknown action is left unsettled: JetStream redelivers it after the
// consumer's AckWait.
func Settle(ctx context.Context, msg jetstream.Msg, d messaging.Decision, doubleAck bool) error {
	switch d.Action {
	case messaging.Ack, messaging.AckDuplicate, messaging.AckSuperseded:
		if doubleAck {
			return msg.DoubleAck(ctx)
		}
		return msg.Ack()
	case messaging.Retry:
		if d.Delay > 0 {
			return msg.NakWithDelay(d.Delay)
		}
		return msg.Nak()
	case messaging.DeadLetter:
		return msg.Term()
	}
	return fmt.Errorf("%w: natsjs: unknown action %v: the delivery is left to AckWait", idem.ErrInvalid, d.Action)
}

// HandleMsg handles one JetStream delivery with c and settles it: it
// converts msg (ToMessage), runs c.Handle (through opts.Around when set)
// and acks, naks or terminates it (Settle). A delivery that cannot be
// converted is terminated with a DeadLetter decision whose Err wraps
// ErrNoMetadata. It returns the decision and the settling error. Consume
// and ConsumePush call it for every delivery; call it yourself from a
// loop of your own (Fetch, Next).
func HandleMsg(ctx context.Context, msg jetstream.Msg, c Handler, opts *Options) (messaging.Decision, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if isNil(c) {
		return messaging.Decision{}, fmt.Errorf("%w: natsjs: HandleMsg needs a Handler", idem.ErrInvalid)
	}
	m, err := ToMessage(msg)
	if err != nil {
		d := messaging.Decision{Action: messaging.DeadLetter, Err: err}
		if o.OnError != nil {
			o.OnError(err)
		}
		if msg == nil {
			return d, err
		}
		return d, msg.Term()
	}
	var d messaging.Decision
	if o.Around != nil {
		d = o.Around(ctx, m, c.Handle)
	} else {
		d = c.Handle(ctx, m)
	}
	sd := d
	if o.MaxNakDelay > 0 && sd.Delay > o.MaxNakDelay {
		sd.Delay = o.MaxNakDelay
	}
	sErr := Settle(ctx, msg, sd, o.DoubleAck)
	if sErr != nil {
		sErr = fmt.Errorf("natsjs: settling %q (%s): %w", m.ID, d.Action, sErr)
		if o.OnError != nil {
			o.OnError(sErr)
		}
	}
	if o.OnDecision != nil {
		o.OnDecision(m, d, sErr)
	}
	return d, sErr
}

// Consume reads the pull consumer cons until ctx ends, handling every
// delivery with c (HandleMsg) on opts.Workers goroutines, and returns
// ctx's error once the deliveries in hand are settled; or another error
// when the consumer cannot be read (it was deleted, the connection
// closed). Deliveries pulled but not yet handled when ctx ends are left
// unsettled: JetStream redelivers them after the consumer's AckWait.
//
// The handlers run with a context that is not cancelled when ctx ends, so
// a delivery in hand finishes and is settled; use the ledger's lease to
// bound it. Configure the JetStream consumer with AckPolicy explicit,
// MaxDeliver unlimited (-1) or well above Config.MaxAttempts (each Retry
// is a delivery, including those of a key in flight elsewhere) and an
// AckWait longer than a handler runs.
func Consume(ctx context.Context, cons jetstream.Consumer, c Handler, opts *Options) error {
	if cons == nil || isNil(c) {
		return fmt.Errorf("%w: natsjs: Consume needs a JetStream consumer and a Handler", idem.ErrInvalid)
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	workers := max(o.Workers, 1)
	if o.Workers < 0 {
		return fmt.Errorf("%w: natsjs: Options.Workers must be positive (or 0 for 1), got %d", idem.ErrInvalid, o.Workers)
	}
	it, err := cons.Messages(o.PullOptions...)
	if err != nil {
		return fmt.Errorf("natsjs: %w", err)
	}
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			it.Stop()
		case <-stopped:
		}
	}()
	work := context.WithoutCancel(ctx)
	msgs := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for msg := range msgs {
				_, _ = HandleMsg(work, msg, c, &o)
			}
		})
	}
	var readErr error
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				readErr = ctx.Err()
				break
			}
			if isTransient(err) {
				if o.OnError != nil {
					o.OnError(fmt.Errorf("natsjs: %w", err))
				}
				continue
			}
			readErr = fmt.Errorf("natsjs: reading the consumer: %w", err)
			break
		}
		msgs <- msg
	}
	close(stopped)
	it.Stop()
	close(msgs)
	wg.Wait()
	return readErr
}

// isTransient reports whether Next may answer again after err.
func isTransient(err error) bool {
	return errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, nats.ErrTimeout)
}

// ConsumePush reads the push consumer cons until ctx ends, handling every
// delivery with c (HandleMsg), one at a time, and returns ctx's error
// once the delivery in hand is settled. opts.Workers does not apply.
//
// JetStream recommends pull consumers (Consume) for work queues: they
// scale by adding processes and do not flood a slow client. A push
// consumer (ConsumerConfig.DeliverSubject set, DeliverGroup for a queue
// group) fits fan-out to a few subscribers. The same configuration advice
// as Consume's holds: explicit acks, MaxDeliver unlimited or well above
// Config.MaxAttempts, AckWait longer than a handler runs.
func ConsumePush(ctx context.Context, cons jetstream.PushConsumer, c Handler, opts *Options) error {
	if cons == nil || isNil(c) {
		return fmt.Errorf("%w: natsjs: ConsumePush needs a JetStream push consumer and a Handler", idem.ErrInvalid)
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	work := context.WithoutCancel(ctx)
	var copts []jetstream.PushConsumeOpt
	if o.OnError != nil {
		copts = append(copts, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			o.OnError(fmt.Errorf("natsjs: %w", err))
		}))
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) { _, _ = HandleMsg(work, msg, c, &o) }, copts...)
	if err != nil {
		return fmt.Errorf("natsjs: %w", err)
	}
	select {
	case <-ctx.Done():
		cc.Stop()
		<-cc.Closed()
		return ctx.Err()
	case <-cc.Closed():
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errors.New("natsjs: the push consumer stopped")
	}
}

// Publisher publishes messages to JetStream with a message id, so the
// stream stores a message once however often it is published within the
// stream's duplicate window (StreamConfig.Duplicates, default 2 min).
// A republish after the window is stored again; a consumer through
// messaging.Consumer still handles it once (its key is the same id).
type Publisher struct {
	js jetstream.JetStream
}

// NewPublisher returns a publisher on js.
func NewPublisher(js jetstream.JetStream) *Publisher { return &Publisher{js: js} }

// Publish publishes payload to subject with id as its Nats-Msg-Id and
// headers as its headers (one value each), and waits for the stream's
// acknowledgement. An empty id is invalid (an error wrapping
// idem.ErrInvalid): without it JetStream could not drop a republish.
// The PubAck's Duplicate is true when the stream had the id within its
// duplicate window and stored nothing.
func (p *Publisher) Publish(ctx context.Context, subject, id string, payload []byte, headers map[string]string) (*jetstream.PubAck, error) {
	if id == "" {
		return nil, fmt.Errorf("%w: natsjs: Publish needs a message id", idem.ErrInvalid)
	}
	if subject == "" {
		return nil, fmt.Errorf("%w: natsjs: Publish needs a subject", idem.ErrInvalid)
	}
	msg := nats.NewMsg(subject)
	msg.Data = payload
	for k, v := range headers {
		msg.Header.Set(k, v)
	}
	ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id))
	if err != nil {
		return nil, fmt.Errorf("natsjs: publishing %q to %s: %w", id, subject, err)
	}
	return ack, nil
}
