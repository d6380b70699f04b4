package storetest

import (
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// TestModel walks the model through the contract's main paths; each step
// gives the answer a store gives and whether the model must accept it.
func TestModel(t *testing.T) {
	t.Parallel()
	sec := int64(time.Second)
	begin := func(now int64, fp string) modelOp {
		return modelOp{Kind: opBegin, Key: "k", Now: now, Fingerprint: fp, Lease: 2 * time.Second, Window: 5 * time.Second, ExactTime: true}
	}
	owned := func(kind opKind, now, token int64) modelOp {
		return modelOp{Kind: kind, Key: "k", Now: now, Token: token, Data: "out", Point: "p", Lease: time.Second, ExactTime: true}
	}
	acq := func(token int64, attempts int, takeover bool) modelResult {
		return modelResult{Decision: idem.Acquired, HasRecord: true, State: idem.StatePending, Token: token, Attempts: attempts, Takeover: takeover}
	}
	type stepCase struct {
		op   modelOp
		res  modelResult
		want bool
	}
	cases := map[string][]stepCase{
		"lifecycle": {
			{begin(0, "a"), acq(1, 1, false), true},
			{begin(sec, "a"), modelResult{Decision: idem.InFlight, RetryAfter: time.Second}, true},
			{owned(opComplete, sec, 1), modelResult{}, true},
			{begin(2*sec, "a"), modelResult{Decision: idem.Replay, HasRecord: true, HasOutcome: true, Data: "out"}, true},
			{owned(opComplete, 2*sec, 1), modelResult{Err: errCompleted}, true},
			{begin(6*sec, "b"), acq(2, 1, false), true}, // window over: absent
		},
		"mismatch before in flight": {
			{begin(0, "a"), acq(5, 1, false), true},
			{begin(0, "b"), modelResult{Decision: idem.InFlight, RetryAfter: 2 * time.Second}, false},
			{begin(0, "b"), modelResult{Decision: idem.Mismatch, HasRecord: true}, false},
			{begin(0, "b"), modelResult{Decision: idem.Mismatch}, true},
		},
		"lease boundary and takeover": {
			{begin(0, "a"), acq(3, 1, false), true},
			{owned(opCheckpoint, 0, 3), modelResult{}, true},
			{begin(2*sec-1, "a"), modelResult{Decision: idem.InFlight, RetryAfter: 1}, true},
			{begin(2*sec, "a"), acq(3, 2, true), false}, // the token must grow
			{begin(2*sec, "a"), modelResult{Decision: idem.Acquired, HasRecord: true, Token: 4, Attempts: 2, Takeover: true}, false},
			{begin(2*sec, "a"), modelResult{Decision: idem.Acquired, HasRecord: true, Token: 4, Attempts: 2, Takeover: true,
				HasCheckpoint: true, Point: "p", CpData: "out"}, true},
			{owned(opComplete, 2*sec, 3), modelResult{}, false},
			{owned(opComplete, 2*sec, 3), modelResult{Err: errLeaseLost}, true},
		},
		"expired owner completes": {
			{begin(0, "a"), acq(1, 1, false), true},
			{owned(opComplete, 100*sec, 1), modelResult{}, true},
		},
		"release": {
			{begin(0, "a"), acq(7, 1, false), true},
			{owned(opRelease, 0, 7), modelResult{}, true},
			{owned(opRelease, 0, 7), modelResult{Err: errLeaseLost}, true},
			{begin(0, "b"), acq(8, 2, false), true},
		},
		"swept or not": {
			{begin(0, "a"), acq(1, 1, false), true},
			{owned(opRelease, 0, 1), modelResult{}, true},
			// Released with a 5s window: due at 5s, so it may be gone.
			{modelOp{Kind: opGet, Key: "k", Now: 4 * sec}, modelResult{Err: errNotFound}, false},
			{modelOp{Kind: opGet, Key: "k", Now: 5 * sec}, modelResult{Err: errNotFound}, true},
			{begin(5*sec, "a"), acq(2, 1, false), true},
		},
		"delete keeps tokens growing": {
			{begin(0, "a"), acq(9, 1, false), true},
			{modelOp{Kind: opDelete, Key: "k"}, modelResult{}, true},
			{begin(0, "a"), acq(9, 1, false), false},
			{begin(0, "a"), acq(10, 1, false), true},
		},
	}
	for name, steps := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var s keyState
			for i, c := range steps {
				ok, next, why := step(s, c.op, c.res)
				if ok != c.want {
					t.Fatalf("step %d %s: accepted %v, want %v (%s)", i, describeOp(c.op, c.res), ok, c.want, why)
				}
				if ok {
					s = next
				}
			}
		})
	}
}
