package pgstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/crashtest"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/store/pgstore/pgcluster"
	"github.com/idemkit/idem/workflow"
)

// The failover tests' load.
const (
	foWorkers     = 16               // concurrent callers of the store
	foFailovers   = 2                // kills and promotions per test
	foBefore      = 1500             // acknowledged operations before each kill
	foAfter       = 1000             // acknowledged operations begun after each promotion
	foLease       = 30 * time.Second // no lease runs out during a test
	foOpTimeout   = 5 * time.Second  // each store call
	foRetryPause  = 20 * time.Millisecond
	foInstances   = 20
	foScope       = "failover"
	foWorkflow    = "failover-chain"
	foRecoverWait = 60 * time.Second
)

// TestFailoverSyncStandby kills the primary of a cluster whose standby is
// synchronous (synchronous_standby_names = '*', synchronous_commit = on)
// under load and promotes the standby: nothing acknowledged may be lost,
// no token handed out twice, no lease held by two owners, and the store
// and the workflow engine carry on against the new primary.
func TestFailoverSyncStandby(t *testing.T) {
	f := runFailover(t, false)
	if f.lost != 0 || f.dupOwners != 0 || f.dupTokens != 0 || f.reissued != 0 {
		t.Errorf("with a synchronous standby: %d acknowledged operations lost, %d duplicate owners, %d tokens handed out twice, %d tokens after promotion not above every acknowledged one",
			f.lost, f.dupOwners, f.dupTokens, f.reissued)
	}
}

// TestFailoverAsyncStandby is the same kill with an asynchronous standby:
// a commit is acknowledged before the standby has it, so what the kill
// loses is measured and reported, not asserted away; the store and the
// workflow engine must still carry on.
func TestFailoverAsyncStandby(t *testing.T) {
	f := runFailover(t, true)
	if f.lost == 0 && f.dupOwners == 0 && f.dupTokens == 0 && f.reissued == 0 {
		t.Logf("this run lost nothing: the standby had replayed every acknowledged commit when the primary died (asynchronous replication promises nothing of the kind)")
	}
}

// foFigures are what a failover run measured.
type foFigures struct {
	acked, lost, dupOwners, dupTokens, reissued int
	recovery, promote                           []time.Duration // per failover
}

// foOwner is one acknowledged acquisition of a key.
type foOwner struct {
	token   int64
	acked   time.Time // Begin returned Acquired
	ending  time.Time // Complete or Release was first called; zero: never
	ended   string    // "complete", "release" once acknowledged; "refused" when the store no longer knew the token
	outcome []byte    // the outcome acknowledged by Complete
	began   time.Time // Begin was called
	release bool      // the owner releases the key instead of completing it
}

// foLog is the history the callers acknowledged, by key.
type foLog struct {
	mu      sync.Mutex
	keys    map[string][]*foOwner
	replays []foReplay
}

type foReplay struct {
	key  string
	data []byte
}

func (l *foLog) acquired(key string, o *foOwner) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys[key] = append(l.keys[key], o)
}

func (l *foLog) update(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f()
}

