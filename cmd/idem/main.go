// Command idem serves, inspects and exercises an idem ledger.
//
//	idem serve    the ledger over HTTP/JSON (embedded store by default)
//	idem proxy    the Idempotency-Key middleware in front of any HTTP service
//	idem consume  a NATS JetStream or RabbitMQ queue into any HTTP service, once per message
//	idem relay    publish a PostgreSQL outbox to NATS JetStream or RabbitMQ
//	idem keys     list, show and delete records
//	idem wf       start, signal, inspect and operate workflows
//	idem migrate  bring a PostgreSQL store's schema up to date
//	idem bench    load a store, an idem serve or an HTTP endpoint: ops/s, latency
//	idem sim      run the deterministic simulator: scenarios, mutants, seeds
//	idem version  print the module version, VCS revision and Go version
//
// Run `idem <command> --help` for a command's flags.
package main

import (
	"fmt"
	"io"
	"os"
)

const usage = `idem makes distributed work safe to repeat.

Usage: idem <command> [flags]

Commands:
  serve     run the ledger over HTTP/JSON (embedded store in ./idem-data by default)
  proxy     put the Idempotency-Key middleware in front of any HTTP service
            (embedded store in ./idem-proxy-data by default)
  consume   consume a NATS JetStream or RabbitMQ queue into an HTTP service,
            once to success per message id (./idem-consume-data by default)
  relay     publish a PostgreSQL store's outbox to NATS JetStream or RabbitMQ
  keys      list, show and delete records (ls | show | delete)
  wf        start, signal, inspect and operate workflows (types | graph |
            register | start | signal | cancel | retry | resume | show |
            history | ls)
  migrate   bring a PostgreSQL store's schema up to date
  bench     measure a store, an idem serve or an idem proxy under load
            (ops/s, latency quantiles, errors, CPU; targets compared by
            turns)
  sim       check idem's guarantees in seeded simulated worlds (crashes,
            pauses, a lossy network, failing stores)
  version   print the module version, the VCS revision it was built from
            (with "dirty" when the tree had uncommitted changes) and the
            Go version

Run "idem <command> --help" for the flags of a command. Every command
whose output is data (keys, wf, migrate, bench, sim, version) prints JSON
with --json; the long ones (keys ls, wf ls, migrate, bench, sim) show
their progress on standard error, never on standard output: a line
redrawn in place on a terminal, plain lines otherwise, none with --quiet.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a command line. Exit codes: 0 success, 1 failure, 2 usage.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return runServe(args[1:], stdout, stderr)
	case "proxy":
		return runProxy(args[1:], stdout, stderr)
	case "consume":
		return runConsume(args[1:], stdout, stderr)
	case "relay":
		return runRelay(args[1:], stdout, stderr)
	case "keys":
		return runKeys(args[1:], stdout, stderr)
	case "wf":
		return runWF(args[1:], stdout, stderr)
	case "migrate":
		return runMigrate(args[1:], stdout, stderr)
	case "bench":
		return runBench(args[1:], stdout, stderr)
	case "sim":
		return runSim(args[1:], stdout, stderr)
	case "version", "--version":
		return runVersion(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "idem: unknown command %q\n\n%s", args[0], usage)
	return 2
}
