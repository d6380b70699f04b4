package idemhttp

import (
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

var retryAfterNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"7", 7 * time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"Fri, 02 Jan 2026 03:04:35 GMT", 30 * time.Second, true},
		{"Friday, 02-Jan-26 03:04:35 GMT", 30 * time.Second, true}, // RFC 850
		{"Fri Jan  2 03:04:35 2026", 30 * time.Second, true},       // asctime
		{"Thu, 01 Jan 2026 00:00:00 GMT", 0, true},                 // past
		{"99999999999999999999999", time.Duration(1<<63 - 1), true},
		{"", 0, false},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"7s", 0, false},
		{"soon", 0, false},
	} {
		got, err := parseRetryAfter(tc.in, retryAfterNow)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %s, %v; want %s, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("parseRetryAfter(%q): %v does not wrap ErrInvalid", tc.in, err)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "7", "120", "Fri, 02 Jan 2026 03:04:35 GMT", "Friday, 02-Jan-26 03:04:35 GMT",
		"Fri Jan  2 03:04:35 2026", "", "-1", "1e3", "99999999999999999999", " 5 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseRetryAfter(s, retryAfterNow)
		if err != nil {
			if !errors.Is(err, idem.ErrInvalid) {
				t.Fatalf("%q: %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if d < 0 {
			t.Fatalf("%q: negative wait %s", s, d)
		}
		// Delay-seconds round-trip.
		if n, err := strconv.ParseInt(s, 10, 32); err == nil && n >= 0 && d != time.Duration(n)*time.Second {
			t.Fatalf("%q: %s, want %ds", s, d, n)
		}
		h := http.Header{"Retry-After": {s}}
		if got, ok := retryAfter(h, retryAfterNow); ok && got != d {
			t.Fatalf("%q: retryAfter %s, parseRetryAfter %s", s, got, d)
		}
	})
}

func TestRetryBudgetWindow(t *testing.T) {
	t.Parallel()
	b := newRetryBudget(0.5, 2, 10*time.Second)
	now := retryAfterNow
	for range 10 {
		b.request(now)
	}
	// 0.5*10 + 2 = 7 retries.
	for i := range 7 {
		if !b.allowRetry(now) {
			t.Fatalf("retry %d refused", i+1)
		}
	}
	if b.allowRetry(now) {
		t.Fatal("8th retry allowed")
	}
	// Half a window later the same counts still apply.
	now = now.Add(5 * time.Second)
	if b.allowRetry(now) {
		t.Fatal("retry allowed within the window")
	}
	b.request(now)
	b.request(now) // 12 requests: 0.5*12 + 2 = 8
	if !b.allowRetry(now) || b.allowRetry(now) {
		t.Fatal("want exactly one more retry after two more requests")
	}
	// Once the first slot has left the window, only the later one counts:
	// 2 requests and 1 retry: 0.5*2 + 2 = 3, so 2 more.
	now = now.Add(5*time.Second + time.Second)
	if !b.allowRetry(now) || !b.allowRetry(now) || b.allowRetry(now) {
		t.Fatal("want exactly two retries once the first slot expired")
	}
	// Long idle: a fresh window with the minimum only.
	now = now.Add(time.Hour)
	if !b.allowRetry(now) || !b.allowRetry(now) || b.allowRetry(now) {
		t.Fatal("want exactly BudgetMin retries in an empty window")
	}
}

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	cfg, err := (&TransportConfig{BaseDelay: time.Millisecond, MaxDelay: time.Hour}).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	tr := &transport{cfg: cfg}
	for attempt := 1; attempt < 200; attempt++ {
		bound := time.Hour
		if attempt-1 < 40 {
			bound = min(time.Millisecond<<(attempt-1), time.Hour)
		}
		if d := tr.backoff(attempt); d < 0 || d >= bound {
			t.Fatalf("attempt %d: backoff %s, want in [0, %s)", attempt, d, bound)
		}
	}
}
