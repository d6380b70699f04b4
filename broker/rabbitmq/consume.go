package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
	amqp "github.com/rabbitmq/amqp091-go"
)

// ErrClosed is returned by Consume when the broker closed the consumer: the
// channel or its connection closed, or the queue was deleted. Redial and
// consume again: the deliveries that were not acked are redelivered.
var ErrClosed = errors.New("rabbitmq: consumer closed by the broker")

// Options configures Consume. A nil *Options means every default.
type Options struct {
	// Prefetch is how many unacked deliveries the broker hands the
	// consumer at once (basic.qos prefetch-count). Default: 2 * Workers.
	// A delivery waiting for its Retry delay holds one.
	Prefetch int
	// Workers is how many deliveries are handled at the same time, each
	// in its own goroutine. Default 1.
	Workers int
	// ConsumerTag names the consumer on the broker; it must be unique on
	// the channel. Default: "idem-PID-N", N counting Consume calls.
	ConsumerTag string
	// IDHeader is the header read as the message id when the AMQP
	// message-id property is empty. Default "Idempotency-Key". A message
	// with neither gets an empty ID: the Consumer's default key then
	// dead-letters it with an error wrapping idem.ErrInvalid.
	IDHeader string
	// MaxRetryDelay bounds how long a delivery answered Retry is held
	// before it is nacked back onto the queue. Default 10 s. RabbitMQ has
	// no per-message delay on nack: the wait happens in the worker that
	// handled it (see docs/broker-rabbitmq.md).
	MaxRetryDelay time.Duration
	// OnDecision, if set, is called after each handled delivery was
	// settled (acked or nacked), with the message and the decision; err is
	// the ack's or nack's error. Deliveries nacked unhandled because ctx
	// ended are not reported. It is called from the workers, concurrently
	// when Workers > 1. For logs and metrics: it must not block.
	OnDecision func(m *messaging.Message, d messaging.Decision, err error)
	// Clock times the Retry waits. Default idem.SystemClock.
	Clock idem.Clock
}

var tagSeq atomic.Int64

// DefaultMaxRetryDelay is the default Options.MaxRetryDelay.
const DefaultMaxRetryDelay = 10 * time.Second

// DefaultIDHeader is the default Options.IDHeader.
const DefaultIDHeader = "Idempotency-Key"

func (o *Options) withDefaults() (Options, error) {
	var c Options
	if o != nil {
		c = *o
	}
	switch {
	case c.Workers < 0:
		return c, fmt.Errorf("%w: rabbitmq: Options.Workers must be positive (or 0 for 1), got %d", idem.ErrInvalid, c.Workers)
	case c.Prefetch < 0 || c.Prefetch > 65535:
		return c, fmt.Errorf("%w: rabbitmq: Options.Prefetch must be 1 to 65535 (or 0 for 2*Workers), got %d", idem.ErrInvalid, c.Prefetch)
	case c.MaxRetryDelay < 0:
		return c, fmt.Errorf("%w: rabbitmq: Options.MaxRetryDelay must be positive (or 0 for %s), got %s", idem.ErrInvalid, DefaultMaxRetryDelay, c.MaxRetryDelay)
	}
	if c.Workers == 0 {
		c.Workers = 1
	}
	if c.Prefetch == 0 {
		c.Prefetch = min(2*c.Workers, 65535)
	}
	if c.MaxRetryDelay == 0 {
		c.MaxRetryDelay = DefaultMaxRetryDelay
	}
	if c.IDHeader == "" {
		c.IDHeader = DefaultIDHeader
	}
	if c.Clock == nil {
		c.Clock = idem.SystemClock{}
	}
	return c, nil
}

// HandleFunc decides what to do with one delivery: Consumer.Handle, a
// Guard in front of one, or another component with the same contract.
type HandleFunc func(ctx context.Context, m *messaging.Message) messaging.Decision

// Consume consumes queue on ch with manual acks and hands every delivery
// to c.Handle, then settles it by the decision:
//
//	Ack, AckDuplicate, AckSuperseded  basic.ack
//	Retry                             wait min(Delay, MaxRetryDelay), then basic.nack requeue=true
//	DeadLetter                        basic.nack requeue=false (to the queue's dead-letter exchange, if any)
//
// It returns when ctx ends (ctx.Err(); deliveries not yet handled are
// nacked back onto the queue, and handlers in flight see ctx cancelled),
// or when the broker closes the consumer (an error wrapping ErrClosed).
// The caller owns ch and its connection: Consume sets ch's prefetch
// (basic.qos) and cancels its consumer, but does not close ch.
func Consume(ctx context.Context, ch *amqp.Channel, queue string, c *messaging.Consumer, opts *Options) error {
	if c == nil {
		return fmt.Errorf("%w: rabbitmq: consumer is nil", idem.ErrInvalid)
	}
	return ConsumeFunc(ctx, ch, queue, c.Handle, opts)
}

