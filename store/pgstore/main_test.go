package pgstore

import (
	"os"
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
)

func TestMain(m *testing.M) {
	if schema := os.Getenv(wfWorkerSchemaEnv); schema != "" {
		// Re-executed by TestWorkflowWorkersSIGKILL: run until killed.
		os.Exit(wfWorker(schema))
	}
	code := leakcheck.Run(m)
	closeSharedPool()
	os.Exit(code)
}
