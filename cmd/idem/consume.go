package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/broker/natsjs"
	"github.com/idemkit/idem/broker/rabbitmq"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pebblestore"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
)

// defaultConsumeStore is where idem consume keeps its ledger without
// --store: a directory of its own, apart from serve's and proxy's.
const defaultConsumeStore = "file:./idem-consume-data"

// consumeHeaderPrefix prefixes every message header forwarded to --to.
const consumeHeaderPrefix = "X-Idem-Header-"

// inFlightRecheck bounds the redelivery delay of a message whose id is
// being handled elsewhere.
const inFlightRecheck = time.Second

// maxHonouredRetryAfter bounds the Retry-After a --to answer may ask for.
const maxHonouredRetryAfter = 10 * time.Minute

const consumeUsage = `Usage: idem consume --from URL --to URL [flags]

Consumes a NATS JetStream or RabbitMQ queue and POSTs each message to an
HTTP service, so that any HTTP service becomes a safe at-least-once
consumer. Each message is POSTed once to success per message id: its id is
the dedup key in the ledger (--store) and goes to the service as the
Idempotency-Key header; a redelivery of a message already answered 2xx is
acked without a request, and a copy of a message being handled (here or
by another consumer on the same store and scope) comes back after 1 s.
The delivery is acked only after the service answered 2xx and the ledger
recorded it.

  2xx                      success: recorded, then acked
  4xx but 408 and 429      permanent: dead-lettered at once (logged without
                           the payload; NATS Term, RabbitMQ nack without
                           requeue: to the queue's dead-letter exchange)
  5xx, 408, 429, no answer retried after a backoff (1 s doubling, at most
                           1 min) or the answer's Retry-After (at most 10m);
                           the --max-attempts-th failure dead-letters it

Each request: POST --to, body = the payload, headers
  Idempotency-Key: "<message id>"     (an RFC 8941 string)
  Content-Type: the message's Content-Type header, else
                application/octet-stream
  X-Idem-Subject: the subject (NATS) or routing key (RabbitMQ)
  X-Idem-Delivery: the broker's delivery count, from 1
  X-Idem-Header-<Name>: each other message header whose name is a token
                and whose value has no control characters

Flags:
  --from URL             the queue (required):
                           nats://[USER:PASS@]HOST:PORT?stream=S&consumer=C
                             a durable pull consumer C on stream S; created
                             when missing (explicit acks, unlimited
                             deliveries, ack wait 2 x --timeout, at least
                             30s), with &subject=F as its filter subject
                           amqp://USER:PASS@HOST:PORT/VHOST?queue=Q
                             an existing queue Q (amqps:// for TLS)
  --to URL               the http:// or https:// URL each message is POSTed
                         to (required)
  --store URL            where the ledger lives (default ` + defaultConsumeStore + `):
                            ` + storeURLHelp + `
  --migrate              apply the PostgreSQL schema migrations at start
  --scope NAME           the ledger scope of the message ids (default
                         messages); consumers sharing a store and a scope
                         dedup each other's messages
  --max-attempts N       failed attempts before a message is dead-lettered
                         (default 5)
  --workers N            messages handled at once (default 4)
  --timeout DURATION     longest request to --to; past it the attempt
                         failed and is retried (default 30s)
  --lease DURATION       how long an attempt holds its message id before
                         another consumer may take it over, renewed while
                         the request runs (default 30s)
  --window DURATION      how long a handled message id is remembered: a
                         redelivery later than that is POSTed again
                         (default 24h)
  --admin ADDR           where GET /metrics and GET /healthz answer; ""
                         for none (default "")
  --sweep-interval DURATION
                         how often expired records are removed from a mem:,
                         postgres:// or redis:// store (default 1m)
  --log-level LEVEL      debug, info, warn or error (default info); debug
                         logs every decision; logs never hold payloads

On SIGTERM or SIGINT it stops taking messages, lets the ones in hand finish
(their requests, records and acks), closes the store and exits 0. Exit
codes: 0 stopped by a signal, 1 the broker, the store or --to failed at
start or the broker closed the consumer, 2 bad flags.

` + envHelp + `
Example:
  idem consume --from 'nats://127.0.0.1:4222?stream=ORDERS&consumer=billing' \
      --to http://127.0.0.1:8080/orders/handle
  idem consume --from 'amqp://guest:guest@127.0.0.1:5672/?queue=orders' \
      --to http://127.0.0.1:8080/orders/handle --store postgres://idem@db/idem
`

