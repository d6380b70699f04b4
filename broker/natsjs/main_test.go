package natsjs

import (
	"os"
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
	"github.com/idemkit/idem/store/pgstore/outboxtest"
)

func TestMain(m *testing.M) {
	if schema := os.Getenv(crashSchemaEnv); schema != "" {
		// Re-executed by TestConsumerSIGKILL: consume until killed.
		os.Exit(crashChild(schema))
	}
	if outboxtest.IsChild() {
		// Re-executed by TestRelaySIGKILL: relay until killed.
		os.Exit(outboxtest.Child(relayPublisher))
	}
	leakcheck.Main(m)
}
