package workflow

import "errors"

// Sentinel errors. Callers branch on them with errors.Is; every error the
// package returns wraps one of them with context.
var (
	// ErrInvalidDefinition: a definition breaks a rule of Validate. The
	// error joins one *DefinitionError per problem.
	ErrInvalidDefinition = errors.New("workflow: invalid definition")

	// ErrVersionConflict: a definition with the same name and version but
	// a different structure is already registered. Register a new version
	// instead.
	ErrVersionConflict = errors.New("workflow: version already registered with different content")

	// ErrNotRegistered: no definition is registered under the name (and
	// version) asked for.
	ErrNotRegistered = errors.New("workflow: definition not registered")

	// ErrConflict: the instance changed since it was read (a journal's
	// compare-and-set failed). Read it again and retry.
	ErrConflict = errors.New("workflow: instance changed concurrently")

	// ErrFinished: the instance has finished; it can no longer be
	// cancelled or retried.
	ErrFinished = errors.New("workflow: instance finished")

	// ErrNotParked: Retry was asked of an instance that is not parked.
	ErrNotParked = errors.New("workflow: instance not parked")

	// ErrNotResumable: Resume was asked of an instance that is neither
	// parked by a failed action nor failed or cancelled without a
	// compensation having run.
	ErrNotResumable = errors.New("workflow: instance cannot be resumed")
)

// DefinitionError is one problem Validate found. Path names where: a field
// of the definition ("name", "initial"), a state (`states[2] "charge"`), a
// transition (`transitions[3] "reserved" --charge--> "charged"`), or an
// action within them (`... action "charge"`).
type DefinitionError struct {
	Path    string
	Problem string
}

func (e *DefinitionError) Error() string {
	return "workflow: invalid definition: " + e.Path + ": " + e.Problem
}

// Unwrap makes errors.Is(err, ErrInvalidDefinition) true.
func (e *DefinitionError) Unwrap() error { return ErrInvalidDefinition }
