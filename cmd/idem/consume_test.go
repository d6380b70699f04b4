package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem/broker/rabbitmq"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/messaging"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
)

// consumeTarget is the HTTP service behind idem consume in the tests: it
// counts requests and 2xx answers per Idempotency-Key, answers 400 to the
// key "bad" and 503 to the first request of every key in flaky.
type consumeTarget struct {
	srv   *httptest.Server
	flaky map[string]bool

	mu       sync.Mutex
	requests map[string]int
	ok       map[string]int
	headers  map[string]http.Header // of the last request per key
	badKeys  int                    // requests whose Idempotency-Key did not parse
}

func newConsumeTarget(t *testing.T, flaky map[string]bool) *consumeTarget {
	t.Helper()
	c := &consumeTarget{flaky: flaky, requests: map[string]int{}, ok: map[string]int{}, headers: map[string]http.Header{}}
	c.srv = httptest.NewServer(c)
	t.Cleanup(c.srv.Close)
	return c
}

func (c *consumeTarget) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.ReadAll(r.Body)
	key, present, err := idemhttp.ParseKey(r.Header)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !present || err != nil || r.Method != http.MethodPost {
		c.badKeys++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	c.requests[key]++
	c.headers[key] = r.Header.Clone()
	switch {
	case key == "bad":
		w.WriteHeader(http.StatusBadRequest)
	case c.flaky[key] && c.requests[key] == 1:
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
	default:
		c.ok[key]++
		w.WriteHeader(http.StatusOK)
	}
}

// check asserts: every good key answered 2xx exactly once, a flaky key
// requested exactly twice (503, then 200), the bad key requested once
// (dead-lettered, not retried).
func (c *consumeTarget) check(t *testing.T, keys []string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.badKeys != 0 {
		t.Errorf("%d requests without a parsable Idempotency-Key", c.badKeys)
	}
	for _, k := range keys {
		want := 1
		if c.flaky[k] {
			want = 2
		}
		if c.ok[k] != 1 || c.requests[k] != want {
			t.Errorf("key %s: %d 2xx answers in %d requests; want 1 in %d", k, c.ok[k], c.requests[k], want)
		}
	}
	if c.requests["bad"] != 1 || c.ok["bad"] != 0 {
		t.Errorf("key bad: %d requests, %d 2xx; want 1 request (dead-lettered, not retried)", c.requests["bad"], c.ok["bad"])
	}
	if len(c.requests) != len(keys)+1 {
		t.Errorf("%d keys requested, want %d", len(c.requests), len(keys)+1)
	}
}

// consumeProc is a running `idem consume`.
type consumeProc struct {
	*proc
	admin string
}

// startConsume starts `idem consume args...` and waits until it consumes.
func startConsume(t *testing.T, args ...string) *consumeProc {
	t.Helper()
	p, err := spawn(t, t.TempDir(), append([]string{"consume"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	cp := &consumeProc{proc: p}
	deadline := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				<-p.exited
				t.Fatalf("idem consume exited (%v) before consuming; stderr:\n%s", p.err, p.stderr)
			}
			if a, found := strings.CutPrefix(line, "idem consume: admin on http://"); found {
				cp.admin, _, _ = strings.Cut(a, " ")
			}
			if strings.HasPrefix(line, "idem consume: consuming ") {
				return cp
			}
		case <-deadline:
			t.Fatalf("idem consume did not start in 30s; stderr:\n%s", p.stderr)
		}
	}
}

// decisions reads the decision counters of /metrics.
func (c *consumeProc) decisions(t *testing.T) map[string]int {
	t.Helper()
	resp, err := http.Get("http://" + c.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), `idem_consume_decisions_total{decision="`)
		if !ok {
			continue
		}
		name, num, _ := strings.Cut(rest, `"} `)
		n, err := strconv.Atoi(num)
		if err != nil {
			t.Fatalf("metrics line %q", sc.Text())
		}
		out[name] = n
	}
	return out
}

// waitSettled polls /metrics until want deliveries were acked or
// dead-lettered.
func (c *consumeProc) waitSettled(t *testing.T, want int) map[string]int {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(90 * time.Second)
	for {
		d := c.decisions(t)
		if d["ack"]+d["ack-duplicate"]+d["dead-letter"] >= want {
			return d
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("only %v of %d deliveries settled after 90s; stderr:\n%s", d, want, c.stderr)
		case <-c.exited:
			t.Fatalf("idem consume exited (%v); stderr:\n%s", c.err, c.stderr)
		}
	}
}

