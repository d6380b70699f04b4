package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/store/pebblestore"
)

// runCLI runs the idem command line in process.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return o.String(), e.String(), code
}

// seedLedger writes the records the keys tests look at into store:
// in scope billing, order-1 completed (with a body that must never appear
// in a table), order-2 pending with a checkpoint, order-3 released, and a
// pending key with a tab in it; in scope other, one record.
func seedLedger(t *testing.T, store idem.Store) {
	t.Helper()
	ctx := context.Background()
	begin := func(scope, key string) int64 {
		t.Helper()
		res, err := store.Begin(ctx, &idem.BeginParams{Scope: scope, Key: key, Fingerprint: "fp", Lease: time.Hour, Window: 24 * time.Hour})
		if err != nil || res.Decision != idem.Acquired {
			t.Fatalf("Begin(%s/%s): %+v, %v", scope, key, res, err)
		}
		return res.Record.Token
	}
	tok := begin("billing", "order-1")
	out := idem.Outcome{Data: []byte("secret-body"), Meta: map[string]string{"status": "201"}}
	if _, err := store.Complete(ctx, &idem.CompleteParams{Scope: "billing", Key: "order-1", Token: tok, Outcome: out}); err != nil {
		t.Fatal(err)
	}
	tok = begin("billing", "order-2")
	if err := store.Checkpoint(ctx, &idem.CheckpointParams{Scope: "billing", Key: "order-2", Token: tok, Point: "charged", Data: []byte{1, 2, 3}}); err != nil {
		t.Fatal(err)
	}
	tok = begin("billing", "order-3")
	if err := store.Release(ctx, &idem.ReleaseParams{Scope: "billing", Key: "order-3", Token: tok}); err != nil {
		t.Fatal(err)
	}
	begin("billing", "tab\tkey")
	begin("other", "order-1")
}

// fileLedger returns a file: store URL holding the seeded records, closed
// again so that idem keys can open it.
func fileLedger(t *testing.T) (url, dir string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "idem-data")
	s, err := pebblestore.Open(dir, &pebblestore.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	seedLedger(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return "file:" + dir, dir
}

// tableRows returns the rows of a table as fields, header first.
func tableRows(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

func decodeLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q is no JSON object: %v", sc.Text(), err)
		}
		objs = append(objs, m)
	}
	return objs
}

func TestKeysListFileStore(t *testing.T) {
	t.Parallel()
	store, _ := fileLedger(t)

	out, errOut, code := runCLI(t, "keys", "ls", "--store", store, "--scope", "billing")
	if code != 0 || errOut != "" {
		t.Fatalf("ls: exit %d, stderr %q", code, errOut)
	}
	rows := tableRows(out)
	want := [][]string{
		{"KEY", "STATE", "ATTEMPTS", "TOKEN", "CREATED", "EXPIRES"},
		{"order-1", "completed", "1"},
		{"order-2", "pending", "1"},
		{"order-3", "released", "1"},
		{`"tab\tkey"`, "pending", "1"},
	}
	if len(rows) != len(want) {
		t.Fatalf("ls printed %d rows, want %d:\n%s", len(rows), len(want), out)
	}
	for i, w := range want {
		for j, cell := range w {
			if rows[i][j] != cell {
				t.Errorf("row %d column %d: %q, want %q\n%s", i, j, rows[i][j], cell, out)
			}
		}
	}
	// completed: created (date, time) and expires (date, time); pending: expires "-".
	if len(rows[1]) != 8 || rows[2][len(rows[2])-1] != "-" {
		t.Errorf("time columns are off:\n%s", out)
	}
	if strings.Contains(out, "secret-body") || strings.Contains(out, "c2VjcmV0LWJvZHk") {
		t.Errorf("ls printed an outcome body:\n%s", out)
	}

	out, _, code = runCLI(t, "keys", "ls", "--store", store, "--scope", "billing", "--state", "pending")
	if rows := tableRows(out); code != 0 || len(rows) != 3 || rows[1][0] != "order-2" || rows[2][0] != `"tab\tkey"` {
		t.Errorf("ls --state pending: exit %d\n%s", code, out)
	}

	out, errOut, code = runCLI(t, "keys", "ls", "--json", "--store", store, "--scope", "billing")
	objs := decodeLines(t, out)
	if code != 0 || errOut != "" || len(objs) != 4 {
		t.Fatalf("ls --json: exit %d, %d objects, stderr %q\n%s", code, len(objs), errOut, out)
	}
	if objs[0]["key"] != "order-1" || objs[0]["state"] != "completed" || objs[0]["outcome"].(map[string]any)["data"] != "c2VjcmV0LWJvZHk=" {
		t.Errorf("ls --json first record: %v", objs[0])
	}
	if objs[3]["key"] != "tab\tkey" || objs[3]["outcome"] != nil || objs[1]["checkpoint"].(map[string]any)["point"] != "charged" {
		t.Errorf("ls --json records: %v", objs)
	}

	out, errOut, code = runCLI(t, "keys", "ls", "--store", store, "--scope", "empty-scope", "--json")
	if code != 0 || out != "" || errOut != "" {
		t.Errorf("ls --json of an empty scope: exit %d, %q, %q; want no output", code, out, errOut)
	}
}

