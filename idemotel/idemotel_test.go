package idemotel_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/idemotel"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/workflow"
)

// rig is a Telemetry over in-memory exporters.
type rig struct {
	tel    *idemotel.Telemetry
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
}

func newRig(t *testing.T) *rig {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	tel, err := idemotel.New(&idemotel.Config{TracerProvider: tp, MeterProvider: mp, OperationDurations: true})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{tel: tel, spans: rec, reader: reader}
}

// collect returns every data point's value by metric name and attribute
// set (rendered "k=v,k=v"): sums' values, histograms' counts.
func (r *rig) collect(t *testing.T) map[string]map[string]float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]float64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			pts := map[string]float64{}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					pts[render(p.Attributes)] += float64(p.Value)
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					pts[render(p.Attributes)] = float64(p.Value)
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					pts[render(p.Attributes)] = p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					pts[render(p.Attributes)] += float64(p.Count)
				}
			default:
				t.Fatalf("metric %s: unexpected data %T", m.Name, m.Data)
			}
			out[m.Name] = pts
		}
	}
	return out
}

func render(s attribute.Set) string {
	var parts []string
	for _, kv := range s.ToSlice() {
		parts = append(parts, string(kv.Key)+"="+kv.Value.Emit())
	}
	return strings.Join(parts, ",")
}

// sum adds the points of name whose attributes contain every one of with.
func sum(m map[string]map[string]float64, name string, with ...string) float64 {
	var n float64
	for attrs, v := range m[name] {
		ok := true
		for _, w := range with {
			if !strings.Contains(","+attrs+",", ","+w+",") {
				ok = false
			}
		}
		if ok {
			n += v
		}
	}
	return n
}

// tree renders the spans as an indented tree of names, children in start
// order, and checks they all share one trace.
func tree(t *testing.T, spans []sdktrace.ReadOnlySpan) string {
	t.Helper()
	children := map[trace.SpanID][]sdktrace.ReadOnlySpan{}
	ids := map[trace.SpanID]bool{}
	for _, s := range spans {
		ids[s.SpanContext().SpanID()] = true
		if s.SpanContext().TraceID() != spans[0].SpanContext().TraceID() {
			t.Errorf("span %q is in another trace", s.Name())
		}
	}
	var roots []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if p := s.Parent().SpanID(); s.Parent().IsValid() && ids[p] {
			children[p] = append(children[p], s)
		} else {
			roots = append(roots, s)
		}
	}
	var b strings.Builder
	var walk func(s sdktrace.ReadOnlySpan, depth int)
	walk = func(s sdktrace.ReadOnlySpan, depth int) {
		b.WriteString(strings.Repeat("  ", depth) + s.Name() + "\n")
		kids := children[s.SpanContext().SpanID()]
		sortByStart(kids)
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	sortByStart(roots)
	for _, r := range roots {
		walk(r, 0)
	}
	return b.String()
}

