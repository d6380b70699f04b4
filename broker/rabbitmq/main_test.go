package rabbitmq

import (
	"os"
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
	"github.com/idemkit/idem/store/pgstore/pgcrashtest"
)

func TestMain(m *testing.M) {
	if queue := os.Getenv(crashQueueEnv); queue != "" {
		// Re-executed by TestCrashExactlyOnce: consume until killed.
		os.Exit(crashWorker(queue))
	}
	if pgcrashtest.IsRelayChild() {
		// Re-executed by TestRelaySIGKILL: relay until killed.
		os.Exit(pgcrashtest.RelayChild(relayPublisher))
	}
	leakcheck.Main(m)
}
