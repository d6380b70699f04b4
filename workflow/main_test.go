package workflow_test

import (
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }
