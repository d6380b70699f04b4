// Package kafka runs a messaging.Consumer over Kafka with franz-go
// (github.com/twmb/franz-go/pkg/kgo): a consumer group whose offsets are
// committed by hand, only past records whose outcome the ledger recorded,
// and a producer that stamps every record with its message id.
//
// Kafka has no per-message ack: a consumer group commits one offset per
// partition, and everything below it counts as done. Consume therefore
// handles the records of each partition in order and commits, after each
// polled batch, the offset after the last record of the unbroken run of
// acked records (Ack, AckDuplicate, AckSuperseded, DeadLetter). A Retry
// stops the partition there: Consume seeks the partition back to the
// retried record, pauses it for the Decision's delay (bounded by
// Options.MaxRetryDelay) and fetches it, and everything after it, again.
// The order within a partition is kept; other partitions go on.
//
// A crash between a handler's effect and the commit redelivers the records
// after the last commit; the ledger answers them AckDuplicate, so no
// handler runs twice, and nothing is committed before it was handled, so
// nothing is lost.
//
// The client must be a consumer-group client with auto-commit disabled:
//
//	cl, err := kgo.NewClient(
//		kgo.SeedBrokers(brokers...),
//		kgo.ConsumerGroup("billing"),
//		kgo.ConsumeTopics("orders"),
//		kgo.DisableAutoCommit(),
//		kgo.BlockRebalanceOnPoll(),
//	)
//	...
//	err = kafka.Consume(ctx, cl, consumer, nil)
//
// See docs/broker-kafka.md for the mapping of decisions and the tests.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
	"github.com/twmb/franz-go/pkg/kgo"
)

// HeaderMessageID is the record header that carries the message id.
// Publish sets it; Consume takes the Message.ID from it, and falls back to
// "<topic>/<partition>/<offset>" for a record without it.
const HeaderMessageID = "idem-message-id"

// ErrClientClosed is returned by Consume when the kgo client was closed
// under it.
var ErrClientClosed = errors.New("kafka: client closed")

// Defaults of Options.
const (
	DefaultMaxRetryDelay = 30 * time.Second
	DefaultCommitTimeout = 10 * time.Second
)

// Options configures Consume. A nil *Options means every default.
type Options struct {
	// MaxRetryDelay bounds how long a partition is paused after a Retry
	// (a Decision's Delay is the backoff, or an in-flight key's remaining
	// lease). Default DefaultMaxRetryDelay.
	MaxRetryDelay time.Duration
	// MaxPollRecords, if > 0, bounds the records of one batch (PollRecords
	// instead of PollFetches). Offsets are committed after each batch, so
	// a smaller batch commits more often and redelivers less after a crash.
	MaxPollRecords int
	// CommitTimeout bounds the commit that follows a batch when ctx was
	// cancelled during it: the handled records are still committed.
	// Default DefaultCommitTimeout.
	CommitTimeout time.Duration
	// DeadLetter, if set, runs for a record the consumer dead-lettered, and
	// again for a later delivery of a key that was dead-lettered before
	// (an AckDuplicate whose Err is an *idem.OutcomeError), so it runs at
	// least once per dead-lettered record even if the process stops right
	// after the decision. Publish the record to a dead-letter topic here
	// (or use messaging.Config.DeadLetter with DeadLetterTo). If it returns
	// an error the record is not committed: it is retried like a Retry
	// after MaxRetryDelay.
	DeadLetter func(ctx context.Context, r *kgo.Record, d messaging.Decision) error
	// OnDecision, if set, is called after every record's decision (and
	// the DeadLetter hook), before the commit: for logs and metrics.
	OnDecision func(r *kgo.Record, m *messaging.Message, d messaging.Decision)
	// OnError, if set, receives the errors that do not stop Consume: fetch
	// errors and failed commits (the records are then redelivered and
	// acked as duplicates).
	OnError func(err error)

	// crashBeforeCommit, for the tests: if it returns true Consume returns
	// errCrashed after handling a batch, without committing it.
	crashBeforeCommit func() bool
}

var errCrashed = errors.New("kafka: simulated crash before commit")

type tp struct {
	topic     string
	partition int32
}

// Message converts a record to the message handed to the consumer: ID from
// the HeaderMessageID header, else "<topic>/<partition>/<offset>"; Subject
// the topic; Headers every header (the last of a repeated key wins);
// Delivery 0, as Kafka does not count deliveries.
func Message(r *kgo.Record) *messaging.Message {
	m := &messaging.Message{Subject: r.Topic, Payload: r.Value}
	if len(r.Headers) > 0 {
		m.Headers = make(map[string]string, len(r.Headers))
		for _, h := range r.Headers {
			m.Headers[h.Key] = string(h.Value)
		}
	}
	if id := m.Headers[HeaderMessageID]; id != "" {
		m.ID = id
	} else {
		m.ID = fmt.Sprintf("%s/%d/%d", r.Topic, r.Partition, r.Offset)
	}
	return m
}

