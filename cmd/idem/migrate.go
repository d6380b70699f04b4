package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/store/pgstore"
)

const migrateUsage = `Usage: idem migrate --store postgres://USER@HOST:PORT/DB[?schema=NAME]

Brings the ledger's PostgreSQL schema up to the version this build needs.
The migrations are embedded in the binary, versioned, and applied in one
transaction under an advisory lock, so several servers may run it at once;
running it again changes nothing. It says what it did: "applied N
migrations, schema now at vX" or "schema already at vX, nothing applied".
Other stores have no schema: for them migrate says so and exits 0.

Flags:
  --store URL     the store (postgres://…; ?schema=NAME picks the schema,
                  default idem)
  --timeout D     give up after D (default 1m)

Example:
  idem migrate --store 'postgres://postgres@127.0.0.1:5432/test?schema=idem'
`

func runMigrate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("idem migrate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	store := fs.String("store", "", "")
	timeout := fs.Duration("timeout", time.Minute, "")
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		_, _ = io.WriteString(stdout, migrateUsage)
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "idem migrate: %v\n\n%s", err, migrateUsage)
		return 2
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "idem migrate: unexpected argument %q\n\n%s", fs.Arg(0), migrateUsage)
		return 2
	case *store == "":
		fmt.Fprintf(stderr, "idem migrate: --store is required\n\n%s", migrateUsage)
		return 2
	case *timeout <= 0:
		fmt.Fprintf(stderr, "idem migrate: --timeout must be positive, got %s\n", *timeout)
		return 2
	}
	if u, err := url.Parse(*store); err == nil && u.Scheme != "postgres" && u.Scheme != "postgresql" {
		fmt.Fprintf(stdout, "idem migrate: %s has no schema to migrate; nothing to do\n", redactURL(*store))
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	s, err := openStore(ctx, *store, &idem.OpenConfig{Migrate: true, Inspect: true})
	if err != nil {
		fmt.Fprintf(stderr, "idem migrate: %v\n", err)
		return 1
	}
	defer s.Close()
	where := describeStore(s, *store)
	m := s.(*pgstore.Store).Migration()
	if n := m.Applied(); n > 0 {
		fmt.Fprintf(stdout, "idem migrate: %s: applied %d %s, schema now at v%d\n", where, n, plural(n, "migration"), m.To)
	} else {
		fmt.Fprintf(stdout, "idem migrate: %s: schema already at v%d, nothing applied\n", where, m.To)
	}
	return 0
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
