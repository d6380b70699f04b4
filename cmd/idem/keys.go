package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemclient"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/store/pebblestore"
)

const keysUsage = `Usage: idem keys <ls | show KEY | delete KEY> [flags]

Lists, shows and deletes ledger records. It reads the store directly
(--store), or goes through a running idem serve (--server and --token).

Subcommands:
  ls            the records of a scope in key order: a table of key, state,
                attempts, token, created and expires (outcome bodies are
                never printed in the table)
  show KEY      one record: every field, the outcome's size and metadata
  delete KEY    remove one record; a later begin of the key runs again

Flags (before or after the subcommand's KEY):
  --store URL     file:DIR (the embedded store of idem serve), postgres://…
                  or redis://… (see idem serve --help)
                  (default file:./idem-data). While an idem serve holds the
                  directory, use --server instead.
  --server URL    go through the API of a running idem serve, like
                  http://127.0.0.1:7070 (then --store is not used)
  --token T       the bearer token for --server (default $IDEM_TOKEN); it
                  must be bound to --scope
  --scope S       the scope of the records (default "default")
  --json          print JSON for scripts instead of text for people:
                  ls writes one record object per line (JSON Lines, an
                  empty output for no records), show writes one object.
                  The objects are the records of the API (docs/api.md),
                  outcome data included as base64. delete writes
                  {"scope","key","deleted":true}
  --quiet         ls only: no progress on standard error
  --state STATE   ls only: pending, completed or released (default all)
  --limit N       ls only: print at most N records (default 100; 0 for all)
  --cursor C      ls only: continue after a previous ls that said "more"
  --key-secret-file FILE
                  with --store, for a ledger whose keys are kept as keyed
                  digests (idem serve or idem proxy --key-secret-file): show
                  and delete look KEY up by its digest under the secret in
                  FILE (read as those commands read it); ls prints the
                  digests, as the store holds them. Not with --server: the
                  server digests keys itself

ls fetches the records a page (1000) at a time and shows on standard
error how far it is: "fetched P pages, N records", redrawn in place when
standard error is a terminal and standard output is not (when both are,
the records themselves show it); otherwise a plain line "idem keys ls:
..." at most every 10 seconds. Standard output holds the records alone.

Exit codes: 0 done, 1 failure (a missing key is a failure), 2 usage.

Examples:
  idem keys ls --scope billing
  idem keys ls --scope billing --state pending --json | jq -r .key
  idem keys show order-42 --scope billing
  idem keys delete order-42 --scope billing
  idem keys ls --server http://127.0.0.1:7070 --token "$TOKEN" --scope billing
`

type keysOptions struct {
	store, server, token, scope, state, cursor string
	keySecretFile                              string
	asJSON, quiet                              bool
	limit                                      int
	storeSet, tokenSet                         bool
}

func runKeys(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "-h", "--help", "-help", "help":
		fmt.Fprint(stdout, keysUsage)
		return 0
	case "ls", "show", "delete":
	default:
		fmt.Fprintf(stderr, "idem keys: unknown subcommand %q\n\n%s", sub, keysUsage)
		return 2
	}
	o, positional, code := parseKeysFlags(sub, args, stdout, stderr)
	if code >= 0 {
		return code
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "idem keys %s: %s\n\nRun \"idem keys --help\" for the flags.\n", sub, fmt.Sprintf(format, a...))
		return 2
	}
	var key string
	switch {
	case sub == "ls" && len(positional) > 0:
		return usageErr("unexpected argument %q (ls takes no key)", positional[0])
	case sub != "ls" && len(positional) != 1:
		return usageErr("want exactly one KEY, got %d arguments", len(positional))
	case sub != "ls":
		key = positional[0]
	}
	switch {
	case o.state != "" && !idem.State(o.state).Valid():
		return usageErr("--state %q: want pending, completed or released", o.state)
	case o.limit < 0:
		return usageErr("--limit must not be negative, got %d", o.limit)
	case o.server != "" && o.storeSet:
		return usageErr("pass --store or --server, not both")
	case o.server != "" && o.token == "":
		return usageErr("--server needs --token (or $IDEM_TOKEN), a token bound to scope %q", o.scope)
	case o.server == "" && o.tokenSet:
		return usageErr("--token is for --server; the store is read directly")
	case o.server != "" && o.keySecretFile != "":
		return usageErr("--key-secret-file is for --store; a server digests keys with its own secret")
	}
	stored := key // as the store holds it
	if o.keySecretFile != "" && key != "" {
		secret, err := readKeySecret(o.keySecretFile)
		if err != nil {
			fmt.Fprintf(stderr, "idem keys %s: %v\n", sub, err)
			return 1
		}
		if stored, err = storedKey(secret, key); err != nil {
			fmt.Fprintf(stderr, "idem keys %s: --key-secret-file: %v\n", sub, err)
			return 1
		}
	}

	store, closeStore, err := keysStore(context.Background(), o)
	if err != nil {
		fmt.Fprintf(stderr, "idem keys: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	switch sub {
	case "ls":
		bar := newPageProgress(stderr, dataProgressModeFor(stdout, stderr, o.quiet), "idem keys ls: ", "record")
		err = keysList(ctx, store, o, stdout, stderr, bar)
	case "show":
		err = keysShow(ctx, store, o, stored, stdout)
	case "delete":
		err = store.Delete(ctx, &idem.KeyParams{Scope: o.scope, Key: stored})
		switch {
		case err == nil && o.asJSON:
			err = json.NewEncoder(stdout).Encode(keysDeleted{Scope: o.scope, Key: key, Deleted: true})
		case err == nil:
			fmt.Fprintf(stdout, "deleted %s from scope %s\n", printable(key), printable(o.scope))
		}
	}
	err = errors.Join(err, closeStore())
	if err != nil {
		fmt.Fprintf(stderr, "idem keys %s: %s\n", sub, explain(err, o, key))
		return 1
	}
	return 0
}

