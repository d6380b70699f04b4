package natsjs

import (
	"os"
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
	"github.com/idemkit/idem/store/pgstore/pgcrashtest"
)

func TestMain(m *testing.M) {
	if pgcrashtest.IsConsumerChild() {
		// Re-executed by TestConsumerSIGKILL: consume until killed.
		os.Exit(crashChild())
	}
	if pgcrashtest.IsRelayChild() {
		// Re-executed by TestRelaySIGKILL: relay until killed.
		os.Exit(pgcrashtest.RelayChild(relayPublisher))
	}
	leakcheck.Main(m)
}
