package idemotel_test

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.yaml.in/yaml/v3"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemotel"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/workflow"
)

// allMetrics is every instrument idemotel creates; exercise records on each.
var allMetrics = []string{
	"idem.ledger.operations", "idem.ledger.outcomes", "idem.ledger.operation.duration", "idem.time_to_idempotence",
	"idem.lease.takeovers", "idem.ledger.expirations", "idem.retry.attempts", "idem.retry.successes",
	"idem.ledger.records", "idem.http.server.request.duration",
	"idem.messages.consumed", "idem.messages.redeliveries", "idem.messages.dead_letters", "idem.messages.duration",
	"idem.outbox.due", "idem.outbox.lag", "idem.outbox.publishes",
	"idem.workflow.instances.started", "idem.workflow.instances.finished", "idem.workflow.step.duration",
	"idem.workflow.compensations",
}

// exercise makes every instrument of r record.
func exercise(t *testing.T, r *rig) {
	t.Helper()
	ctx := context.Background()
	clock := idem.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	store := memstore.New(&memstore.Config{Clock: clock})
	ledger, err := idem.New(store, &idem.Config{Observer: r.tel, Clock: clock, Lease: time.Second, Window: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.tel.ObserveLedgerSize(store); err != nil {
		t.Fatal(err)
	}
	c1, _ := ledger.Begin(ctx, "s", "k", "")
	clock.Advance(2 * time.Second)
	c2, err := ledger.Begin(ctx, "s", "k", "") // a takeover, a retry
	if err != nil {
		t.Fatal(err)
	}
	_ = c1.Complete(ctx, idem.Outcome{})
	if err := c2.Complete(ctx, idem.Outcome{}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	if n, err := ledger.Sweep(ctx, 0); err != nil || n != 1 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	_, _ = ledger.Begin(ctx, "s", "k2", "") // the ledger holds a record

	handler := r.tel.Handler("/x", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	handler.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/x", nil))

	consumer, err := messaging.NewConsumer(ledger, func(context.Context, *messaging.Message) error {
		return messaging.Permanent(errors.New("no"))
	}, &messaging.Config{Observe: r.tel.ObserveMessage})
	if err != nil {
		t.Fatal(err)
	}
	consumer.Handle(ctx, &messaging.Message{ID: "m", Subject: "q", Delivery: 2})
	pub := r.tel.Publisher(messaging.PublisherFunc(func(context.Context, *messaging.OutboxMessage) error { return nil }))
	if err := pub.Publish(ctx, &messaging.OutboxMessage{ID: "o", Subject: "q"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.tel.OutboxRound(ctx, messaging.RelayRound{Due: 1, Oldest: now.Add(-time.Minute), Now: now})

	var types workflow.Registry
	ok := func(context.Context, *workflow.Step) ([]byte, error) { return nil, nil }
	if err := types.Register(&workflow.Definition{Name: "w", Version: 1, Initial: "a",
		States: []workflow.State{{Name: "a"}, {Name: "b"}, {Name: "c", Terminal: workflow.Success}},
		Transitions: []workflow.Transition{
			{From: "a", Event: "go", To: "b", Action: &workflow.Action{Name: "one", Run: ok, Compensate: ok}},
			{From: "b", Event: "go", To: "c", Action: &workflow.Action{Name: "two", NoCompensation: true,
				Run: func(context.Context, *workflow.Step) ([]byte, error) {
					return nil, workflow.Permanent(errors.New("no"))
				}}},
		}}); err != nil {
		t.Fatal(err)
	}
	eng, err := workflow.NewEngine(workflow.NewMemJournal(), &types, &workflow.EngineConfig{Observer: r.tel.Workflow()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Start(ctx, "w", 0, "i", nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"e1", "e2"} {
		if _, err := eng.Signal(ctx, "i", id, "go", nil); err != nil {
			t.Fatal(err)
		}
	}
	for {
		n, err := eng.Step(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
}

// prometheusNames are the series names the metrics of r get in
// Prometheus through the OpenTelemetry translation (the Collector's
// prometheus exporters, Prometheus's OTLP receiver): dots become
// underscores, the unit "s" adds _seconds ({...} units add nothing),
// counters add _total, histograms are _bucket, _sum and _count.
//
// labels are the label names the attributes become (dots to underscores).
func prometheusNames(t *testing.T, reader *sdkmetric.ManualReader) (names, labels map[string]bool) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	names, labels = map[string]bool{}, map[string]bool{}
	addLabels := func(s attribute.Set) {
		for _, kv := range s.ToSlice() {
			labels[strings.ReplaceAll(string(kv.Key), ".", "_")] = true
		}
	}
	var seen []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			seen = append(seen, m.Name)
			base := strings.ReplaceAll(m.Name, ".", "_")
			if m.Unit == "s" {
				base += "_seconds"
			} else if !strings.HasPrefix(m.Unit, "{") {
				t.Errorf("metric %s: unit %q is neither s nor an annotation", m.Name, m.Unit)
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					addLabels(p.Attributes)
				}
				if d.IsMonotonic {
					names[base+"_total"] = true
				} else {
					names[base] = true
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					addLabels(p.Attributes)
				}
				names[base] = true
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					addLabels(p.Attributes)
				}
				names[base] = true
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					addLabels(p.Attributes)
				}
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					names[base+s] = true
				}
			default:
				t.Errorf("metric %s: unexpected %T", m.Name, m.Data)
			}
		}
	}
	slices.Sort(seen)
	want := slices.Sorted(slices.Values(allMetrics))
	if !slices.Equal(seen, want) {
		t.Fatalf("exported metrics\n%q\nwant\n%q", seen, want)
	}
	return names, labels
}

var (
	seriesName = regexp.MustCompile(`\bidem_[a-z0-9_]+`)
	// byLabels are the label lists of "by (...)" and the label names of
	// "{...}" matchers.
	byLabels = regexp.MustCompile(`\bby\s*\(([^)]*)\)`)
	matchers = regexp.MustCompile(`([a-z_]+)\s*(?:=~|!=|!~|=)\s*"`)
)

// The dashboard and the alert rules use only series the code exports, and
// docs/observability.md documents every metric.
func TestDashboardAndRulesUseExportedNames(t *testing.T) {
	r := newRig(t)
	exercise(t, r)
	names, labels := prometheusNames(t, r.reader)

	var exprs []string
	data, err := os.ReadFile("../docs/grafana/idem-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title         string `json:"title"`
		UID           string `json:"uid"`
		SchemaVersion int    `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query string `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title      string `json:"title"`
			Type       string `json:"type"`
			Datasource struct {
				Type string `json:"type"`
				UID  string `json:"uid"`
			} `json:"datasource"`
			GridPos map[string]int `json:"gridPos"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || dash.SchemaVersion < 30 || len(dash.Panels) == 0 {
		t.Fatalf("dashboard: title %q uid %q schemaVersion %d, %d panels", dash.Title, dash.UID, dash.SchemaVersion, len(dash.Panels))
	}
	if len(dash.Templating.List) == 0 || dash.Templating.List[0].Type != "datasource" || dash.Templating.List[0].Query != "prometheus" {
		t.Fatalf("dashboard: the first variable must be a Prometheus datasource: %+v", dash.Templating.List)
	}
	dsVar := "${" + dash.Templating.List[0].Name + "}"
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource.Type != "prometheus" || p.Datasource.UID != dsVar || len(p.Targets) == 0 || len(p.GridPos) != 4 {
			t.Errorf("panel %q: datasource %+v, %d targets, gridPos %v", p.Title, p.Datasource, len(p.Targets), p.GridPos)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" {
				t.Errorf("panel %q: a target without expr or refId", p.Title)
			}
			exprs = append(exprs, tg.Expr)
		}
	}

	data, err = os.ReadFile("../docs/alerts/idem-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("rules: %v", err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, rule := range g.Rules {
			if rule.Alert == "" || rule.Expr == "" || rule.Annotations["summary"] == "" {
				t.Errorf("rule %+v: alert, expr and a summary are needed", rule)
			}
			alerts = append(alerts, rule.Alert)
			exprs = append(exprs, rule.Expr)
		}
	}
	for _, want := range []string{"IdemDuplicateRateSpike", "IdemLeaseTakeovers", "IdemDeadLetters", "IdemOutboxLag"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s (have %v)", want, alerts)
		}
	}

	used := map[string]bool{}
	for _, e := range exprs {
		var exprLabels []string
		for _, m := range byLabels.FindAllStringSubmatch(e, -1) {
			for _, l := range strings.Split(m[1], ",") {
				exprLabels = append(exprLabels, strings.TrimSpace(l))
			}
		}
		for _, m := range matchers.FindAllStringSubmatch(e, -1) {
			exprLabels = append(exprLabels, m[1])
		}
		for _, l := range exprLabels {
			if l != "le" && !labels[l] {
				t.Errorf("label %s is used in %q and not exported (labels: %v)", l, e, slices.Sorted(maps.Keys(labels)))
			}
		}
		for _, n := range seriesName.FindAllString(e, -1) {
			if labels[n] {
				continue
			}
			used[n] = true
			if !names[n] {
				t.Errorf("%s is used in %q and not exported (exported: %v)", n, e, slices.Sorted(maps.Keys(names)))
			}
		}
	}
	if len(used) < 12 {
		t.Errorf("the dashboard and rules use only %d series", len(used))
	}

	doc, err := os.ReadFile("../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range allMetrics {
		if !strings.Contains(string(doc), "`"+m+"`") {
			t.Errorf("docs/observability.md does not document %s", m)
		}
	}
	for n := range names {
		if strings.HasSuffix(n, "_sum") || strings.HasSuffix(n, "_count") {
			continue
		}
		if !strings.Contains(string(doc), strings.TrimSuffix(n, "_bucket")) {
			t.Errorf("docs/observability.md does not give the Prometheus name %s", n)
		}
	}
}

// The attribute keys are documented too.
func TestAttributesDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{string(idemotel.AttrOperation), string(idemotel.AttrOutcome), string(idemotel.AttrKeyDigest),
		string(idemotel.AttrAttempt), string(idemotel.AttrTakeover), string(idemotel.AttrReplayed), string(idemotel.AttrAction),
		string(idemotel.AttrDelivery), string(idemotel.AttrWfType), string(idemotel.AttrWfStatus), string(idemotel.AttrWfAction),
		string(idemotel.AttrWfComp), string(idemotel.AttrWfID), string(idemotel.AttrWfRun), string(idemotel.AttrStepOutcome),
		string(idemotel.AttrRecordState)} {
		if !strings.Contains(string(doc), "`"+k+"`") {
			t.Errorf("docs/observability.md does not document attribute %s", k)
		}
	}
}
