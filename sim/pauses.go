package sim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemkit/idem"
)

// pauses: workers run the same jobs with Ledger.Do, each job two phases
// with a checkpoint between, and freeze (a GC pause, a stopped VM) for
// longer than their lease, then wake up and carry on as if nothing
// happened. Another worker takes the job over from the checkpoint; the
// woken owner's heartbeat, checkpoint and Complete must all be refused.
var pauses = &Scenario{
	Name:       "pauses",
	Doc:        "owners that pause past their lease and wake up to finish; takeover from a checkpoint",
	Faults:     Faults{Pause: 0.03, PauseFor: 3 * time.Second},
	Failpoints: Failpoints{BeforeCommit: 0.01, AfterCommit: 0.01, Latency: 2 * time.Millisecond},
	Setup:      setupPauses,
}

const (
	jobCount    = 4
	workerCount = 3
	jobLease    = time.Second
	jobsScope   = "jobs"
)

type job struct {
	key      string
	outcomes []string // every outcome a worker got from Do
}

func setupPauses(w *World, store *Store) func() {
	var jobs []*job
	for i := range jobCount {
		jobs = append(jobs, &job{key: fmt.Sprintf("job%d", i)})
	}
	for n := range workerCount {
		name := fmt.Sprintf("worker%d", n)
		p := w.NewProcess(name, func(p *Process) {
			ledger, err := idem.New(store, &idem.Config{Clock: w.Clock(), Lease: jobLease})
			if err != nil {
				panic(err)
			}
			p.Go("loop", func() { work(w, ledger, name, jobs) })
		}).Pausable()
		p.Start()
	}
	return func() {
		var keys []string
		for _, j := range jobs {
			keys = append(keys, j.key)
			w.AtMostOnce(j.key)
			stored, ok := store.OutcomeOf(j.key)
			if !ok {
				w.Violate("ends-known", j.key, "no worker finished the job")
				continue
			}
			for _, got := range j.outcomes {
				if got != string(stored.Data) {
					w.Violate("same-outcome", j.key, fmt.Sprintf("a worker got %q, the stored outcome is %q", got, stored.Data))
					break
				}
			}
			if n := len(w.Effects(j.key)); n != 1 {
				w.Violate("at-least-once", j.key, fmt.Sprintf("a finished job has %d effects applied, want 1", n))
			}
		}
		store.Free(jobLease, keys...)
	}
}

// work runs every job until it has an outcome, in an order of its own.
func work(w *World, ledger *idem.Ledger, name string, jobs []*job) {
	ctx := context.Background()
	todo := append([]*job(nil), jobs...)
	w.Rand().Shuffle(len(todo), func(i, j int) { todo[i], todo[j] = todo[j], todo[i] })
	for attempts := 0; len(todo) > 0 && attempts < 200; attempts++ {
		j := todo[0]
		res, err := ledger.Do(ctx, jobsScope, j.key, "ship", func(ctx context.Context, c *idem.Claim) (idem.Outcome, error) {
			return ship(ctx, w, c, name, j.key)
		})
		var inFlight *idem.InFlightError
		switch {
		case err == nil:
			j.outcomes = append(j.outcomes, string(res.Outcome.Data))
			todo = todo[1:]
			continue
		case errors.As(err, &inFlight):
			err = w.Sleep(min(inFlight.RetryAfter, 300*time.Millisecond))
		default: // lease lost, store failures: try again soon
			err = w.Sleep(w.Between(10*time.Millisecond, 100*time.Millisecond))
		}
		if err != nil {
			return
		}
		todo = append(todo[1:], j)
	}
}

// ship is a job in two phases: reserve (saved in a checkpoint, so a
// successor does not reserve again) and ship. It does not look at its
// context while it works: a woken owner must be stopped by the fences.
func ship(ctx context.Context, w *World, c *idem.Claim, worker, key string) (idem.Outcome, error) {
	reservation := ""
	if cp := c.Checkpoint(); cp != nil && cp.Point == "reserved" {
		reservation = string(cp.Data)
	} else {
		if err := w.Sleep(w.Between(0, 700*time.Millisecond)); err != nil {
			return idem.Outcome{}, err
		}
		reservation = fmt.Sprintf("rsv_%08x", w.Rand().Uint32())
		if err := c.SetCheckpoint(ctx, "reserved", []byte(reservation)); err != nil {
			return idem.Outcome{}, idem.Retryable(err)
		}
	}
	if err := w.Sleep(w.Between(0, 700*time.Millisecond)); err != nil {
		return idem.Outcome{}, err
	}
	out := fmt.Sprintf("%s shipped with %s by %s token %d", key, reservation, worker, c.Token())
	w.Stage(key, out)
	return idem.Outcome{Data: []byte(out)}, nil
}
