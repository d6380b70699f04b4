package storetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/idemkit/idem"
)

// porcupineModel is the model of model.go for porcupine, partitioned by key.
var porcupineModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(modelOp).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		parts := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			parts = append(parts, byKey[k])
		}
		return parts
	},
	Init: func() any { return keyState{} },
	Step: func(state, input, output any) (bool, any) {
		ok, next, _ := step(state.(keyState), input.(modelOp), output.(modelResult))
		return ok, next
	},
	DescribeOperation: func(input, output any) string {
		return describeOp(input.(modelOp), output.(modelResult))
	},
	DescribeState: func(state any) string {
		s := state.(keyState)
		if !s.Rec.Exists {
			return fmt.Sprintf("absent (max token %d)", s.MaxToken)
		}
		r := s.Rec
		return fmt.Sprintf("%s fp=%s token=%d attempts=%d checkpoint=%q outcome=%q", r.State, r.Fingerprint, r.Token, r.Attempts, r.Point, trim(r.Data))
	},
}

func describeOp(op modelOp, res modelResult) string {
	var in string
	switch op.Kind {
	case opBegin:
		in = fmt.Sprintf("Begin(%s, fp=%s)", op.Key, op.Fingerprint)
	case opGet, opDelete:
		in = fmt.Sprintf("%s(%s)", op.Kind, op.Key)
	default:
		in = fmt.Sprintf("%s(%s, token=%d)", op.Kind, op.Key, op.Token)
	}
	var out string
	switch {
	case res.Err != errNone:
		out = string(res.Err)
	case op.Kind == opBegin:
		out = fmt.Sprintf("%s token=%d attempts=%d", res.Decision, res.Token, res.Attempts)
		if res.Decision == idem.Replay {
			out = fmt.Sprintf("%s %q", res.Decision, trim(res.Data))
		}
	case op.Kind == opGet:
		out = fmt.Sprintf("%s token=%d attempts=%d outcome=%q", res.State, res.Token, res.Attempts, trim(res.Data))
	default:
		out = "ok"
	}
	return in + " -> " + out
}

// testLinearizability runs rounds of concurrent clients doing random
// operations on a few keys, with leases and windows far longer than the
// run, and checks each history with porcupine against the model.
func testLinearizability(t *testing.T, e *env) {
	for round := range e.opts.LinearizabilityRounds {
		if err := checkLinearizable(e, e.scope(fmt.Sprintf("linearizability-%d", round)), uint64(round+1), ""); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
}

// checkLinearizable runs one round in scope, seeded by seed, and returns an
// error unless porcupine finds the history linearizable. The error names a
// visualization of the history written to vizDir (default os.TempDir()).
func checkLinearizable(e *env, scope string, seed uint64, vizDir string) error {
	const (
		clients = 8
		opsEach = 50
		nkeys   = 3
	)
	base := time.Now()
	var (
		mu      sync.Mutex
		history []porcupine.Operation
		seen    []int64 // tokens any client saw, for stale ones
		failure error
		wg      sync.WaitGroup
	)
	for c := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			mine := map[string]int64{} // the last token this client acquired per key
			for i := range opsEach {
				op := modelOp{Key: fmt.Sprintf("k%d", rng.IntN(nkeys)), Lease: time.Hour, Window: time.Hour}
				switch n := rng.IntN(100); {
				case n < 35:
					op.Kind = opBegin
					op.Fingerprint = []string{"fa", "fb"}[rng.IntN(2)]
				case n < 55:
					op.Kind = opComplete
					op.Data = fmt.Sprintf("c%d-op%d", c, i)
					op.MetaMap = map[string]string{"client": fmt.Sprint(c)}
					op.Meta = encodeMeta(op.MetaMap)
				case n < 65:
					op.Kind = opRelease
				case n < 73:
					op.Kind = opCheckpoint
					op.Point = fmt.Sprintf("c%d-p%d", c, i)
					op.Data = op.Point
				case n < 77:
					op.Kind = opExtend
				case n < 97:
					op.Kind = opGet
				default:
					op.Kind = opDelete
				}
				op.Token = mine[op.Key]
				if op.Token == 0 || rng.IntN(4) == 0 {
					mu.Lock()
					if len(seen) > 0 {
						op.Token = seen[rng.IntN(len(seen))]
					} else {
						op.Token = 1 + rng.Int64N(8)
					}
					mu.Unlock()
				}
				call := time.Since(base).Nanoseconds()
				res, err := apply(e, scope, op, base)
				ret := time.Since(base).Nanoseconds()
				if err != nil {
					mu.Lock()
					failure = errors.Join(failure, fmt.Errorf("%s: %w", describeOp(op, res), err))
					mu.Unlock()
				}
				if op.Kind == opBegin && res.Decision == idem.Acquired {
					mine[op.Key] = res.Token
				}
				mu.Lock()
				if res.Token > 0 {
					seen = append(seen, res.Token)
				}
				history = append(history, porcupine.Operation{ClientId: c, Input: op, Call: call, Output: res, Return: ret})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if failure != nil {
		return fmt.Errorf("unexpected errors: %w", failure)
	}
	result, info := porcupine.CheckOperationsVerbose(porcupineModel, history, 20*time.Second)
	if result != porcupine.Ok {
		// Unknown (the checker timed out) fails too: nothing was proved.
		path := "(could not write the visualization)"
		if f, err := os.CreateTemp(vizDir, "storetest-linearizability-*.html"); err == nil {
			f.Close()
			if porcupine.VisualizePath(porcupineModel, info, f.Name()) == nil {
				path = f.Name()
			}
		}
		return fmt.Errorf("seed %d: history of %d operations is %s, not linearizable against the model; visualization: %s",
			seed, len(history), result, path)
	}
	return nil
}

// apply runs op on the store and reduces the answer for the model. err is
// set for an answer the model has no place for (an unexpected error).
func apply(e *env, scope string, op modelOp, base time.Time) (modelResult, error) {
	var (
		res modelResult
		rec *idem.Record
		err error
	)
	switch op.Kind {
	case opBegin:
		var br *idem.BeginResult
		br, err = e.store.Begin(e.ctx, &idem.BeginParams{Scope: scope, Key: op.Key, Fingerprint: op.Fingerprint,
			Lease: op.Lease, Window: op.Window, Retention: op.Retention})
		if br != nil {
			res.Decision, res.Takeover, res.RetryAfter = br.Decision, br.Takeover, br.RetryAfter
			rec = br.Record
		}
	case opComplete:
		_, err = e.store.Complete(e.ctx, &idem.CompleteParams{Scope: scope, Key: op.Key, Token: op.Token,
			Outcome: idem.Outcome{Data: []byte(op.Data), Meta: op.MetaMap}})
	case opRelease:
		err = e.store.Release(e.ctx, &idem.ReleaseParams{Scope: scope, Key: op.Key, Token: op.Token})
	case opExtend:
		var ext *idem.Record
		ext, err = e.store.Extend(e.ctx, &idem.ExtendParams{Scope: scope, Key: op.Key, Token: op.Token, Lease: op.Lease})
		if ext != nil && !ext.LeaseUntil.IsZero() {
			res.LeaseUntil = int64(ext.LeaseUntil.Sub(base))
		}
	case opCheckpoint:
		err = e.store.Checkpoint(e.ctx, &idem.CheckpointParams{Scope: scope, Key: op.Key, Token: op.Token,
			Point: op.Point, Data: []byte(op.Data)})
	case opGet:
		rec, err = e.store.Get(e.ctx, &idem.KeyParams{Scope: scope, Key: op.Key})
	case opDelete:
		err = e.store.Delete(e.ctx, &idem.KeyParams{Scope: scope, Key: op.Key})
	}
	if rec != nil {
		res.setRecord(rec, base)
	}
	res.Err = classify(err)
	if res.Err != errNone && res.Err != errLeaseLost && res.Err != errCompleted && res.Err != errNotFound {
		return res, err
	}
	return res, nil
}
