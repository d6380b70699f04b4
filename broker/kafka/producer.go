package kafka

import (
	"context"
	"fmt"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
	"github.com/twmb/franz-go/pkg/kgo"
)

// NewRecord returns a record for topic carrying payload, the headers and
// the message id in the HeaderMessageID header (it overrides a header of
// that name in headers). Its Key is the id, so that every copy of one
// message lands on the same partition; set Key to an entity id instead to
// keep an entity's messages in order. Produce it with cl.ProduceSync, or
// use Publish.
func NewRecord(topic, id string, payload []byte, headers map[string]string) *kgo.Record {
	r := &kgo.Record{Topic: topic, Key: []byte(id), Value: payload}
	for k, v := range headers {
		if k == HeaderMessageID {
			continue
		}
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	r.Headers = append(r.Headers, kgo.RecordHeader{Key: HeaderMessageID, Value: []byte(id)})
	return r
}

// Publish produces one message to topic and waits until the broker
// acknowledged it. id is the message id, sent in the HeaderMessageID
// header and used as the record key (see NewRecord); a consumer's
// messaging.Consumer dedups by it, so publishing the same message again
// after an unclear failure is safe. franz-go's producer is idempotent by
// default (do not pass kgo.DisableIdempotentWrite): the broker drops the
// copies that the client's own internal retries would otherwise write.
// An empty topic or id is an error wrapping idem.ErrInvalid.
func Publish(ctx context.Context, cl *kgo.Client, topic, id string, payload []byte, headers map[string]string) error {
	if cl == nil {
		return fmt.Errorf("%w: kafka: client is nil", idem.ErrInvalid)
	}
	if topic == "" {
		return fmt.Errorf("%w: kafka: empty topic", idem.ErrInvalid)
	}
	if id == "" {
		return fmt.Errorf("%w: kafka: empty message id", idem.ErrInvalid)
	}
	if err := cl.ProduceSync(ctx, NewRecord(topic, id, payload, headers)).FirstErr(); err != nil {
		return fmt.Errorf("kafka: publish %s to %s: %w", id, topic, err)
	}
	return nil
}

// Dead-letter headers DeadLetterTo adds to the copy it publishes.
const (
	HeaderDeadLetterError    = "idem-dead-letter-error"
	HeaderDeadLetterAttempts = "idem-dead-letter-attempts"
	HeaderDeadLetterSubject  = "idem-dead-letter-subject"
)

// DeadLetterTo returns a messaging.Config.DeadLetter hook that publishes a
// given-up message to topic with Publish: same id, payload and headers,
// plus the error, the number of failed attempts and the original topic in
// the HeaderDeadLetter* headers. The consumer runs the hook before it
// records the key as dead-lettered and retries it if it fails, so the copy
// is published at least once; a consumer of the dead-letter topic dedups
// it by id.
func DeadLetterTo(cl *kgo.Client, topic string) func(ctx context.Context, m *messaging.Message, attempts []messaging.Attempt, err error) error {
	return func(ctx context.Context, m *messaging.Message, attempts []messaging.Attempt, cause error) error {
		h := make(map[string]string, len(m.Headers)+3)
		for k, v := range m.Headers {
			h[k] = v
		}
		if cause != nil {
			h[HeaderDeadLetterError] = cause.Error()
		}
		h[HeaderDeadLetterAttempts] = fmt.Sprint(len(attempts))
		h[HeaderDeadLetterSubject] = m.Subject
		return Publish(ctx, cl, topic, m.ID, m.Payload, h)
	}
}
