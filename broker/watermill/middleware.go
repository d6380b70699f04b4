// Package watermill makes Watermill (github.com/ThreeDotsLabs/watermill)
// handlers idempotent with an idem.Ledger, over any idem store.
//
// Two ways in:
//
//   - Middleware, a router middleware that runs the handler through a
//     messaging.Consumer: a message is recorded as handled only after its
//     handler succeeded, so a handler that fails is run again on the
//     redelivery, and a duplicate of a handled message is acked without
//     running the handler. This is the fix. The handler's produced
//     messages are recorded with its outcome, and a duplicate returns them
//     again with the same UUIDs, so a failed publish of them loses nothing.
//   - KeyRepository, an implementation of Watermill's
//     middleware.ExpiringKeyRepository for users who keep Watermill's
//     Deduplicator and only swap its in-memory repository for a durable,
//     shared one (one line). It keeps the Deduplicator's semantics: the key
//     is recorded before the handler runs, and a failed message's
//     redelivery is dropped.
//
// The package is named watermill like Watermill's own root package; import
// it under another name:
//
//	import idemwatermill "github.com/idemkit/idem/broker/watermill"
package watermill

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
)

// Config configures Middleware. A nil *Config means every default.
type Config struct {
	// Config is the consumer's configuration (Scope, Key, Fingerprint,
	// MaxAttempts, Backoff, DeadLetter, OnMismatch, Lease): see
	// messaging.Config. The message handed to Key, Fingerprint and the
	// hooks is the one FromWatermill derives. The keys of a handler live
	// in Scope + "/" + its router handler name (Scope alone outside a
	// router), so handlers that consume the same topic each handle every
	// message once.
	messaging.Config

	// DeadLetterError makes a dead-lettered message's handler call return
	// an error wrapping ErrDeadLettered instead of nil, so that Watermill's
	// poison queue middleware (middleware.PoisonQueueWithFilter with
	// IsDeadLettered as the filter), placed outside this middleware,
	// publishes it to a poison topic. Without it a dead-lettered message
	// is acked after the Config.DeadLetter hook ran.
	DeadLetterError bool

	// WaitRetryDelay makes the middleware wait Decision.Delay (by the
	// ledger's clock, cut short when the message's context ends) before it
	// returns a Retry's error, for a subscriber that redelivers a nacked
	// message at once (gochannel, and most Watermill subscribers). Without
	// it the delay is left to the router, the subscriber or Watermill's
	// Retry middleware.
	WaitRetryDelay bool
}

// ErrDeadLettered is wrapped by the error a handler call returns for a
// dead-lettered message when Config.DeadLetterError is set.
var ErrDeadLettered = errors.New("idem watermill: message dead-lettered")

// DecisionError is the error a handler call returns when the delivery must
// be nacked (Decision Retry) or, with Config.DeadLetterError, for a
// dead-lettered message. It unwraps to the decision's error (the
// handler's, the store's or an *idem.InFlightError) and, for a dead letter,
// to ErrDeadLettered.
type DecisionError struct {
	Decision messaging.Decision
}

// Error says what was decided, for which key and why.
func (e *DecisionError) Error() string {
	msg := fmt.Sprintf("idem watermill: %s key %q", e.Decision.Action, e.Decision.Key)
	if e.Decision.Action == messaging.Retry && e.Decision.Delay > 0 {
		msg += fmt.Sprintf(" after %s", e.Decision.Delay)
	}
	if e.Decision.Err != nil {
		msg += ": " + e.Decision.Err.Error()
	}
	return msg
}

// Unwrap returns the decision's error, and ErrDeadLettered for a dead
// letter.
func (e *DecisionError) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.Decision.Action == messaging.DeadLetter {
		errs = append(errs, ErrDeadLettered)
	}
	if e.Decision.Err != nil {
		errs = append(errs, e.Decision.Err)
	}
	return errs
}

// IsDeadLettered reports whether err says the message was dead-lettered:
// the filter for Watermill's middleware.PoisonQueueWithFilter, and the
// errors Watermill's Retry middleware must not retry (its ShouldRetry).
func IsDeadLettered(err error) bool { return errors.Is(err, ErrDeadLettered) }

// FromWatermill derives the messaging.Message of a Watermill message: ID is
// its UUID, Subject the topic the router subscribed to (empty outside a
// router), Payload its payload and Headers a copy of its metadata.
// Watermill does not count deliveries: Delivery is 0.
func FromWatermill(msg *message.Message) *messaging.Message {
	headers := make(map[string]string, len(msg.Metadata))
	for k, v := range msg.Metadata {
		headers[k] = v
	}
	return &messaging.Message{
		ID:      msg.UUID,
		Subject: message.SubscribeTopicFromCtx(msg.Context()),
		Payload: msg.Payload,
		Headers: headers,
	}
}

// call carries one delivery through Consumer.Handle to the wrapped handler.
type call struct {
	msg      *message.Message
	h        message.HandlerFunc
	produced []*message.Message // of a successful run
}

type callKey struct{}