// keysDeleted is what idem keys delete --json prints.
type keysDeleted struct {
	Scope   string `json:"scope"`
	Key     string `json:"key"` // as given on the command line
	Deleted bool   `json:"deleted"`
}

// parseKeysFlags parses flags placed before and after the positional
// arguments (parseSubcommandFlags).
func parseKeysFlags(sub string, args []string, stdout, stderr io.Writer) (*keysOptions, []string, int) {
	fs := flag.NewFlagSet("idem keys "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := &keysOptions{}
	fs.StringVar(&o.store, "store", defaultStore, "")
	fs.StringVar(&o.server, "server", "", "")
	fs.StringVar(&o.token, "token", os.Getenv("IDEM_TOKEN"), "")
	fs.StringVar(&o.scope, "scope", "default", "")
	fs.BoolVar(&o.asJSON, "json", false, "")
	fs.BoolVar(&o.quiet, "quiet", false, "")
	fs.StringVar(&o.state, "state", "", "")
	fs.IntVar(&o.limit, "limit", 100, "")
	fs.StringVar(&o.cursor, "cursor", "", "")
	fs.StringVar(&o.keySecretFile, "key-secret-file", "", "")
	positional, code := parseSubcommandFlags(fs, args, keysUsage, stdout, stderr)
	if code >= 0 {
		return nil, nil, code
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "store":
			o.storeSet = true
		case "token":
			o.tokenSet = true
		}
	})
	return o, positional, -1
}

// keysStore opens the store the flags name.
func keysStore(ctx context.Context, o *keysOptions) (idem.Store, func() error, error) {
	if o.server != "" {
		c, err := idemclient.New(o.server, o.token, &idemclient.Config{UserAgent: "idem-keys/" + version})
		if err != nil {
			return nil, nil, fmt.Errorf("--server: %w", err)
		}
		return c, c.Close, nil
	}
	s, err := openStore(ctx, o.store, &idem.OpenConfig{Inspect: true})
	switch {
	case errors.Is(err, idem.ErrNotFound): // Inspect creates no store where there was none
		return nil, nil, fmt.Errorf("no store at %s (pass --store file:DIR, the directory idem serve keeps its data in)", redactURL(o.store))
	case errors.Is(err, pebblestore.ErrLocked):
		return nil, nil, fmt.Errorf("the store %s is in use by a running idem serve; pass --server URL --token T to go through its API", redactURL(o.store))
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--store %s: %w", redactURL(o.store), err)
	}
	return s, s.Close, nil
}

// explain turns an error into a sentence for people.
func explain(err error, o *keysOptions, key string) string {
	switch {
	case errors.Is(err, idem.ErrNotFound) && key != "":
		return fmt.Sprintf("no record for key %s in scope %s", printable(key), printable(o.scope))
	case errors.Is(err, idemclient.ErrUnauthorized):
		return fmt.Sprintf("the server refused the token (check --token against its tokens file): %v", err)
	case errors.Is(err, idemclient.ErrForbidden):
		return fmt.Sprintf("the token is not bound to scope %s: %v", printable(o.scope), err)
	}
	return err.Error()
}