// consumeKeys are the good messages' ids; every fourth is flaky.
func consumeKeys(n int) (keys []string, flaky map[string]bool) {
	flaky = map[string]bool{}
	for i := range n {
		k := fmt.Sprintf("m-%02d", i)
		keys = append(keys, k)
		if i%4 == 0 {
			flaky[k] = true
		}
	}
	return keys, flaky
}

// stopConsume sends SIGTERM and checks the clean exit.
func stopConsume(t *testing.T, c *consumeProc) {
	t.Helper()
	if code := c.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("idem consume exited %d after SIGTERM, want 0; stderr:\n%s", code, c.stderr)
	}
	var last string
	for line := range c.lines {
		last = line
	}
	if !strings.Contains(last, "stopped") {
		t.Errorf("last line %q, want the stop line", last)
	}
}

// checkDeadLetterLog: the 400 was logged as a dead letter, without the
// payload.
func checkDeadLetterLog(t *testing.T, stderr string) {
	t.Helper()
	if !strings.Contains(stderr, "dead-lettered") || !strings.Contains(stderr, "id=bad") {
		t.Errorf("no dead-letter log line for id=bad; stderr:\n%s", stderr)
	}
	if strings.Contains(stderr, "secret-payload") {
		t.Errorf("the log holds a payload; stderr:\n%s", stderr)
	}
}

// idem consume over NATS JetStream: every message, published twice (the
// second copy after the stream's duplicate window, so the stream holds
// both), reaches the service with one 2xx per key; flaky first answers are
// retried, the 400 is dead-lettered and not retried; SIGTERM exits 0.
func TestConsumeNATS(t *testing.T) {
	raw, js, stream := natsStream(t, "IDEMCONSUME", 100*time.Millisecond)
	ctx := context.Background()

	keys, flaky := consumeKeys(20)
	publish := func(id, body string, again bool) {
		msg := nats.NewMsg(stream + ".orders")
		msg.Data = []byte(body)
		msg.Header.Set("Content-Type", "application/json")
		msg.Header.Set("Tenant", "acme")
		for {
			ack, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(id))
			if err != nil {
				t.Fatal(err)
			}
			if !ack.Duplicate {
				return
			}
			if !again {
				t.Fatalf("first publish of %s was a duplicate", id)
			}
			// Still inside the 100 ms duplicate window: the stream stored
			// nothing; publish again until it stores the copy.
		}
	}
	for _, k := range keys {
		publish(k, `{"order":"`+k+`"}`, false)
	}
	publish("bad", "secret-payload", false)
	for _, k := range keys {
		publish(k, `{"order":"`+k+`"}`, true)
	}
	publish("bad", "secret-payload", true)
	total := 2 * (len(keys) + 1)
	if info, err := js.Stream(ctx, stream); err != nil || info.CachedInfo().State.Msgs != uint64(total) {
		t.Fatalf("stream holds %v messages (%v), want %d", info.CachedInfo().State.Msgs, err, total)
	}

	target := newConsumeTarget(t, flaky)
	from := raw + "?stream=" + stream + "&consumer=idemtest"
	c := startConsume(t, "--from", from, "--to", target.srv.URL+"/handle", "--store", "mem:",
		"--workers", "4", "--admin", "127.0.0.1:0", "--log-level", "debug")
	d := c.waitSettled(t, total)
	stopConsume(t, c)

	target.check(t, keys)
	if d["ack"] != len(keys) || d["dead-letter"] != 1 || d["ack-duplicate"] != len(keys)+1 {
		t.Errorf("decisions %v; want %d ack, 1 dead-letter, %d ack-duplicate", d, len(keys), len(keys)+1)
	}
	if d["retry"] < len(flaky) {
		t.Errorf("decisions %v; want at least %d retries (the flaky first answers)", d, len(flaky))
	}
	checkDeadLetterLog(t, c.stderr.String())
	h := target.headers["m-01"]
	if h.Get("Content-Type") != "application/json" || h.Get("X-Idem-Header-Tenant") != "acme" ||
		h.Get("X-Idem-Subject") != stream+".orders" || h.Get("Idempotency-Key") != `"m-01"` {
		t.Errorf("request headers %v; want the message's Content-Type, X-Idem-Header-Tenant, X-Idem-Subject and the quoted key", h)
	}

	// The consumer it created is durable: nothing left pending or unacked.
	cons, err := js.Consumer(ctx, stream, "idemtest")
	if err != nil {
		t.Fatal(err)
	}
	info := cons.CachedInfo()
	if info.NumPending != 0 || info.NumAckPending != 0 || info.Config.AckPolicy != jetstream.AckExplicitPolicy || info.Config.MaxDeliver != -1 {
		t.Errorf("consumer: %d pending, %d unacked, ack policy %v, max deliver %d; want 0, 0, explicit, -1",
			info.NumPending, info.NumAckPending, info.Config.AckPolicy, info.Config.MaxDeliver)
	}
}

