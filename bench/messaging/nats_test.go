package messaging

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkit/idem/broker/natsjs"
	"github.com/idemkit/idem/internal/bench"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/messaging"
)

// jetStream connects to the NATS server of the tests.
func jetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	url := servicetest.NATS.Need(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connecting to NATS at %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// newStream creates a memory stream on subjects "<name>.>" with a
// duplicate window of a minute; the caller deletes it.
func newStream(t testing.TB, js jetstream.JetStream, name string) {
	t.Helper()
	cfg := jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Storage: jetstream.MemoryStorage, Duplicates: time.Minute}
	if _, err := js.CreateStream(context.Background(), cfg); err != nil {
		t.Fatalf("creating stream %s: %v", name, err)
	}
}

// publishN publishes n 64-byte messages with the Nats-Msg-Ids ids-0 to
// ids-(n-1) to the stream's subject and waits for every PubAck; it returns
// how long that took.
func publishN(t testing.TB, js jetstream.JetStream, stream, ids string, n int) time.Duration {
	t.Helper()
	start := time.Now()
	payload := make([]byte, 64)
	for i := range n {
		msg := nats.NewMsg(stream + ".m")
		msg.Data = payload
		msg.Header.Set(natsjs.MsgIDHeader, idOf(ids, i))
		if _, err := js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		t.Fatal("publishing: no PubAck within a minute")
	}
	return time.Since(start)
}

var streamSeq = 0

func streamName() string {
	streamSeq++
	return fmt.Sprintf("IDEMBENCH_%d_%d", time.Now().UnixNano()%1e9, streamSeq)
}

// TestNATSConsumerFigures measures natsjs.Consume (pull consumer, explicit
// fire-and-forget acks) draining a pre-published memory stream of
// IDEM_BENCH_MSGS messages (default 5000) at 1 and 16 workers, for every
// side of consumerFigures; then what JetStream's own Nats-Msg-Id dedup
// costs at publish. It runs only with IDEM_BENCH_FIGURES=1
// (IDEM_BENCH_ROUNDS, default 5); docs/performance.md quotes it.
func TestNATSConsumerFigures(t *testing.T) {
	if testing.Short() {
		t.Skip("figures")
	}
	js := jetStream(t)
	ctx := context.Background()
	drain := func(t testing.TB, ids string, handle handleFunc, workers, n int, want messaging.Action) time.Duration {
		t.Helper()
		stream := streamName()
		newStream(t, js, stream)
		defer func() { _ = js.DeleteStream(ctx, stream) }()
		publishN(t, js, stream, ids, n)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		cons, err := js.CreateOrUpdateConsumer(cctx, stream, jetstream.ConsumerConfig{
			Durable: "work", AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1, AckWait: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		s := newSettles(n, want)
		start := time.Now()
		ended := make(chan error, 1)
		go func() {
			ended <- natsjs.Consume(cctx, cons, natsjs.HandlerFunc(handle), &natsjs.Options{Workers: workers, OnDecision: s.onDecision})
		}()
		s.wait(t, stream, ended)
		elapsed := time.Since(start)
		cancel()
		<-ended
		s.check(t, stream)
		return elapsed
	}
	consumerFigures(t, broker{name: "nats", msgs: 5000, drain: drain})

	// JetStream's own dedup: publishing the same Nats-Msg-Ids again within
	// the stream's duplicate window is absorbed by the server.
	rounds := bench.EnvInt("IDEM_BENCH_ROUNDS", 5)
	n := bench.EnvInt("IDEM_BENCH_MSGS", 5000)
	var fresh, again []float64
	for range rounds {
		stream := streamName()
		newStream(t, js, stream)
		f := publishN(t, js, stream, "id", n)
		a := publishN(t, js, stream, "id", n)
		info, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		_ = js.DeleteStream(ctx, stream)
		if got := info.CachedInfo().State.Msgs; got != uint64(n) {
			t.Fatalf("stream holds %d messages after a republish of %d ids, want %d", got, n, n)
		}
		fresh = append(fresh, float64(n)/f.Seconds())
		again = append(again, float64(n)/a.Seconds())
	}
	t.Logf("Nats-Msg-Id: publish %8.0f msgs/s new ids, %8.0f msgs/s duplicates within the window (%.2f×); stream keeps %d",
		bench.Median(fresh), bench.Median(again), bench.Median(again)/bench.Median(fresh), n)
	t.Logf("load average after: %s", bench.LoadAvg())
}
