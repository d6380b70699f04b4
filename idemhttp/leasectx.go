package idemhttp

import (
	"context"
	"sync"
	"sync/atomic"
)

// leaseContext is a first execution's handler context: the request's,
// cancelled with the refusal (cause idem.ErrLeaseLost or idem.ErrCompleted)
// when a heartbeat finds the lease lost. The cancelable context it stands
// for is derived only when the handler asks for Done or the lease is
// lost: deriving one per request (an allocation and a registration in the
// request's context) costs every handler that never waits on its context.
//
// Until then Err and Value are the request context's, which is exactly
// what the derived context would answer; context.Cause finds the derived
// context through Value once it exists.
type leaseContext struct {
	context.Context // the request's

	derived atomic.Pointer[derivedContext]
	mu      sync.Mutex // orders deriving, losing and ending
	ended   bool
}

type derivedContext struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// derive returns the cancelable context, deriving it on first use; nil
// once the execution ended without one.
func (c *leaseContext) derive() *derivedContext {
	if d := c.derived.Load(); d != nil {
		return d
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.derived.Load(); d != nil || c.ended {
		return d
	}
	ctx, cancel := context.WithCancelCause(c.Context)
	d := &derivedContext{ctx: ctx, cancel: cancel}
	c.derived.Store(d)
	return d
}

func (c *leaseContext) Done() <-chan struct{} {
	if d := c.derive(); d != nil {
		return d.ctx.Done()
	}
	return c.Context.Done() // the handler returned and asks later: no lease to lose
}

func (c *leaseContext) Err() error {
	if d := c.derived.Load(); d != nil {
		return d.ctx.Err()
	}
	return c.Context.Err()
}

func (c *leaseContext) Value(key any) any {
	if d := c.derived.Load(); d != nil {
		return d.ctx.Value(key)
	}
	return c.Context.Value(key)
}

// lose cancels the handler's context with cause err, unless the execution
// has ended (a heartbeat refused after the handler returned).
func (c *leaseContext) lose(err error) {
	if d := c.derive(); d != nil {
		d.cancel(err)
	}
}

// end releases the derived context, if any, once the handler returned.
func (c *leaseContext) end() {
	c.mu.Lock()
	c.ended = true
	c.mu.Unlock()
	if d := c.derived.Load(); d != nil {
		d.cancel(nil)
	}
}