type consumeOptions struct {
	from                          *brokerURL
	to                            *url.URL
	store, scope, admin, logLevel string
	migrate                       bool
	maxAttempts, workers          int
	timeout, lease, window, sweep time.Duration
}

// brokerURL is a parsed --from or --to broker URL.
type brokerURL struct {
	kind   string // "nats" or "amqp"
	dial   string // the URL to dial, without idem's parameters
	shown  string // the URL as it may be printed (no password)
	stream string // nats: the stream (--from)
	cons   string // nats: the durable consumer (--from)
	filter string // nats: the consumer's filter subject (--from)
	queue  string // amqp: the queue (--from)
	exch   string // amqp: the exchange (--to)
}

// parseBrokerURL parses a nats:// or amqp(s):// URL of flag name; params
// are the query parameters idem reads (the rest are refused).
func parseBrokerURL(flagName, raw string, params ...string) (*brokerURL, error) {
	if raw == "" {
		return nil, fmt.Errorf("--%s is required, like --%s 'nats://127.0.0.1:4222?...' or 'amqp://guest:guest@127.0.0.1:5672/?...': %w", flagName, flagName, idem.ErrInvalid)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("--%s does not parse as a URL: %w", flagName, idem.ErrInvalid)
	}
	b := &brokerURL{}
	switch u.Scheme {
	case "nats", "tls":
		b.kind = "nats"
	case "amqp", "amqps":
		b.kind = "amqp"
	default:
		return nil, fmt.Errorf("--%s %q: want a nats:// or amqp:// URL: %w", flagName, u.Redacted(), idem.ErrInvalid)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("--%s %q has no host: %w", flagName, u.Redacted(), idem.ErrInvalid)
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("--%s %q: no fragment: %w", flagName, u.Redacted(), idem.ErrInvalid)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("--%s %q: the query does not parse: %w", flagName, u.Redacted(), idem.ErrInvalid)
	}
	for name := range q {
		if !slices.Contains(params, name) {
			return nil, fmt.Errorf("--%s %q: unknown parameter %q (want %s): %w", flagName, u.Redacted(), name, strings.Join(params, ", "), idem.ErrInvalid)
		}
	}
	b.stream, b.cons, b.filter, b.queue, b.exch = q.Get("stream"), q.Get("consumer"), q.Get("subject"), q.Get("queue"), q.Get("exchange")
	u.RawQuery = ""
	b.dial = u.String()
	b.shown = u.Redacted()
	return b, nil
}

func runConsume(args []string, stdout, stderr io.Writer) int {
	return runLongLived("consume", args, stdout, stderr, parseConsumeFlags, runConsumer)
}

// parseConsumeFlags returns the options, or an exit code >= 0 when consume
// should stop here (help, usage error).
func parseConsumeFlags(args []string, stdout, stderr io.Writer) (*consumeOptions, int) {
	fs := flag.NewFlagSet("idem consume", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := &consumeOptions{}
	var from, to string
	fs.StringVar(&from, "from", "", "")
	fs.StringVar(&to, "to", "", "")
	fs.StringVar(&o.store, "store", defaultConsumeStore, "")
	fs.BoolVar(&o.migrate, "migrate", false, "")
	fs.StringVar(&o.scope, "scope", "messages", "")
	fs.IntVar(&o.maxAttempts, "max-attempts", 5, "")
	fs.IntVar(&o.workers, "workers", 4, "")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "")
	fs.DurationVar(&o.lease, "lease", idem.DefaultLease, "")
	fs.DurationVar(&o.window, "window", idem.DefaultWindow, "")
	fs.StringVar(&o.admin, "admin", "", "")
	fs.DurationVar(&o.sweep, "sweep-interval", time.Minute, "")
	fs.StringVar(&o.logLevel, "log-level", "info", "")
	if code := parseCommandFlags(fs, args, consumeUsage, stdout, stderr); code >= 0 {
		return nil, code
	}
	bad := func() error {
		var err error
		if o.from, err = parseBrokerURL("from", from, "stream", "consumer", "subject", "queue"); err != nil {
			return err
		}
		switch {
		case o.from.kind == "nats" && (o.from.stream == "" || o.from.cons == ""):
			return fmt.Errorf("--from %s: a nats:// URL needs ?stream=S&consumer=C", o.from.shown)
		case o.from.kind == "nats" && o.from.queue != "":
			return fmt.Errorf("--from %s: queue= is for amqp:// URLs", o.from.shown)
		case o.from.kind == "amqp" && o.from.queue == "":
			return fmt.Errorf("--from %s: an amqp:// URL needs ?queue=Q", o.from.shown)
		case o.from.kind == "amqp" && (o.from.stream != "" || o.from.cons != "" || o.from.filter != ""):
			return fmt.Errorf("--from %s: stream=, consumer= and subject= are for nats:// URLs", o.from.shown)
		}
		if to == "" {
			return errors.New("--to is required, like --to http://127.0.0.1:8080/handle")
		}
		if o.to, err = parseTarget(to); err != nil {
			return err
		}
		switch {
		case o.scope == "" || idem.ValidateKey(o.scope+"/attempts", "k") != nil:
			return fmt.Errorf("--scope %q is not a valid scope", o.scope)
		case o.maxAttempts < 1:
			return fmt.Errorf("--max-attempts must be at least 1, got %d", o.maxAttempts)
		case o.workers < 1 || o.workers > 1000:
			return fmt.Errorf("--workers must be 1 to 1000, got %d", o.workers)
		case o.timeout <= 0:
			return fmt.Errorf("--timeout must be positive, got %s", o.timeout)
		case o.lease <= 0:
			return fmt.Errorf("--lease must be positive, got %s", o.lease)
		case o.window <= 0:
			return fmt.Errorf("--window must be positive, got %s", o.window)
		case o.sweep <= 0:
			return fmt.Errorf("--sweep-interval must be positive, got %s", o.sweep)
		}
		_, err = parseLogLevel(o.logLevel)
		return err
	}()
	if bad != nil {
		fmt.Fprintf(stderr, "idem consume: %v\n", bad)
		return nil, 2
	}
	return o, -1
}

