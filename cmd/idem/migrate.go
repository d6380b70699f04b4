package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem/internal/storeurl"
	"github.com/idemkit/idem/store/pgstore"
)

const migrateUsage = `Usage: idem migrate --store postgres://USER@HOST:PORT/DB[?schema=NAME] [--json] [--quiet]

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
  --json          print one JSON object instead of the sentence:
                  {"store" (where, for people), "has_schema" (false for a
                  store without one: nothing was done), "from" and "to"
                  (the schema's version before and after), "applied"
                  (the migrations applied, in order: [{"version","name"}],
                  [] when none)}
  --quiet         no progress on standard error

Progress goes to standard error: each migration as it is about to run
("applying 0002_workflow (v2 of v3)"), redrawn in place on a terminal, a
line each otherwise. They are applied together when the transaction
commits: a failure applies none.

Example:
  idem migrate --store 'postgres://postgres@127.0.0.1:5432/test?schema=idem'
`

// migrateJSON is the document of idem migrate --json.
type migrateJSON struct {
	Store     string                 `json:"store"`
	HasSchema bool                   `json:"has_schema"`
	From      int                    `json:"from"`
	To        int                    `json:"to"`
	Applied   []appliedMigrationJSON `json:"applied"`
}

type appliedMigrationJSON struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
}

func runMigrate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("idem migrate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	store := fs.String("store", "", "")
	timeout := fs.Duration("timeout", time.Minute, "")
	asJSON := fs.Bool("json", false, "")
	quiet := fs.Bool("quiet", false, "")
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
	out := migrateJSON{Store: redactURL(*store), Applied: []appliedMigrationJSON{}}
	u, err := url.Parse(*store)
	if err == nil && u.Scheme != "postgres" && u.Scheme != "postgresql" {
		if *asJSON {
			return writeJSON(stdout, stderr, "idem migrate", out)
		}
		fmt.Fprintf(stdout, "idem migrate: %s has no schema to migrate; nothing to do\n", redactURL(*store))
		return 0
	}
	var conn *url.URL
	var schema string
	if err == nil {
		conn, schema, err = storeurl.CutParam(u, "schema")
	}
	if err != nil {
		fmt.Fprintf(stderr, "idem migrate: --store %s: %v\n", redactURL(*store), err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var running atomic.Value // string: the migration about to run
	bar := newProgress(stderr, progressModeFor(stderr, *quiet), "idem migrate: ", func() string { return running.Load().(string) })
	s, err := pgstore.Open(ctx, conn.String(), &pgstore.Config{Schema: schema, Migrate: true, OnMigration: func(m pgstore.AppliedMigration) {
		running.Store(fmt.Sprintf("applying %s (v%d of v%d)", m.Name, m.Version, pgstore.LatestVersion()))
		bar.event()
	}})
	bar.stop()
	if err != nil {
		fmt.Fprintf(stderr, "idem migrate: %v\n", err)
		return 1
	}
	defer s.Close()
	where := describeStore(s, *store)
	m := s.Migration()
	if *asJSON {
		out.Store, out.HasSchema, out.From, out.To = where, true, m.From, m.To
		for _, a := range m.Migrations {
			out.Applied = append(out.Applied, appliedMigrationJSON{Version: a.Version, Name: a.Name})
		}
		return writeJSON(stdout, stderr, "idem migrate", out)
	}
	if n := m.Applied(); n > 0 {
		fmt.Fprintf(stdout, "idem migrate: %s: applied %d %s, schema now at v%d\n", where, n, plural(n, "migration"), m.To)
	} else {
		fmt.Fprintf(stdout, "idem migrate: %s: schema already at v%d, nothing applied\n", where, m.To)
	}
	return 0
}

// writeJSON writes v as one line of JSON: the --json output of a command
// that prints one document. A failure to write is exit 1.
func writeJSON(stdout, stderr io.Writer, cmd string, v any) int {
	if err := json.NewEncoder(stdout).Encode(v); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
