package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// envHelp ends the --help of every command whose flags parseWithEnv reads.
const envHelp = `Environment:
  Every flag can also be set by an environment variable: IDEM_ and the
  flag's name in upper case with dashes as underscores (IDEM_STORE,
  IDEM_LISTEN, IDEM_SWEEP_INTERVAL, IDEM_TLS_CERT, ...). A flag given on
  the command line wins over its variable; an invalid value is an error
  that names the variable.
`

// envName is the environment variable that sets a flag: --sweep-interval
// is IDEM_SWEEP_INTERVAL.
func envName(flagName string) string {
	return "IDEM_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseWithEnv parses args into fs, then sets every flag the command line
// did not from its environment variable (envName), so that a container or
// a unit file can configure a command without a wrapper script.
func parseWithEnv(fs *flag.FlagSet, args []string) error {
	return parseWithLookup(fs, args, os.LookupEnv)
}

func parseWithLookup(fs *flag.FlagSet, args []string, lookup func(string) (string, bool)) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	return applyEnv(fs, onCommandLine, lookup)
}

// applyEnv sets every flag of fs not in onCommandLine from its
// environment variable (envName).
func applyEnv(fs *flag.FlagSet, onCommandLine map[string]bool, lookup func(string) (string, bool)) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || onCommandLine[f.Name] {
			return
		}
		name := envName(f.Name)
		v, ok := lookup(name)
		if !ok {
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = fmt.Errorf("environment variable %s=%q (for --%s): %v", name, v, f.Name, serr)
		}
	})
	return err
}

// parseSubcommandFlags parses the flags of a subcommand (fs's name: "idem
// keys ls") placed before and after the positional arguments it returns
// ("show KEY --json" and "show --json KEY" both work; "--" ends the flags,
// for arguments that start with "-"). It answers what ends the command
// there: 0 after printing usage for --help, 2 after a bad flag, -1 to go
// on.
func parseSubcommandFlags(fs *flag.FlagSet, args []string, usage string, stdout, stderr io.Writer) ([]string, int) {
	var positional []string
	for {
		err := fs.Parse(args)
		switch {
		case errors.Is(err, flag.ErrHelp):
			fmt.Fprint(stdout, usage)
			return nil, 0
		case err != nil:
			command := fs.Name()[:max(strings.LastIndexByte(fs.Name(), ' '), 0)] // "idem keys"
			fmt.Fprintf(stderr, "%s: %v\n\nRun \"%s --help\" for the flags.\n", fs.Name(), err, command)
			return nil, 2
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, -1
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), -1
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// parseCommandFlags parses a long-lived command's flags (parseWithEnv)
// and answers what ends the command there: 0 after printing usage for
// --help, 2 after a usage error (a bad flag or a positional argument),
// -1 to go on. fs's name ("idem serve") prefixes the errors.
func parseCommandFlags(fs *flag.FlagSet, args []string, usage string, stdout, stderr io.Writer) int {
	err := parseWithEnv(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		_, _ = io.WriteString(stdout, usage)
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\n\n%s", fs.Name(), err, usage)
		return 2
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n\n%s", fs.Name(), fs.Arg(0), usage)
		return 2
	}
	return -1
}
