package workflow

// SetCrash makes e abandon a step at the named points ("before-step-complete":
// the action ran, its outcome is not in the ledger; "before-commit": the
// outcome is in the ledger, the transition is not in the journal) when f
// returns an error, as a process killed there would: nothing is released.
func SetCrash(e *Engine, f func(point, stepKey string) error) { e.crash = f }
