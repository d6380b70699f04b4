package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// bulkLedger is a memstore holding n pending records in scope bulk, keys
// k00000, k00001, ...
func bulkLedger(t *testing.T, n int) idem.Store {
	t.Helper()
	s := memstore.New(nil)
	t.Cleanup(func() { s.Close() })
	for i := range n {
		res, err := s.Begin(context.Background(), &idem.BeginParams{Scope: "bulk", Key: fmt.Sprintf("k%05d", i), Fingerprint: "fp", Lease: time.Hour, Window: time.Hour})
		if err != nil || res.Decision != idem.Acquired {
			t.Fatalf("Begin %d: %+v, %v", i, res, err)
		}
	}
	return s
}

// TestKeysListProgressLines: off a terminal, keys ls over many records
// writes plain progress lines to stderr (here one per page: the rate limit
// is set to nothing), and stdout holds the records alone.
func TestKeysListProgressLines(t *testing.T) {
	t.Parallel()
	store := bulkLedger(t, 2500)
	var stdout, stderr bytes.Buffer
	bar := newPageProgress(&stderr, progressLines, "idem keys ls: ", "record")
	bar.every = 0
	o := &keysOptions{scope: "bulk", asJSON: true}
	if err := keysList(context.Background(), store, o, &stdout, &stderr, bar); err != nil {
		t.Fatal(err)
	}
	objs := decodeLines(t, stdout.String())
	if len(objs) != 2500 || objs[0]["key"] != "k00000" || objs[2499]["key"] != "k02499" || objs[1234]["state"] != "pending" {
		t.Fatalf("stdout has %d records, want 2500 in key order", len(objs))
	}
	want := "idem keys ls: fetched 1 page, 1000 records\n" +
		"idem keys ls: fetched 2 pages, 2000 records\n" +
		"idem keys ls: fetched 3 pages, 2500 records\n"
	if stderr.String() != want {
		t.Fatalf("stderr %q, want %q", stderr.String(), want)
	}
}

// TestKeysListProgressTerminal: on a (fake) terminal the progress is one
// line redrawn in place and erased at the end, with no line break on
// stderr; the table on stdout is the one without progress.
func TestKeysListProgressTerminal(t *testing.T) {
	t.Parallel()
	store := bulkLedger(t, 2100)
	var stdout, stderr, plain bytes.Buffer
	bar := newPageProgress(&stderr, progressTerminal, "idem keys ls: ", "record")
	o := &keysOptions{scope: "bulk", state: "pending"}
	if err := keysList(context.Background(), store, o, &stdout, &stderr, bar); err != nil {
		t.Fatal(err)
	}
	got := stderr.String()
	if !strings.HasPrefix(got, "\r\x1b[Kfetched 0 pages, 0 records") || !strings.HasSuffix(got, "\r\x1b[K") || strings.Contains(got, "\n") {
		t.Fatalf("stderr %q", got)
	}
	draw := regexp.MustCompile(`^fetched ([0-3]) pages?, (0|1000|2000|2100) records$`)
	for _, d := range strings.Split(strings.TrimPrefix(strings.TrimSuffix(got, "\r\x1b[K"), "\r\x1b[K"), "\r\x1b[K") {
		if !draw.MatchString(d) {
			t.Errorf("a drawn line %q", d)
		}
	}
	// Without progress (--quiet) the table is byte for byte the same.
	if err := keysList(context.Background(), store, o, &plain, &plain, newPageProgress(&plain, progressOff, "", "record")); err != nil {
		t.Fatal(err)
	}
	if plain.String() != stdout.String() || strings.Count(stdout.String(), "\n") != 2101 {
		t.Fatalf("the table differs with progress, or lacks rows:\n%.300s", stdout.String())
	}
}

// TestDataProgressMode: a listing whose stdout is a terminal too draws no
// progress line between its rows; --quiet draws none anywhere.
func TestDataProgressMode(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	if m := dataProgressModeFor(&buf, &buf, false); m != progressLines {
		t.Errorf("buffers: mode %d, want plain lines", m)
	}
	if m := dataProgressModeFor(&buf, &buf, true); m != progressOff {
		t.Errorf("--quiet: mode %d, want off", m)
	}
	out, errOut, code := runCLI(t, "keys", "ls", "--store", "mem:", "--scope", "s", "--quiet", "--json")
	if code != 0 || out != "" || errOut != "" {
		t.Errorf("keys ls --quiet: exit %d, %q, %q", code, out, errOut)
	}
}

// TestProgressEvent: an event (a migration about to run) is a line at
// once off a terminal, whatever the rate limit, and a redraw on one; the
// terminal line is erased once at the end.
func TestProgressEvent(t *testing.T) {
	t.Parallel()
	step := "applying 0001_records (v1 of v3)"
	status := func() string { return step }
	var log, term bytes.Buffer
	lines := newProgress(&log, progressLines, "idem migrate: ", status)
	tty := newProgress(&term, progressTerminal, "idem migrate: ", status)
	for _, p := range []*progress{lines, tty} {
		p.event()
	}
	step = "applying 0002_workflow (v2 of v3)"
	for _, p := range []*progress{lines, tty} {
		p.event()
		p.advanced() // within progressEvery of the last line: nothing
		p.stop()
		p.stop()
	}
	if want := "idem migrate: applying 0001_records (v1 of v3)\nidem migrate: applying 0002_workflow (v2 of v3)\n"; log.String() != want {
		t.Errorf("plain lines %q, want %q", log.String(), want)
	}
	if want := "\r\x1b[Kapplying 0001_records (v1 of v3)\r\x1b[Kapplying 0002_workflow (v2 of v3)\r\x1b[K"; term.String() != want {
		t.Errorf("terminal %q, want %q", term.String(), want)
	}
}
