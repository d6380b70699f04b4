package pgstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/crashtest"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/workflow"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The environment of a worker process of TestWorkflowWorkersSIGKILL.
const (
	wfWorkerSchemaEnv = "IDEM_PGSTORE_WF_WORKER_SCHEMA" // set: this process is a worker
	wfWorkerURLEnv    = "IDEM_PGSTORE_WF_WORKER_URL"
	wfWorkerIDEnv     = "IDEM_PGSTORE_WF_WORKER_ID" // its EngineConfig.ID
)

const (
	wfCrashInstances = 60
	wfCrashWorkers   = 3 // processes
	wfCrashKills     = 10
	wfCrashLease     = 2 * time.Second
	wfCrashType      = "chain"
)

var wfCrashActions = []string{"a1", "a2", "a3"}

// wfCrashRegistry holds the workflow the workers run: three automatic
// transitions s0 -> s1 -> s2 -> done, each with an InTx action that
// inserts (instance, action, engine, token) into effects, a table with no
// unique constraint, so a step written twice would show as two rows.
func wfCrashRegistry(run func(ctx context.Context, action string, s *workflow.Step) error) (*workflow.Registry, error) {
	def := &workflow.Definition{Name: wfCrashType, Version: 1, Initial: "s0",
		States: []workflow.State{{Name: "s0"}, {Name: "s1"}, {Name: "s2"}, {Name: "done", Terminal: workflow.Success}}}
	for i, name := range wfCrashActions {
		to := "s" + strconv.Itoa(i+1)
		if i == len(wfCrashActions)-1 {
			to = "done"
		}
		def.Transitions = append(def.Transitions, workflow.Transition{From: "s" + strconv.Itoa(i), To: to,
			Action: &workflow.Action{Name: name, InTx: true, NoCompensation: true,
				Run: func(ctx context.Context, s *workflow.Step) ([]byte, error) { return nil, run(ctx, name, s) }}})
	}
	reg := workflow.NewRegistry()
	return reg, reg.Register(def)
}

