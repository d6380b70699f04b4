package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// helpDoc is docs/cli-help.md: the --help of every command, checked
// against the binary by TestHelpReference.
var helpDoc = filepath.Join("..", "..", "docs", "cli-help.md")

// helpCommands are the commands whose --help the page holds, in its order.
var helpCommands = [][]string{
	{}, {"serve"}, {"proxy"}, {"consume"}, {"relay"}, {"keys"}, {"wf"},
	{"migrate"}, {"bench"}, {"bench", "proxy"}, {"sim"}, {"version"},
}

// TestHelpReference checks that docs/cli-help.md holds exactly what
// `idem <command> --help` prints for every command, so that the page
// never drifts from the binary. IDEM_UPDATE_HELP=1 rewrites the page.
func TestHelpReference(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString(`# Every command's flags: the ` + "`--help`" + ` of each

This page is what ` + "`idem <command> --help`" + ` prints, to read without the binary. Every flag of
every command is here, with its default (the
conventions of standard output, JSON and progress are in [cli.md](cli.md)). A test
(` + "`TestHelpReference`" + ` in ` + "`cmd/idem`" + `) fails when the page and the binary differ; after changing a
command's help, ` + "`IDEM_UPDATE_HELP=1 go test ./cmd/idem -run TestHelpReference`" + ` rewrites it.
`)
	for _, cmd := range helpCommands {
		args := append(append([]string{}, cmd...), "--help")
		out, errOut, code := runIdem(t, t.TempDir(), args...)
		if code != 0 || out == "" {
			t.Fatalf("idem %s: exit %d, %d bytes on standard output\n%s", strings.Join(args, " "), code, len(out), errOut)
		}
		if strings.Contains(out, "```") {
			t.Fatalf("idem %s prints a code fence, which the page cannot hold", strings.Join(args, " "))
		}
		fmt.Fprintf(&b, "\n## `%s`\n\n```text\n%s\n```\n", strings.Join(append([]string{"idem"}, cmd...), " "), strings.TrimRight(out, "\n"))
	}
	want := b.String()
	if os.Getenv("IDEM_UPDATE_HELP") == "1" {
		if err := os.WriteFile(helpDoc, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(helpDoc)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(want, "\n")
		for i := range max(len(gl), len(wl)) {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("docs/cli-help.md differs from the binary's --help at line %d:\n page: %q\n help: %q\nrun IDEM_UPDATE_HELP=1 go test ./cmd/idem -run TestHelpReference", i+1, g, w)
			}
		}
	}
}
