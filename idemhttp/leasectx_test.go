package idemhttp

import (
	"context"
	"errors"
	"testing"

	"github.com/idemkit/idem"
)

type ctxKey struct{}

// TestLeaseContext: the lazily derived context answers as one derived
// up front would: values and cancellation of the request's context pass
// through, contexts derived from it are cancelled with it, a loss cancels
// with its cause, and nothing is derived after the execution ended.
func TestLeaseContext(t *testing.T) {
	t.Parallel()
	newCtx := func() (*leaseContext, context.CancelFunc) {
		parent, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
		return &leaseContext{Context: parent}, cancel
	}

	t.Run("request cancelled", func(t *testing.T) {
		t.Parallel()
		c, cancel := newCtx()
		defer c.end()
		if c.Value(ctxKey{}) != "v" || c.Err() != nil {
			t.Fatalf("value %v err %v", c.Value(ctxKey{}), c.Err())
		}
		child, stop := context.WithCancel(c)
		defer stop()
		cancel()
		<-c.Done()
		<-child.Done()
		if !errors.Is(c.Err(), context.Canceled) || context.Cause(c) != context.Canceled {
			t.Fatalf("err %v cause %v", c.Err(), context.Cause(c))
		}
	})

	t.Run("lost before Done", func(t *testing.T) {
		t.Parallel()
		c, cancel := newCtx()
		defer cancel()
		defer c.end()
		c.lose(idem.ErrLeaseLost)
		<-c.Done()
		if !errors.Is(context.Cause(c), idem.ErrLeaseLost) || c.Value(ctxKey{}) != "v" {
			t.Fatalf("cause %v value %v", context.Cause(c), c.Value(ctxKey{}))
		}
	})

	t.Run("lost after a child", func(t *testing.T) {
		t.Parallel()
		c, cancel := newCtx()
		defer cancel()
		defer c.end()
		child, stop := context.WithCancel(c)
		defer stop()
		c.lose(idem.ErrCompleted)
		<-child.Done()
		if !errors.Is(context.Cause(child), idem.ErrCompleted) {
			t.Fatalf("child cause %v", context.Cause(child))
		}
	})

	t.Run("lost after the end", func(t *testing.T) {
		t.Parallel()
		c, cancel := newCtx()
		defer cancel()
		c.end()
		c.lose(idem.ErrLeaseLost)
		if c.derived.Load() != nil || c.Err() != nil {
			t.Fatalf("derived after the end: err %v", c.Err())
		}
	})
}
