package workflow

// SetCrash makes e abandon a step at the named point ("before-commit": the
// action or compensation ran, the journal does not record it yet) when f
// returns an error, as a process killed there would: nothing is released.
func SetCrash(e *Engine, f func(point, stepKey string) error) { e.crash = f }
