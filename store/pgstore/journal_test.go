package pgstore

import (
	"context"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/restarttest"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/journaltest"
)

func TestJournalConformance(t *testing.T) {
	t.Parallel()
	journaltest.Run(t, func(t *testing.T) workflow.Journal { return newStore(t).Journal() })
}

// TestJournalEngineRestart runs the order saga across restarts of the
// process (restarttest.Run): each phase makes a store on its own pool
// over one schema, builds an engine over its journal, does some work and
// closes the pool, leaving work queued for the next.
func TestJournalEngineRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := servicetest.Postgres.Need(t)
	schema := freshSchema(t, sharedPool(t))
	restarttest.Run(t, func(t *testing.T, _ idem.Clock) (workflow.Journal, func() error) {
		s, err := Open(ctx, url, &Config{Schema: schema, Migrate: true})
		if err != nil {
			t.Fatal(err)
		}
		return s.Journal(), s.Close
	})
}
