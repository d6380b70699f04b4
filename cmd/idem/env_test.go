package main

import (
	"errors"
	"flag"
	"io"
	"slices"
	"testing"
)

// TestParseInterspersed: flags parse before, between and after the
// positional arguments, and "--" makes the rest positional.
func TestParseInterspersed(t *testing.T) {
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
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		asJSON := fs.Bool("json", false, "")
		pos, err := parseInterspersed(fs, tc.args)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if *asJSON != tc.json || !slices.Equal(pos, tc.pos) {
			t.Errorf("%q: json %v, positional %q; want %v, %q", tc.args, *asJSON, pos, tc.json, tc.pos)
		}
	}
	for _, args := range [][]string{{"k1", "--nope"}, {"--help"}} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		pos, err := parseInterspersed(fs, args)
		if err == nil || pos != nil {
			t.Errorf("%q: positional %q, err %v; want an error and none", args, pos, err)
		}
		if args[0] == "--help" && !errors.Is(err, flag.ErrHelp) {
			t.Errorf("--help: err %v, want flag.ErrHelp", err)
		}
	}
}
