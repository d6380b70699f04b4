// Package messaging makes broker consumers idempotent with an idem.Ledger.
//
// A broker delivers at least once: a message may arrive twice, at two
// consumers at the same time, or again after a consumer crashed. A
// Consumer wraps a Handler so that it runs at most once to success per
// dedup key (the message id by default), and answers every delivery with a
// Decision that tells the broker adapter what to do: Ack, AckDuplicate,
// Retry after a delay, or DeadLetter. The outcome is recorded only after
// the handler succeeded, and the adapter acks only after it was recorded,
// so a crash at any point leads to a redelivery, never to a lost message.
// A handler may attach a result to its outcome (SetResult): the Decision of
// every duplicate carries it (Decision.Result), so an adapter that must act
// after the handler (publish what it produced) can do it again on the
// redelivery when its first try failed.
//
// A Guard in front of a Consumer applies messages that carry (entity,
// version) in version order: stale versions are acked as superseded, and a
// message after a gap is held back until the gap fills or a bound passes.
//
// On the producing side, a Relay publishes an outbox: messages a producer
// wrote in its own transaction (so they exist if and only if its change
// committed), each entity's in order, each until the broker has it, with
// the message id as the broker's dedup id. One relay at a time is active,
// the holder of a lease on the ledger; the table is behind the Outbox
// interface, whose marks check that lease (a Fence) in the same atomic
// step. pgstore implements it over PostgreSQL (Store.Relay); another
// database needs only the four methods.
//
// The adapters (modules under broker/) turn a Decision into the broker's
// ack, nack-with-delay or term. Without one, a consumer loop reads:
//
//	d := consumer.Handle(ctx, &messaging.Message{ID: id, Payload: body})
//	switch d.Action {
//	case messaging.Retry:
//		nackWithDelay(d.Delay)
//	default: // Ack, AckDuplicate, AckSuperseded, DeadLetter
//		ack()
//	}
package messaging

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/permanent"
)

// Message is one delivery of a broker message, as an adapter hands it over.
type Message struct {
	ID       string            // the broker's message id (Nats-Msg-Id, AMQP message-id, Kafka topic/partition/offset...)
	Subject  string            // subject, queue or topic
	Payload  []byte            // the body
	Headers  map[string]string // the message's headers
	Delivery int               // the broker's delivery count, from 1; 0 if unknown
}

// Action is what the adapter must do with the delivery.
type Action int

const (
	// Ack: the handler ran now and its outcome is recorded: ack.
	Ack Action = iota + 1
	// AckDuplicate: handled before (the ledger replays): ack, the handler
	// did not run.
	AckDuplicate
	// AckSuperseded: the ordering guard found a stale version: ack without
	// handling.
	AckSuperseded
	// Retry: nack, or redeliver after Decision.Delay (the key is in flight
	// elsewhere, the handler failed retryably, a gap is held back, the
	// store did not answer).
	Retry
	// DeadLetter: give up: the dead-letter hook ran (or none is set); ack
	// or terminate the delivery.
	DeadLetter
)

// String returns the action's name: "ack", "ack-duplicate",
// "ack-superseded", "retry" or "dead-letter".
func (a Action) String() string {
	switch a {
	case Ack:
		return "ack"
	case AckDuplicate:
		return "ack-duplicate"
	case AckSuperseded:
		return "ack-superseded"
	case Retry:
		return "retry"
	case DeadLetter:
		return "dead-letter"
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

// Acked reports whether the adapter acks (or terminates) the delivery:
// every action but Retry.
func (a Action) Acked() bool { return a >= Ack && a <= DeadLetter && a != Retry }

// Decision is Consumer.Handle's (and Guard.Handle's) answer.
type Decision struct {
	Action Action
	// Delay is how long to wait before the redelivery, for Retry.
	Delay time.Duration
	// Key is the dedup key used.
	Key string
	// Err is the handler's error (Retry, DeadLetter), the mismatch, the
	// store's error, or for an AckDuplicate of a dead-lettered key an
	// *idem.OutcomeError with the recorded failure.
	Err error
	// Result is the result the handler attached to the outcome with
	// SetResult: for Ack what it set now, for AckDuplicate what the run that
	// completed the key recorded. Nil when it set none (or an empty one),
	// and for the other actions.
	Result []byte
}

// Handler handles one message. An error means it did not take effect and
// may run again: the key is released and the message redelivered, up to
// Config.MaxAttempts times; wrap it with Permanent to give up at once. To
// give every duplicate the outcome of the run that took effect (produced
// messages, a reply), attach it with SetResult(ctx, data) before returning
// nil: it is Decision.Result of this delivery and of every duplicate.
type Handler func(ctx context.Context, m *Message) error

// ErrAttemptsExhausted is what the dead-letter hook gets when a message
// comes back after Config.MaxAttempts owners of its key stopped (crashed or
// lost their lease) without an outcome: the handler does not run again.
var ErrAttemptsExhausted = errors.New("messaging: attempts exhausted")

// ErrGap is the Err of the ordering guard's Retry for a message held back
// behind a gap.
var ErrGap = errors.New("messaging: version gap")

// Permanent marks a handler error that must not be retried: the message is
// dead-lettered at once. Permanent(nil) is nil. It is the same mark as
// workflow.Permanent: an error marked by either is permanent to both.
func Permanent(err error) error { return permanent.Mark(err) }

// IsPermanent reports whether err was marked with Permanent (or
// workflow.Permanent).
func IsPermanent(err error) bool { return permanent.Is(err) }

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{idem.ErrInvalid}, args...)...)
}
