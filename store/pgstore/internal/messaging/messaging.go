// Package messaging is a stand-in for the few names of package
// github.com/idemkit/idem/messaging (see its API in issue 16) that the
// PostgreSQL inbox needs, until that package is on main. It keeps their
// names and meanings exactly; when messaging lands, pgstore imports it
// instead and this directory is deleted.
package messaging

import (
	"errors"
	"time"
)

// Message is one delivery of a broker message, as an adapter hands it over.
type Message struct {
	ID       string // the broker's message id
	Subject  string
	Payload  []byte
	Headers  map[string]string
	Delivery int // the broker's delivery count, from 1; 0 if unknown
}

// Action is what the adapter must do with the delivery.
type Action int

const (
	Ack           Action = iota + 1 // handled now: ack
	AckDuplicate                    // handled before: ack, handler not run
	AckSuperseded                   // a stale version: ack without handling
	Retry                           // nack / redeliver after Decision.Delay
	DeadLetter                      // give up: the dead-letter hook ran; ack/term it
)

func (a Action) String() string {
	switch a {
	case Ack:
		return "ack"
	case AckDuplicate:
		return "ack-duplicate"
	case AckSuperseded:
		return "ack-superseded"
	case Retry:
		return "retry"
	case DeadLetter:
		return "dead-letter"
	}
	return "unknown"
}

// Decision is the answer for one delivery.
type Decision struct {
	Action Action
	Delay  time.Duration
	Key    string
	Err    error
}

// Attempt is one failed attempt, as the dead-letter hook gets it.
type Attempt struct {
	At    time.Time
	Error string
}

type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent marks a handler error that must not be retried.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// IsPermanent reports whether err was marked by Permanent.
func IsPermanent(err error) bool {
	var p permanent
	return errors.As(err, &p)
}