func sortByStart(s []sdktrace.ReadOnlySpan) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].StartTime().Before(s[j-1].StartTime()); j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func attr(s sdktrace.ReadOnlySpan, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func find(t *testing.T, spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	for _, s := range spans {
		if s.Name() == name {
			return s
		}
	}
	t.Fatalf("no span %q", name)
	return nil
}

// noRawKeys fails if any span's name or attribute value contains one of
// secrets.
func noRawKeys(t *testing.T, spans []sdktrace.ReadOnlySpan, secrets ...string) {
	t.Helper()
	for _, s := range spans {
		for _, sec := range secrets {
			if strings.Contains(s.Name(), sec) {
				t.Errorf("span name %q contains %q", s.Name(), sec)
			}
			for _, kv := range s.Attributes() {
				if strings.Contains(kv.Value.Emit(), sec) {
					t.Errorf("span %q attribute %s=%q contains %q", s.Name(), kv.Key, kv.Value.Emit(), sec)
				}
			}
		}
	}
}

// One request through the middleware starts a workflow whose step calls
// another service: the spans form one trace, request → ledger operations
// and workflow → step → outbound request, and the downstream service gets
// the step's traceparent and key.
func TestRequestWorkflowTrace(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()

	var mu sync.Mutex
	var gotParent, gotKey string
	downstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		gotParent, gotKey = req.Header.Get("Traceparent"), req.Header.Get("Idempotency-Key")
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	}))
	defer downstream.Close()
	client := &http.Client{Transport: idemhttp.Transport(&idemhttp.TransportConfig{Base: r.tel.Transport(nil)})}

	var types workflow.Registry
	err := types.Register(&workflow.Definition{
		Name: "order", Version: 1, Initial: "pending",
		States: []workflow.State{{Name: "pending"}, {Name: "reserved", Terminal: workflow.Success}},
		Transitions: []workflow.Transition{{From: "pending", Event: "place", To: "reserved", Action: &workflow.Action{
			Name: "reserve", NoCompensation: true,
			Run: func(ctx context.Context, s *workflow.Step) ([]byte, error) {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, downstream.URL+"/stock", strings.NewReader("{}"))
				resp, err := client.Do(req)
				if err != nil {
					return nil, err
				}
				resp.Body.Close()
				return nil, nil
			}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	engine, err := workflow.NewEngine(workflow.NewMemJournal(), &types, &workflow.EngineConfig{Observer: r.tel.Workflow()})
	if err != nil {
		t.Fatal(err)
	}

	ledger, err := idem.New(memstore.New(nil), &idem.Config{Observer: r.tel})
	if err != nil {
		t.Fatal(err)
	}
	const key, instanceID = "order-key-6f1c", "instance-9b2d"
	app := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if _, err := engine.Start(req.Context(), "order", 0, instanceID, []byte(`{}`), nil); err != nil {
			t.Error(err)
		}
		if _, err := engine.Signal(req.Context(), instanceID, "e1", "place", nil); err != nil {
			t.Error(err)
		}
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, `{"started":true}`)
	})
	srv := httptest.NewServer(r.tel.Handler("/orders", idemhttp.Middleware(ledger, nil)(app)))
	defer srv.Close()

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/orders", strings.NewReader(`{"sku":"book"}`))
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for {
		n, err := engine.Step(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	in, err := engine.Get(ctx, instanceID)
	if err != nil || in.Status != workflow.Succeeded {
		t.Fatalf("instance: %v %v", in, err)
	}

	spans := r.spans.Ended()
	want := `POST /orders
  idem.begin
  workflow order
    workflow.step reserve
      POST
  idem.complete
`
	if got := tree(t, spans); got != want {
		t.Fatalf("trace tree:\n%s\nwant:\n%s", got, want)
	}

	server := find(t, spans, "POST /orders")
	if v, _ := attr(server, idemotel.AttrKeyDigest); v.AsString() != idem.KeyDigest(key) {
		t.Errorf("server span key digest %q, want %q", v.AsString(), idem.KeyDigest(key))
	}
	if v, _ := attr(server, idemotel.AttrOutcome); v.AsString() != "acquired" {
		t.Errorf("server span outcome %q", v.AsString())
	}
	if v, _ := attr(server, "http.response.status_code"); v.AsInt64() != http.StatusAccepted {
		t.Errorf("server span status %d", v.AsInt64())
	}
	if server.SpanKind() != trace.SpanKindServer {
		t.Errorf("server span kind %v", server.SpanKind())
	}
	begin := find(t, spans, "idem.begin")
	if v, _ := attr(begin, idemotel.AttrKeyDigest); v.AsString() != idem.KeyDigest(key) {
		t.Errorf("begin key digest %q", v.AsString())
	}
	if v, _ := attr(begin, idemotel.AttrAttempt); v.AsInt64() != 1 {
		t.Errorf("begin attempt %d", v.AsInt64())
	}
	wf := find(t, spans, "workflow order")
	if v, _ := attr(wf, idemotel.AttrWfStatus); v.AsString() != "succeeded" {
		t.Errorf("workflow status %q", v.AsString())
	}
	if v, _ := attr(wf, idemotel.AttrWfID); v.AsString() != idem.KeyDigest(instanceID) {
		t.Errorf("workflow instance digest %q", v.AsString())
	}
	stepKey := workflow.ActionKey(instanceID, 1, "reserve")
	step := find(t, spans, "workflow.step reserve")
	if v, _ := attr(step, idemotel.AttrKeyDigest); v.AsString() != idem.KeyDigest(stepKey) {
		t.Errorf("step key digest %q, want that of %q", v.AsString(), stepKey)
	}
	out := find(t, spans, "POST")
	if v, _ := attr(out, idemotel.AttrKeyDigest); v.AsString() != idem.KeyDigest(stepKey) {
		t.Errorf("outbound key digest %q, want the step key's", v.AsString())
	}
	if v, _ := attr(out, "http.response.status_code"); v.AsInt64() != http.StatusCreated {
		t.Errorf("outbound status %d", v.AsInt64())
	}
	mu.Lock()
	defer mu.Unlock()
	wantParent := "00-" + out.SpanContext().TraceID().String() + "-" + out.SpanContext().SpanID().String() + "-01"
	if gotParent != wantParent {
		t.Errorf("downstream traceparent %q, want %q", gotParent, wantParent)
	}
	if gotKey != stepKey {
		t.Errorf("downstream key %q, want the step key %q", gotKey, stepKey)
	}
	noRawKeys(t, spans, key, instanceID, `"sku"`, `"started"`)
}

// A known sequence of requests, leases and messages gives known metric
// values.
func TestMetrics(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	clock := idem.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	store := memstore.New(&memstore.Config{Clock: clock})
	ledger, err := idem.New(store, &idem.Config{Observer: r.tel, Clock: clock, Lease: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.tel.ObserveLedgerSize(store); err != nil {
		t.Fatal(err)
	}
	app := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		clock.Advance(2 * time.Second) // the time to idempotence
		w.WriteHeader(http.StatusCreated)
	})
	srv := httptest.NewServer(r.tel.Handler("/pay", idemhttp.Middleware(ledger, nil)(app)))
	defer srv.Close()
	post := func(key, body string) int {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/pay", strings.NewReader(body))
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// acquired, replayed, mismatch.
	if got := []int{post("k1", "a"), post("k1", "a"), post("k1", "b")}; got[0] != 201 || got[1] != 201 || got[2] != 422 {
		t.Fatalf("statuses %v", got)
	}
	// A lease taken over: the first owner's Complete is refused, the
	// second attempt (a retry) completes.
	first, err := ledger.Begin(ctx, "s", "k2", "")
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(11 * time.Second)
	second, err := ledger.Begin(ctx, "s", "k2", "")
	if err != nil || second.Attempt() != 2 {
		t.Fatalf("takeover: %v", err)
	}
	if err := first.Complete(ctx, idem.Outcome{}); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("stale complete: %v", err)
	}
	if err := second.Complete(ctx, idem.Outcome{}); err != nil {
		t.Fatal(err)
	}

	// Messages: one handled, its redelivery a duplicate, one dead-lettered.
	consumer, err := messaging.NewConsumer(ledger, func(ctx context.Context, m *messaging.Message) error {
		if m.ID == "bad" {
			return messaging.Permanent(errors.New("no"))
		}
		return nil
	}, &messaging.Config{Observe: r.tel.ObserveMessage})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*messaging.Message{{ID: "m1", Subject: "orders", Delivery: 1},
		{ID: "m1", Subject: "orders", Delivery: 2}, {ID: "bad", Subject: "orders", Delivery: 1}} {
		consumer.Handle(ctx, m)
	}
	at := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	r.tel.OutboxRound(ctx, messaging.RelayRound{Due: 7, Oldest: at.Add(-90 * time.Second), Now: at})

	m := r.collect(t)
	checks := []struct {
		name string
		with []string
		want float64
	}{
		{"idem.ledger.outcomes", []string{"idem.outcome=acquired"}, 1 + 2 + 2 + 1}, // k1, k2 twice, m1, bad + its attempt record
		{"idem.ledger.outcomes", []string{"idem.outcome=replayed"}, 2},             // k1, m1
		{"idem.ledger.outcomes", []string{"idem.outcome=mismatch"}, 1},
		{"idem.ledger.outcomes", []string{"idem.outcome=lease_lost"}, 1},
		{"idem.ledger.outcomes", []string{"idem.outcome=takeover"}, 1},
		{"idem.ledger.outcomes", []string{"idem.outcome=in_flight"}, 0},
		{"idem.ledger.operations", []string{"idem.operation=begin", "idem.outcome=mismatch"}, 1},
		{"idem.ledger.operations", []string{"idem.operation=complete", "idem.outcome=lease_lost"}, 1},
		{"idem.lease.takeovers", nil, 1},
		{"idem.retry.attempts", nil, 1},
		{"idem.retry.successes", nil, 1},
		{"idem.http.server.request.duration", nil, 3},
		{"idem.http.server.request.duration", []string{"idem.replayed=true"}, 1},
		{"idem.messages.consumed", []string{"idem.message.action=ack"}, 1},
		{"idem.messages.consumed", []string{"idem.message.action=ack-duplicate"}, 1},
		{"idem.messages.consumed", []string{"idem.message.action=dead-letter"}, 1},
		{"idem.messages.redeliveries", nil, 1},
		{"idem.messages.dead_letters", nil, 1},
		{"idem.outbox.due", nil, 7},
		{"idem.outbox.lag", nil, 90},
	}
	for _, c := range checks {
		if got := sum(m, c.name, c.with...); got != c.want {
			t.Errorf("%s %v = %v, want %v (points %v)", c.name, c.with, got, c.want, m[c.name])
		}
	}
	// k1, k2, m1 and bad completed, and bad's attempt record.
	if got := sum(m, "idem.time_to_idempotence"); got != 5 {
		t.Errorf("time to idempotence count %v, want 5", got)
	}
	if got := sum(m, "idem.ledger.records"); got != 5 {
		t.Errorf("ledger records %v, want 5", got)
	}
	// memstore counts by state: every one of them is completed.
	for state, want := range map[string]float64{"pending": 0, "completed": 5, "released": 0} {
		if got, ok := m["idem.ledger.records"]["idem.record.state="+state]; !ok || got != want {
			t.Errorf("ledger records %s %v (reported %t), want %v", state, got, ok, want)
		}
	}
}

// A message published through Publisher carries the publish span's
// traceparent: the consumer's span is its child, with the same key digest.
func TestPublishThenConsumeTrace(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	var sent *messaging.OutboxMessage
	pub := r.tel.Publisher(messaging.PublisherFunc(func(_ context.Context, m *messaging.OutboxMessage) error {
		sent = m
		return nil
	}))
	orig := &messaging.OutboxMessage{ID: "wf-1/2/email", Subject: "mail", Payload: []byte("secret-payload"), Headers: map[string]string{"A": "b"}}
	if err := pub.Publish(ctx, orig); err != nil {
		t.Fatal(err)
	}
	if sent == nil || sent.Headers["traceparent"] == "" || sent.Headers["A"] != "b" {
		t.Fatalf("published headers %v", sent.Headers)
	}
	if _, ok := orig.Headers["traceparent"]; ok {
		t.Fatal("the caller's headers were changed")
	}
	ledger, err := idem.New(memstore.New(nil), &idem.Config{Observer: r.tel})
	if err != nil {
		t.Fatal(err)
	}
	consumer, err := messaging.NewConsumer(ledger, func(context.Context, *messaging.Message) error { return nil },
		&messaging.Config{Observe: r.tel.ObserveMessage})
	if err != nil {
		t.Fatal(err)
	}
	d := consumer.Handle(ctx, &messaging.Message{ID: sent.ID, Subject: sent.Subject, Payload: sent.Payload, Headers: sent.Headers, Delivery: 1})
	if d.Action != messaging.Ack {
		t.Fatalf("decision %+v", d)
	}
	spans := r.spans.Ended()
	want := `publish mail
  process mail
    idem.begin
    idem.complete
`
	if got := tree(t, spans); got != want {
		t.Fatalf("trace tree:\n%s\nwant:\n%s", got, want)
	}
	p, c := find(t, spans, "publish mail"), find(t, spans, "process mail")
	for _, s := range []sdktrace.ReadOnlySpan{p, c} {
		if v, _ := attr(s, idemotel.AttrKeyDigest); v.AsString() != idem.KeyDigest(sent.ID) {
			t.Errorf("%s: key digest %q", s.Name(), v.AsString())
		}
	}
	if p.SpanKind() != trace.SpanKindProducer || c.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("kinds %v %v", p.SpanKind(), c.SpanKind())
	}
	noRawKeys(t, spans, sent.ID, "secret-payload")
}
