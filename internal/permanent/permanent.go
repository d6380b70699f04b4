// Package permanent marks errors that must not be retried. It is the one
// mechanism behind workflow.Permanent and messaging.Permanent, so an
// error marked by either is permanent to both.
package permanent

import "errors"

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Mark marks err as permanent; Mark(nil) is nil. The marked error keeps
// err's message and still matches it with errors.Is and As.
func Mark(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// Is reports whether err, or an error it wraps, was marked.
func Is(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}
