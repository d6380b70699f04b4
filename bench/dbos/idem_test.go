package dbosbench

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/idemkit/idem/store/pebblestore"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/idemkit/idem/workflow"
	"github.com/jackc/pgx/v5/pgxpool"
)

// idemNoop is an action: it does nothing and returns a few bytes.
func idemNoop(context.Context, *workflow.Step) ([]byte, error) { return []byte("ok"), nil }

// idemRegistry holds the benchmark's workflow: three automatic
// transitions, each running a no-op action, to a success state.
func idemRegistry() (*workflow.Registry, error) {
	var reg workflow.Registry
	action := func(name string) *workflow.Action {
		return &workflow.Action{Name: name, Run: idemNoop, NoCompensation: true}
	}
	err := reg.Register(&workflow.Definition{Name: "bench", Version: 1, Initial: "s0",
		States: []workflow.State{{Name: "s0"}, {Name: "s1"}, {Name: "s2"}, {Name: "done", Terminal: workflow.Success}},
		Transitions: []workflow.Transition{
			{From: "s0", To: "s1", Action: action("a1")},
			{From: "s1", To: "s2", Action: action("a2")},
			{From: "s2", To: "done", Action: action("a3")},
		}})
	return &reg, err
}

// idemWorkers is the engine's worker count: as many as the most starters.
const idemWorkers = 16

// countingJournal counts the commits of the journal it wraps: every
// successful Create and Append is one. It counts the reads (Get, List)
// apart: on PostgreSQL each is a transaction too.
type countingJournal struct {
	workflow.Journal
	commits, reads atomic.Int64
}

func (j *countingJournal) Get(ctx context.Context, p *workflow.GetParams) (*workflow.GetResult, error) {
	j.reads.Add(1)
	return j.Journal.Get(ctx, p)
}

func (j *countingJournal) List(ctx context.Context, p *workflow.ListParams) (*workflow.ListResult, error) {
	j.reads.Add(1)
	return j.Journal.List(ctx, p)
}

func (j *countingJournal) Create(ctx context.Context, p *workflow.CreateParams) (*workflow.CreateResult, error) {
	res, err := j.Journal.Create(ctx, p)
	if err == nil {
		j.commits.Add(1)
	}
	return res, err
}

func (j *countingJournal) Append(ctx context.Context, p *workflow.AppendParams) (*workflow.AppendResult, error) {
	res, err := j.Journal.Append(ctx, p)
	if err == nil {
		j.commits.Add(1)
	}
	return res, err
}

// idemRunning is an engine running on a counted journal for a turn.
type idemRunning struct {
	eng     *workflow.Engine
	journal *countingJournal
	stop    context.CancelFunc
	done    chan error
	closeFn func() error  // closes the journal's store, if the turn opened it
	pool    *pgxpool.Pool // the turn's pool, nil on pebblestore
}

// startEngine starts an engine on j and returns it running.
func startEngine(j workflow.Journal, closeFn func() error) (*idemRunning, error) {
	reg, err := idemRegistry()
	if err != nil {
		return nil, err
	}
	cj := &countingJournal{Journal: j}
	eng, err := workflow.NewEngine(cj, reg, &workflow.EngineConfig{Workers: idemWorkers})
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	r := &idemRunning{eng: eng, journal: cj, stop: stop, done: make(chan error, 1), closeFn: closeFn}
	go func() { r.done <- eng.Run(ctx) }()
	return r, nil
}

// run starts workflow id and waits until it is finished.
func (r *idemRunning) run(ctx context.Context, id string) error {
	if _, err := r.eng.Start(ctx, "bench", 0, id, []byte("input"), nil); err != nil {
		return fmt.Errorf("idem Start %s: %w", id, err)
	}
	in, err := r.eng.Wait(ctx, id)
	if err != nil {
		return fmt.Errorf("idem Wait %s: %w", id, err)
	}
	if in.Status != workflow.Succeeded || in.State != "done" {
		return fmt.Errorf("idem %s: %s in %s (%s), want succeeded in done", id, in.Status, in.State, in.Error)
	}
	return nil
}

// steps lists the actions the history of id records as completed.
func (r *idemRunning) steps(id string) ([]string, error) {
	in, err := r.eng.Get(context.Background(), id)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range in.History {
		if e.Kind == workflow.EntryActionCompleted {
			names = append(names, e.Action)
		}
	}
	return names, nil
}

func (r *idemRunning) writes() int64 { return r.journal.commits.Load() }

func (r *idemRunning) reads() int64 { return r.journal.reads.Load() }

func (r *idemRunning) conns() int64 {
	if r.pool == nil {
		return 0
	}
	return r.pool.Stat().NewConnsCount()
}

func (r *idemRunning) close() error {
	r.stop()
	err := <-r.done
	if err == context.Canceled {
		err = nil
	}
	if r.closeFn != nil {
		if cerr := r.closeFn(); err == nil {
			err = cerr
		}
	}
	return err
}

// idemPGSystem is idem's engine on the pgstore journal in schema of the
// database idemDatabase; each turn opens a pool, a store and an engine of
// its own.
func idemPGSystem(pg *pgServer, schema string) *system {
	return &system{name: "idem-pg", db: idemDatabase, open: func(ctx context.Context) (running, error) {
		pool, err := pg.pool(ctx, idemDatabase)
		if err != nil {
			return nil, err
		}
		st, err := pgstore.New(pool, &pgstore.Config{Schema: schema, Migrate: true})
		if err != nil {
			pool.Close()
			return nil, err
		}
		r, err := startEngine(st.Journal(), func() error {
			err := st.Close()
			pool.Close()
			return err
		})
		if err != nil {
			pool.Close()
			return nil, err
		}
		r.pool = pool
		return r, nil
	}}
}

// idemPebbleSystem is idem's engine on the pebblestore journal of a store
// in a temporary directory, open for the whole test; each turn starts an
// engine of its own.
func idemPebbleSystem(tb testing.TB) *system {
	st, err := pebblestore.Open(tb.TempDir(), &pebblestore.Config{SweepInterval: -1})
	if err != nil {
		tb.Fatalf("pebblestore: %v", err)
	}
	tb.Cleanup(func() { st.Close() })
	return &system{name: "idem-pebble", open: func(context.Context) (running, error) {
		return startEngine(st.Journal(), nil)
	}}
}

// idemSystems are idem's contenders.
func idemSystems(tb testing.TB, pg *pgServer) []*system {
	schema := freshSchema("idembench")
	pg.dropSchemaAtEnd(tb, idemDatabase, schema)
	return []*system{idemPGSystem(pg, schema), idemPebbleSystem(tb)}
}
