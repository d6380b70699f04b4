package workflow_test

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/idemkit/idem/workflow"
)

func TestBackoff(t *testing.T) {
	t.Parallel()
	custom := &workflow.RetryPolicy{InitialBackoff: 100 * time.Millisecond, MaxBackoff: 250 * time.Millisecond, Multiplier: 3}
	tests := []struct {
		name    string
		p       *workflow.RetryPolicy
		attempt int
		rand    float64
		want    time.Duration
	}{
		{"default first", nil, 1, 0, time.Second},
		{"default second", nil, 2, 0, 2 * time.Second},
		{"default third", nil, 3, 0, 4 * time.Second},
		{"default capped", nil, 7, 0, time.Minute},
		{"default huge attempt", nil, 1 << 30, 0, time.Minute},
		{"default full jitter", nil, 1, 1, 800 * time.Millisecond},
		{"default half jitter", nil, 2, 0.5, 1800 * time.Millisecond},
		{"jitter on the cap", nil, 100, 1, 48 * time.Second},
		{"attempt below 1", nil, 0, 0, time.Second},
		{"negative attempt", nil, -5, 0, time.Second},
		{"rand clamped low", nil, 1, -3, time.Second},
		{"rand clamped high", nil, 1, 7, 800 * time.Millisecond},
		{"rand NaN", nil, 1, math.NaN(), time.Second},
		{"zero policy has no jitter", &workflow.RetryPolicy{}, 2, 1, 2 * time.Second},
		{"custom 1", custom, 1, 0, 100 * time.Millisecond},
		{"custom 2 capped", custom, 2, 0, 250 * time.Millisecond},
		{"custom 3 capped", custom, 3, 0.9, 250 * time.Millisecond},
		{"constant", &workflow.RetryPolicy{InitialBackoff: 5 * time.Second, Multiplier: 1}, 9, 0, 5 * time.Second},
		{"full jitter can reach zero", &workflow.RetryPolicy{Jitter: 1}, 1, 1, 0},
	}
	for _, tt := range tests {
		if got := tt.p.Backoff(tt.attempt, tt.rand); got != tt.want {
			t.Errorf("%s: Backoff(%d, %v) = %s, want %s", tt.name, tt.attempt, tt.rand, got, tt.want)
		}
	}
}

// For any attempt and rand, a wait lies between (1-Jitter) and 1 times the
// capped exponential, never above MaxBackoff, and does not shrink from one
// attempt to the next for the same rand.
func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		p := &workflow.RetryPolicy{
			InitialBackoff: time.Duration(1 + rng.IntN(int(time.Second))),
			MaxBackoff:     time.Second + time.Duration(rng.IntN(int(time.Hour))),
			Multiplier:     1 + 4*rng.Float64(),
			Jitter:         rng.Float64(),
		}
		r := rng.Float64()
		prev := time.Duration(0)
		for attempt := 1; attempt <= 40; attempt++ {
			got := p.Backoff(attempt, r)
			exp := math.Min(float64(p.InitialBackoff)*math.Pow(p.Multiplier, float64(attempt-1)), float64(p.MaxBackoff))
			lo := time.Duration(exp*(1-p.Jitter)) - 1
			if got < lo || got > p.MaxBackoff || float64(got) > exp+1 {
				t.Fatalf("%+v Backoff(%d, %v) = %s, want in [%s, %s]", p, attempt, r, got, lo, time.Duration(exp))
			}
			if got < prev {
				t.Fatalf("%+v Backoff(%d, %v) = %s < previous %s", p, attempt, r, got, prev)
			}
			prev = got
		}
	}
}

func TestShouldRetry(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	if !(*workflow.RetryPolicy)(nil).ShouldRetry(1, boom) || !(*workflow.RetryPolicy)(nil).ShouldRetry(2, boom) {
		t.Errorf("default policy does not retry attempts 1 and 2")
	}
	if (*workflow.RetryPolicy)(nil).ShouldRetry(3, boom) {
		t.Errorf("default policy retries after attempt 3")
	}
	if got := (*workflow.RetryPolicy)(nil).Attempts(); got != 3 {
		t.Errorf("default Attempts() = %d, want 3", got)
	}
	if (*workflow.RetryPolicy)(nil).ShouldRetry(1, nil) {
		t.Errorf("retries a nil error")
	}
	perm := fmt.Errorf("charge: %w", workflow.Permanent(boom))
	if (*workflow.RetryPolicy)(nil).ShouldRetry(1, perm) {
		t.Errorf("retries a wrapped permanent error")
	}
	onlyEOF := &workflow.RetryPolicy{MaxAttempts: 10, Retryable: func(err error) bool { return errors.Is(err, io.EOF) }}
	if !onlyEOF.ShouldRetry(9, io.EOF) || onlyEOF.ShouldRetry(10, io.EOF) || onlyEOF.ShouldRetry(1, boom) {
		t.Errorf("Retryable or MaxAttempts ignored")
	}
	if onlyEOF.ShouldRetry(1, workflow.Permanent(io.EOF)) {
		t.Errorf("Retryable overrides Permanent")
	}
	if (&workflow.RetryPolicy{MaxAttempts: 1}).ShouldRetry(1, boom) {
		t.Errorf("MaxAttempts 1 retries")
	}
}

func TestPermanent(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	if workflow.Permanent(nil) != nil {
		t.Errorf("Permanent(nil) != nil")
	}
	p := workflow.Permanent(boom)
	if p.Error() != "boom" || !errors.Is(p, boom) || !workflow.IsPermanent(p) {
		t.Errorf("Permanent(boom) = %q, Is=%v, IsPermanent=%v", p, errors.Is(p, boom), workflow.IsPermanent(p))
	}
	if workflow.IsPermanent(boom) || workflow.IsPermanent(nil) {
		t.Errorf("IsPermanent true for an unmarked error")
	}
}
