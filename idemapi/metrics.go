package idemapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
)

// Outcomes of an operation in idem_operations_total. A Begin counts under
// its decision; the other operations under what became of them.
const (
	outcomeCompleted        = "completed"         // complete stored the outcome
	outcomeReleased         = "released"          // release gave the key back
	outcomeExtended         = "extended"          // extend moved the lease
	outcomeCheckpointed     = "checkpointed"      // checkpoint was saved
	outcomeLeaseLost        = "lease_lost"        // the token was stale
	outcomeAlreadyCompleted = "already_completed" // the key held an outcome already
	outcomeError            = "error"             // the store failed
)

var opOutcomes = map[idem.Op][]string{
	idem.OpBegin:      {string(idem.Acquired), string(idem.Replay), string(idem.InFlight), string(idem.Mismatch), outcomeError},
	idem.OpComplete:   {outcomeCompleted, outcomeLeaseLost, outcomeAlreadyCompleted, outcomeError},
	idem.OpRelease:    {outcomeReleased, outcomeLeaseLost, outcomeAlreadyCompleted, outcomeError},
	idem.OpExtend:     {outcomeExtended, outcomeLeaseLost, outcomeAlreadyCompleted, outcomeError},
	idem.OpCheckpoint: {outcomeCheckpointed, outcomeLeaseLost, outcomeAlreadyCompleted, outcomeError},
}

var successOutcome = map[idem.Op]string{
	idem.OpComplete:   outcomeCompleted,
	idem.OpRelease:    outcomeReleased,
	idem.OpExtend:     outcomeExtended,
	idem.OpCheckpoint: outcomeCheckpointed,
}

// Bucket upper bounds in seconds. Time to idempotence spans a fast call
// (milliseconds) to a workflow step retried over hours.
var (
	ttiBuckets     = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400}
	requestBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
)

// histogram is a Prometheus histogram with fixed buckets, safe for
// concurrent use without a lock.
type histogram struct {
	bounds []float64
	counts []atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sum    atomic.Uint64   // float64 bits
}