// Consume polls cl and hands every record to c until ctx is done (it then
// returns ctx's error, after committing the batch in hand) or the client
// is closed (ErrClientClosed). Fetch and commit errors do not stop it: they
// go to Options.OnError. Bad arguments are errors wrapping idem.ErrInvalid.
// cl must be a consumer-group client
// with kgo.DisableAutoCommit, and should have kgo.BlockRebalanceOnPoll so
// that no partition is revoked between a batch's handling and its commit
// (Consume calls AllowRebalance after every commit). Without
// BlockRebalanceOnPoll a revoke in between loses that commit and the
// records are redelivered to the new owner, who acks them as duplicates.
//
// Per partition, records are handled in offset order; after each batch the
// offset after the last of the unbroken run of acked records is committed
// (CommitRecords). A Retry seeks the partition back to that record and
// pauses it for min(Decision.Delay, Options.MaxRetryDelay); the records
// after it in the batch are not handled and are fetched again.
//
// Consume handles one batch at a time on the calling goroutine; run it in
// one goroutine per client.
func Consume(ctx context.Context, cl *kgo.Client, c *messaging.Consumer, opts *Options) error {
	if cl == nil {
		return fmt.Errorf("%w: kafka: client is nil", idem.ErrInvalid)
	}
	if c == nil {
		return fmt.Errorf("%w: kafka: consumer is nil", idem.ErrInvalid)
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.MaxRetryDelay <= 0 {
		o.MaxRetryDelay = DefaultMaxRetryDelay
	}
	if o.CommitTimeout <= 0 {
		o.CommitTimeout = DefaultCommitTimeout
	}
	if o.MaxPollRecords < 0 {
		return fmt.Errorf("%w: kafka: MaxPollRecords %d < 0", idem.ErrInvalid, o.MaxPollRecords)
	}
	s := &session{cl: cl, c: c, o: o, paused: map[tp]time.Time{}}
	return s.run(ctx)
}

type session struct {
	cl     *kgo.Client
	c      *messaging.Consumer
	o      Options
	paused map[tp]time.Time // resume at
}

func (s *session) report(err error) {
	if s.o.OnError != nil {
		s.o.OnError(err)
	}
}

func (s *session) run(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		pollCtx, cancel := s.resumeDue(ctx)
		var fetches kgo.Fetches
		if s.o.MaxPollRecords > 0 {
			fetches = s.cl.PollRecords(pollCtx, s.o.MaxPollRecords)
		} else {
			fetches = s.cl.PollFetches(pollCtx)
		}
		cancel()
		if fetches.IsClientClosed() {
			s.cl.AllowRebalance()
			return ErrClientClosed
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return // our poll deadline (a paused partition is due) or ctx
			}
			s.report(fmt.Errorf("kafka: fetch %s/%d: %w", topic, partition, err))
		})
		done := s.batch(ctx, fetches)
		if s.o.crashBeforeCommit != nil && s.o.crashBeforeCommit() {
			return errCrashed
		}
		if len(done) > 0 {
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), s.o.CommitTimeout)
			if err := s.cl.CommitRecords(cctx, done...); err != nil {
				s.report(fmt.Errorf("kafka: commit: %w", err))
			}
			ccancel()
		}
		s.cl.AllowRebalance()
	}
}

// resumeDue resumes the paused partitions whose delay passed, and returns
// a poll context that ends when the next one is due.
func (s *session) resumeDue(ctx context.Context) (context.Context, context.CancelFunc) {
	if len(s.paused) == 0 {
		return ctx, func() {}
	}
	now := time.Now()
	var next time.Time
	resume := map[string][]int32{}
	for p, at := range s.paused {
		if !at.After(now) {
			resume[p.topic] = append(resume[p.topic], p.partition)
			delete(s.paused, p)
			continue
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	if len(resume) > 0 {
		s.cl.ResumeFetchPartitions(resume)
	}
	if next.IsZero() {
		return ctx, func() {}
	}
	return context.WithDeadline(ctx, next)
}

// batch handles the records of fetches partition by partition and returns
// the last record of each partition's unbroken run of acked records.
func (s *session) batch(ctx context.Context, fetches kgo.Fetches) []*kgo.Record {
	var done []*kgo.Record
	fetches.EachPartition(func(p kgo.FetchTopicPartition) {
		key := tp{p.Topic, p.Partition}
		var last *kgo.Record
		for _, r := range p.Records {
			if ctx.Err() != nil {
				break // shutting down: left for the next owner, not an attempt
			}
			if _, ok := s.paused[key]; ok {
				break // paused by a Retry in this batch
			}
			if !s.record(ctx, r) {
				break
			}
			last = r
		}
		if last != nil {
			done = append(done, last)
		}
	})
	return done
}

// record handles one record; false means it was not acked: the partition
// was seeked back to it and paused.
func (s *session) record(ctx context.Context, r *kgo.Record) bool {
	m := Message(r)
	d := s.c.Handle(ctx, m)
	delay := d.Delay
	acked := d.Action.Acked()
	if s.o.DeadLetter != nil && (d.Action == messaging.DeadLetter || d.Action == messaging.AckDuplicate && isOutcome(d.Err)) {
		if err := s.o.DeadLetter(ctx, r, d); err != nil {
			s.report(fmt.Errorf("kafka: dead-letter hook for %s: %w", m.ID, err))
			d = messaging.Decision{Action: messaging.Retry, Delay: s.o.MaxRetryDelay, Key: d.Key, Err: errors.Join(d.Err, err)}
			acked, delay = false, s.o.MaxRetryDelay
		}
	}
	if s.o.OnDecision != nil {
		s.o.OnDecision(r, m, d)
	}
	if acked {
		return true
	}
	delay = min(max(delay, 0), s.o.MaxRetryDelay)
	key := tp{r.Topic, r.Partition}
	s.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{r.Topic: {r.Partition: {Epoch: r.LeaderEpoch, Offset: r.Offset}}})
	if delay > 0 {
		s.cl.PauseFetchPartitions(map[string][]int32{r.Topic: {r.Partition}})
		s.paused[key] = time.Now().Add(delay)
	}
	return false
}

func isOutcome(err error) bool {
	var oe *idem.OutcomeError
	return errors.As(err, &oe)
}
