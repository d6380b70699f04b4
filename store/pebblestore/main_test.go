package pebblestore

import (
	"os"
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildDirEnv); dir != "" {
		// Re-executed by TestCrashDurability: write until killed.
		os.Exit(crashChild(dir, os.Getenv(crashChildRoundEnv)))
	}
	leakcheck.Main(m)
}
