package idem

import (
	"context"

	"github.com/idemkit/idem/internal/ctxkey"
)

// WithKey returns a context that carries an idempotency key for the work
// done with it. Code that sends requests on behalf of that work reads it
// with KeyFrom: idemhttp.Transport sends it as the Idempotency-Key of a
// request that has none of its own. The workflow engine puts each action's
// step key here, so a request made inside an action carries the step key
// without the action passing it by hand.
func WithKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, ctxkey.Key{}, key)
}

// KeyFrom returns the key WithKey put in ctx, and whether there is one (an
// empty key counts as none).
func KeyFrom(ctx context.Context) (string, bool) {
	k, _ := ctx.Value(ctxkey.Key{}).(string)
	return k, k != ""
}
