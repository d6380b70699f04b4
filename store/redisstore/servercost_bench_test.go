package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/idemkit/idem"
)

// evalshaStats reads calls and usec of evalsha from INFO commandstats.
func evalshaStats(b *testing.B, s *bundle) (calls, usec int64) {
	b.Helper()
	info, err := s.client.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:")
		if !ok {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(f, "=")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "calls":
				calls = n
			case "usec":
				usec = n
			}
		}
	}
	return calls, usec
}

// BenchmarkServerCost reports the server time (INFO commandstats, usec of
// evalsha) of the Begin and the Complete script, each measured over b.N
// calls on fresh keys by one caller. It is stable on a noisy machine, where
// cycles/s is not. other-calls counts evalsha calls of other clients that
// fell into the measurement (it should be 0; otherwise the figures are
// polluted).
func BenchmarkServerCost(b *testing.B) {
	s := setup(b, nil)
	ctx := context.Background()
	outcome := idem.Outcome{Data: []byte(`{"status":"ok"}`), Meta: map[string]string{"status": "200"}}
	tokens := make([]int64, b.N)
	key := func(i int) string { return fmt.Sprintf("cost-%d", i) }
	c0, u0 := evalshaStats(b, s)
	for i := range b.N {
		res, err := s.store.Begin(ctx, &idem.BeginParams{Scope: "bench", Key: key(i), Fingerprint: "f", Lease: idem.DefaultLease, Window: idem.DefaultWindow})
		if err != nil || res.Decision != idem.Acquired {
			b.Fatalf("Begin: %+v, %v", res, err)
		}
		tokens[i] = res.Record.Token
	}
	_, u1 := evalshaStats(b, s)
	for i := range b.N {
		if _, err := s.store.Complete(ctx, &idem.CompleteParams{Scope: "bench", Key: key(i), Token: tokens[i], Outcome: outcome}); err != nil {
			b.Fatal(err)
		}
	}
	_, u2 := evalshaStats(b, s)
	for i := range b.N {
		res, err := s.store.Begin(ctx, &idem.BeginParams{Scope: "bench", Key: key(i), Fingerprint: "f", Lease: idem.DefaultLease, Window: idem.DefaultWindow})
		if err != nil || res.Decision != idem.Replay {
			b.Fatalf("Begin: %+v, %v", res, err)
		}
	}
	c3, u3 := evalshaStats(b, s)
	n := int64(b.N)
	b.ReportMetric(float64(u1-u0)/float64(n), "begin-µs")
	b.ReportMetric(float64(u2-u1)/float64(n), "complete-µs")
	b.ReportMetric(float64(u3-u2)/float64(n), "replay-µs")
	b.ReportMetric(float64(c3-c0-3*n), "other-calls")
}
