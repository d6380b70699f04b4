package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
)

// The forwarder's classification of answers: 2xx success; 408, 429 and
// 5xx retryable with Retry-After kept; other 4xx permanent; no answer
// retryable.
func TestForwarderClassifies(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status, _ := strconv.Atoi(r.URL.Query().Get("status"))
		if ra := r.URL.Query().Get("retry-after"); ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	for _, tc := range []struct {
		status     int
		retryAfter string
		wantErr    bool
		permanent  bool
		wantDelay  time.Duration
	}{
		{200, "", false, false, 0},
		{204, "", false, false, 0},
		{400, "", true, true, 0},
		{404, "", true, true, 0},
		{409, "", true, true, 0},
		{422, "", true, true, 0},
		{408, "", true, false, 0},
		{429, "7", true, false, 7 * time.Second},
		{500, "", true, false, 0},
		{503, "2", true, false, 2 * time.Second},
		{503, "99999", true, false, maxHonouredRetryAfter},
		{503, "soon", true, false, 0},
	} {
		u, _ := url.Parse(srv.URL + "/?status=" + strconv.Itoa(tc.status) + "&retry-after=" + tc.retryAfter)
		f := &forwarder{to: u, client: srv.Client(), stats: &consumeStats{decisions: map[string]int64{}, requests: map[string]int64{}}}
		var slot time.Duration
		ctx := context.WithValue(idem.WithKey(context.Background(), "k"), retryAfterKey{}, &slot)
		err := f.handle(ctx, &messaging.Message{ID: "k", Payload: []byte("p")})
		if (err != nil) != tc.wantErr || messaging.IsPermanent(err) != tc.permanent || slot != tc.wantDelay {
			t.Errorf("status %d retry-after %q: err %v (permanent %v), delay %s; want error %v, permanent %v, delay %s",
				tc.status, tc.retryAfter, err, messaging.IsPermanent(err), slot, tc.wantErr, tc.permanent, tc.wantDelay)
		}
	}
	// No answer: retryable.
	u, _ := url.Parse("http://127.0.0.1:1/")
	f := &forwarder{to: u, client: &http.Client{Timeout: time.Second}, stats: &consumeStats{decisions: map[string]int64{}, requests: map[string]int64{}}}
	err := f.handle(context.Background(), &messaging.Message{ID: "k"})
	var se statusError
	if err == nil || messaging.IsPermanent(err) || errors.As(err, &se) {
		t.Errorf("unreachable --to: %v; want a retryable transport error", err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"":                              0,
		"0":                             0,
		"-3":                            0,
		"3":                             3 * time.Second,
		"Fri, 02 Jan 2026 03:04:35 GMT": 30 * time.Second,
		"Fri, 02 Jan 2026 03:00:00 GMT": 0,
		"Fri, 02 Jan 2027 03:00:00 GMT": maxHonouredRetryAfter,
		"x":                             0,
	} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", v, got, want)
		}
	}
}
