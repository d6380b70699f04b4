package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/broker/natsjs"
	"github.com/idemkit/idem/broker/rabbitmq"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
)

const relayUsage = `Usage: idem relay --store postgres://... --to URL [flags]

Runs the outbox relay of a PostgreSQL store: publishes every row that
pgstore's Store.Enqueue wrote to the outbox table, in order per entity, and
marks it sent once the broker confirmed it. Each message is published with
its outbox id as the broker's dedup id, so a row published again (a relay
that died between the publish and its mark) is delivered once:

  NATS      subject = the row's subject, Nats-Msg-Id = its id, headers =
            its headers; waits for the stream's PubAck (JetStream drops a
            republish within the stream's duplicate window)
  RabbitMQ  exchange from --to, routing key = the row's subject,
            message-id = its id, headers = its headers, persistent; waits
            for the publisher confirm (consumers dedup by message-id, as
            idem consume does)

Any number of relays may run on one outbox: one holds the lease (scope
outbox-relay, key --key) and publishes, the others wait and take over when
it stops (at once) or dies (once its lease ran out). A failed publish is
retried after a backoff (1 s doubling, at most 1 min), without end; the
rows behind it in its entity wait.

Flags:
  --store URL            the PostgreSQL store whose outbox is relayed
                         (required): postgres://USER@HOST/DB, ?schema=NAME
                         picks the schema (default idem)
  --to URL               the broker (required):
                           nats://[USER:PASS@]HOST:PORT
                             JetStream: a stream must capture the subjects
                           amqp://USER:PASS@HOST:PORT/VHOST?exchange=X
                             X "" or absent: the default exchange (routing
                             key = queue name); amqps:// for TLS
  --migrate              apply the PostgreSQL schema migrations at start
                         (the outbox needs schema version 3)
  --interval DURATION    how long an idle relay waits before it looks for
                         new rows; also how often a waiting relay asks for
                         the lease (default 1s)
  --lease DURATION       how long after a relay dies another takes over
                         (default 30s); keep it well above --timeout
  --timeout DURATION     longest wait for one publish's confirmation
                         (default 10s)
  --batch N              rows read per round (default 100)
  --workers N            entities published at once (default 4)
  --key NAME             the lease's key: one active relay per key
                         (default outbox)
  --name NAME            this relay's name in the lease (default host:pid)
  --log-level LEVEL      debug, info, warn or error (default info); logs
                         never hold payloads

On SIGTERM or SIGINT it stops publishing, releases the lease (another
relay takes over at once), closes the store and exits 0. Exit codes: 0
stopped by a signal, 1 the store or the broker failed at start, 2 bad
flags.

` + envHelp + `
Example:
  idem relay --store 'postgres://app@db/shop?schema=idem' --to nats://127.0.0.1:4222
  idem relay --store postgres://app@db/shop \
      --to 'amqp://guest:guest@127.0.0.1:5672/?exchange=orders'
`

type relayOptions struct {
	store, key, name, logLevel string
	to                         *brokerURL
	migrate                    bool
	interval, lease, timeout   time.Duration
	batch, workers             int
}

func runRelay(args []string, stdout, stderr io.Writer) int {
	return runLongLived("relay", args, stdout, stderr, parseRelayFlags, runRelayLoop)
}

