package idemapi_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/memstore"
)

var sampleLine = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? (-?[0-9.]+(e[+-][0-9]+)?|[+-]Inf|NaN)$`)

func TestMetricsCountAKnownSequence(t *testing.T) {
	t.Parallel()
	b := setup(t)
	begin := func(key, fp string) *response {
		return b.call(t, "POST", "/v1/begin", tokA, fmt.Sprintf(`{"scope":"a","key":%q,"fingerprint":%q}`, key, fp))
	}
	k1 := b.acquire(t, "a", "k1")        // begin acquired
	ok(t, begin("k1", "f"), &inFlight{}) // begin in_flight
	isProblem(t, begin("k1", "other"), 422, idemapi.ProblemFingerprintMismatch)
	isProblem(t, begin("", "f"), 400, idemapi.ProblemInvalidRequest) // never reaches the ledger
	b.clock.Advance(2 * time.Second)
	ok(t, b.call(t, "POST", "/v1/complete", tokA, completeBody("a", "k1", k1.Token, []byte("x"))), &completed{})
	ok(t, begin("k1", "f"), &replay{})
	isProblem(t, b.call(t, "POST", "/v1/complete", tokA, completeBody("a", "k1", k1.Token, nil)), 409, idemapi.ProblemCompleted)
	k2 := b.acquire(t, "a", "k2")
	rel := fmt.Sprintf(`{"scope":"a","key":"k2","token":%d}`, k2.Token)
	ok(t, b.call(t, "POST", "/v1/release", tokA, rel), &struct{}{})
	isProblem(t, b.call(t, "POST", "/v1/release", tokA, rel), 409, idemapi.ProblemLeaseLost)
	isProblem(t, b.call(t, "POST", "/v1/release", tokA, `{}`), 400, idemapi.ProblemInvalidRequest)

	r := b.call(t, "GET", "/metrics", tokA, "")
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("metrics: %d %q", r.status, r.header.Get("Content-Type"))
	}
	text := string(r.body)
	for _, want := range []string{
		`idem_operations_total{op="begin",outcome="acquired"} 2`,
		`idem_operations_total{op="begin",outcome="in_flight"} 1`,
		`idem_operations_total{op="begin",outcome="mismatch"} 1`,
		`idem_operations_total{op="begin",outcome="replay"} 1`,
		`idem_operations_total{op="begin",outcome="error"} 0`,
		`idem_operations_total{op="complete",outcome="completed"} 1`,
		`idem_operations_total{op="complete",outcome="already_completed"} 1`,
		`idem_operations_total{op="complete",outcome="lease_lost"} 0`,
		`idem_operations_total{op="release",outcome="released"} 1`,
		`idem_operations_total{op="release",outcome="lease_lost"} 1`,
		`idem_operations_total{op="extend",outcome="extended"} 0`,
		`idem_lease_takeovers_total 0`,
		"# TYPE idem_time_to_idempotence_seconds histogram",
		`idem_time_to_idempotence_seconds_bucket{le="1"} 0`,
		`idem_time_to_idempotence_seconds_bucket{le="2.5"} 1`,
		`idem_time_to_idempotence_seconds_bucket{le="+Inf"} 1`,
		`idem_time_to_idempotence_seconds_sum 2`,
		`idem_time_to_idempotence_seconds_count 1`,
		"# TYPE idem_ledger_records gauge",
		`idem_ledger_records{state="pending"} 0`, // memstore counts by state
		`idem_ledger_records{state="completed"} 1`,
		`idem_ledger_records{state="released"} 1`,
		`idem_http_requests_total{route="begin",code="200"} 4`,
		`idem_http_requests_total{route="begin",code="400"} 1`,
		`idem_http_requests_total{route="begin",code="422"} 1`,
		`idem_http_requests_total{route="release",code="409"} 1`,
		"# TYPE idem_request_duration_seconds histogram",
		`idem_request_duration_seconds_count{route="begin"} 6`,
		`idem_request_duration_seconds_bucket{route="complete",le="+Inf"} 2`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Log(text)
	}
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if strings.HasPrefix(line, "# HELP ") || strings.HasPrefix(line, "# TYPE ") {
			continue
		}
		if !sampleLine.MatchString(line) {
			t.Errorf("not a text-format sample line: %q", line)
		}
	}
	if strings.Contains(text, "k1") || strings.Contains(text, tokA) {
		t.Error("metrics mention a key or a token")
	}
}

func TestMetricsTakeover(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.acquire(t, "a", "k")
	b.clock.Advance(31 * time.Second)
	b.acquire(t, "a", "k")
	r := b.call(t, "GET", "/metrics", tokAB, "")
	if !strings.Contains(string(r.body), "idem_lease_takeovers_total 1\n") {
		t.Fatalf("metrics:\n%s", r.body)
	}
}

// sizerOnly hides every capability of a store but idem.Sizer.
type sizerOnly struct {
	idem.Store
	sizer idem.Sizer
}

func (s sizerOnly) Size(ctx context.Context) (int64, error) { return s.sizer.Size(ctx) }

// bare hides every capability of a store.
type bare struct{ idem.Store }

// failing is an idem.StateSizer whose count fails.
type failing struct{ idem.Store }

func (failing) SizeByState(context.Context) (map[idem.State]int64, error) {
	return nil, idem.ErrUnavailable
}

// idem_ledger_records has a line per state for a store that counts by
// state, one line without labels for a store that counts only its total,
// and no line for a store that cannot count or whose count fails.
func TestMetricsLedgerSizeByState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := memstore.New(nil)
	t.Cleanup(func() { _ = store.Close() })
	begin := func(key string) int64 {
		res, err := store.Begin(ctx, &idem.BeginParams{Scope: "s", Key: key, Fingerprint: "f", Lease: time.Hour, Window: time.Hour})
		if err != nil || res.Decision != idem.Acquired {
			t.Fatalf("Begin %s: %+v %v", key, res, err)
		}
		return res.Record.Token
	}
	for _, k := range []string{"p1", "p2", "p3"} { // 3 pending
		begin(k)
	}
	for _, k := range []string{"c1", "c2"} { // 2 completed
		if _, err := store.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: k, Token: begin(k)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Release(ctx, &idem.ReleaseParams{Scope: "s", Key: "r1", Token: begin("r1")}); err != nil { // 1 released
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		store idem.Store
		want  []string // the idem_ledger_records lines, in order
	}{
		{"StateSizer", store, []string{`idem_ledger_records{state="pending"} 3`,
			`idem_ledger_records{state="completed"} 2`, `idem_ledger_records{state="released"} 1`}},
		{"Sizer", sizerOnly{store, store}, []string{`idem_ledger_records 6`}},
		{"neither", bare{store}, nil},
		{"failing", failing{store}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			for _, via := range []string{"server", "WriteStore"} {
				var text string
				if via == "server" {
					srv, err := idemapi.NewServer(c.store, &idemapi.Config{Tokens: map[string][]string{tokA: {"a"}}})
					if err != nil {
						t.Fatal(err)
					}
					req := httptest.NewRequest("GET", "/metrics", nil)
					req.Header.Set("Authorization", "Bearer "+tokA)
					rec := httptest.NewRecorder()
					srv.ServeHTTP(rec, req)
					if rec.Code != 200 {
						t.Fatalf("%s: GET /metrics: %d %s", via, rec.Code, rec.Body)
					}
					text = rec.Body.String()
				} else {
					var b strings.Builder
					if err := idemapi.NewMetrics(nil).WriteStore(ctx, &b, c.store); err != nil {
						t.Fatal(err)
					}
					text = b.String()
				}
				var got []string
				for _, line := range strings.Split(text, "\n") {
					if strings.HasPrefix(line, "idem_ledger_records") {
						got = append(got, line)
					}
				}
				if !slices.Equal(got, c.want) {
					t.Errorf("%s: idem_ledger_records lines %q, want %q", via, got, c.want)
				}
				if typed := strings.Contains(text, "# TYPE idem_ledger_records gauge\n"); typed != (c.want != nil) {
					t.Errorf("%s: TYPE line present %t, want %t", via, typed, c.want != nil)
				}
			}
		})
	}
}
