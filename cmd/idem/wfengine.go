package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/store/pebblestore"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/idemkit/idem/workflow"
)

// workflowJournal is the workflow journal of a store, nil for a store
// that keeps none (redis://): the embedded store's and PostgreSQL's are
// durable, the memory store's (a MemJournal) lasts as long as the process.
func workflowJournal(s idem.Store) workflow.Journal {
	switch st := s.(type) {
	case *pebblestore.Store:
		return st.Journal()
	case *pgstore.Store:
		return st.Journal()
	case *memstore.Store:
		return workflow.NewMemJournal()
	}
	return nil
}

// loadWorkflows registers in reg every document of dir (declare.LoadDir),
// with vars (--workflow-var) over the documents' own;
// it returns the definitions registered. The error lists every bad
// document with its line and column.
func loadWorkflows(dir string, vars map[string]string, reg *workflow.Registry) ([]*workflow.Definition, error) {
	defs, err := loadWorkflowDir(dir, vars)
	if err != nil {
		return nil, fmt.Errorf("--workflows %s:\n%s", dir, indent(err.Error()))
	}
	var errs []error
	for _, d := range defs {
		if err := reg.Register(d); err != nil {
			errs = append(errs, fmt.Errorf("%s v%d: %w", d.Name, d.Version, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("--workflows %s:\n%s", dir, indent(err.Error()))
	}
	return defs, nil
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ")
}

// servedWorkflows is the workflow engine of idem serve.
type servedWorkflows struct {
	engine   *workflow.Engine
	registry *workflow.Registry
	describe string // for the startup output
	cancel   context.CancelFunc
	done     chan struct{}
}

// serveWorkflows builds the engine of serve over the store's journal, nil
// when the store keeps none; --workflows with such a store is an error.
// obs (may be nil) sees the engine's work.
func serveWorkflows(o *serveOptions, store idem.Store, obs workflow.Observer) (*servedWorkflows, error) {
	journal := workflowJournal(store)
	if journal == nil {
		if o.workflows != "" {
			return nil, fmt.Errorf("--workflows: the store %s keeps no workflow journal; run workflows on mem:, file: or postgres://", redactURL(o.store))
		}
		return nil, nil
	}
	reg := workflow.NewRegistry()
	var defs []*workflow.Definition
	if o.workflows != "" {
		var err error
		if defs, err = loadWorkflows(o.workflows, o.workflowVars, reg); err != nil {
			return nil, err
		}
	}
	id := o.engineID
	if id == "" {
		host, _ := os.Hostname()
		id = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	eng, err := workflow.NewEngine(journal, reg, &workflow.EngineConfig{ID: id, Workers: o.workflowWorkers, Lease: o.workflowLease, Observer: obs})
	if err != nil {
		return nil, err
	}
	var names []string
	for _, d := range defs {
		names = append(names, fmt.Sprintf("%s v%d", d.Name, d.Version))
	}
	what := "no types registered at start"
	if len(names) > 0 {
		what = fmt.Sprintf("%d types from %s (%s)", len(names), o.workflows, strings.Join(names, ", "))
	}
	return &servedWorkflows{engine: eng, registry: reg, done: make(chan struct{}),
		describe: fmt.Sprintf("workflow engine %s, %d workers, lease %s: %s", id, o.workflowWorkers, o.workflowLease, what)}, nil
}

// start runs the engine until stop.
func (w *servedWorkflows) start() {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go func() {
		defer close(w.done)
		_ = w.engine.Run(ctx)
	}()
}

// stop ends Run and waits for its workers: their actions see a cancelled
// context, and what they did not record is taken over by the next engine
// once its lease runs out.
func (w *servedWorkflows) stop() {
	if w.cancel == nil {
		return
	}
	w.cancel()
	<-w.done
	w.cancel = nil
}
