package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// version is the module version the binary was built from (a tag like
// v1.2.0 for go install …@v1.2.0; a pseudo-version or "(devel)" for a
// checkout), for idem version and User-Agent headers.
var version = func() string {
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" {
		return info.Main.Version
	}
	return "(devel)"
}()

// versionInfo is what the go command recorded in the binary: the
// document of idem version --json.
type versionInfo struct {
	// Version is the module version: a tag, a pseudo-version or
	// "(devel)".
	Version string `json:"version"`
	// Revision is the VCS revision, "" when none was recorded; Time its
	// commit time (RFC 3339), "" when unknown.
	Revision string `json:"revision"`
	Time     string `json:"time"`
	// Dirty: the tree had uncommitted changes.
	Dirty bool `json:"dirty"`
	// Go is the Go version, "" without build information.
	Go string `json:"go"`
}

// readVersion reads info (ok as debug.ReadBuildInfo returns it).
func readVersion(info *debug.BuildInfo, ok bool) versionInfo {
	v := versionInfo{Version: "(devel)"}
	if !ok {
		return v
	}
	if info.Main.Version != "" {
		v.Version = info.Main.Version
	}
	v.Go = info.GoVersion
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Dirty = s.Value == "true"
		}
	}
	return v
}

// versionLine is what idem version prints: the module version, then the
// VCS revision, its commit time and whether the tree had uncommitted
// changes ("dirty"), as the go command recorded them in the binary, then
// the Go version. One line, so scripts can keep it.
func versionLine(info *debug.BuildInfo, ok bool) string {
	if !ok {
		return "idem (devel), no build information recorded"
	}
	v := readVersion(info, ok)
	var b strings.Builder
	b.WriteString("idem " + v.Version)
	if v.Revision == "" {
		b.WriteString(", VCS revision unknown (built outside a repository or with -buildvcs=false)")
	} else {
		b.WriteString(", revision " + v.Revision)
		if v.Time != "" {
			b.WriteString(" (" + v.Time + ")")
		}
		if v.Dirty {
			b.WriteString(", dirty")
		}
	}
	b.WriteString(", " + v.Go)
	return b.String()
}

const versionUsage = `Usage: idem version [--json]

Prints the module version, the VCS revision the binary was built from
(with its commit time, and "dirty" when the tree had uncommitted changes)
and the Go version, on one line.

Flags:
  --json   print one JSON object instead: {"version","revision" ("" when
           none was recorded),"time" ("" when unknown),"dirty","go"}
`

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("idem version", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "")
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		_, _ = io.WriteString(stdout, versionUsage)
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "idem version: %v\n\n%s", err, versionUsage)
		return 2
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "idem version: unexpected argument %q\n\n%s", fs.Arg(0), versionUsage)
		return 2
	case *asJSON:
		return writeJSON(stdout, stderr, "idem version", readVersion(debug.ReadBuildInfo()))
	}
	fmt.Fprintln(stdout, versionLine(debug.ReadBuildInfo()))
	return 0
}