func runFailover(t *testing.T, async bool) foFigures {
	if testing.Short() && !servicetest.Required() {
		t.Skip("-short: the failover test starts a PostgreSQL primary and standby")
	}
	ctx := context.Background()
	c := pgcluster.Start(t, &pgcluster.Config{Async: async})
	mode := "synchronous"
	if async {
		mode = "asynchronous"
	}
	url := c.URL("postgres", "")
	t.Logf("%s standby; store URL %s", mode, url)
	s, err := Open(ctx, url, &Config{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// The workflow engine: three actions, the second held until the kill,
	// so that every worker's instance is mid-step when the primary dies.
	atKill := make(chan struct{}) // closed once the primary is dead
	var held atomic.Int64
	reg := workflow.NewRegistry()
	def := &workflow.Definition{Name: foWorkflow, Version: 1, Initial: "s0",
		States: []workflow.State{{Name: "s0"}, {Name: "s1"}, {Name: "s2"}, {Name: "done", Terminal: workflow.Success}}}
	for i, name := range []string{"a1", "a2", "a3"} {
		to := fmt.Sprintf("s%d", i+1)
		if i == 2 {
			to = "done"
		}
		def.Transitions = append(def.Transitions, workflow.Transition{From: fmt.Sprintf("s%d", i), To: to,
			Action: &workflow.Action{Name: name, NoCompensation: true,
				Run: func(ctx context.Context, st *workflow.Step) ([]byte, error) {
					if name == "a2" {
						held.Add(1)
						select {
						case <-atKill:
						case <-ctx.Done():
							return nil, ctx.Err()
						}
					}
					return []byte(st.InstanceID + "/" + name), nil
				}}})
	}
	if err := reg.Register(def); err != nil {
		t.Fatal(err)
	}
	engine, err := workflow.NewEngine(s.Journal(), reg, &workflow.EngineConfig{ID: "failover",
		Lease: 2 * time.Second, PollInterval: 50 * time.Millisecond, Workers: 4})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range foInstances {
		in, err := engine.Start(ctx, foWorkflow, 0, fmt.Sprintf("wf-%02d", i), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, in.ID)
	}
	// The starts are not the subject: let the standby have them.
	if err := c.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	engineCtx, stopEngine := context.WithCancel(ctx)
	engineDone := make(chan error, 1)
	go func() { engineDone <- engine.Run(engineCtx) }()
	defer func() {
		stopEngine()
		<-engineDone
	}()

	// The load: workers Begin keys (three attempts per key, so they
	// contend), then Complete (two in three) or Release what they
	// acquired, retrying the ending call with the same token until it is
	// acknowledged or refused.
	hist := &foLog{keys: map[string][]*foOwner{}}
	var (
		keySeq                 atomic.Int64
		ackedTotal, ackedAfter atomic.Int64              // ackedAfter: since the last promotion
		killAt, promotedAt     atomic.Pointer[time.Time] // of the last failover
		firstAfterKill         atomic.Pointer[time.Time] // since the last kill
		failedCalls            atomic.Int64
		badReplays             atomic.Int64
	)
	stop := make(chan struct{})
	ack := func(start time.Time) {
		ackedTotal.Add(1)
		now := time.Now()
		if k := killAt.Load(); k != nil && start.After(*k) {
			firstAfterKill.CompareAndSwap(nil, &now)
		}
		if p := promotedAt.Load(); p != nil && start.After(*p) {
			ackedAfter.Add(1)
		}
	}
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	pause := func() {
		select {
		case <-stop:
		case <-time.After(foRetryPause):
		}
	}
	call := func(f func(ctx context.Context) error) error {
		cctx, cancel := context.WithTimeout(ctx, foOpTimeout)
		defer cancel()
		err := f(cctx)
		if err != nil && !errors.Is(err, idem.ErrLeaseLost) && !errors.Is(err, idem.ErrNotFound) && !errors.Is(err, idem.ErrCompleted) {
			failedCalls.Add(1)
		}
		return err
	}
	worker := func(w int) {
		rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
		for n := 0; !stopped(); n++ {
			key := fmt.Sprintf("k%d", keySeq.Add(1)/3)
			start := time.Now()
			var res *idem.BeginResult
			err := call(func(ctx context.Context) (err error) {
				res, err = s.Begin(ctx, &idem.BeginParams{Scope: foScope, Key: key, Lease: foLease, Window: time.Hour})
				return err
			})
			if err != nil {
				pause()
				continue
			}
			ack(start)
			switch res.Decision {
			case idem.Replay:
				hist.update(func() { hist.replays = append(hist.replays, foReplay{key, slices.Clone(res.Record.Outcome.Data)}) })
				continue
			case idem.Acquired:
			default:
				continue
			}
			release := rng.IntN(3) == 0
			o := &foOwner{token: res.Record.Token, acked: time.Now(), release: release, began: start}
			hist.acquired(key, o)
			data := fmt.Appendf(nil, "w%d n%d %s token %d", w, n, key, o.token)
			hist.update(func() { o.ending = time.Now() })
			for {
				start := time.Now()
				err := call(func(ctx context.Context) error {
					if release {
						return s.Release(ctx, &idem.ReleaseParams{Scope: foScope, Key: key, Token: o.token})
					}
					_, err := s.Complete(ctx, &idem.CompleteParams{Scope: foScope, Key: key, Token: o.token, Outcome: idem.Outcome{Data: data}})
					return err
				})
				switch {
				case err == nil || (!release && errors.Is(err, idem.ErrCompleted)):
					// ErrCompleted: an earlier try committed, its answer lost.
					ack(start)
					hist.update(func() {
						if release {
							o.ended = "release"
						} else {
							o.ended, o.outcome = "complete", data
						}
					})
				case errors.Is(err, idem.ErrLeaseLost), errors.Is(err, idem.ErrNotFound):
					// No lease ran out: the store forgot the acquisition.
					// (A Release whose first try committed also lands here:
					// told apart below by the record.)
					ack(start)
					hist.update(func() { o.ended = "refused" })
				default:
					if stopped() {
						break
					}
					pause()
					continue
				}
				break
			}
		}
	}
	var wg sync.WaitGroup
	for w := range foWorkers {
		wg.Go(func() { worker(w) })
	}
	stopLoad := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	defer stopLoad()

	// Each failover: the kill, then the promotion a failover manager
	// would order, then the killed node rebuilt as the new standby.
	var f foFigures
	type kill struct{ start, done time.Time }
	var kills []kill
	var ackedAt []int64
	for round := range foFailovers {
		want := ackedTotal.Load() + foBefore
		crashtest.Until(t, 60*time.Second, fmt.Sprintf("%d more acknowledged operations and the workflow actions held", foBefore), func() bool {
			return ackedTotal.Load() >= want && held.Load() >= 4
		})
		// Calls begun once KillPrimary has returned can only reach the
		// dead primary or the promoted one; the recovery time runs from
		// the kill's start.
		start := time.Now()
		if err := c.KillPrimary(); err != nil {
			t.Fatal(err)
		}
		done := time.Now()
		firstAfterKill.Store(nil)
		killAt.Store(&done)
		kills = append(kills, kill{start, done})
		if round == 0 {
			close(atKill)
		}
		ackedAt = append(ackedAt, ackedTotal.Load())
		if err := c.Promote(); err != nil {
			t.Fatal(err)
		}
		promoted := time.Now()
		ackedAfter.Store(0)
		promotedAt.Store(&promoted)
		crashtest.Until(t, foRecoverWait, fmt.Sprintf("%d acknowledged operations begun after promotion %d", foAfter, round+1), func() bool {
			return ackedAfter.Load() >= foAfter
		})
		f.promote = append(f.promote, promoted.Sub(start))
		if first := firstAfterKill.Load(); first != nil {
			f.recovery = append(f.recovery, first.Sub(start))
		} else {
			t.Errorf("failover %d: no operation begun after the kill succeeded", round+1)
		}
		if round < foFailovers-1 {
			if err := c.Rejoin(); err != nil {
				t.Fatal(err)
			}
		}
	}
	stopLoad()
	f.acked = int(ackedTotal.Load())

	// The workflow instances all finish on the new primary.
	crashtest.Until(t, foRecoverWait, "every workflow instance to succeed", func() bool {
		for _, id := range ids {
			in, err := engine.Get(ctx, id)
			if err != nil || in.Status != workflow.Succeeded {
				return false
			}
		}
		return true
	})
	for _, id := range ids {
		in, err := engine.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if in.State != "done" {
			t.Errorf("instance %s ended in state %q", id, in.State)
		}
	}

	// What the store holds now against what was acknowledged.
	tokens := map[int64]string{}
	var lostDetail []string
	get := func(key string) *idem.Record {
		var rec *idem.Record
		err := call(func(ctx context.Context) (err error) {
			rec, err = s.Get(ctx, &idem.KeyParams{Scope: foScope, Key: key})
			return err
		})
		if errors.Is(err, idem.ErrNotFound) {
			return nil
		}
		if err != nil {
			t.Fatalf("get %s after the failover: %v", key, err)
		}
		return rec
	}
	keys := make([]string, 0, len(hist.keys))
	for k := range hist.keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		owners := hist.keys[key]
		sort.Slice(owners, func(i, j int) bool { return owners[i].acked.Before(owners[j].acked) })
		for i, o := range owners {
			if prev, ok := tokens[o.token]; ok {
				f.dupTokens++
				t.Logf("token %d acknowledged for %s and for %s", o.token, prev, key)
			}
			tokens[o.token] = key
			if i > 0 {
				p := owners[i-1]
				if o.token <= p.token {
					f.dupTokens++
					t.Logf("%s: token %d acknowledged after %d", key, o.token, p.token)
				}
				if p.ending.IsZero() || o.acked.Before(p.ending) {
					f.dupOwners++
					t.Logf("%s: token %d acquired while token %d still owned it", key, o.token, p.token)
				}
			}
		}
		for _, o := range owners {
			if o.ended == "refused" && !o.release {
				// No lease ran out: the acknowledged acquisition is gone.
				f.lost++
				lostDetail = append(lostDetail, fmt.Sprintf("%s: the acknowledged owner of token %d was refused its Complete", key, o.token))
			}
		}
		last := owners[len(owners)-1]
		rec := get(key)
		switch {
		case last.ended == "refused" && !last.release:
			continue
		case rec == nil:
			f.lost++
			lostDetail = append(lostDetail, fmt.Sprintf("%s: no record, token %d was acknowledged (%s)", key, last.token, last.ended))
			continue
		case rec.Token < last.token:
			f.lost++
			lostDetail = append(lostDetail, fmt.Sprintf("%s: record at token %d, token %d was acknowledged", key, rec.Token, last.token))
			continue
		}
		for _, o := range owners {
			if o.ended != "complete" {
				continue
			}
			if rec.State != idem.StateCompleted || rec.Token != o.token || string(rec.Outcome.Data) != string(o.outcome) {
				f.lost++
				lostDetail = append(lostDetail, fmt.Sprintf("%s: the outcome of token %d was acknowledged; the record is %s at token %d", key, o.token, rec.State, rec.Token))
			}
		}
		if last.ended == "release" && rec.State == idem.StatePending && rec.Token == last.token {
			f.lost++
			lostDetail = append(lostDetail, fmt.Sprintf("%s: the release of token %d was acknowledged; the record is still pending", key, last.token))
		}
	}
	// Replays must hold the acknowledged outcome's exact bytes.
	for _, r := range hist.replays {
		for _, o := range hist.keys[r.key] {
			if o.ended == "complete" && string(o.outcome) != string(r.data) {
				badReplays.Add(1)
				t.Errorf("%s: replayed %q, acknowledged %q", r.key, r.data, o.outcome)
			}
		}
	}
	// Tokens acquired after a kill must be above every token acquired
	// (and acknowledged) before it.
	maxBefore := make([]int64, len(kills))
	for _, owners := range hist.keys {
		for _, o := range owners {
			for i, k := range kills {
				if o.acked.Before(k.start) {
					maxBefore[i] = max(maxBefore[i], o.token)
				}
			}
		}
	}
	for _, owners := range hist.keys {
		for _, o := range owners {
			for i, k := range kills {
				if o.began.After(k.done) && o.token <= maxBefore[i] {
					f.reissued++
					break
				}
			}
		}
	}
	for _, d := range lostDetail {
		t.Logf("lost: %s", d)
	}

	// The sequence on the new primary is past every token acknowledged.
	var next int64
	if err := s.pool.QueryRow(ctx, `SELECT nextval('`+s.q.schema+`.tokens')`).Scan(&next); err != nil {
		t.Fatal(err)
	}
	maxToken := int64(0)
	for tok := range tokens {
		maxToken = max(maxToken, tok)
	}
	switch {
	case next <= maxToken && !async:
		t.Errorf("the tokens sequence hands out %d after the failovers, but %d was acknowledged", next, maxToken)
	case next <= maxToken:
		t.Logf("the tokens sequence hands out %d after the failovers, but %d was acknowledged (lost with the asynchronous standby)", next, maxToken)
	}

	round := func(ds []time.Duration) string {
		var parts []string
		for _, d := range ds {
			parts = append(parts, d.Round(time.Millisecond).String())
		}
		return strings.Join(parts, ", ")
	}
	t.Logf("figures, %s standby: %d operations acknowledged (%v at the kills), %d failovers, "+
		"%d acknowledged operations lost, %d duplicate owners seen, %d tokens handed out twice, %d tokens after a promotion not above every one acknowledged before the kill, "+
		"%d store calls failed during the outages, kill to first success %s (kill to promoted %s), %d workflow instances finished",
		mode, f.acked, ackedAt, len(kills), f.lost, f.dupOwners, f.dupTokens, f.reissued,
		failedCalls.Load(), round(f.recovery), round(f.promote), len(ids))
	if badReplays.Load() > 0 {
		t.Errorf("%d replays did not hold the acknowledged outcome", badReplays.Load())
	}
	return f
}
