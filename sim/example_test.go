package sim_test

import (
	"fmt"

	"github.com/idemkit/idem/sim"
)

// Run one world of a scenario on idem's ledger, then on a broken one.
func ExampleRun() {
	pauses, _ := sim.ScenarioNamed("pauses")
	fmt.Println(sim.Run(pauses, 2, nil).OK())

	ignoreToken, _ := sim.MutantNamed("ignore-token")
	r := sim.Run(pauses, 2, &ignoreToken)
	fmt.Println(r.Violations[0].Invariant)
	// Output:
	// true
	// fenced
}

// Run many seeds on every CPU; a failure comes with the lowest seed that
// shows it.
func ExampleRunSeeds() {
	messages, _ := sim.ScenarioNamed("messages")
	fmt.Println(sim.RunSeeds(messages, 1, 200, nil).OK())

	m, _ := sim.MutantNamed("release-completed")
	sum := sim.RunSeeds(messages, 1, 10_000, &m)
	fmt.Println(sum.OK(), sum.Seeds, sum.Failed.Seed)
	// Output:
	// true
	// false 1 1
}
