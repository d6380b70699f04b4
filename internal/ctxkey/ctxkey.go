// Package ctxkey holds the context key of the idempotency key that
// idem.WithKey sets and idem.KeyFrom reads, so that package messaging can
// carry the key in a context of its own (one allocation for the key and the
// handler's result slot) and idem.KeyFrom still finds it.
package ctxkey

// Key is the context key of the idempotency key; its value is a string.
type Key struct{}
