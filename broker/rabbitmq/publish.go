package rabbitmq

import (
	"context"
	"errors"
	"fmt"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
	amqp "github.com/rabbitmq/amqp091-go"
)

// ErrNacked is returned by Publisher.Publish when the broker refused the
// message (basic.nack in confirm mode): it is not stored; publish it again.
var ErrNacked = errors.New("rabbitmq: the broker nacked the message")

// Publisher publishes messages in confirm mode: Publish returns only after
// the broker confirmed it stored the message (for a quorum queue: a
// majority of its replicas wrote it). Every message is persistent and
// carries its id as the AMQP message-id, so a consumer dedups what a
// retried Publish sends twice. It is safe for concurrent use.
type Publisher struct {
	ch *amqp.Channel
}

// NewPublisher puts ch in confirm mode and returns a publisher on it. The
// caller owns ch: use it for nothing else that publishes, and close it when
// done.
func NewPublisher(ch *amqp.Channel) (*Publisher, error) {
	if ch == nil {
		return nil, fmt.Errorf("%w: rabbitmq: channel is nil", idem.ErrInvalid)
	}
	if err := ch.Confirm(false); err != nil {
		return nil, fmt.Errorf("rabbitmq: confirm mode: %w", err)
	}
	return &Publisher{ch: ch}, nil
}

// Publish sends m to exchange with m.Subject as the routing key ("" is the
// default exchange, which routes to the queue named by the key), and waits
// for the broker's confirm or ctx's end. m.ID becomes the message-id
// (required: an empty one is an error wrapping idem.ErrInvalid), m.Headers
// the headers, m.Payload the body; the message is persistent.
//
// An error means the message may or may not be stored: publish it again
// with the same ID, and the consumer's ledger answers the copy as a
// duplicate. A confirmed message that no queue was bound to receive is
// dropped by the broker (confirms do not report it): declare the queue
// (DeclareQueue) before publishing.
func (p *Publisher) Publish(ctx context.Context, exchange string, m *messaging.Message) error {
	switch {
	case m == nil:
		return fmt.Errorf("%w: rabbitmq: nil message", idem.ErrInvalid)
	case m.ID == "":
		return fmt.Errorf("%w: rabbitmq: message without an ID", idem.ErrInvalid)
	}
	msg := amqp.Publishing{MessageId: m.ID, Body: m.Payload, DeliveryMode: amqp.Persistent}
	if len(m.Headers) > 0 {
		msg.Headers = make(amqp.Table, len(m.Headers))
		for k, v := range m.Headers {
			msg.Headers[k] = v
		}
	}
	conf, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, m.Subject, false, false, msg)
	if err != nil {
		return fmt.Errorf("rabbitmq: publish %q: %w", m.ID, err)
	}
	if conf == nil {
		return fmt.Errorf("rabbitmq: publish %q: the channel is not in confirm mode", m.ID)
	}
	ok, err := conf.WaitContext(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("rabbitmq: publish %q: waiting for the confirm: %w", m.ID, err)
	case !ok:
		return fmt.Errorf("%w: %q", ErrNacked, m.ID)
	}
	return nil
}

// QueueOptions configures DeclareQueue. A nil *QueueOptions means a
// quorum queue with RabbitMQ's default delivery limit and no dead-letter
// queue.
type QueueOptions struct {
	// Classic declares a classic queue instead of a quorum queue.
	Classic bool
	// DeadLetterQueue, if set, is declared too (same type), and the
	// queue's dead-letter exchange routes what the consumer dead-letters
	// (and, for a quorum queue, what exceeds DeliveryLimit) to it, through
	// the default exchange.
	DeadLetterQueue string
	// DeliveryLimit is a quorum queue's x-delivery-limit: after that many
	// returns of a message (each Retry's nack counts) the broker drops it,
	// or dead-letters it to DeadLetterQueue. 0: the broker's default (20
	// since RabbitMQ 4.0, none before). Do not pass -1 for "no limit":
	// RabbitMQ 3.10 dead-letters at the first requeue then. Set it above
	// messaging.Config.MaxAttempts plus the redeliveries of duplicates in
	// flight elsewhere.
	DeliveryLimit int
}

// DeclareQueue declares a durable queue named name (a quorum queue unless
// opts.Classic) and, if opts names one, its dead-letter queue. It is
// idempotent for the same arguments; the broker refuses (and closes ch) a
// redeclaration with other arguments.
func DeclareQueue(ch *amqp.Channel, name string, opts *QueueOptions) error {
	var o QueueOptions
	if opts != nil {
		o = *opts
	}
	if ch == nil {
		return fmt.Errorf("%w: rabbitmq: channel is nil", idem.ErrInvalid)
	}
	if name == "" {
		return fmt.Errorf("%w: rabbitmq: empty queue name", idem.ErrInvalid)
	}
	args := amqp.Table{}
	if !o.Classic {
		args[amqp.QueueTypeArg] = amqp.QueueTypeQuorum
		if o.DeliveryLimit != 0 {
			args["x-delivery-limit"] = int64(o.DeliveryLimit)
		}
	}
	if o.DeadLetterQueue != "" {
		dlArgs := amqp.Table{}
		if !o.Classic {
			dlArgs[amqp.QueueTypeArg] = amqp.QueueTypeQuorum
		}
		if _, err := ch.QueueDeclare(o.DeadLetterQueue, true, false, false, false, dlArgs); err != nil {
			return fmt.Errorf("rabbitmq: declare dead-letter queue %q: %w", o.DeadLetterQueue, err)
		}
		args["x-dead-letter-exchange"] = ""
		args["x-dead-letter-routing-key"] = o.DeadLetterQueue
	}
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		return fmt.Errorf("rabbitmq: declare queue %q: %w", name, err)
	}
	return nil
}
