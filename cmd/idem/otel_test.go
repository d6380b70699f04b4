package main

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	collmetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	colltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/idemkit/idem"
)

// otlpReceiver is an OTLP/HTTP endpoint (protobuf) that keeps what it is
// sent: spans, and the data points of each metric by name.
type otlpReceiver struct {
	srv      *httptest.Server
	mu       sync.Mutex
	spans    []*tracepb.Span
	services map[string]bool               // service.name of the resources
	points   map[string][]map[string]int64 // metric name -> points: attributes rendered "k=v" -> value (sums, gauges) or count (histograms)
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	r := &otlpReceiver{services: map[string]bool{}, points: map[string][]map[string]int64{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *otlpReceiver) serve(w http.ResponseWriter, req *http.Request) {
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	data, err := io.ReadAll(body)
	if err != nil || req.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want a protobuf body", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch req.URL.Path {
	case "/v1/traces":
		var m colltrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(data, &m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, rs := range m.ResourceSpans {
			r.services[service(rs.Resource.GetAttributes())] = true
			for _, ss := range rs.ScopeSpans {
				r.spans = append(r.spans, ss.Spans...)
			}
		}
		out, _ := proto.Marshal(&colltrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	case "/v1/metrics":
		var m collmetrics.ExportMetricsServiceRequest
		if err := proto.Unmarshal(data, &m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, rm := range m.ResourceMetrics {
			r.services[service(rm.Resource.GetAttributes())] = true
			for _, sm := range rm.ScopeMetrics {
				for _, met := range sm.Metrics {
					r.points[met.Name] = append(r.points[met.Name], metricPoints(met)...)
				}
			}
		}
		out, _ := proto.Marshal(&collmetrics.ExportMetricsServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	default:
		http.NotFound(w, req)
	}
}

func service(attrs []*commonpb.KeyValue) string {
	for _, kv := range attrs {
		if kv.Key == "service.name" {
			return kv.Value.GetStringValue()
		}
	}
	return ""
}

func renderAttrs(attrs []*commonpb.KeyValue) string {
	var parts []string
	for _, kv := range attrs {
		v := kv.Value
		s := v.GetStringValue()
		switch v.Value.(type) {
		case *commonpb.AnyValue_IntValue:
			s = strconv.FormatInt(v.GetIntValue(), 10)
		case *commonpb.AnyValue_BoolValue:
			s = "false"
			if v.GetBoolValue() {
				s = "true"
			}
		}
		parts = append(parts, kv.Key+"="+s)
	}
	return strings.Join(parts, ",")
}

func metricPoints(m *metricspb.Metric) []map[string]int64 {
	var out []map[string]int64
	switch d := m.Data.(type) {
	case *metricspb.Metric_Sum:
		for _, p := range d.Sum.DataPoints {
			out = append(out, map[string]int64{renderAttrs(p.Attributes): p.GetAsInt()})
		}
	case *metricspb.Metric_Gauge:
		for _, p := range d.Gauge.DataPoints {
			out = append(out, map[string]int64{renderAttrs(p.Attributes): p.GetAsInt()})
		}
	case *metricspb.Metric_Histogram:
		for _, p := range d.Histogram.DataPoints {
			out = append(out, map[string]int64{renderAttrs(p.Attributes): int64(p.Count)})
		}
	}
	return out
}

// value is the latest exported value of metric name's point whose
// attributes contain with (cumulative temporality: the latest is the
// total), -1 if none.
func (r *otlpReceiver) value(name, with string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := int64(-1)
	for _, p := range r.points[name] {
		for attrs, n := range p {
			if with == "" || strings.Contains(","+attrs+",", ","+with+",") {
				v = n
			}
		}
	}
	return v
}

// spanNames counts the spans by name.
// tree renders the spans of one trace as an indented tree, children in
// start order, each line the span's name, kind and sorted attributes.
func (r *otlpReceiver) tree(traceID []byte) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	children := map[string][]*tracepb.Span{}
	for _, s := range r.spans {
		if bytes.Equal(s.TraceId, traceID) {
			p := hex.EncodeToString(s.ParentSpanId)
			children[p] = append(children[p], s)
		}
	}
	var b strings.Builder
	var walk func(parent string, depth int)
	walk = func(parent string, depth int) {
		kids := children[parent]
		slices.SortFunc(kids, func(x, y *tracepb.Span) int { return cmp.Compare(x.StartTimeUnixNano, y.StartTimeUnixNano) })
		for _, s := range kids {
			attrs := strings.FieldsFunc(renderAttrs(s.Attributes), func(r rune) bool { return r == ',' })
			slices.Sort(attrs)
			fmt.Fprintf(&b, "%s%s [%s] %s\n", strings.Repeat("  ", depth), s.Name, s.Kind, strings.Join(attrs, " "))
			walk(hex.EncodeToString(s.SpanId), depth+1)
		}
	}
	walk("", 0)
	return b.String()
}

func (r *otlpReceiver) spanNames() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for _, s := range r.spans {
		out[s.Name]++
	}
	return out
}

// checkNoSecrets fails if a span name or attribute holds one of secrets.
func (r *otlpReceiver) checkNoSecrets(t *testing.T, secrets ...string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.spans {
		text := s.Name + " " + renderAttrs(s.Attributes)
		for _, sec := range secrets {
			if strings.Contains(text, sec) {
				t.Errorf("span %q holds %q: %s", s.Name, sec, text)
			}
		}
	}
}

// otlpEnv points the standard variables at r.
func otlpEnv(t *testing.T, r *otlpReceiver, service string) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.srv.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_SERVICE_NAME", service)
}

// checkLogs fails if the process's log (stderr) holds one of secrets.
func checkLogs(t *testing.T, log string, secrets ...string) {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		for _, sec := range secrets {
			if strings.Contains(line, sec) {
				t.Errorf("log line holds %q: %s", sec, line)
			}
		}
	}
}

// idem proxy with OTEL_EXPORTER_OTLP_ENDPOINT set exports the spans of its
// requests (server span, ledger operations, the upstream call, whose
// traceparent the upstream gets) and its metrics; /metrics keeps the
// Prometheus text; neither spans nor debug logs hold a key or a body.
func TestProxyExportsOTLP(t *testing.T) {
	recv := newOTLPReceiver(t)
	otlpEnv(t, recv, "proxy-under-test")
	var mu sync.Mutex
	var parents []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		parents = append(parents, r.Header.Get("Traceparent"))
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"receipt":"upstream-body-secret"}`)
	}))
	defer up.Close()
	dir := t.TempDir()
	p := startProxy(t, dir, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--upstream", up.URL, "--store", "mem:",
		"--log-level", "debug")
	const key, body = "proxy-raw-key-5e1a", `{"card":"request-body-secret"}`
	c := testClient()
	for i, want := range []string{"false", "true"} {
		a := mustSend(t, c, http.MethodPost, "http://"+p.addr+"/pay", body, "Idempotency-Key", key)
		if a.status != http.StatusCreated || a.replayed() != want {
			t.Fatalf("request %d: %d replayed %q", i, a.status, a.replayed())
		}
	}
	a := mustSend(t, c, http.MethodGet, "http://"+p.admin+"/metrics", "")
	if a.status != http.StatusOK || !strings.Contains(a.body, "idem_operations_total{op=\"begin\",outcome=\"replay\"} 1") {
		t.Fatalf("/metrics: %d\n%s", a.status, a.body)
	}
	if !strings.Contains(a.body, "\nidem_ledger_records{state=\"completed\"} 1\nidem_ledger_records{state=\"released\"} 0\n") {
		t.Errorf("/metrics lacks the ledger size by state:\n%s", a.body)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, p.stderr)
	}
	// The stop flushed the export.
	names := recv.spanNames()
	if names["POST proxy"] != 2 || names["idem.begin"] != 2 || names["idem.complete"] != 1 || names["POST"] != 1 {
		t.Fatalf("spans %v", names)
	}
	if !recv.services["proxy-under-test"] {
		t.Errorf("services %v, want OTEL_SERVICE_NAME's", recv.services)
	}
	recv.mu.Lock()
	var server, replay *tracepb.Span
	for _, s := range recv.spans {
		if s.Name == "POST proxy" && strings.Contains(renderAttrs(s.Attributes), "idem.replayed=false") {
			server = s
		}
		if s.Name == "POST proxy" && strings.Contains(renderAttrs(s.Attributes), "idem.replayed=true") {
			replay = s
		}
	}
	recv.mu.Unlock()
	if replay != nil {
		const want = `POST proxy [SPAN_KIND_SERVER] http.request.method=POST http.response.status_code=201 http.route=proxy idem.key.digest=DIGEST idem.outcome=replay idem.replayed=true
  idem.begin [SPAN_KIND_INTERNAL] idem.key.digest=DIGEST idem.operation=begin idem.outcome=replay
`
		if got := strings.ReplaceAll(recv.tree(replay.TraceId), idem.KeyDigest(key), "DIGEST"); got != want {
			t.Errorf("the replay's trace:\n%s\nwant:\n%s", got, want)
		}
	}
	mu.Lock()
	if server == nil || len(parents) != 1 || !strings.Contains(parents[0], "-"+hex.EncodeToString(server.TraceId)+"-") {
		t.Errorf("upstream traceparents %q, want the first request's trace", parents)
	}
	mu.Unlock()
	if server != nil {
		// The first request's trace: the server span, and below it the
		// ledger's Begin, the upstream call and the ledger's Complete.
		const want = `POST proxy [SPAN_KIND_SERVER] http.request.method=POST http.response.status_code=201 http.route=proxy idem.key.digest=DIGEST idem.outcome=acquired idem.replayed=false
  idem.begin [SPAN_KIND_INTERNAL] idem.attempt=1 idem.key.digest=DIGEST idem.operation=begin idem.outcome=acquired
  POST [SPAN_KIND_CLIENT] http.request.method=POST http.response.status_code=201 idem.key.digest=DIGEST idem.replayed=false server.address=127.0.0.1
  idem.complete [SPAN_KIND_INTERNAL] idem.attempt=1 idem.key.digest=DIGEST idem.operation=complete idem.outcome=completed
`
		got := strings.ReplaceAll(recv.tree(server.TraceId), idem.KeyDigest(key), "DIGEST")
		if got != want {
			t.Errorf("the first request's trace:\n%s\nwant:\n%s", got, want)
		}
	}
	for _, c := range []struct {
		name, with string
		want       int64
	}{
		{"idem.ledger.outcomes", "idem.outcome=acquired", 1},
		{"idem.ledger.outcomes", "idem.outcome=replayed", 1},
		{"idem.ledger.operations", "idem.outcome=completed", 1},
		{"idem.time_to_idempotence", "", 1},
		{"idem.ledger.records", "idem.record.state=completed", 1}, // mem: counts by state
		{"idem.ledger.records", "idem.record.state=pending", 0},
		{"idem.ledger.records", "idem.record.state=released", 0},
	} {
		if got := recv.value(c.name, c.with); got != c.want {
			t.Errorf("%s %s = %d, want %d", c.name, c.with, got, c.want)
		}
	}
	secrets := []string{key, "request-body-secret", "upstream-body-secret"}
	recv.checkNoSecrets(t, secrets...)
	checkLogs(t, p.stderr.String(), secrets...)
}

// idem serve with OTEL_EXPORTER_OTLP_ENDPOINT set exports a span per API
// request with the ledger operations below it, and its metrics; neither
// spans nor debug logs hold a key or an outcome's data.
func TestServeExportsOTLP(t *testing.T) {
	recv := newOTLPReceiver(t)
	otlpEnv(t, recv, "serve-under-test")
	dir := t.TempDir()
	p := startServe(t, dir, "--listen", "127.0.0.1:0", "--store", "mem:", "--tokens", writeTokens(t, dir), "--log-level", "debug")
	c := newClient(p.addr, "ops-0123456789")
	const key = "serve-raw-key-77c3"
	if status, err := c.cycle("billing", key, []byte("outcome-data-secret")); err != nil || status != 200 {
		t.Fatalf("cycle: %d %v", status, err)
	}
	var b beginAnswer
	if status, err := c.post("/v1/begin", beginBody{Scope: "billing", Key: key, Fingerprint: "f"}, &b); err != nil || status != 200 || b.Decision != "replay" {
		t.Fatalf("replay: %d %v %+v", status, err, b)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, p.stderr)
	}
	names := recv.spanNames()
	if names["POST /v1"] != 3 || names["idem.begin"] != 2 || names["idem.complete"] != 1 {
		t.Fatalf("spans %v", names)
	}
	if !recv.services["serve-under-test"] {
		t.Errorf("services %v", recv.services)
	}
	if got := recv.value("idem.ledger.outcomes", "idem.outcome=replayed"); got != 1 {
		t.Errorf("replayed outcomes %d, want 1", got)
	}
	if got := recv.value("idem.http.server.request.duration", ""); got < 1 {
		t.Errorf("request durations %d", got)
	}
	secrets := []string{key, "outcome-data-secret", "b3V0Y29tZS1kYXRhLXNlY3JldA"} // the data, and its base64 in JSON
	recv.checkNoSecrets(t, secrets...)
	checkLogs(t, p.stderr.String(), secrets...)
}
