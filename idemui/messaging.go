package idemui

import (
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/messaging"
)

// Messaging page bounds.
const (
	// msgScanLimit bounds the records read per scope to count them;
	// beyond it the counts say "at least".
	msgScanLimit = 10000
	// deadShown is how many dead letters the page lists per scope.
	deadShown = 20
	// outboxLimit bounds the unsent outbox rows counted.
	outboxLimit = 1000
)

// The Meta a messaging.Consumer stores on a key's outcome.
const (
	metaKind  = "messaging"  // "handled" or "dead-letter"
	metaError = "idem.error" // why a message was dead-lettered
)

type deadLetter struct {
	Key       string
	Completed time.Time
	Error     string
}

type consumerData struct {
	Scope      string
	Allowed    bool
	Lister     bool
	Handled    int
	Dead       int
	Pending    int
	Released   int
	Capped     bool
	Attempts   int // failed attempts recorded (redeliveries)
	AttemptsOK bool
	Duplicates int64 // Begins answered replay or in_flight by this process
	Seen       bool  // Rates saw the scope
	DeadList   []deadLetter
	Err        string
}

type outboxData struct {
	Rows   []messaging.OutboxRow
	Count  int
	Capped bool
	Err    string
	// Oldest is when the oldest unsent row was written (RFC 3339, UTC)
	// and Age how long ago, when the outbox tells (messaging.UnsentAger).
	Oldest, Age string
}

type messagingData struct {
	Consumers []*consumerData
	Outbox    *outboxData
	HasOutbox bool
	All       bool
	Rates     bool
}

// messagingPage serves the Messaging page: per consumer scope the keys
// handled, dead-lettered and in flight, the failed attempts recorded
// (redeliveries) and the duplicates this process answered; the dead
// letters; and the outbox's unsent rows.
func (h *Handler) messagingPage(w http.ResponseWriter, r *http.Request, s *session) {
	scopes := slices.Clone(h.cfg.MessagingScopes)
	if sc := r.URL.Query().Get("scope"); sc != "" && !slices.Contains(scopes, sc) {
		scopes = append(scopes, sc)
	}
	d := &messagingData{HasOutbox: h.cfg.Outbox != nil, All: s.grant.All(), Rates: h.cfg.Rates != nil}
	totals := map[string]ScopeTotals{}
	if h.cfg.Rates != nil {
		for _, t := range h.cfg.Rates.Scopes() {
			totals[t.Scope] = t
		}
	}
	lister, isLister := h.cfg.Store.(idem.Lister)
	for _, sc := range scopes {
		c := &consumerData{Scope: sc, Allowed: s.grant.Allows(sc), Lister: isLister}
		d.Consumers = append(d.Consumers, c)
		if !c.Allowed || !isLister {
			continue
		}
		if t, ok := totals[sc]; ok {
			c.Seen, c.Duplicates = true, t.Replayed+t.InFlight
		}
		if err := idem.ValidateKey(sc, "k"); err != nil {
			c.Err = errText(err)
			continue
		}
		c.Capped = scanScope(r, lister, sc, func(rec *idem.Record) {
			switch rec.State {
			case idem.StatePending:
				c.Pending++
			case idem.StateReleased:
				c.Released++
			case idem.StateCompleted:
				if rec.Outcome != nil && rec.Outcome.Meta[metaKind] == "dead-letter" {
					c.Dead++
					c.DeadList = append(c.DeadList, deadLetter{Key: rec.Key, Completed: rec.Completed, Error: rec.Outcome.Meta[metaError]})
				} else {
					c.Handled++
				}
			}
		}, &c.Err)
		attempts := sc + "/attempts"
		if s.grant.Allows(attempts) {
			c.AttemptsOK = true
			if scanScope(r, lister, attempts, func(*idem.Record) { c.Attempts++ }, &c.Err) {
				c.Capped = true
			}
		}
		slices.SortFunc(c.DeadList, func(a, b deadLetter) int { return b.Completed.Compare(a.Completed) })
		if len(c.DeadList) > deadShown {
			c.DeadList = c.DeadList[:deadShown]
		}
	}
	if h.cfg.Outbox != nil && s.grant.All() {
		o := &outboxData{}
		// Due at a far time: every unsent row, backoffs included.
		rows, _, err := h.cfg.Outbox.Due(r.Context(), h.clock.Now().Add(100*365*24*time.Hour), outboxLimit+1)
		if err != nil {
			o.Err = "The outbox could not be read (is its table migrated?)."
		}
		o.Count, o.Capped = len(rows), len(rows) > outboxLimit
		if o.Capped {
			o.Count = outboxLimit
		}
		o.Rows = rows[:min(len(rows), deadShown)]
		if a, ok := h.cfg.Outbox.(messaging.UnsentAger); ok && err == nil {
			if at, err := a.OldestUnsent(r.Context()); err != nil {
				o.Err = "The outbox's oldest row could not be read."
			} else if !at.IsZero() {
				o.Oldest = at.UTC().Format(time.RFC3339)
				o.Age = max(h.clock.Now().Sub(at), 0).Round(time.Second).String()
			}
		}
		d.Outbox = o
	}
	h.render(w, r, http.StatusOK, "messaging", &page{Title: "Messaging", Data: d}, s)
}

