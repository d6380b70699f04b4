package pgstore

import (
	"os"
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
)

func TestMain(m *testing.M) {
	code := leakcheck.Run(m)
	closeSharedPool()
	os.Exit(code)
}
