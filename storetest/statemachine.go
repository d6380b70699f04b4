package storetest

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/idemkit/idem"
)

// testStateMachine drives one store with random sequences of every
// operation (and, on a ManualClock, clock moves) and compares each answer
// with the model. Every rapid iteration works in a scope of its own; Sweep
// is store-wide, so only the own scope's effects are compared.
func testStateMachine(t *testing.T, e *env) { checkStateMachine(t, e) }

func checkStateMachine(t rapid.TB, e *env) { rapid.Check(t, stateMachine(e)) }

// stateMachine is the rapid property: one random sequence of operations in
// a fresh scope of e's store.
func stateMachine(e *env) func(*rapid.T) {
	var iteration atomic.Int64
	return func(rt *rapid.T) {
		m := &machine{
			e:      e,
			t:      rt,
			scope:  e.scope(fmt.Sprintf("machine-%d", iteration.Add(1))),
			keys:   []string{"k0", "k1", "k2"},
			states: map[string]keyState{},
			tokens: map[string][]int64{},
		}
		actions := map[string]func(*rapid.T){
			"Begin":      m.begin,
			"Complete":   m.owned(opComplete),
			"Release":    m.owned(opRelease),
			"Extend":     m.owned(opExtend),
			"Checkpoint": m.owned(opCheckpoint),
			"Get":        m.get,
			"Delete":     m.delete,
			"Sweep":      m.sweep,
		}
		if e.manual != nil {
			actions["Advance"] = m.advance
		}
		rt.Repeat(actions)
	}
}

type machine struct {
	e      *env
	t      *rapid.T
	scope  string
	keys   []string
	states map[string]keyState
	tokens map[string][]int64 // every token each key had, for stale ones
}

// durations are long on the real clock, where the suite cannot move time:
// nothing expires during a run there.
func (m *machine) durations(t *rapid.T) (lease, window, retention time.Duration) {
	if m.e.manual == nil {
		return time.Hour, 2 * time.Hour, time.Duration(rapid.SampledFrom([]int{0, 3}).Draw(t, "retention")) * time.Hour
	}
	lease = rapid.SampledFrom([]time.Duration{time.Second, 3 * time.Second}).Draw(t, "lease")
	window = rapid.SampledFrom([]time.Duration{2 * time.Second, 5 * time.Second}).Draw(t, "window")
	retention = rapid.SampledFrom([]time.Duration{0, 8 * time.Second}).Draw(t, "retention")
	return lease, window, retention
}

// now is the store's clock as the model counts it: on a ManualClock the
// time since the suite's start; on the real clock always 0, where the long
// leases make the difference irrelevant.
func (m *machine) now() int64 {
	if m.e.manual == nil {
		return 0
	}
	return int64(m.e.manual.Now().Sub(start))
}

func (m *machine) run(t *rapid.T, op modelOp) modelResult {
	op.Now = m.now()
	op.ExactTime = m.e.manual != nil
	res, err := apply(m.e, m.scope, op, start)
	if err != nil {
		t.Fatalf("%s: %v", describeOp(op, res), err)
	}
	s := m.states[op.Key]
	ok, next, why := step(s, op, res)
	if !ok {
		t.Fatalf("%s: %s\n  answer: %+v\n  model:  %+v", describeOp(op, res), why, res, s)
	}
	m.states[op.Key] = next
	if op.Kind == opBegin && res.Decision == idem.Acquired {
		m.tokens[op.Key] = append(m.tokens[op.Key], res.Token)
	}
	return res
}

func (m *machine) begin(t *rapid.T) {
	op := modelOp{Kind: opBegin, Key: rapid.SampledFrom(m.keys).Draw(t, "key"),
		Fingerprint: rapid.SampledFrom([]string{"fa", "fb"}).Draw(t, "fingerprint")}
	op.Lease, op.Window, op.Retention = m.durations(t)
	m.run(t, op)
}

// token picks the key's current token most of the time, else a stale one
// or one never issued.
func (m *machine) token(t *rapid.T, key string) int64 {
	cands := append([]int64{}, m.tokens[key]...)
	if cur := m.states[key].Rec.Token; cur > 0 {
		cands = append(cands, cur, cur, cur)
	}
	cands = append(cands, m.states[key].MaxToken+1000)
	return rapid.SampledFrom(cands).Draw(t, "token")
}

func (m *machine) owned(kind opKind) func(*rapid.T) {
	return func(t *rapid.T) {
		key := rapid.SampledFrom(m.keys).Draw(t, "key")
		op := modelOp{Kind: kind, Key: key, Token: m.token(t, key)}
		switch kind {
		case opComplete:
			op.Data = rapid.SampledFrom([]string{"", "ok", "\x00\xff binary"}).Draw(t, "data")
			if rapid.Bool().Draw(t, "meta") {
				op.MetaMap = map[string]string{"status": rapid.SampledFrom([]string{"200", "500"}).Draw(t, "status")}
				op.Meta = encodeMeta(op.MetaMap)
			}
		case opExtend:
			op.Lease, _, _ = m.durations(t)
		case opCheckpoint:
			op.Point = rapid.SampledFrom([]string{"p1", "p2"}).Draw(t, "point")
			op.Data = rapid.SampledFrom([]string{"", "state", "\x00\x01"}).Draw(t, "checkpoint data")
		}
		m.run(t, op)
	}
}

func (m *machine) get(t *rapid.T) {
	m.run(t, modelOp{Kind: opGet, Key: rapid.SampledFrom(m.keys).Draw(t, "key")})
}

func (m *machine) delete(t *rapid.T) {
	m.run(t, modelOp{Kind: opDelete, Key: rapid.SampledFrom(m.keys).Draw(t, "key")})
}

// sweep removes, by the model, every own record that is due, and reads
// each key back to check the store did the same.
func (m *machine) sweep(t *rapid.T) {
	res, err := m.e.store.Sweep(m.e.ctx, &idem.SweepParams{})
	if err != nil || res == nil || res.Deleted < 0 {
		t.Fatalf("Sweep: %+v, %v", res, err)
	}
	// The count is not compared: other scopes' records count too, and a
	// store may expire records by itself before Sweep comes (testSweep
	// checks counts on a store of its own).
	now := m.now()
	for _, k := range m.keys {
		if s := m.states[k]; s.Rec.sweepable(now) {
			m.states[k] = keyState{MaxToken: s.MaxToken}
		}
	}
	for _, k := range m.keys {
		m.run(t, modelOp{Kind: opGet, Key: k})
	}
}

func (m *machine) advance(t *rapid.T) {
	d := time.Duration(rapid.IntRange(1, 12).Draw(t, "half seconds")) * 500 * time.Millisecond
	m.e.manual.Advance(d)
}