// ConsumeFunc is Consume with any HandleFunc, for example a
// messaging.Guard in front of a Consumer:
//
//	rabbitmq.ConsumeFunc(ctx, ch, "orders", func(ctx context.Context, m *messaging.Message) messaging.Decision {
//		return guard.Handle(ctx, m, consumer.Handle)
//	}, nil)
func ConsumeFunc(ctx context.Context, ch *amqp.Channel, queue string, handle HandleFunc, opts *Options) error {
	o, err := opts.withDefaults()
	if err != nil {
		return err
	}
	switch {
	case ch == nil:
		return fmt.Errorf("%w: rabbitmq: channel is nil", idem.ErrInvalid)
	case handle == nil:
		return fmt.Errorf("%w: rabbitmq: handle is nil", idem.ErrInvalid)
	}
	if err := ch.Qos(o.Prefetch, 0, false); err != nil {
		return fmt.Errorf("rabbitmq: qos: %w", err)
	}
	tag := o.ConsumerTag
	if tag == "" {
		tag = "idem-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(tagSeq.Add(1), 10)
	}
	deliveries, err := ch.Consume(queue, tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("rabbitmq: consume %q: %w", queue, err)
	}
	stopped := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var settleErr error
	for range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range deliveries {
				if ctx.Err() != nil {
					_ = d.Nack(false, true) // not handled: back onto the queue
					continue
				}
				if err := o.handle(ctx, d, handle); err != nil {
					mu.Lock()
					if settleErr == nil {
						settleErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	go func() {
		select {
		case <-ctx.Done():
			// Ask the broker to stop delivering; the library closes
			// deliveries when it confirms (or when ch closes).
			_ = ch.Cancel(tag, false)
		case <-stopped:
		}
	}()
	wg.Wait()
	close(stopped)
	if err := ctx.Err(); err != nil {
		return err
	}
	if settleErr != nil {
		return fmt.Errorf("%w: %w", ErrClosed, settleErr)
	}
	return fmt.Errorf("%w: queue %q", ErrClosed, queue)
}

// handle runs one delivery through handle and settles it; the error is the
// ack's or nack's.
func (o *Options) handle(ctx context.Context, d amqp.Delivery, handle HandleFunc) error {
	m := o.message(&d)
	dec := handle(withDelivery(ctx, &d), m)
	var err error
	switch dec.Action {
	case messaging.Ack, messaging.AckDuplicate, messaging.AckSuperseded:
		err = d.Ack(false)
	case messaging.DeadLetter:
		err = d.Nack(false, false)
	default: // Retry, or an action this adapter does not know: redeliver
		if wait := min(max(dec.Delay, 0), o.MaxRetryDelay); wait > 0 {
			select {
			case <-o.Clock.After(wait):
			case <-ctx.Done(): // stopping: requeue now
			}
		}
		err = d.Nack(false, true)
	}
	if o.OnDecision != nil {
		o.OnDecision(m, dec, err)
	}
	return err
}

// message converts a delivery into the broker-neutral message.
func (o *Options) message(d *amqp.Delivery) *messaging.Message {
	m := &messaging.Message{ID: d.MessageId, Subject: d.RoutingKey, Payload: d.Body, Delivery: DeliveryCount(d)}
	if len(d.Headers) > 0 {
		m.Headers = make(map[string]string, len(d.Headers))
		for k, v := range d.Headers {
			if s, ok := headerString(v); ok {
				m.Headers[k] = s
			}
		}
	}
	if m.ID == "" {
		m.ID = m.Headers[o.IDHeader]
	}
	return m
}

// DeliveryCount is the delivery's count, from 1: the x-delivery-count
// header plus one (quorum and stream queues count the earlier deliveries
// there), else 2 for a delivery the broker flags as redelivered (a classic
// queue says no more than "at least the second"), else 1.
func DeliveryCount(d *amqp.Delivery) int {
	switch n := d.Headers["x-delivery-count"].(type) {
	case int64:
		return int(n) + 1
	case int32:
		return int(n) + 1
	case int:
		return n + 1
	case int16:
		return int(n) + 1
	case int8:
		return int(n) + 1
	case uint8:
		return int(n) + 1
	case uint16:
		return int(n) + 1
	case uint32:
		return int(n) + 1
	}
	if d.Redelivered {
		return 2
	}
	return 1
}

// headerString renders an AMQP header value as a string; tables and arrays
// are left out.
func headerString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case []byte:
		return string(x), true
	case bool:
		return strconv.FormatBool(x), true
	case int8, int16, int32, int64, int, uint8, uint16, uint32, uint64, float32, float64, amqp.Decimal:
		return fmt.Sprint(x), true
	case time.Time:
		return x.UTC().Format(time.RFC3339), true
	}
	return "", false
}

type deliveryKey struct{}

func withDelivery(ctx context.Context, d *amqp.Delivery) context.Context {
	return context.WithValue(ctx, deliveryKey{}, d)
}

// DeliveryFrom returns the AMQP delivery a handler run by Consume is
// handling, for properties the broker-neutral message does not carry
// (ReplyTo, CorrelationId, Timestamp...). The handler must not ack or nack
// it: Consume does.
func DeliveryFrom(ctx context.Context) (*amqp.Delivery, bool) {
	d, ok := ctx.Value(deliveryKey{}).(*amqp.Delivery)
	return d, ok
}