// parseTarget accepts an absolute http or https URL for --to.
func parseTarget(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("--to %q does not parse: %w", raw, idem.ErrInvalid)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("--to %q: want an http:// or https:// URL: %w", u.Redacted(), idem.ErrInvalid)
	case u.Host == "":
		return nil, fmt.Errorf("--to %q has no host: %w", u.Redacted(), idem.ErrInvalid)
	case u.Fragment != "":
		return nil, fmt.Errorf("--to %q: no fragment: %w", u.Redacted(), idem.ErrInvalid)
	}
	return u, nil
}

// consumeStats counts decisions for /metrics.
type consumeStats struct {
	mu        sync.Mutex
	decisions map[string]int64
	requests  map[string]int64 // by status class: "2xx", ..., "error"
}

func (s *consumeStats) decision(a messaging.Action) {
	s.mu.Lock()
	s.decisions[a.String()]++
	s.mu.Unlock()
}

func (s *consumeStats) request(class string) {
	s.mu.Lock()
	s.requests[class]++
	s.mu.Unlock()
}

func (s *consumeStats) write(w io.Writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintln(w, "# HELP idem_consume_decisions_total Deliveries settled, by decision.")
	fmt.Fprintln(w, "# TYPE idem_consume_decisions_total counter")
	for _, a := range []messaging.Action{messaging.Ack, messaging.AckDuplicate, messaging.Retry, messaging.DeadLetter} {
		fmt.Fprintf(w, "idem_consume_decisions_total{decision=%q} %d\n", a.String(), s.decisions[a.String()])
	}
	fmt.Fprintln(w, "# HELP idem_consume_requests_total Requests to --to, by answer.")
	fmt.Fprintln(w, "# TYPE idem_consume_requests_total counter")
	classes := make([]string, 0, len(s.requests))
	for c := range s.requests {
		classes = append(classes, c)
	}
	sort.Strings(classes)
	for _, c := range classes {
		fmt.Fprintf(w, "idem_consume_requests_total{answer=%q} %d\n", c, s.requests[c])
	}
}

// retryAfterKey carries a per-delivery slot for the Retry-After of --to's
// answer from the handler back to the decision.
type retryAfterKey struct{}

// forwarder POSTs messages to --to.
type forwarder struct {
	to     *url.URL
	client *http.Client
	stats  *consumeStats
}

// statusError is a non-2xx answer of --to.
type statusError struct{ status int }

func (e statusError) Error() string {
	return fmt.Sprintf("--to answered %d %s", e.status, http.StatusText(e.status))
}