// run is the messaging.Handler of every consumer: it calls the Watermill
// handler of the delivery in ctx, with the consumer's context (the dedup
// key, and cancelled if the lease is lost) as the message's context, and
// records its produced messages as the result of the run.
func run(ctx context.Context, _ *messaging.Message) error {
	c, ok := ctx.Value(callKey{}).(*call)
	if !ok {
		return messaging.Permanent(errors.New("idem watermill: handler called outside the middleware"))
	}
	orig := c.msg.Context()
	c.msg.SetContext(ctx)
	defer c.msg.SetContext(orig)
	produced, err := c.h(c.msg)
	if err != nil {
		return err
	}
	c.produced = produced
	if len(produced) > 0 {
		messaging.SetResult(ctx, encodeProduced(produced))
	}
	return nil
}

type idemMiddleware struct {
	ledger    *idem.Ledger
	cfg       Config
	consumers sync.Map // scope -> *messaging.Consumer
}

// Middleware returns a Watermill router middleware that runs each message
// through a messaging.Consumer over ledger, with the key derived by
// cfg.Key (the message UUID by default):
//
//   - first delivery (Ack): the handler runs with the dedup key in its
//     context (idem.KeyFrom(msg.Context())); it succeeded, its outcome
//     is recorded with its produced messages, which are returned for the
//     router to publish; the router acks;
//   - a duplicate of a handled message (AckDuplicate): the handler does
//     not run; the produced messages its successful run recorded are
//     returned again (same UUIDs, metadata and payloads) and a nil error:
//     the router publishes them again and acks;
//   - the handler failed, the key is in flight at another consumer, or the
//     store did not answer (Retry): the failed attempt is recorded and a
//     *DecisionError returned, so the router nacks and the message is
//     redelivered, and handled then; produced messages are dropped;
//   - the handler failed for the last time (cfg.MaxAttempts) or with
//     messaging.Permanent, or its key was used for another payload
//     (DeadLetter): the cfg.DeadLetter hook has it; nil (the router acks),
//     or with cfg.DeadLetterError an error wrapping ErrDeadLettered.
//
// The router publishes produced messages after the middleware returned,
// hence after the outcome was recorded. If that publish fails (or the
// process dies first) the router nacks (or never acks), the redelivery is
// a duplicate, and the middleware returns the recorded messages again: the
// router publishes them with the same UUIDs, so no produced message is
// lost, and one may be published twice: dedup them downstream by UUID
// (this middleware does, by default). The produced messages are the
// handler run's result (messaging.SetResult), bounded by
// cfg.MaxResult (1 MiB by default) once encoded: over it the message is
// dead-lettered. A recorded result that does not decode (written by a
// newer encoding) is returned as an error wrapping idem.ErrInvalid: the
// router nacks.
//
// Add it to one handler (handler.AddMiddleware) or to the router
// (router.AddMiddleware); each handler keeps its own keys. An invalid cfg
// is an error wrapping idem.ErrInvalid.
func Middleware(ledger *idem.Ledger, cfg *Config) (message.HandlerMiddleware, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Scope == "" {
		c.Scope = "messages"
	}
	if _, err := messaging.NewConsumer(ledger, run, &c.Config); err != nil {
		return nil, err
	}
	m := &idemMiddleware{ledger: ledger, cfg: c}
	return m.wrap, nil
}

func (m *idemMiddleware) consumer(scope string) (*messaging.Consumer, error) {
	if c, ok := m.consumers.Load(scope); ok {
		return c.(*messaging.Consumer), nil
	}
	cfg := m.cfg.Config
	cfg.Scope = scope
	c, err := messaging.NewConsumer(m.ledger, run, &cfg)
	if err != nil {
		return nil, err
	}
	actual, _ := m.consumers.LoadOrStore(scope, c)
	return actual.(*messaging.Consumer), nil
}

func (m *idemMiddleware) wrap(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx := msg.Context()
		scope := m.cfg.Scope
		if name := message.HandlerNameFromCtx(ctx); name != "" {
			scope += "/" + name
		}
		con, err := m.consumer(scope)
		if err != nil {
			return nil, fmt.Errorf("idem watermill: handler %q: %w", message.HandlerNameFromCtx(ctx), err)
		}
		c := &call{msg: msg, h: h}
		d := con.Handle(context.WithValue(ctx, callKey{}, c), FromWatermill(msg))
		switch d.Action {
		case messaging.Ack:
			return c.produced, nil
		case messaging.AckDuplicate:
			produced, err := decodeProduced(d.Result)
			if err != nil {
				return nil, fmt.Errorf("idem watermill: produced messages of key %q: %w", d.Key, err)
			}
			return produced, nil
		case messaging.AckSuperseded:
			return nil, nil
		case messaging.DeadLetter:
			if m.cfg.DeadLetterError {
				return nil, &DecisionError{Decision: d}
			}
			return nil, nil
		default: // Retry
			if m.cfg.WaitRetryDelay && d.Delay > 0 {
				_ = m.ledger.Clock().Sleep(ctx, d.Delay)
			}
			return nil, &DecisionError{Decision: d}
		}
	}
}
