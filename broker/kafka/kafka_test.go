package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The tests run against franz-go's in-process kfake cluster: there is no
// Kafka broker on this machine. waitTimeout only bounds a test that hangs;
// nothing waits on it to synchronise.
const waitTimeout = 30 * time.Second

func newCluster(t *testing.T, partitions int32, topics ...string) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topics...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

func newLedger(t *testing.T) *idem.Ledger {
	t.Helper()
	l, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// groupClient is a consumer-group client with the options Consume needs.
func groupClient(t *testing.T, addrs []string, group, topic string, extra ...kgo.Opt) *kgo.Client {
	t.Helper()
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(addrs...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchMaxWait(100 * time.Millisecond),
	}, extra...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func producer(t *testing.T, addrs []string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func publish(t *testing.T, cl *kgo.Client, topic string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := Publish(context.Background(), cl, topic, id, []byte("payload of "+id), map[string]string{"tenant": "t1"}); err != nil {
			t.Fatal(err)
		}
	}
}

// event is one decision as Options.OnDecision saw it.
type event struct {
	id        string
	partition int32
	offset    int64
	action    messaging.Action
	err       error
}

// recorder counts handler runs per message id and collects decisions.
type recorder struct {
	mu     sync.Mutex
	runs   map[string]int
	ran    []string          // message ids in the order the handler succeeded
	ranAt  map[int32][]int64 // offsets per partition in the order the handler ran
	fail   func(id string, run int) error
	events chan event
}

func newRecorder() *recorder {
	return &recorder{runs: map[string]int{}, ranAt: map[int32][]int64{}, events: make(chan event, 1000)}
}

func (r *recorder) handler(ctx context.Context, m *messaging.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.runs[m.ID]++
	if r.fail != nil {
		if err := r.fail(m.ID, r.runs[m.ID]); err != nil {
			return err
		}
	}
	r.ran = append(r.ran, m.ID)
	return nil
}

func (r *recorder) onDecision(rec *kgo.Record, m *messaging.Message, d messaging.Decision) {
	if d.Action == messaging.Ack {
		r.mu.Lock()
		r.ranAt[rec.Partition] = append(r.ranAt[rec.Partition], rec.Offset)
		r.mu.Unlock()
	}
	r.events <- event{m.ID, rec.Partition, rec.Offset, d.Action, d.Err}
}

// await collects decisions until n of them were acked.
func (r *recorder) await(t *testing.T, n int) []event {
	t.Helper()
	var got []event
	acked := 0
	timeout := time.After(waitTimeout)
	for acked < n {
		select {
		case e := <-r.events:
			got = append(got, e)
			if e.action.Acked() {
				acked++
			}
		case <-timeout:
			t.Fatalf("after %v: %d of %d decisions acked: %+v", waitTimeout, acked, n, got)
		}
	}
	return got
}

func (r *recorder) snapshotRuns() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.runs))
	for k, v := range r.runs {
		out[k] = v
	}
	return out
}

// start runs Consume in a goroutine; stop cancels it and returns its error.
func start(cl *kgo.Client, c *messaging.Consumer, o *Options) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Consume(ctx, cl, c, o) }()
	return func() error { cancel(); return <-done }
}

// committed returns the group's committed offset per partition of topic.
func committed(t *testing.T, addrs []string, group, topic string, partitions int32) []int64 {
	t.Helper()
	cl := producer(t, addrs)
	resps, err := kadm.NewClient(cl).FetchOffsets(context.Background(), group)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int64, partitions)
	for p := range partitions {
		out[p] = -1
		if o, ok := resps.Lookup(topic, p); ok {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			out[p] = o.At
		}
	}
	return out
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%02d", prefix, i+1)
	}
	return out
}