// keysList writes the records of ls to stdout, counting the pages in bar.
func keysList(ctx context.Context, store idem.Store, o *keysOptions, stdout, stderr io.Writer, bar *pageProgress) error {
	lister, ok := store.(idem.Lister)
	if !ok {
		return fmt.Errorf("this store cannot list records: %w", idem.ErrNotImplemented)
	}
	var tw *tabwriter.Writer
	if !o.asJSON {
		tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tSTATE\tATTEMPTS\tTOKEN\tCREATED\tEXPIRES")
	}
	enc := json.NewEncoder(stdout)
	bar.start(progressPeriod)
	defer bar.stop()
	cursor, err := bar.listPages(o.limit, o.cursor, func(size int, cursor string) (int, string, error) {
		res, err := lister.List(ctx, &idem.ListParams{Scope: o.scope, State: idem.State(o.state), Limit: size, Cursor: cursor})
		if err != nil {
			return 0, "", err
		}
		for _, r := range res.Records {
			if o.asJSON {
				if err := enc.Encode(idemapi.EncodeRecord(r)); err != nil {
					return 0, "", err
				}
			} else {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", printable(r.Key), r.State, r.Attempts, r.Token, tableTime(r.Created), tableTime(r.Expires))
			}
		}
		return len(res.Records), res.NextCursor, nil
	})
	if err != nil {
		return err
	}
	if tw != nil {
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	bar.stop()
	if cursor != "" {
		fmt.Fprintf(stderr, "idem keys ls: more records; pass --limit 0 for all, or --cursor %s for the next ones\n", cursor)
	}
	return nil
}

func keysShow(ctx context.Context, store idem.Store, o *keysOptions, key string, stdout io.Writer) error {
	r, err := store.Get(ctx, &idem.KeyParams{Scope: o.scope, Key: key})
	if err != nil {
		return err
	}
	if o.asJSON {
		return json.NewEncoder(stdout).Encode(idemapi.EncodeRecord(r))
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	row := func(name, value string) { fmt.Fprintf(tw, "%s\t%s\n", name, value) }
	row("scope", printable(r.Scope))
	row("key", printable(r.Key))
	row("fingerprint", printable(r.Fingerprint))
	row("state", string(r.State))
	row("token", strconv.FormatInt(r.Token, 10))
	row("attempts", strconv.Itoa(r.Attempts))
	if r.State == idem.StatePending {
		row("lease until", tableTime(r.LeaseUntil))
	}
	if r.Checkpoint != nil {
		row("checkpoint", fmt.Sprintf("%s (%d bytes)", printable(r.Checkpoint.Point), len(r.Checkpoint.Data)))
	}
	if r.Outcome != nil {
		row("outcome", fmt.Sprintf("%d bytes (--json shows them)", len(r.Outcome.Data)))
		// A response the HTTP middleware stored: its status and headers,
		// never its body.
		if r.Outcome.Meta == nil {
			if status, header, body, err := idemhttp.StoredResponse(r.Outcome); err == nil {
				row("  response", fmt.Sprintf("%d, %d body bytes", status, len(body)))
				for _, name := range slices.Sorted(maps.Keys(header)) {
					row("  "+printable(name), printable(strings.Join(header[name], ", ")))
				}
			}
		}
		for _, k := range slices.Sorted(maps.Keys(r.Outcome.Meta)) {
			row("  "+printable(k), printable(r.Outcome.Meta[k]))
		}
	}
	row("created", tableTime(r.Created))
	if !r.Completed.IsZero() {
		row("completed", tableTime(r.Completed))
		row("expires", tableTime(r.Expires))
	}
	row("retain until", tableTime(r.RetainUntil))
	row("window", r.Window.String())
	if r.Retention > 0 {
		row("retention", r.Retention.String())
	}
	return tw.Flush()
}

// tableTime is a time for people: UTC to the second, "-" when unset.
func tableTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// printable returns s as is when it is printable without tabs or line
// breaks, else quoted, so that no key breaks the table or the terminal.
func printable(s string) string {
	if s == "" {
		return `""`
	}
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == '"' }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// storedKey is key as a ledger with the key secret secret stores it (the
// digest is the ledger's own, so it is the one idem serve and idem proxy
// store).
func storedKey(secret []byte, key string) (string, error) {
	l, err := idem.New(noStore{}, &idem.Config{KeySecret: secret})
	if err != nil {
		return "", err
	}
	return l.StoredKey(key), nil
}

// noStore is the store of a ledger used only to digest keys.
type noStore struct{ idem.Store }
