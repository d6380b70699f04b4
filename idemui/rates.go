package idemui

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// Rates defaults.
const (
	// DefaultRatesInterval is how often Rates closes a sample.
	DefaultRatesInterval = 10 * time.Second
	// DefaultRatesKeep is how far back Rates keeps samples: 6 hours.
	DefaultRatesKeep = 6 * time.Hour
	// maxRateScopes bounds the scopes Rates keeps totals for.
	maxRateScopes = 1024
)

// RatesConfig configures Rates.
type RatesConfig struct {
	// Interval is the length of one sample (default DefaultRatesInterval).
	Interval time.Duration
	// Keep is how far back samples are kept (default DefaultRatesKeep):
	// the ring holds Keep/Interval samples.
	Keep time.Duration
	// Clock times the samples (default the system clock); tests pass an
	// idem.ManualClock.
	Clock idem.Clock
}

// Sample is what the ledger did during one interval, ending at At.
type Sample struct {
	At time.Time `json:"at"`
	// Begins by decision; Begins is their sum (with errors).
	Begins   int64 `json:"begins"`
	Acquired int64 `json:"acquired"`
	Replayed int64 `json:"replayed"`
	InFlight int64 `json:"in_flight"`
	Mismatch int64 `json:"mismatch"`
	// Takeovers are acquired Begins that took over an expired lease.
	Takeovers int64 `json:"takeovers"`
	// Completed are successful completes; LeaseLost are operations
	// refused because the owner's lease was lost; Errors are operations
	// the store failed.
	Completed int64 `json:"completed"`
	LeaseLost int64 `json:"lease_lost"`
	Errors    int64 `json:"errors"`
	// TTISum and TTIMax are the sum and the largest of the times to
	// idempotence (first attempt to stored outcome) of Completed.
	TTISum time.Duration `json:"tti_sum_ns"`
	TTIMax time.Duration `json:"tti_max_ns"`
}

// DuplicateRate is the share of Begins that found the key done or in
// flight (replayed or in_flight), 0 without Begins.
func (s *Sample) DuplicateRate() float64 {
	if s.Begins == 0 {
		return 0
	}
	return float64(s.Replayed+s.InFlight) / float64(s.Begins)
}

// MeanTTI is the mean time to idempotence of the sample's completes, 0
// without any.
func (s *Sample) MeanTTI() time.Duration {
	if s.Completed == 0 {
		return 0
	}
	return s.TTISum / time.Duration(s.Completed)
}

func (s *Sample) add(ev *idem.Event) {
	switch ev.Op {
	case idem.OpBegin:
		s.Begins++
		switch {
		case ev.Err != nil:
			s.Errors++
		case ev.Decision == idem.Acquired:
			s.Acquired++
		case ev.Decision == idem.Replay:
			s.Replayed++
		case ev.Decision == idem.InFlight:
			s.InFlight++
		case ev.Decision == idem.Mismatch:
			s.Mismatch++
		}
		if ev.Takeover {
			s.Takeovers++
		}
	case idem.OpSweep:
	default:
		switch {
		case ev.Err == nil && ev.Op == idem.OpComplete:
			s.Completed++
			tti := ev.TimeToIdempotence
			s.TTISum += tti
			s.TTIMax = max(s.TTIMax, tti)
		case errors.Is(ev.Err, idem.ErrLeaseLost):
			s.LeaseLost++
		case ev.Err != nil && !errors.Is(ev.Err, idem.ErrCompleted):
			s.Errors++
		}
	}
}

// ScopeTotals counts one scope's Begins since the process started.
type ScopeTotals struct {
	Scope    string
	Begins   int64
	Acquired int64
	Replayed int64
	InFlight int64
}

// Rates keeps the ledger's recent rates in process: an idem.Observer
// that counts every operation into the current sample, and a ring of the
// samples of the last Keep, one closed every Interval by Run (or Sample).
// It needs no database: a restart starts it empty. Safe for concurrent
// use.
type Rates struct {
	interval time.Duration
	clock    idem.Clock

	mu     sync.Mutex
	cur    Sample
	ring   []Sample
	next   int // where the next sample goes
	filled bool
	scopes map[string]*ScopeTotals
}

var _ idem.Observer = (*Rates)(nil)

// NewRates returns empty Rates. A nil cfg takes every default.
func NewRates(cfg *RatesConfig) *Rates {
	var c RatesConfig
	if cfg != nil {
		c = *cfg
	}
	if c.Interval <= 0 {
		c.Interval = DefaultRatesInterval
	}
	if c.Keep <= 0 {
		c.Keep = DefaultRatesKeep
	}
	if c.Clock == nil {
		c.Clock = idem.SystemClock{}
	}
	n := max(int(c.Keep/c.Interval), 2)
	return &Rates{interval: c.Interval, clock: c.Clock, ring: make([]Sample, n), scopes: map[string]*ScopeTotals{}}
}

// Interval is the length of one sample.
func (r *Rates) Interval() time.Duration { return r.interval }

// Observe counts one ledger operation in the current sample.
func (r *Rates) Observe(_ context.Context, ev *idem.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur.add(ev)
	if ev.Op != idem.OpBegin || ev.Scope == "" {
		return
	}
	t := r.scopes[ev.Scope]
	if t == nil {
		if len(r.scopes) >= maxRateScopes {
			return
		}
		t = &ScopeTotals{Scope: ev.Scope}
		r.scopes[ev.Scope] = t
	}
	t.Begins++
	if ev.Err == nil {
		switch ev.Decision {
		case idem.Acquired:
			t.Acquired++
		case idem.Replay:
			t.Replayed++
		case idem.InFlight:
			t.InFlight++
		}
	}
}

// Sample closes the current sample at the clock's now and starts the
// next; the oldest sample beyond Keep is dropped.
func (r *Rates) Sample() {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.cur
	s.At = now
	r.cur = Sample{}
	r.ring[r.next] = s
	r.next++
	if r.next == len(r.ring) {
		r.next, r.filled = 0, true
	}
}

// Run closes a sample every Interval on the clock until ctx ends.
func (r *Rates) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.clock.After(r.interval):
			r.Sample()
		}
	}
}

// Samples returns the closed samples, oldest first.
func (r *Rates) Samples() []Sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Sample
	if r.filled {
		out = append(out, r.ring[r.next:]...)
	}
	return append(out, r.ring[:r.next]...)
}

// Current returns the sample in progress: what happened since the last
// closed sample, At zero.
func (r *Rates) Current() Sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// Scopes returns the Begin totals of every scope seen since the process
// started (up to 1024 scopes), sorted by scope.
func (r *Rates) Scopes() []ScopeTotals {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]ScopeTotals, 0, len(r.scopes))
	for _, t := range r.scopes {
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Scope < out[j].Scope })
	return out
}