func newHistogram(bounds []float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

func (h *histogram) observe(v float64) {
	i, _ := slices.BinarySearch(h.bounds, v) // first bound >= v: le is inclusive
	h.counts[i].Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// write writes the bucket, sum and count lines; labels (may be empty) come
// first in each label set, like `route="begin"`.
func (h *histogram) write(w io.Writer, name, labels string) {
	sep := ""
	if labels != "" {
		sep = ","
	}
	var cum uint64
	for i, b := range h.bounds {
		cum += h.counts[i].Load()
		fmt.Fprintf(w, "%s_bucket{%s%sle=%q} %d\n", name, labels, sep, formatFloat(b), cum)
	}
	cum += h.counts[len(h.bounds)].Load()
	fmt.Fprintf(w, "%s_bucket{%s%sle=\"+Inf\"} %d\n", name, labels, sep, cum)
	braced := ""
	if labels != "" {
		braced = "{" + labels + "}"
	}
	fmt.Fprintf(w, "%s_sum%s %s\n", name, braced, formatFloat(math.Float64frombits(h.sum.Load())))
	fmt.Fprintf(w, "%s_count%s %d\n", name, braced, cum)
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// labelValue escapes a label value for the text format.
func labelValue(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

type opOutcome struct {
	op      idem.Op
	outcome string
}

// Metrics is the server's idem.Observer and the source of GET /metrics,
// and the same machinery for other handlers (idem proxy): ledger
// operations plus HTTP request series by route, written in the Prometheus
// text format. Every series is created up front, so recording takes no
// lock.
type Metrics struct {
	ops       map[opOutcome]*atomic.Uint64
	takeovers atomic.Uint64
	tti       *histogram
	routes    map[string]*routeMetrics // by route name; fixed
	names     []string                 // route names, sorted
}

// routeMetrics are the HTTP series of one route.
type routeMetrics struct {
	duration *histogram
	codes    [600]atomic.Uint64 // by status code
}

var _ idem.Observer = (*Metrics)(nil)

func newMetrics(routeNames []string) *Metrics {
	m := &Metrics{
		ops:    map[opOutcome]*atomic.Uint64{},
		tti:    newHistogram(ttiBuckets),
		routes: map[string]*routeMetrics{},
		names:  slices.Sorted(slices.Values(routeNames)),
	}
	for _, name := range routeNames {
		m.routes[name] = &routeMetrics{duration: newHistogram(requestBuckets)}
	}
	for op, outcomes := range opOutcomes {
		for _, o := range outcomes {
			m.ops[opOutcome{op, o}] = new(atomic.Uint64)
		}
	}
	return m
}

// Observe counts one ledger operation.
func (m *Metrics) Observe(_ context.Context, ev *idem.Event) {
	outcome := outcomeError
	switch {
	case ev.Err == nil && ev.Op == idem.OpBegin:
		outcome = string(ev.Decision)
	case ev.Err == nil:
		outcome = successOutcome[ev.Op]
	case errors.Is(ev.Err, idem.ErrLeaseLost):
		outcome = outcomeLeaseLost
	case errors.Is(ev.Err, idem.ErrCompleted):
		outcome = outcomeAlreadyCompleted
	}
	if c, ok := m.ops[opOutcome{ev.Op, outcome}]; ok {
		c.Add(1)
	}
	if ev.Takeover {
		m.takeovers.Add(1)
	}
	if ev.Op == idem.OpComplete && ev.Err == nil {
		m.tti.observe(ev.TimeToIdempotence.Seconds())
	}
}

// request records one HTTP request.
func (m *Metrics) request(route string, status int, d time.Duration) {
	r, ok := m.routes[route]
	if !ok {
		return
	}
	r.duration.observe(d.Seconds())
	if status >= 0 && status < len(r.codes) {
		r.codes[status].Add(1)
	}
}

// ledgerSize is what idem_ledger_records reports: the records by state
// when byState is set, else total, or nothing when total is negative.
type ledgerSize struct {
	total   int64
	byState map[idem.State]int64
}

// sizeStates are the states of idem_ledger_records' lines, in their order.
var sizeStates = []idem.State{idem.StatePending, idem.StateCompleted, idem.StateReleased}

// sizeTimeout bounds how long /metrics waits for the store's count.
const sizeTimeout = 5 * time.Second

// readSize reads the ledger size of store: by state from an
// idem.StateSizer, the total from an idem.Sizer, nothing from a store
// that is neither or that fails or takes longer than sizeTimeout.
func readSize(ctx context.Context, store idem.Store) ledgerSize {
	ctx, cancel := context.WithTimeout(ctx, sizeTimeout)
	defer cancel()
	if ss, ok := store.(idem.StateSizer); ok {
		if by, err := ss.SizeByState(ctx); err == nil {
			return ledgerSize{byState: by}
		}
		return ledgerSize{total: -1}
	}
	if sizer, ok := store.(idem.Sizer); ok {
		if n, err := sizer.Size(ctx); err == nil {
			return ledgerSize{total: n}
		}
	}
	return ledgerSize{total: -1}
}

// write writes every series in the Prometheus text format (version 0.0.4).
func (m *Metrics) write(out io.Writer, size ledgerSize) error {
	w := bufio.NewWriter(out)

	fmt.Fprintln(w, "# HELP idem_operations_total Ledger operations by op and outcome.")
	fmt.Fprintln(w, "# TYPE idem_operations_total counter")
	keys := make([]opOutcome, 0, len(m.ops))
	for k := range m.ops {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b opOutcome) int {
		return strings.Compare(string(a.op)+"\x00"+a.outcome, string(b.op)+"\x00"+b.outcome)
	})
	for _, k := range keys {
		fmt.Fprintf(w, "idem_operations_total{op=%s,outcome=%s} %d\n", labelValue(string(k.op)), labelValue(k.outcome), m.ops[k].Load())
	}

	fmt.Fprintln(w, "# HELP idem_lease_takeovers_total Begins that took over an expired lease.")
	fmt.Fprintln(w, "# TYPE idem_lease_takeovers_total counter")
	fmt.Fprintf(w, "idem_lease_takeovers_total %d\n", m.takeovers.Load())

	fmt.Fprintln(w, "# HELP idem_time_to_idempotence_seconds Time from a key's first attempt to its stored outcome.")
	fmt.Fprintln(w, "# TYPE idem_time_to_idempotence_seconds histogram")
	m.tti.write(w, "idem_time_to_idempotence_seconds", "")

	if size.byState != nil || size.total >= 0 {
		fmt.Fprintln(w, "# HELP idem_ledger_records Records held by the store (may be approximate).")
		fmt.Fprintln(w, "# TYPE idem_ledger_records gauge")
		if size.byState != nil {
			for _, st := range sizeStates {
				fmt.Fprintf(w, "idem_ledger_records{state=%s} %d\n", labelValue(string(st)), size.byState[st])
			}
		} else {
			fmt.Fprintf(w, "idem_ledger_records %d\n", size.total)
		}
	}

	names := m.names
	fmt.Fprintln(w, "# HELP idem_http_requests_total HTTP requests by route and status code.")
	fmt.Fprintln(w, "# TYPE idem_http_requests_total counter")
	for _, name := range names {
		r := m.routes[name]
		for code := range r.codes {
			if n := r.codes[code].Load(); n > 0 {
				fmt.Fprintf(w, "idem_http_requests_total{route=%s,code=\"%d\"} %d\n", labelValue(name), code, n)
			}
		}
	}

	fmt.Fprintln(w, "# HELP idem_request_duration_seconds HTTP request durations by route.")
	fmt.Fprintln(w, "# TYPE idem_request_duration_seconds histogram")
	for _, name := range names {
		m.routes[name].duration.write(w, "idem_request_duration_seconds", "route="+labelValue(name))
	}
	return w.Flush()
}

// NewMetrics returns Metrics with the HTTP series of routeNames.
func NewMetrics(routeNames []string) *Metrics { return newMetrics(routeNames) }

// Request records one HTTP request of a route given to NewMetrics.
func (m *Metrics) Request(route string, status int, d time.Duration) { m.request(route, status, d) }

// Write writes every series; size is the ledger size, or negative when the
// store cannot tell.
func (m *Metrics) Write(w io.Writer, size int64) error { return m.write(w, ledgerSize{total: size}) }

// WriteStore writes every series with the ledger size read from store, as
// GET /metrics does: idem_ledger_records has a line per state (label
// state: pending, completed, released) when store is an idem.StateSizer,
// one line without labels when it is an idem.Sizer only, and none when it
// is neither or its count fails or takes longer than 5 seconds. Either
// way sum(idem_ledger_records) is the total.
func (m *Metrics) WriteStore(ctx context.Context, w io.Writer, store idem.Store) error {
	return m.write(w, readSize(ctx, store))
}