// scanScope calls fn for each record of scope, up to msgScanLimit, and
// reports whether it stopped there.
func scanScope(r *http.Request, lister idem.Lister, scope string, fn func(*idem.Record), errOut *string) (capped bool) {
	cursor, n := "", 0
	for {
		res, err := lister.List(r.Context(), &idem.ListParams{Scope: scope, Cursor: cursor, Limit: 1000})
		if err != nil {
			*errOut = "The store did not answer for scope " + scope + "."
			return false
		}
		for _, rec := range res.Records {
			fn(rec)
		}
		n += len(res.Records)
		if res.NextCursor == "" {
			return false
		}
		if n >= msgScanLimit {
			return true
		}
		cursor = res.NextCursor
	}
}

type ratesData struct {
	Enabled  bool
	Interval time.Duration
	Samples  int
	Charts   []string
	Last     *Sample
	Totals   Sample
}

// rates serves the Rates page: the duplicate rate, outcomes by kind and
// the time to idempotence over the samples kept, as SVG charts.
func (h *Handler) rates(w http.ResponseWriter, r *http.Request, s *session) {
	d := &ratesData{Enabled: h.cfg.Rates != nil}
	if d.Enabled {
		samples := h.cfg.Rates.Samples()
		d.Interval, d.Samples = h.cfg.Rates.Interval(), len(samples)
		times := make([]time.Time, len(samples))
		dup := series{Name: "duplicate rate"}
		kinds := []series{{Name: "acquired"}, {Name: "replayed"}, {Name: "in flight"}, {Name: "mismatch"}, {Name: "lease lost"}, {Name: "takeover"}}
		mean, worst := series{Name: "mean"}, series{Name: "max"}
		cur := h.cfg.Rates.Current()
		d.Totals = total(append(samples, cur))
		for i := range samples {
			sm := &samples[i]
			times[i] = sm.At
			dup.Values = append(dup.Values, sm.DuplicateRate())
			for k, v := range []int64{sm.Acquired, sm.Replayed, sm.InFlight, sm.Mismatch, sm.LeaseLost, sm.Takeovers} {
				kinds[k].Values = append(kinds[k].Values, float64(v))
			}
			mean.Values = append(mean.Values, sm.MeanTTI().Seconds())
			worst.Values = append(worst.Values, sm.TTIMax.Seconds())
		}
		if len(samples) > 0 {
			d.Last = &samples[len(samples)-1]
		}
		d.Charts = []string{
			lineChart("Duplicate rate (replayed + in flight, of begins)", "%", times, []series{dup}),
			lineChart("Outcomes by kind (per "+d.Interval.String()+")", "", times, kinds),
			lineChart("Time to idempotence (first attempt to stored outcome)", "s", times, []series{mean, worst}),
		}
	}
	h.render(w, r, http.StatusOK, "rates", &page{Title: "Rates", Data: d}, s)
}

// total adds samples up (At is left zero).
func total(samples []Sample) Sample {
	var t Sample
	for _, s := range samples {
		t.Begins, t.Acquired, t.Replayed, t.InFlight, t.Mismatch = t.Begins+s.Begins, t.Acquired+s.Acquired, t.Replayed+s.Replayed, t.InFlight+s.InFlight, t.Mismatch+s.Mismatch
		t.Takeovers, t.Completed, t.LeaseLost, t.Errors, t.TTISum = t.Takeovers+s.Takeovers, t.Completed+s.Completed, t.LeaseLost+s.LeaseLost, t.Errors+s.Errors, t.TTISum+s.TTISum
		t.TTIMax = max(t.TTIMax, s.TTIMax)
	}
	return t
}

// ratesJSON serves the samples as JSON, for scripts.
func (h *Handler) ratesJSON(w http.ResponseWriter, _ *http.Request, _ *session) {
	samples := []Sample{}
	if h.cfg.Rates != nil {
		samples = h.cfg.Rates.Samples()
	}
	body, _ := json.Marshal(map[string]any{"samples": samples})
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(body, '\n'))
}
