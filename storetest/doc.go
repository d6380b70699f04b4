// Package storetest is the conformance suite every idem.Store runs:
// storetest.Run(t, newStore, opts). A store is done when it passes.
package storetest