func TestKeysListPages(t *testing.T) {
	t.Parallel()
	store, _ := fileLedger(t)
	out, errOut, code := runCLI(t, "keys", "ls", "--store", store, "--scope", "billing", "--limit", "3", "--json")
	objs := decodeLines(t, out)
	if code != 0 || len(objs) != 3 || !strings.Contains(errOut, "more records") {
		t.Fatalf("ls --limit 3: exit %d, %d records, stderr %q", code, len(objs), errOut)
	}
	_, cursor, found := strings.Cut(strings.TrimSpace(errOut), "--cursor ")
	cursor, _, _ = strings.Cut(cursor, " ")
	if !found || cursor == "" {
		t.Fatalf("ls --limit 3 named no cursor: %q", errOut)
	}
	out, errOut, code = runCLI(t, "keys", "ls", "--store", store, "--scope", "billing", "--cursor", cursor, "--json")
	objs = decodeLines(t, out)
	if code != 0 || errOut != "" || len(objs) != 1 || objs[0]["key"] != "tab\tkey" {
		t.Errorf("ls --cursor: exit %d, %v, stderr %q; want the last record", code, objs, errOut)
	}
	out, _, code = runCLI(t, "keys", "ls", "--store", store, "--scope", "billing", "--limit", "0", "--json")
	if objs := decodeLines(t, out); code != 0 || len(objs) != 4 {
		t.Errorf("ls --limit 0: exit %d, %d records, want all 4", code, len(objs))
	}
}