// idem consume over RabbitMQ: the same, on a quorum queue with a
// dead-letter queue, which ends up holding the 400 message only.
func TestConsumeRabbitMQ(t *testing.T) {
	raw, conn, ch, queue := rabbitQueue(t, "idem-consume", true)
	pubCh, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(pubCh)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	keys, flaky := consumeKeys(20)
	for range 2 {
		for _, k := range keys {
			if err := pub.Publish(ctx, "", &messaging.Message{ID: k, Subject: queue, Payload: []byte(`{"order":"` + k + `"}`),
				Headers: map[string]string{"Content-Type": "application/json", "Tenant": "acme"}}); err != nil {
				t.Fatal(err)
			}
		}
		if err := pub.Publish(ctx, "", &messaging.Message{ID: "bad", Subject: queue, Payload: []byte("secret-payload")}); err != nil {
			t.Fatal(err)
		}
	}
	total := 2 * (len(keys) + 1)

	target := newConsumeTarget(t, flaky)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.RawQuery = "queue=" + url.QueryEscape(queue)
	c := startConsume(t, "--from", u.String(), "--to", target.srv.URL+"/handle", "--store", "mem:",
		"--workers", "4", "--admin", "127.0.0.1:0")
	d := c.waitSettled(t, total)
	stopConsume(t, c)

	target.check(t, keys)
	if d["ack"] != len(keys) || d["dead-letter"] != 1 || d["ack-duplicate"] != len(keys)+1 {
		t.Errorf("decisions %v; want %d ack, 1 dead-letter, %d ack-duplicate", d, len(keys), len(keys)+1)
	}
	checkDeadLetterLog(t, c.stderr.String())
	if h := target.headers["m-01"]; h.Get("Content-Type") != "application/json" || h.Get("X-Idem-Header-Tenant") != "acme" || h.Get("X-Idem-Subject") != queue {
		t.Errorf("request headers %v; want the message's Content-Type, X-Idem-Header-Tenant and X-Idem-Subject", h)
	}
	if h := target.headers["bad"]; h.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("Content-Type of a message without one: %q, want application/octet-stream", h.Get("Content-Type"))
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != 0 {
		t.Errorf("%d messages left in %s after the stop, want 0", q.Messages, queue)
	}
	dead, ok, err := ch.Get(queue+".dead", true)
	if err != nil || !ok || dead.MessageId != "bad" || string(dead.Body) != "secret-payload" {
		t.Errorf("dead-letter queue: %v %v %q; want the bad message", err, ok, dead.MessageId)
	}
	if _, more, _ := ch.Get(queue+".dead", true); more {
		t.Error("more than one message in the dead-letter queue")
	}
}