// parseRelayFlags returns the options, or an exit code >= 0 when relay
// should stop here (help, usage error).
func parseRelayFlags(args []string, stdout, stderr io.Writer) (*relayOptions, int) {
	fs := flag.NewFlagSet("idem relay", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := &relayOptions{}
	var to string
	fs.StringVar(&o.store, "store", "", "")
	fs.StringVar(&to, "to", "", "")
	fs.BoolVar(&o.migrate, "migrate", false, "")
	fs.DurationVar(&o.interval, "interval", time.Second, "")
	fs.DurationVar(&o.lease, "lease", idem.DefaultLease, "")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "")
	fs.IntVar(&o.batch, "batch", 100, "")
	fs.IntVar(&o.workers, "workers", 4, "")
	fs.StringVar(&o.key, "key", "outbox", "")
	fs.StringVar(&o.name, "name", "", "")
	fs.StringVar(&o.logLevel, "log-level", "info", "")
	if code := parseCommandFlags(fs, args, relayUsage, stdout, stderr); code >= 0 {
		return nil, code
	}
	bad := func() error {
		var err error
		if o.store == "" {
			return errors.New("--store is required, like --store postgres://USER@HOST/DB")
		}
		if o.to, err = parseBrokerURL("to", to, "exchange"); err != nil {
			return err
		}
		if o.to.kind == "nats" && o.to.exch != "" {
			return fmt.Errorf("--to %s: exchange= is for amqp:// URLs", o.to.shown)
		}
		switch {
		case o.interval <= 0:
			return fmt.Errorf("--interval must be positive, got %s", o.interval)
		case o.lease <= 0:
			return fmt.Errorf("--lease must be positive, got %s", o.lease)
		case o.timeout <= 0:
			return fmt.Errorf("--timeout must be positive, got %s", o.timeout)
		case o.batch < 1:
			return fmt.Errorf("--batch must be at least 1, got %d", o.batch)
		case o.workers < 1 || o.workers > 1000:
			return fmt.Errorf("--workers must be 1 to 1000, got %d", o.workers)
		case idem.ValidateKey(pgstore.RelayScope, o.key) != nil:
			return fmt.Errorf("--key %q is not a valid key", o.key)
		}
		_, err = parseLogLevel(o.logLevel)
		return err
	}()
	if bad != nil {
		fmt.Fprintf(stderr, "idem relay: %v\n", bad)
		return nil, 2
	}
	return o, -1
}

// runRelayLoop runs the relay until ctx ends.
func runRelayLoop(ctx context.Context, o *relayOptions, stdout, stderr io.Writer) error {
	logger, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return err
	}

	st, err := openStore(ctx, o.store, &idem.OpenConfig{Migrate: o.migrate})
	if err != nil {
		return fmt.Errorf("--store %s: %w", redactURL(o.store), err)
	}
	defer func() {
		if err := st.Close(); err != nil {
			logger.Error("closing the store", "error", err)
		}
	}()
	store, ok := st.(*pgstore.Store)
	if !ok {
		return fmt.Errorf("--store %s: the outbox lives in PostgreSQL: want a postgres:// URL", redactURL(o.store))
	}

	var pub pgstore.PublisherFunc
	switch o.to.kind {
	case "nats":
		nc, err := nats.Connect(o.to.dial, nats.Name("idem relay"), nats.MaxReconnects(-1))
		if err != nil {
			return fmt.Errorf("--to %s: %w", o.to.shown, err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return fmt.Errorf("--to %s: %w", o.to.shown, err)
		}
		p := natsjs.NewPublisher(js)
		pub = func(ctx context.Context, m *pgstore.OutboxMessage) error {
			ctx, cancel := context.WithTimeout(ctx, o.timeout)
			defer cancel()
			_, err := p.Publish(ctx, m.Subject, m.ID, m.Payload, m.Headers)
			return err
		}
	case "amqp":
		conn, err := amqp.Dial(o.to.dial)
		if err != nil {
			return fmt.Errorf("--to %s: %w", o.to.shown, err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("--to %s: %w", o.to.shown, err)
		}
		defer ch.Close()
		p, err := rabbitmq.NewPublisher(ch)
		if err != nil {
			return fmt.Errorf("--to %s: %w", o.to.shown, err)
		}
		pub = func(ctx context.Context, m *pgstore.OutboxMessage) error {
			ctx, cancel := context.WithTimeout(ctx, o.timeout)
			defer cancel()
			return p.Publish(ctx, o.to.exch, &messaging.Message{ID: m.ID, Subject: m.Subject, Payload: m.Payload, Headers: m.Headers})
		}
	}
	relay := store.Relay(pgstore.PublisherFunc(func(ctx context.Context, m *pgstore.OutboxMessage) error {
		err := pub(ctx, m)
		if err == nil {
			logger.Debug("published", "id", m.ID, "entity", m.Entity, "seq", m.Seq, "subject", m.Subject, "attempt", m.Attempt)
		}
		return err
	}), &pgstore.RelayConfig{
		Key: o.key, Name: o.name, Lease: o.lease, Batch: o.batch, Workers: o.workers, PollInterval: o.interval,
		OnError: func(err error) { logger.Warn("relay", "error", err) },
	})
	fmt.Fprintf(stdout, "idem relay: relaying the outbox of %s to %s\n", describeStore(st, o.store), o.to.shown)
	err = relay.Run(ctx)
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		fmt.Fprintln(stdout, "idem relay: stopped; the lease is released")
		return nil
	}
	return err
}
