package redisstore

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/internal/leakcheck"
)

// quietLogger drops go-redis's own log lines (failed dials of the tests
// that point at a closed port); errors reach the tests as return values.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{})
	leakcheck.Main(m)
}