// handle is the messaging.Handler: one POST, classified.
func (f *forwarder) handle(ctx context.Context, m *messaging.Message) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.to.String(), bytes.NewReader(m.Payload))
	if err != nil {
		return messaging.Permanent(fmt.Errorf("building the request: %w", err))
	}
	key, _ := idem.KeyFrom(ctx)
	if key == "" {
		key = m.ID
	}
	req.Header.Set(idemhttp.HeaderKey, idemhttp.QuoteKey(key))
	ctype := "application/octet-stream"
	for k, v := range m.Headers {
		if strings.EqualFold(k, "Content-Type") {
			if v != "" && headerValueOK(v) {
				ctype = v
			}
			continue
		}
		if validHeaderName(k) && headerValueOK(v) {
			req.Header.Set(consumeHeaderPrefix+k, v)
		}
	}
	req.Header.Set("Content-Type", ctype)
	if headerValueOK(m.Subject) {
		req.Header.Set("X-Idem-Subject", m.Subject)
	}
	req.Header.Set("X-Idem-Delivery", strconv.Itoa(m.Delivery))
	resp, err := f.client.Do(req)
	if err != nil {
		f.stats.request("error")
		return fmt.Errorf("POST %s: %w", f.to.Redacted(), err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	f.stats.request(strconv.Itoa(resp.StatusCode/100) + "xx")
	switch s := resp.StatusCode; {
	case s >= 200 && s < 300:
		return nil
	case s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || s >= 500:
		if slot, ok := ctx.Value(retryAfterKey{}).(*time.Duration); ok {
			*slot = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
		return statusError{s}
	default:
		return messaging.Permanent(statusError{s})
	}
}

// parseRetryAfter reads a Retry-After value (seconds or an HTTP date); 0
// when absent or unreadable, at most maxHonouredRetryAfter.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		d = time.Duration(min(n, int64(maxHonouredRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxHonouredRetryAfter)
}

// headerValueOK reports whether v can go in a header as it is.
func headerValueOK(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// runConsumer runs until ctx ends or the broker closes the consumer.
func runConsumer(ctx context.Context, o *consumeOptions, stdout, stderr io.Writer) error {
	logger, err := newLogger(stderr, o.logLevel)
	if err != nil {
		return err
	}

	store, err := openStore(ctx, o.store, &idem.OpenConfig{Migrate: o.migrate})
	if err != nil {
		return fmt.Errorf("--store %s: %w", redactURL(o.store), err)
	}
	defer func() {
		if err := store.Close(); err != nil {
			logger.Error("closing the store", "error", err)
		}
	}()
	ledger, err := idem.New(store, &idem.Config{Lease: o.lease, Window: o.window})
	if err != nil {
		return err
	}
	stats := &consumeStats{decisions: map[string]int64{}, requests: map[string]int64{}}
	fw := &forwarder{to: o.to, client: &http.Client{Timeout: o.timeout}, stats: stats}
	consumer, err := messaging.NewConsumer(ledger, fw.handle, &messaging.Config{
		Scope:       o.scope,
		MaxAttempts: o.maxAttempts,
		DeadLetter: func(_ context.Context, m *messaging.Message, attempts []messaging.Attempt, err error) error {
			logger.Warn("dead-lettered", "id", m.ID, "subject", m.Subject, "attempts", len(attempts), "error", err)
			return nil
		},
	})
	if err != nil {
		return err
	}
	// handle runs one delivery to its end even when ctx ends (a graceful
	// stop finishes what it has in hand), honours Retry-After and
	// rechecks a message in flight elsewhere after inFlightRecheck.
	handle := func(ctx context.Context, m *messaging.Message) messaging.Decision {
		var retryAfter time.Duration
		d := consumer.Handle(context.WithValue(context.WithoutCancel(ctx), retryAfterKey{}, &retryAfter), m)
		var inFlight *idem.InFlightError
		switch {
		case d.Action != messaging.Retry:
		case retryAfter > 0:
			d.Delay = retryAfter
		case errors.As(d.Err, &inFlight):
			// A twin of a message in hand here or at another consumer: ask
			// again soon rather than wait out the owner's whole lease.
			d.Delay = min(d.Delay, inFlightRecheck)
		}
		return d
	}
	onDecision := func(m *messaging.Message, d messaging.Decision, settleErr error) {
		stats.decision(d.Action)
		if settleErr != nil {
			logger.Warn("settling a delivery failed", "id", m.ID, "decision", d.Action.String(), "error", settleErr)
		}
		logger.Debug("delivery", "id", m.ID, "subject", m.Subject, "delivery", m.Delivery, "decision", d.Action.String(), "delay", d.Delay, "error", d.Err)
	}

	var adminSrv *http.Server
	if o.admin != "" {
		ln, err := net.Listen("tcp", o.admin)
		if err != nil {
			return fmt.Errorf("--admin %s: %w", o.admin, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = io.WriteString(w, "ok\n")
		})
		mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
			stats.write(w)
		})
		adminSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = adminSrv.Serve(ln) }()
		defer adminSrv.Close()
		fmt.Fprintf(stdout, "idem consume: admin on http://%s (/metrics, /healthz)\n", ln.Addr())
	}

	sweepDone := make(chan struct{})
	sweepCtx, stopSweep := context.WithCancel(ctx)
	defer func() { stopSweep(); <-sweepDone }()
	if _, ok := store.(*pebblestore.Store); ok {
		close(sweepDone)
	} else {
		go sweepPeriodically(sweepCtx, store, o.sweep, logger, sweepDone)
	}

	consuming, noted := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(noted)
		select {
		case <-ctx.Done():
			fmt.Fprintln(stdout, "idem consume: stopping: finishing the deliveries in hand")
		case <-consuming:
		}
	}()
	var consumeErr error
	switch o.from.kind {
	case "nats":
		consumeErr = consumeNATS(ctx, o, handle, onDecision, logger, stdout)
	case "amqp":
		consumeErr = consumeAMQP(ctx, o, handle, onDecision, stdout)
	}
	close(consuming)
	<-noted // the stopping line comes before the stopped line
	if errors.Is(consumeErr, context.Canceled) && ctx.Err() != nil {
		fmt.Fprintln(stdout, "idem consume: stopped; the deliveries in hand are settled")
		return nil
	}
	return consumeErr
}

// consumeNATS reads the durable pull consumer of --from.
func consumeNATS(ctx context.Context, o *consumeOptions, handle func(context.Context, *messaging.Message) messaging.Decision,
	onDecision func(*messaging.Message, messaging.Decision, error), logger *slog.Logger, stdout io.Writer) error {
	nc, err := nats.Connect(o.from.dial, nats.Name("idem consume"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("--from %s: %w", o.from.shown, err)
	}
	defer func() {
		// Acks are sent without waiting for the server: a round trip
		// before closing makes sure the last ones reached it.
		_ = nc.FlushTimeout(5 * time.Second)
		nc.Close()
	}()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("--from %s: %w", o.from.shown, err)
	}
	cons, err := js.Consumer(ctx, o.from.stream, o.from.cons)
	created := false
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		cons, err = js.CreateConsumer(ctx, o.from.stream, jetstream.ConsumerConfig{
			Durable:       o.from.cons,
			AckPolicy:     jetstream.AckExplicitPolicy,
			MaxDeliver:    -1,
			AckWait:       max(2*o.timeout, 30*time.Second),
			FilterSubject: o.from.filter,
		})
		created = true
	}
	if err != nil {
		return fmt.Errorf("--from %s: stream %q, consumer %q: %w", o.from.shown, o.from.stream, o.from.cons, err)
	}
	how := "existing"
	if created {
		how = "created"
	}
	fmt.Fprintf(stdout, "idem consume: consuming %s stream %s consumer %s (%s), posting to %s, store %s\n",
		o.from.shown, o.from.stream, o.from.cons, how, o.to.Redacted(), redactURL(o.store))
	return natsjs.Consume(ctx, cons, natsjs.HandlerFunc(handle), &natsjs.Options{
		Workers:     o.workers,
		MaxNakDelay: maxHonouredRetryAfter,
		OnDecision:  onDecision,
		OnError:     func(err error) { logger.Warn("nats", "error", err) },
	})
}

// consumeAMQP reads the queue of --from.
func consumeAMQP(ctx context.Context, o *consumeOptions, handle func(context.Context, *messaging.Message) messaging.Decision,
	onDecision func(*messaging.Message, messaging.Decision, error), stdout io.Writer) error {
	conn, err := amqp.Dial(o.from.dial)
	if err != nil {
		return fmt.Errorf("--from %s: %w", o.from.shown, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("--from %s: %w", o.from.shown, err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclarePassive(o.from.queue, true, false, false, false, nil); err != nil {
		return fmt.Errorf("--from %s: queue %q: %w", o.from.shown, o.from.queue, err)
	}
	fmt.Fprintf(stdout, "idem consume: consuming %s queue %s, posting to %s, store %s\n",
		o.from.shown, o.from.queue, o.to.Redacted(), redactURL(o.store))
	return rabbitmq.ConsumeFunc(ctx, ch, o.from.queue, handle, &rabbitmq.Options{
		Workers:    o.workers,
		OnDecision: onDecision,
	})
}
