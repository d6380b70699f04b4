package idemapi_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/idemapi"
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
		`idem_ledger_records 2`,
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