// wfWorker runs in a worker process: an engine over the shared schema's
// journal that runs the chain workflow until the process is killed (or
// its stdin, the parent's pipe, closes, or two minutes pass). Each action
// prints "run ID ACTION TOKEN ENGINE" before its INSERT, then holds its
// transaction open for 50 to 150 ms of pg_sleep, as a slow business write.
func wfWorker(schema string) int {
	ctx := context.Background()
	id := os.Getenv(wfWorkerIDEnv)
	cfg, err := pgxpool.ParseConfig(os.Getenv(wfWorkerURLEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	s, err := New(pool, &Config{Schema: schema})
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	effects := s.q.schema + ".effects"
	say := crashtest.Say()
	reg, err := wfCrashRegistry(func(ctx context.Context, action string, st *workflow.Step) error {
		say("run %s %s %d %s", st.InstanceID, action, st.Token, id)
		tx := StepTx(ctx)
		if _, err := tx.Exec(ctx, `INSERT INTO `+effects+` (id, action, engine, token) VALUES ($1, $2, $3, $4)`,
			st.InstanceID, action, id, st.Token); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `SELECT pg_sleep($1)`, 0.05+0.1*rand.Float64())
		return err
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	e, err := workflow.NewEngine(s.Journal(), reg, &workflow.EngineConfig{ID: id, Lease: wfCrashLease,
		PollInterval: 100 * time.Millisecond, Workers: 3})
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	ctx, cancel := crashtest.ChildContext(2 * time.Minute)
	defer cancel()
	_ = e.Run(ctx)
	fmt.Fprintln(os.Stderr, "worker: stopped without being killed:", ctx.Err())
	return 3
}

// TestWorkflowWorkersSIGKILL runs the chain workflow (three InTx actions,
// each inserting a row into a table without a unique constraint) in
// three worker processes, re-executions of this test binary, SIGKILLs a
// worker about every half second (preferring one that owns unfinished
// instances) and starts a fresh one in its place, ten times, and then
// lets the workers finish. Every instance must succeed with exactly one
// row per action, written under the token its history's action_completed
// entry names, and three action_completed entries.
func TestWorkflowWorkersSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash test starts worker processes")
	}
	t.Parallel()
	ctx := context.Background()
	url := servicetest.Postgres.Need(t)
	pool := sharedPool(t)
	schema := freshSchema(t, pool)
	s, err := New(pool, &Config{Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	effects := s.q.schema + ".effects"
	if _, err := pool.Exec(ctx, `CREATE TABLE `+effects+` (id text NOT NULL, action text NOT NULL, engine text NOT NULL, token bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	// The parent's engine starts the instances and never runs, so it
	// owns none: they wait for the workers.
	reg, err := wfCrashRegistry(func(context.Context, string, *workflow.Step) error {
		return fmt.Errorf("the parent ran an action")
	})
	if err != nil {
		t.Fatal(err)
	}
	parent, err := workflow.NewEngine(s.Journal(), reg, &workflow.EngineConfig{ID: "parent"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range wfCrashInstances {
		in, err := parent.Start(ctx, wfCrashType, 0, fmt.Sprintf("wf-%02d", i), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if in.Owner != "" {
			t.Fatalf("instance %s started owned by %q", in.ID, in.Owner)
		}
	}

	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 11))
	var runs crashtest.Lines
	r := &crashtest.Runner{T: t, Prefix: "w", NameEnv: wfWorkerIDEnv, Out: &runs,
		Env: []string{wfWorkerSchemaEnv + "=" + schema, wfWorkerURLEnv + "=" + url}}
	procs := make([]*crashtest.Proc, wfCrashWorkers)
	for i := range procs {
		procs[i] = r.Start()
	}
	began := time.Now()

	// owners counts the unfinished instances each engine owns.
	owners := func() map[string]int {
		t.Helper()
		rows, err := pool.Query(ctx, `SELECT body->>'Owner', count(*) FROM `+s.q.schema+`.wf_instances
			WHERE status NOT IN ('succeeded', 'failed', 'cancelled') AND coalesce(body->>'Owner', '') <> '' GROUP BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		m := map[string]int{}
		for rows.Next() {
			var o string
			var n int
			if err := rows.Scan(&o, &n); err != nil {
				t.Fatal(err)
			}
			m[o] = n
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return m
	}
	orphaned := 0 // unfinished instances the killed workers owned
	for k := range wfCrashKills {
		<-time.After(time.Duration(300+rng.IntN(400)) * time.Millisecond) // the chaos schedule
		own := owners()
		var busy []int
		for i, p := range procs {
			if own[p.Name] > 0 {
				busy = append(busy, i)
			}
		}
		victim := rng.IntN(len(procs))
		if len(busy) > 0 {
			victim = busy[rng.IntN(len(busy))]
		}
		p := procs[victim]
		r.Kill(p)
		n := owners()[p.Name]
		orphaned += n
		t.Logf("kill %d at %v: %s, owning %d unfinished instances", k+1, time.Since(began).Round(time.Millisecond), p.Name, n)
		procs[victim] = r.Start()
	}
	killed := r.Killed()
	killsDone := time.Since(began)

	// Let the workers finish: poll the journal until every instance has.
	var finished int
	crashtest.Until(t, 60*time.Second, "every instance to finish", func() bool {
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+s.q.schema+`.wf_instances
			WHERE status IN ('succeeded', 'failed', 'cancelled')`).Scan(&finished); err != nil {
			t.Fatal(err)
		}
		return finished == wfCrashInstances
	}, r.Log, func() { t.Logf("%d of %d instances finished", finished, wfCrashInstances) })
	total := time.Since(began)
	for _, p := range procs {
		p.Kill()
	}

	// Every committed row, by instance and action.
	type effect struct {
		engine string
		token  int64
	}
	rows := map[[2]string][]effect{}
	rs, err := pool.Query(ctx, `SELECT id, action, engine, token FROM `+effects)
	if err != nil {
		t.Fatal(err)
	}
	nrows := 0
	for rs.Next() {
		var id, action string
		var e effect
		if err := rs.Scan(&id, &action, &e.engine, &e.token); err != nil {
			t.Fatal(err)
		}
		rows[[2]string{id, action}] = append(rows[[2]string{id, action}], e)
		nrows++
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	if nrows != wfCrashInstances*len(wfCrashActions) {
		t.Errorf("%d rows in effects, want %d (one per instance and action)", nrows, wfCrashInstances*len(wfCrashActions))
	}
	takenOver, tokens := 0, int64(0)
	for i := range wfCrashInstances {
		id := fmt.Sprintf("wf-%02d", i)
		in, err := s.Journal().Get(ctx, &workflow.GetParams{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		inst := in.Instance
		if inst.Status != workflow.Succeeded || inst.State != "done" {
			t.Errorf("%s ended %s in %s: %s", id, inst.Status, inst.State, inst.Error)
		}
		if inst.Token > 1 {
			takenOver++
		}
		tokens += inst.Token
		completed := map[string]int64{}
		n := 0
		for _, h := range inst.History {
			if h.Kind == workflow.EntryActionCompleted {
				n++
				completed[h.Action] = h.Token
			}
		}
		if n != len(wfCrashActions) || len(completed) != len(wfCrashActions) {
			t.Errorf("%s: %d action_completed entries for %d actions, want one for each of %v", id, n, len(completed), wfCrashActions)
		}
		for _, a := range wfCrashActions {
			got := rows[[2]string{id, a}]
			if len(got) != 1 {
				t.Errorf("%s %s: %d rows %v, want exactly 1", id, a, len(got), got)
				continue
			}
			if got[0].token != completed[a] {
				t.Errorf("%s %s: row written under token %d by %s, but the step committed under token %d",
					id, a, got[0].token, got[0].engine, completed[a])
			}
		}
	}

	// Attempts that began and left no row: rolled back by a kill (the
	// process died in the transaction) or by a lost lease.
	lines := runs.All()
	interrupted, doomed := 0, 0
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) != 5 || f[0] != "run" {
			t.Fatalf("a worker printed %q", l)
		}
		committed := false
		for _, e := range rows[[2]string{f[1], f[2]}] {
			committed = committed || e.engine == f[4] && strconv.FormatInt(e.token, 10) == f[3]
		}
		switch {
		case committed:
		case killed[f[4]]:
			interrupted++
		default:
			doomed++
		}
	}
	t.Logf("%d instances, %d worker processes, %d SIGKILLs (%d processes started) in %v; all finished after %v",
		wfCrashInstances, wfCrashWorkers, len(killed), r.Started(), killsDone.Round(time.Millisecond), total.Round(time.Millisecond))
	t.Logf("%d action attempts began for %d committed steps: %d in processes later killed and %d in live ones left no row",
		len(lines), nrows, interrupted, doomed)
	t.Logf("takeovers: %d instances have a token above 1 (%d takeovers in all); the killed workers owned %d unfinished instances when they died",
		takenOver, tokens-int64(wfCrashInstances), orphaned)
	if orphaned == 0 {
		t.Error("no kill hit a worker that owned an unfinished instance: the test proved nothing")
	}
	if interrupted == 0 {
		t.Error("no action attempt of a killed worker was rolled back: no kill landed inside a transaction")
	}
}
