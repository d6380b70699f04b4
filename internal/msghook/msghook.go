// Package msghook lets the simulator (package sim) break a
// messaging.Consumer or a messaging.Relay on purpose, as its mutants do, to
// prove that the messages scenario catches each break. Nothing outside idem
// can import it, and a consumer or relay nobody installed hooks on runs
// exactly as without this package.
package msghook

import "context"

// Hooks are the points where the simulator reaches into a consumer. The
// zero value changes nothing.
type Hooks struct {
	// RecordBeforeHandler completes the key with a handled outcome as soon
	// as it is acquired, before the handler runs, as Watermill's
	// deduplicator does (a mutant): a crash or a failure of the handler
	// afterwards loses the message.
	RecordBeforeHandler bool
	// BeforeCommit, if set, is called after the handler succeeded and
	// before the outcome is recorded; the ack-before-commit mutant acks
	// the delivery there.
	BeforeCommit func(ctx context.Context, key string)
}

// Install sets h on consumer, a *messaging.Consumer; package messaging
// sets it when it is initialised.
var Install func(consumer any, h *Hooks)

// RelayHooks are the points where the simulator reaches into a
// messaging.Relay. The zero value changes nothing.
type RelayHooks struct {
	// MarkBeforePublish marks each row sent before publishing it (a
	// mutant): a crash or a failed publish afterwards loses the row.
	MarkBeforePublish bool
	// MessageID, if set, gives the id each publish goes out with, from the
	// row's; the new-id-per-attempt mutant makes a fresh one every time.
	MessageID func(id string) string
	// PublishPastFailure goes on with an entity's later rows after one of
	// its rows failed to publish (a mutant): they overtake it.
	PublishPastFailure bool
}

// InstallRelay sets h on relay, a *messaging.Relay; package messaging sets
// it when it is initialised.
var InstallRelay func(relay any, h *RelayHooks)
