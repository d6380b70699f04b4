package messaging

import (
	"bytes"
	"context"
	"sync"

	"github.com/idemkit/idem/internal/ctxkey"
)

// DefaultMaxResult is the default Config.MaxResult: 1 MiB.
const DefaultMaxResult = 1 << 20

// SetResult attaches data to the outcome of the handler run whose context
// is ctx (the context a Consumer passes to its Handler, or one derived from
// it). When the handler returns nil the Consumer records data with the
// outcome, and Decision.Result is data for this delivery (Ack) and for
// every duplicate of the key (AckDuplicate), even one that comes after a
// crash between the record and the ack: a duplicate gets the original
// outcome, result included.
//
// data is copied; a later call replaces an earlier one, and an empty data
// is no result. A result over Config.MaxResult makes the attempt fail with
// an error wrapping idem.ErrInvalid, marked Permanent: the message is
// dead-lettered. A result set when the handler fails is dropped with the
// attempt. SetResult does nothing on a context that is not a handler
// run's, or after the handler returned.
func SetResult(ctx context.Context, data []byte) {
	rc, ok := ctx.Value(runKey{}).(*runCtx)
	if !ok {
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	switch {
	case rc.done:
	case len(data) == 0:
		rc.result = nil
	default:
		rc.result = bytes.Clone(data)
	}
}

type runKey struct{}

// runCtx is the context of one handler run: it carries the dedup key (as
// idem.WithKey does, so idem.KeyFrom finds it) and the slot SetResult
// writes, in one allocation.
type runCtx struct {
	context.Context
	key    string
	mu     sync.Mutex // the handler may set its result from any goroutine
	result []byte
	done   bool
}

// Value answers the dedup key and the run itself, and asks the parent for
// the rest.
func (c *runCtx) Value(k any) any {
	switch k {
	case runKey{}:
		return c
	case ctxkey.Key{}:
		return c.key
	}
	return c.Context.Value(k)
}

// take ends the run: it returns the result set, and later SetResult calls
// change nothing.
func (c *runCtx) take() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = true
	return c.result
}