func actions(es []event) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.id + ":" + e.action.String()
	}
	return out
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMessage(t *testing.T) {
	r := NewRecord("orders", "m1", []byte("body"), map[string]string{"tenant": "t1", HeaderMessageID: "spoofed"})
	r.Partition, r.Offset = 2, 7
	m := Message(r)
	if m.ID != "m1" || m.Subject != "orders" || string(m.Payload) != "body" || m.Delivery != 0 {
		t.Fatalf("message %+v", m)
	}
	if len(m.Headers) != 2 || m.Headers["tenant"] != "t1" || m.Headers[HeaderMessageID] != "m1" {
		t.Fatalf("headers %v", m.Headers)
	}
	if string(r.Key) != "m1" {
		t.Fatalf("record key %q, want the id", r.Key)
	}
	bare := &kgo.Record{Topic: "orders", Partition: 2, Offset: 7, Value: []byte("x")}
	if m := Message(bare); m.ID != "orders/2/7" || m.Headers != nil {
		t.Fatalf("record without id header: %+v", m)
	}
}

func TestInvalid(t *testing.T) {
	ctx := context.Background()
	c, err := messaging.NewConsumer(newLedger(t), func(context.Context, *messaging.Message) error { return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers("127.0.0.1:1"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for name, err := range map[string]error{
		"nil client":     Consume(ctx, nil, c, nil),
		"nil consumer":   Consume(ctx, cl, nil, nil),
		"negative poll":  Consume(ctx, cl, c, &Options{MaxPollRecords: -1}),
		"publish no id":  Publish(ctx, cl, "orders", "", nil, nil),
		"publish no top": Publish(ctx, cl, "", "m1", nil, nil),
		"publish nil cl": Publish(ctx, nil, "orders", "m1", nil, nil),
	} {
		if !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("%s: %v, want idem.ErrInvalid", name, err)
		}
	}
}

func TestAck(t *testing.T) {
	addrs := newCluster(t, 1, "orders")
	publish(t, producer(t, addrs), "orders", ids("m", 5)...)
	rec := newRecorder()
	var got []*messaging.Message
	var mu sync.Mutex
	c, err := messaging.NewConsumer(newLedger(t), func(ctx context.Context, m *messaging.Message) error {
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
		return rec.handler(ctx, m)
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl := groupClient(t, addrs, "g", "orders")
	defer cl.Close()
	stop := start(cl, c, &Options{OnDecision: rec.onDecision})
	es := rec.await(t, 5)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Consume returned %v, want context.Canceled", err)
	}
	want := []string{"m01:ack", "m02:ack", "m03:ack", "m04:ack", "m05:ack"}
	if !equal(actions(es), want) {
		t.Fatalf("decisions %v, want %v", actions(es), want)
	}
	for i, m := range got {
		if m.ID != want[i][:3] || m.Subject != "orders" || string(m.Payload) != "payload of "+m.ID || m.Headers["tenant"] != "t1" || m.Delivery != 0 {
			t.Fatalf("message %d: %+v", i, m)
		}
	}
	if c := committed(t, addrs, "g", "orders", 1); c[0] != 5 {
		t.Fatalf("committed %v, want [5]", c)
	}
}

func TestDuplicateProducedTwice(t *testing.T) {
	addrs := newCluster(t, 1, "orders")
	publish(t, producer(t, addrs), "orders", "m01", "m02", "m01", "m03")
	rec := newRecorder()
	c, err := messaging.NewConsumer(newLedger(t), rec.handler, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl := groupClient(t, addrs, "g", "orders")
	defer cl.Close()
	stop := start(cl, c, &Options{OnDecision: rec.onDecision})
	es := rec.await(t, 4)
	stop()
	want := []string{"m01:ack", "m02:ack", "m01:ack-duplicate", "m03:ack"}
	if !equal(actions(es), want) {
		t.Fatalf("decisions %v, want %v", actions(es), want)
	}
	if runs := rec.snapshotRuns(); runs["m01"] != 1 || runs["m02"] != 1 || runs["m03"] != 1 || len(runs) != 3 {
		t.Fatalf("handler runs %v, want once each", runs)
	}
	if c := committed(t, addrs, "g", "orders", 1); c[0] != 4 {
		t.Fatalf("committed %v, want [4]: both copies of m01", c)
	}
}

func TestRetryKeepsPartitionOrder(t *testing.T) {
	for _, backoff := range []time.Duration{0, 20 * time.Millisecond} {
		t.Run(fmt.Sprint("backoff=", backoff), func(t *testing.T) {
			addrs := newCluster(t, 1, "orders")
			publish(t, producer(t, addrs), "orders", ids("m", 6)...)
			rec := newRecorder()
			var attempts []string
			rec.fail = func(id string, run int) error {
				attempts = append(attempts, fmt.Sprintf("%s#%d", id, run))
				if id == "m03" && run <= 2 {
					return errors.New("downstream unavailable")
				}
				return nil
			}
			c, err := messaging.NewConsumer(newLedger(t), rec.handler, &messaging.Config{
				Backoff: func(int) time.Duration { return backoff },
			})
			if err != nil {
				t.Fatal(err)
			}
			cl := groupClient(t, addrs, "g", "orders")
			defer cl.Close()
			stop := start(cl, c, &Options{OnDecision: rec.onDecision})
			es := rec.await(t, 6)
			stop()
			want := []string{"m01:ack", "m02:ack", "m03:retry", "m03:retry", "m03:ack", "m04:ack", "m05:ack", "m06:ack"}
			if !equal(actions(es), want) {
				t.Fatalf("decisions %v, want %v", actions(es), want)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			wantAttempts := []string{"m01#1", "m02#1", "m03#1", "m03#2", "m03#3", "m04#1", "m05#1", "m06#1"}
			if !equal(attempts, wantAttempts) {
				t.Fatalf("handler attempts %v, want %v", attempts, wantAttempts)
			}
			if !equal(rec.ran, ids("m", 6)) {
				t.Fatalf("handled in order %v", rec.ran)
			}
			if c := committed(t, addrs, "g", "orders", 1); c[0] != 6 {
				t.Fatalf("committed %v, want [6]", c)
			}
		})
	}
}

func TestDeadLetter(t *testing.T) {
	addrs := newCluster(t, 1, "orders", "orders.dlq")
	prod := producer(t, addrs)
	publish(t, prod, "orders", "m01", "m02", "m03", "m02")
	rec := newRecorder()
	rec.fail = func(id string, run int) error {
		if id == "m02" {
			return messaging.Permanent(errors.New("malformed order"))
		}
		return nil
	}
	c, err := messaging.NewConsumer(newLedger(t), rec.handler, &messaging.Config{DeadLetter: DeadLetterTo(prod, "orders.dlq")})
	if err != nil {
		t.Fatal(err)
	}
	// The adapter's hook fails once: the record is retried, and its
	// redelivery (an AckDuplicate of the dead-lettered key) runs it again.
	var hookCalls []string
	hook := func(ctx context.Context, r *kgo.Record, d messaging.Decision) error {
		hookCalls = append(hookCalls, fmt.Sprintf("%d:%s", r.Offset, d.Action))
		if len(hookCalls) == 1 {
			return errors.New("alerting down")
		}
		return nil
	}
	cl := groupClient(t, addrs, "g", "orders")
	defer cl.Close()
	stop := start(cl, c, &Options{OnDecision: rec.onDecision, DeadLetter: hook, MaxRetryDelay: 10 * time.Millisecond})
	es := rec.await(t, 4)
	stop()
	want := []string{"m01:ack", "m02:retry", "m02:ack-duplicate", "m03:ack", "m02:ack-duplicate"}
	if !equal(actions(es), want) {
		t.Fatalf("decisions %v, want %v", actions(es), want)
	}
	if wantHook := []string{"1:dead-letter", "1:ack-duplicate", "3:ack-duplicate"}; !equal(hookCalls, wantHook) {
		t.Fatalf("hook calls %v, want %v", hookCalls, wantHook)
	}
	if runs := rec.snapshotRuns(); runs["m02"] != 1 {
		t.Fatalf("m02 handled %d times, want 1 (dead-lettered, never re-run)", runs["m02"])
	}
	if c := committed(t, addrs, "g", "orders", 1); c[0] != 4 {
		t.Fatalf("committed %v, want [4]", c)
	}
	// The dead-letter topic got one copy of m02 from DeadLetterTo.
	dlq, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics("orders.dlq"))
	if err != nil {
		t.Fatal(err)
	}
	defer dlq.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	fs := dlq.PollFetches(ctx)
	if err := fs.Err0(); err != nil {
		t.Fatal(err)
	}
	recs := fs.Records()
	if len(recs) != 1 {
		t.Fatalf("%d dead-letter records, want 1", len(recs))
	}
	m := Message(recs[0])
	if m.ID != "m02" || string(m.Payload) != "payload of m02" || m.Headers[HeaderDeadLetterError] != "malformed order" ||
		m.Headers[HeaderDeadLetterSubject] != "orders" || m.Headers[HeaderDeadLetterAttempts] != "1" || m.Headers["tenant"] != "t1" {
		t.Fatalf("dead-letter record %+v", m)
	}
}

// A consumer handles a batch and stops before its commit (a crash between
// the handlers' effects and the commit); a new client of the group gets
// the uncommitted records again and acks them as duplicates.
func TestRestartAfterCrashBeforeCommit(t *testing.T) {
	const n = 20
	addrs := newCluster(t, 1, "orders")
	publish(t, producer(t, addrs), "orders", ids("m", n)...)
	ledger := newLedger(t)
	rec := newRecorder()
	c, err := messaging.NewConsumer(ledger, rec.handler, nil)
	if err != nil {
		t.Fatal(err)
	}

	cl1 := groupClient(t, addrs, "g", "orders")
	crash := func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.ran) >= n/2
	}
	err = Consume(context.Background(), cl1, c, &Options{MaxPollRecords: 4, OnDecision: rec.onDecision, crashBeforeCommit: crash})
	if !errors.Is(err, errCrashed) {
		t.Fatalf("first consumer returned %v, want the simulated crash", err)
	}
	// Leave the group without committing the last batch. (Close's leave
	// waits for the poll to allow the rebalance, as BlockRebalanceOnPoll
	// asks; a crashed process would instead drop out after its session
	// timeout, with the same uncommitted offsets.)
	cl1.AllowRebalance()
	cl1.Close()
	handled := len(rec.snapshotRuns())
	first := len(rec.events)
	for range first {
		<-rec.events
	}
	commit := committed(t, addrs, "g", "orders", 1)[0]
	if handled < n/2 || commit >= int64(handled) || commit < 0 {
		t.Fatalf("after the crash: %d handled, %d committed; want a handled batch past the commit", handled, commit)
	}

	cl2 := groupClient(t, addrs, "g", "orders")
	defer cl2.Close()
	stop := start(cl2, c, &Options{MaxPollRecords: 4, OnDecision: rec.onDecision})
	es := rec.await(t, n-int(commit))
	stop()
	var dups, acks int
	for i, e := range es {
		if e.offset != commit+int64(i) {
			t.Fatalf("redelivery %d at offset %d, want %d", i, e.offset, commit+int64(i))
		}
		switch e.action {
		case messaging.AckDuplicate:
			dups++
		case messaging.Ack:
			acks++
		default:
			t.Fatalf("decision %+v", e)
		}
	}
	if dups != handled-int(commit) || acks != n-handled {
		t.Fatalf("after the restart: %d duplicates, %d acks; want %d and %d", dups, acks, handled-int(commit), n-handled)
	}
	runs := rec.snapshotRuns()
	for _, id := range ids("m", n) {
		if runs[id] != 1 {
			t.Fatalf("handler of %s ran %d times, want 1 (runs %v)", id, runs[id], runs)
		}
	}
	if c := committed(t, addrs, "g", "orders", 1); c[0] != n {
		t.Fatalf("committed %v, want [%d]", c, n)
	}
	t.Logf("first consumer: %d handled, %d committed; second: %d duplicates, %d acks", handled, commit, dups, acks)
}

// Two members of one group share four partitions; each has its own
// messaging.Consumer over one ledger.
func TestTwoMembersSeveralPartitions(t *testing.T) {
	const n, partitions = 60, 4
	addrs := newCluster(t, partitions, "orders")
	ledger := newLedger(t)
	rec := newRecorder()
	var stops []func() error
	handledBy := make([]map[string]bool, 2)
	var hmu sync.Mutex
	for i := range 2 {
		handledBy[i] = map[string]bool{}
		c, err := messaging.NewConsumer(ledger, func(ctx context.Context, m *messaging.Message) error {
			hmu.Lock()
			handledBy[i][m.ID] = true
			hmu.Unlock()
			return rec.handler(ctx, m)
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		assigned := make(chan int, 16)
		cl := groupClient(t, addrs, "g", "orders", kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			assigned <- len(m["orders"])
		}))
		defer cl.Close()
		stops = append(stops, start(cl, c, &Options{MaxPollRecords: 5, OnDecision: rec.onDecision}))
		// Wait until this member was assigned partitions: the second
		// member's join splits the four between the two.
		timeout := time.After(waitTimeout)
		for got := 0; got == 0; {
			select {
			case got = <-assigned:
			case <-timeout:
				t.Fatal("member not assigned")
			}
		}
	}
	publish(t, producer(t, addrs), "orders", ids("m", n)...)
	es := rec.await(t, n)
	for _, stop := range stops {
		if err := stop(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Consume returned %v", err)
		}
	}
	seen := map[string]bool{}
	for _, e := range es {
		if e.action != messaging.Ack && e.action != messaging.AckDuplicate {
			t.Fatalf("decision %+v", e)
		}
		seen[e.id] = true
	}
	runs := rec.snapshotRuns()
	for _, id := range ids("m", n) {
		if runs[id] != 1 || !seen[id] {
			t.Fatalf("%s: handler ran %d times, acked %v", id, runs[id], seen[id])
		}
	}
	rec.mu.Lock()
	var total int64
	for p, offs := range rec.ranAt {
		for i := 1; i < len(offs); i++ {
			if offs[i] <= offs[i-1] {
				t.Fatalf("partition %d handled out of order: %v", p, offs)
			}
		}
		total += int64(len(offs))
	}
	rec.mu.Unlock()
	c := committed(t, addrs, "g", "orders", partitions)
	var sum int64
	for _, o := range c {
		sum += o
	}
	if total != n || sum != n {
		t.Fatalf("handled %d, committed %v (sum %d), want %d", total, c, sum, n)
	}
	hmu.Lock()
	defer hmu.Unlock()
	if len(handledBy[0]) == 0 || len(handledBy[1]) == 0 || len(handledBy[0])+len(handledBy[1]) != n {
		t.Fatalf("member 1 handled %d, member 2 %d; want both, %d in all", len(handledBy[0]), len(handledBy[1]), n)
	}
	t.Logf("member 1 handled %d, member 2 %d; committed %v", len(handledBy[0]), len(handledBy[1]), c)
}

// A retry holds back its own partition only: the other partition's
// records are handled while it waits.
func TestRetryHoldsOnlyItsPartition(t *testing.T) {
	addrs := newCluster(t, 2, "orders")
	prod, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	for _, p := range []struct {
		id        string
		partition int32
	}{{"a01", 0}, {"a02", 0}, {"b01", 1}, {"b02", 1}, {"b03", 1}} {
		r := NewRecord("orders", p.id, []byte(p.id), nil)
		r.Partition = p.partition
		if err := prod.ProduceSync(context.Background(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	rec := newRecorder()
	rec.fail = func(id string, run int) error {
		if id == "a01" && rec.runs["b03"] == 0 {
			return errors.New("waiting for b03")
		}
		return nil
	}
	c, err := messaging.NewConsumer(newLedger(t), rec.handler, &messaging.Config{
		MaxAttempts: 1000,
		Backoff:     func(int) time.Duration { return 5 * time.Millisecond },
	})
	if err != nil {
		t.Fatal(err)
	}
	cl := groupClient(t, addrs, "g", "orders")
	defer cl.Close()
	stop := start(cl, c, &Options{OnDecision: rec.onDecision})
	rec.await(t, 5)
	stop()
	rec.mu.Lock()
	ran := append([]string(nil), rec.ran...)
	rec.mu.Unlock()
	pos := map[string]int{}
	for i, id := range ran {
		pos[id] = i
	}
	if len(ran) != 5 || pos["b03"] > pos["a01"] || pos["a01"] > pos["a02"] || pos["b01"] > pos["b02"] || pos["b02"] > pos["b03"] {
		t.Fatalf("handled in order %v: want b01 b02 b03 before a01, a01 before a02", ran)
	}
	if c := committed(t, addrs, "g", "orders", 2); c[0] != 2 || c[1] != 3 {
		t.Fatalf("committed %v, want [2 3]", c)
	}
}

// A second member joins while the first is consuming: the first member's
// handler holds its batch until the rebalance is blocked on it
// (BlockRebalanceOnPoll), so the partitions move mid-stream, after that
// batch's commit. Every message is handled once and committed.
func TestMemberJoinsMidStream(t *testing.T) {
	const n, partitions = 90, 4
	addrs := newCluster(t, partitions, "orders")
	publish(t, producer(t, addrs), "orders", ids("m", n)...)
	ledger := newLedger(t)
	rec := newRecorder()
	joinNow, blocked := make(chan struct{}), make(chan struct{})
	var joinOnce, blockOnce sync.Once
	byMember := [2]map[string]bool{{}, {}}
	newMember := func(i int) *messaging.Consumer {
		c, err := messaging.NewConsumer(ledger, func(ctx context.Context, m *messaging.Message) error {
			rec.mu.Lock()
			byMember[i][m.ID] = true
			tenth := len(rec.ran) == 9
			rec.mu.Unlock()
			if i == 0 && tenth {
				joinOnce.Do(func() { close(joinNow) })
				select {
				case <-blocked:
				case <-time.After(waitTimeout):
					t.Error("the rebalance never waited for the first member")
				}
			}
			return rec.handler(ctx, m)
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cl1 := groupClient(t, addrs, "g", "orders", kgo.HeartbeatInterval(50*time.Millisecond),
		kgo.OnPartitionsCallbackBlocked(func(context.Context, *kgo.Client) { blockOnce.Do(func() { close(blocked) }) }))
	defer cl1.Close()
	stop1 := start(cl1, newMember(0), &Options{MaxPollRecords: 3, OnDecision: rec.onDecision})
	select {
	case <-joinNow:
	case <-time.After(waitTimeout):
		t.Fatal("first member handled nothing")
	}
	cl2 := groupClient(t, addrs, "g", "orders", kgo.HeartbeatInterval(50*time.Millisecond))
	defer cl2.Close()
	stop2 := start(cl2, newMember(1), &Options{MaxPollRecords: 3, OnDecision: rec.onDecision})
	es := rec.await(t, n)
	for _, stop := range []func() error{stop1, stop2} {
		if err := stop(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Consume returned %v", err)
		}
	}
	var dups int
	for _, e := range es {
		if e.action == messaging.AckDuplicate {
			dups++
		}
	}
	runs := rec.snapshotRuns()
	for _, id := range ids("m", n) {
		if runs[id] != 1 {
			t.Fatalf("%s: handler ran %d times", id, runs[id])
		}
	}
	c := committed(t, addrs, "g", "orders", partitions)
	var sum int64
	for _, o := range c {
		sum += o
	}
	if sum != n {
		t.Fatalf("committed %v (sum %d), want %d", c, sum, n)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(byMember[1]) == 0 || len(byMember[0])+len(byMember[1]) != n {
		t.Fatalf("member 1 handled %d, member 2 %d: want the second to take partitions over", len(byMember[0]), len(byMember[1]))
	}
	t.Logf("member 1 handled %d, member 2 %d, %d duplicates; committed %v", len(byMember[0]), len(byMember[1]), dups, c)
}

// Closing the client under Consume ends it with ErrClientClosed.
func TestClientClosed(t *testing.T) {
	addrs := newCluster(t, 1, "orders")
	publish(t, producer(t, addrs), "orders", "m01")
	rec := newRecorder()
	c, err := messaging.NewConsumer(newLedger(t), rec.handler, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl := groupClient(t, addrs, "g", "orders")
	done := make(chan error, 1)
	go func() { done <- Consume(context.Background(), cl, c, &Options{OnDecision: rec.onDecision}) }()
	rec.await(t, 1)
	cl.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClientClosed) {
			t.Fatalf("Consume returned %v, want ErrClientClosed", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Consume did not return after Close")
	}
	if c := committed(t, addrs, "g", "orders", 1); c[0] != 1 {
		t.Fatalf("committed %v, want [1]", c)
	}
}
