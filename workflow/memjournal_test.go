package workflow_test

import (
	"testing"

	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/journaltest"
)

func TestMemJournal(t *testing.T) {
	t.Parallel()
	journaltest.Run(t, func(t *testing.T) workflow.Journal { return workflow.NewMemJournal() })
}
