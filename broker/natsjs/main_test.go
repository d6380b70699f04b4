package natsjs

import (
	"os"
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
)

func TestMain(m *testing.M) {
	if schema := os.Getenv(crashSchemaEnv); schema != "" {
		// Re-executed by TestConsumerSIGKILL: consume until killed.
		os.Exit(crashChild(schema))
	}
	leakcheck.Main(m)
}