// Bad flags exit 2 naming the flag; --help exits 0.
func TestConsumeRelayUsage(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"consume", "--to", "http://x"}, "--from is required"},
		{[]string{"consume", "--from", "kafka://x:1", "--to", "http://x"}, "want a nats:// or amqp:// URL"},
		{[]string{"consume", "--from", "nats://x:1?stream=S", "--to", "http://x"}, "needs ?stream=S&consumer=C"},
		{[]string{"consume", "--from", "amqp://x:1/", "--to", "http://x"}, "needs ?queue=Q"},
		{[]string{"consume", "--from", "amqp://x:1/?queue=q&exchange=e", "--to", "http://x"}, `unknown parameter "exchange"`},
		{[]string{"consume", "--from", "amqp://x:1/?queue=q", "--to", "ftp://x"}, "want an http:// or https:// URL"},
		{[]string{"consume", "--from", "amqp://x:1/?queue=q", "--to", "http://x", "--max-attempts", "0"}, "--max-attempts"},
		{[]string{"consume", "--from", "amqp://x:1/?queue=q", "--to", "http://x", "--workers", "0"}, "--workers"},
		{[]string{"relay", "--to", "nats://x:1"}, "--store is required"},
		{[]string{"relay", "--store", "postgres://x/db", "--to", "nats://x:1?exchange=e"}, "exchange= is for amqp://"},
		{[]string{"relay", "--store", "postgres://x/db", "--to", "http://x"}, "want a nats:// or amqp:// URL"},
		{[]string{"relay", "--store", "postgres://x/db", "--to", "nats://x:1", "--interval", "0s"}, "--interval"},
	} {
		_, errOut, code := runIdem(t, dir, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("idem %s: exit %d, stderr %q; want 2 and %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
	for _, cmd := range []string{"consume", "relay"} {
		out, _, code := runIdem(t, dir, cmd, "--help")
		if code != 0 || !strings.HasPrefix(out, "Usage: idem "+cmd) {
			t.Errorf("idem %s --help: exit %d, %q", cmd, code, out)
		}
	}
	// A relay needs PostgreSQL: another store is refused at start.
	_, errOut, code := runIdem(t, dir, "relay", "--store", "mem:", "--to", "nats://127.0.0.1:1")
	if code != 1 || !strings.Contains(errOut, "want a postgres:// URL") {
		t.Errorf("relay on mem:: exit %d, stderr %q; want 1 asking for postgres://", code, errOut)
	}
}

// SIGTERM while a request is in flight: the request finishes, its
// delivery is recorded and acked, then idem consume exits 0.
func TestConsumeStopFinishesInFlight(t *testing.T) {
	raw, js, stream := natsStream(t, "IDEMCONSUMESTOP", 0)
	ctx := context.Background()
	if _, err := js.Publish(ctx, stream+".x", []byte("slow"), jetstream.WithMsgID("slow-1")); err != nil {
		t.Fatal(err)
	}

	entered, release := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	answered := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		mu.Lock()
		answered++
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	c := startConsume(t, "--from", raw+"?stream="+stream+"&consumer=stop", "--to", srv.URL, "--store", "mem:")
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatalf("no request in 30s; stderr:\n%s", c.stderr)
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if line := c.next(t); !strings.Contains(line, "stopping: finishing the deliveries in hand") {
		t.Fatalf("after SIGTERM: %q, want the stopping line", line)
	}
	close(release)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("idem consume still running 30s after SIGTERM; stderr:\n%s", c.stderr)
	}
	if code := c.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, c.stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	// The server applies an ack after it read it: ask until it shows (or
	// a deadline passes).
	var info *jetstream.ConsumerInfo
	for deadline := time.Now().Add(10 * time.Second); ; {
		cons, err := js.Consumer(ctx, stream, "stop")
		if err != nil {
			t.Fatal(err)
		}
		info = cons.CachedInfo()
		if info.NumAckPending == 0 && info.AckFloor.Stream == 1 || time.Now().After(deadline) {
			break
		}
		<-time.After(20 * time.Millisecond)
	}
	if answered != 1 || info.NumAckPending != 0 || info.NumPending != 0 || info.AckFloor.Stream != 1 {
		t.Errorf("%d answers; consumer %d unacked, %d pending, ack floor %d; want 1 answer and the message acked",
			answered, info.NumAckPending, info.NumPending, info.AckFloor.Stream)
	}
}

// The broker closes the consumer (its queue is deleted): idem consume
// exits 1 saying so.
func TestConsumeBrokerClosedExits1(t *testing.T) {
	raw, _, ch, queue := rabbitQueue(t, "idem-consume-closed", false)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.RawQuery = "queue=" + url.QueryEscape(queue)
	c := startConsume(t, "--from", u.String(), "--to", "http://127.0.0.1:1/", "--store", "mem:")
	// It prints its start line just before it registers with the broker:
	// wait until the queue has its consumer.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum})
		if err != nil {
			t.Fatal(err)
		}
		if q.Consumers == 1 {
			break
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("no consumer on %s after 30s; stderr:\n%s", queue, c.stderr)
		}
	}
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("idem consume still running 30s after its queue was deleted; stderr:\n%s", c.stderr)
	}
	if code := c.cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(c.stderr.String(), "consumer closed by the broker") {
		t.Errorf("exit %d, stderr:\n%s\nwant 1 and the broker's close", code, c.stderr)
	}
	// A queue that does not exist: exit 1 at start.
	_, errOut, code := runIdem(t, t.TempDir(), "consume", "--from", u.String(), "--to", "http://127.0.0.1:1/", "--store", "mem:")
	if code != 1 || !strings.Contains(errOut, "NOT_FOUND") {
		t.Errorf("missing queue: exit %d, stderr %q; want 1 and NOT_FOUND", code, errOut)
	}
}

// natsStream connects to the NATS server of the tests and makes a memory
// stream named prefix_N taking prefix_N.> (with duplicate window dup when
// positive), deleted at the end of the test.
func natsStream(t *testing.T, prefix string, dup time.Duration) (raw string, js jetstream.JetStream, stream string) {
	t.Helper()
	raw = servicetest.NATS.Need(t)
	nc, err := nats.Connect(raw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	stream = fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano())
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: stream, Subjects: []string{stream + ".>"},
		Storage: jetstream.MemoryStorage, Duplicates: dup}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), stream) })
	return raw, js, stream
}
