package dbosbench

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/dbos-inc/dbos-transact-golang/dbos"
	"github.com/jackc/pgx/v5/pgxpool"
)

// dbosSteps are the names of the workflow's three steps.
var dbosSteps = [3]string{"a1", "a2", "a3"}

// dbosNoop is a step: it does nothing and returns a few bytes.
func dbosNoop(context.Context) (string, error) { return "ok", nil }

// dbosWorkflow runs the three no-op steps, each as a durable step, and
// returns "done".
func dbosWorkflow(ctx dbos.Context, input string) (string, error) {
	for _, name := range dbosSteps {
		if _, err := dbos.RunAsStep(ctx, dbosNoop, dbos.WithStepName(name)); err != nil {
			return "", err
		}
	}
	return "done", nil
}

// dbosSystem is DBOS Transact with its system database in schema of the
// database dbosDatabase. Each turn makes a DBOS context of its own on a
// pool of its own, launches it and shuts it down at the end. DBOS runs no
// admin server and no Conductor unless asked, and the workflow runs
// without a queue (RunWorkflow in this process, as idem's Start and Wait
// do); what it still runs in the background (its internal queue's poll,
// the schedule and timeout monitors) is its cost, counted by the idle
// turn.
func dbosSystem(pg *pgServer, schema string) *system {
	return &system{name: "dbos", db: dbosDatabase, open: func(ctx context.Context) (running, error) {
		pool, err := pg.pool(ctx, dbosDatabase)
		if err != nil {
			return nil, err
		}
		dctx, err := dbos.NewContext(ctx, dbos.Config{
			AppName:            "idem-bench",
			SystemDBPool:       pool,
			DatabaseSchema:     schema,
			ApplicationVersion: "bench",
			ExecutorID:         "bench",
			Logger:             slog.New(slog.DiscardHandler),
		})
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("dbos.NewContext: %w", err)
		}
		dbos.RegisterWorkflow(dctx, dbosWorkflow)
		if err := dbos.Launch(dctx); err != nil {
			pool.Close()
			return nil, fmt.Errorf("dbos.Launch: %w", err)
		}
		return &dbosRunning{ctx: dctx, pool: pool}, nil
	}}
}

type dbosRunning struct {
	ctx  dbos.Context
	pool *pgxpool.Pool
}

// run starts workflow id and waits for its result.
func (r *dbosRunning) run(_ context.Context, id string) error {
	h, err := dbos.RunWorkflow(r.ctx, dbosWorkflow, "input", dbos.WithWorkflowID(id))
	if err != nil {
		return fmt.Errorf("dbos.RunWorkflow %s: %w", id, err)
	}
	out, err := h.GetResult()
	if err != nil {
		return fmt.Errorf("dbos %s: GetResult: %w", id, err)
	}
	if out != "done" {
		return fmt.Errorf("dbos %s: result %q, want done", id, out)
	}
	return nil
}

// steps lists the names of the steps DBOS recorded for id.
func (r *dbosRunning) steps(id string) ([]string, error) {
	infos, err := dbos.GetWorkflowSteps(r.ctx, id)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(infos))
	for i, s := range infos {
		names[i] = s.StepName
	}
	return names, nil
}

func (r *dbosRunning) writes() int64 { return -1 }

func (r *dbosRunning) reads() int64 { return -1 }

func (r *dbosRunning) conns() int64 { return r.pool.Stat().NewConnsCount() }

func (r *dbosRunning) close() error {
	err := dbos.Shutdown(r.ctx, 10*time.Second)
	r.pool.Close() // DBOS closes it too; Close is idempotent
	return err
}
