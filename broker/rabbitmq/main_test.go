package rabbitmq

import (
	"os"
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
)

func TestMain(m *testing.M) {
	if queue := os.Getenv(crashQueueEnv); queue != "" {
		// Re-executed by TestCrashExactlyOnce: consume until killed.
		os.Exit(crashWorker(queue))
	}
	leakcheck.Main(m)
}