// TestKeysShowStoredResponse: show names the status and headers of a
// response the HTTP middleware stored, and never prints its body.
func TestKeysShowStoredResponse(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "idem-data")
	s, err := pebblestore.Open(dir, &pebblestore.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ledger, err := idem.New(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	mw := idemhttp.Middleware(ledger, &idemhttp.Config{Scope: func(*http.Request) (string, error) { return "tenant", nil }})
	h := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", "/orders/9")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"secret":"body"}`)
	}))
	req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(`{}`))
	req.Header.Set(idemhttp.HeaderKey, "order-9")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated {
		t.Fatalf("the middleware answered %d %s", rec.Code, rec.Body)
	}
	if err := ledger.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, "keys", "show", "order-9", "--store", "file:"+dir, "--scope", "6:tenant POST /orders")
	if code != 0 || errOut != "" {
		t.Fatalf("show: exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"  response      201, 17 body bytes", "  Content-Type  application/json", "  Location      /orders/9"} {
		if !strings.Contains(out, want) {
			t.Errorf("show does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "secret") {
		t.Errorf("show printed the response body:\n%s", out)
	}
}

func TestKeysShowAndDelete(t *testing.T) {
	t.Parallel()
	store, dir := fileLedger(t)

	out, errOut, code := runCLI(t, "keys", "show", "order-1", "--store", store, "--scope", "billing")
	if code != 0 || errOut != "" {
		t.Fatalf("show: exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"key           order-1", "state         completed", "outcome       11 bytes", "  status      201", "expires "} {
		if !strings.Contains(out, want) {
			t.Errorf("show does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "secret-body") {
		t.Errorf("show printed the outcome body:\n%s", out)
	}

	// Flags before the key work as well as after it.
	out, _, code = runCLI(t, "keys", "show", "--json", "--store", store, "--scope", "billing", "order-2")
	var rec map[string]any
	if err := json.Unmarshal([]byte(out), &rec); code != 0 || err != nil {
		t.Fatalf("show --json: exit %d, %v\n%s", code, err, out)
	}
	if rec["state"] != "pending" || rec["checkpoint"].(map[string]any)["data"] != "AQID" || rec["lease_until"] == nil {
		t.Errorf("show --json: %v", rec)
	}

	out, errOut, code = runCLI(t, "keys", "delete", "order-3", "--store", store, "--scope", "billing")
	if code != 0 || out != "deleted order-3 from scope billing\n" {
		t.Errorf("delete: exit %d, %q, stderr %q", code, out, errOut)
	}
	for _, sub := range []string{"show", "delete"} {
		_, errOut, code = runCLI(t, "keys", sub, "order-3", "--store", store, "--scope", "billing")
		if code != 1 || !strings.Contains(errOut, "no record for key order-3 in scope billing") {
			t.Errorf("%s of a deleted key: exit %d, stderr %q; want 1 and a clear message", sub, code, errOut)
		}
	}
	// The other scope's record of the same key is untouched.
	if _, errOut, code := runCLI(t, "keys", "show", "order-1", "--store", store, "--scope", "other"); code != 0 {
		t.Errorf("show in scope other: exit %d, %s", code, errOut)
	}
	// A key that starts with a dash, after --.
	if _, errOut, code := runCLI(t, "keys", "show", "--store", store, "--scope", "billing", "--", "-dash"); code != 1 || !strings.Contains(errOut, "no record for key -dash") {
		t.Errorf("show -- -dash: exit %d, stderr %q", code, errOut)
	}

	// delete --json: one object, and the record is gone from the store.
	out, errOut, code = runCLI(t, "keys", "delete", "order-2", "--store", store, "--scope", "billing", "--json")
	var del keysDeleted
	if err := json.Unmarshal([]byte(out), &del); err != nil || code != 0 || errOut != "" || del != (keysDeleted{Scope: "billing", Key: "order-2", Deleted: true}) {
		t.Fatalf("delete --json: exit %d, %v, %q, %q", code, err, out, errOut)
	}
	s, err := pebblestore.Open(dir, &pebblestore.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Get(context.Background(), &idem.KeyParams{Scope: "billing", Key: "order-2"}); !errors.Is(err, idem.ErrNotFound) {
		t.Errorf("after delete --json, Get(order-2) = %v, want ErrNotFound", err)
	}
	if _, err := s.Get(context.Background(), &idem.KeyParams{Scope: "billing", Key: "order-1"}); err != nil {
		t.Errorf("order-1 after deleting order-2: %v", err)
	}
}

func TestKeysLockedStore(t *testing.T) {
	t.Parallel()
	store, dir := fileLedger(t)
	held, err := pebblestore.Open(dir, &pebblestore.Config{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, errOut, code := runCLI(t, "keys", "ls", "--store", store, "--scope", "billing")
	want := "the store " + store + " is in use by a running idem serve; pass --server URL --token T to go through its API"
	if code != 1 || !strings.Contains(errOut, want) {
		t.Errorf("ls of a held store: exit %d, stderr %q; want 1 saying %q", code, errOut, want)
	}
}

func TestKeysMissingStore(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "nothing-here")
	_, errOut, code := runCLI(t, "keys", "ls", "--store", "file:"+dir)
	if code != 1 || !strings.Contains(errOut, "no store at file:"+dir) {
		t.Errorf("ls of a missing store: exit %d, stderr %q", code, errOut)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("ls created the store directory: %v", err)
	}
}

func TestKeysUsage(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		code int
		says string
	}{
		{[]string{"keys"}, 2, "Usage: idem keys"},
		{[]string{"keys", "rm", "k"}, 2, `unknown subcommand "rm"`},
		{[]string{"keys", "show"}, 2, "want exactly one KEY"},
		{[]string{"keys", "show", "a", "b"}, 2, "want exactly one KEY"},
		{[]string{"keys", "ls", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"keys", "ls", "--state", "done"}, 2, `--state "done"`},
		{[]string{"keys", "ls", "--limit", "-1"}, 2, "--limit"},
		{[]string{"keys", "ls", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"keys", "ls", "--store", "mem:", "--server", "http://127.0.0.1:1"}, 2, "not both"},
		{[]string{"keys", "ls", "--server", "http://127.0.0.1:1", "--token", ""}, 2, "--server needs --token"},
		{[]string{"keys", "ls", "--store", "mem:", "--token", "t"}, 2, "--token is for --server"},
		{[]string{"keys", "ls", "--server", "127.0.0.1:7070", "--token", "t"}, 1, "http://"},
		{[]string{"keys", "ls", "--store", "bogus"}, 1, "--store bogus: not a store URL this binary knows: want mem:, file:DIR"},
		{[]string{"keys", "show", "k", "--store", "mem:"}, 1, "no record for key k in scope default"},
	}
	for _, c := range cases {
		out, errOut, code := runCLI(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.says) || out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want %d saying %q", c.args, code, out, errOut, c.code, c.says)
		}
	}
	for _, args := range [][]string{{"keys", "--help"}, {"keys", "ls", "--help"}, {"keys", "show", "-h"}, {"keys", "delete", "--help"}} {
		out, errOut, code := runCLI(t, args...)
		if code != 0 || errOut != "" || !strings.Contains(out, "--store URL") || !strings.Contains(out, "Examples:") || !strings.Contains(out, "idem keys show order-42") {
			t.Errorf("%v: exit %d, stderr %q, stdout %q; want the flags with examples", args, code, errOut, out)
		}
	}
}

// TestKeysThroughServer goes through the API of a running idem serve with
// --server and --token, the way an operator reads a held store.
func TestKeysThroughServer(t *testing.T) {
	t.Parallel()
	base := startMemServe(t)
	seedLedger(t, newRemote(t, base, opsToken))
	remote := []string{"--server", base, "--token", billingToken, "--scope", "billing"}

	out, errOut, code := runCLI(t, append([]string{"keys", "ls"}, remote...)...)
	rows := tableRows(out)
	if code != 0 || errOut != "" || len(rows) != 5 || rows[1][0] != "order-1" || rows[4][0] != `"tab\tkey"` {
		t.Fatalf("ls --server: exit %d, stderr %q\n%s", code, errOut, out)
	}
	out, _, code = runCLI(t, append([]string{"keys", "show", "order-1", "--json"}, remote...)...)
	var rec map[string]any
	if err := json.Unmarshal([]byte(out), &rec); code != 0 || err != nil || rec["outcome"].(map[string]any)["data"] != "c2VjcmV0LWJvZHk=" {
		t.Errorf("show --json --server: exit %d, %v, %v", code, err, rec)
	}
	if out, _, code := runCLI(t, append([]string{"keys", "delete", "order-1"}, remote...)...); code != 0 || !strings.Contains(out, "deleted order-1") {
		t.Errorf("delete --server: exit %d, %q", code, out)
	}
	if _, errOut, code := runCLI(t, append([]string{"keys", "show", "order-1"}, remote...)...); code != 1 || !strings.Contains(errOut, "no record for key order-1 in scope billing") {
		t.Errorf("show of a deleted key --server: exit %d, %q", code, errOut)
	}
	_, errOut, code = runCLI(t, "keys", "ls", "--server", base, "--token", billingToken, "--scope", "other")
	if code != 1 || !strings.Contains(errOut, "the token is not bound to scope other") {
		t.Errorf("ls of a scope the token is not bound to: exit %d, %q", code, errOut)
	}
	_, errOut, code = runCLI(t, "keys", "ls", "--server", base, "--token", "wrong-token", "--scope", "billing")
	if code != 1 || !strings.Contains(errOut, "the server refused the token") {
		t.Errorf("ls with an unknown token: exit %d, %q", code, errOut)
	}
}

// TestParseSubcommandFlags: flags parse before, between and after the
// positional arguments, "--" makes the rest positional, and --help and a
// bad flag end the command with usage or a message.
func TestParseSubcommandFlags(t *testing.T) {
	newFlags := func() (*flag.FlagSet, *bool) {
		fs := flag.NewFlagSet("idem keys show", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		return fs, fs.Bool("json", false, "")
	}
	for _, tc := range []struct {
		args []string
		json bool
		pos  []string
	}{
		{nil, false, nil},
		{[]string{"k1"}, false, []string{"k1"}},
		{[]string{"--json", "k1"}, true, []string{"k1"}},
		{[]string{"k1", "--json", "k2"}, true, []string{"k1", "k2"}},
		{[]string{"k1", "--", "--json", "-k"}, false, []string{"k1", "--json", "-k"}},
		{[]string{"--json", "--", "-k"}, true, []string{"-k"}},
	} {
		fs, asJSON := newFlags()
		var stdout, stderr bytes.Buffer
		pos, code := parseSubcommandFlags(fs, tc.args, "USAGE\n", &stdout, &stderr)
		if code != -1 || stdout.Len()+stderr.Len() != 0 {
			t.Fatalf("%q: code %d, stdout %q, stderr %q; want -1 and no output", tc.args, code, &stdout, &stderr)
		}
		if *asJSON != tc.json || !slices.Equal(pos, tc.pos) {
			t.Errorf("%q: json %v, positional %q; want %v, %q", tc.args, *asJSON, pos, tc.json, tc.pos)
		}
	}
	for _, tc := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{[]string{"k1", "--help"}, 0, "USAGE\n", ""},
		{[]string{"k1", "--nope"}, 2, "", "idem keys show: flag provided but not defined: -nope\n\nRun \"idem keys --help\" for the flags.\n"},
	} {
		fs, _ := newFlags()
		var stdout, stderr bytes.Buffer
		pos, code := parseSubcommandFlags(fs, tc.args, "USAGE\n", &stdout, &stderr)
		if pos != nil || code != tc.code || stdout.String() != tc.stdout || stderr.String() != tc.stderr {
			t.Errorf("%q: positional %q, code %d, stdout %q, stderr %q; want none, %d, %q, %q", tc.args, pos, code, &stdout, &stderr, tc.code, tc.stdout, tc.stderr)
		}
	}
}
