package main

import (
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

// versionLine is what idem version prints: the module version, then the
// VCS revision, its commit time and whether the tree had uncommitted
// changes ("dirty"), as the go command recorded them in the binary, then
// the Go version. One line, so scripts can keep it.
func versionLine(info *debug.BuildInfo, ok bool) string {
	if !ok {
		return "idem (devel), no build information recorded"
	}
	v := info.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, at string
	dirty := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	var b strings.Builder
	b.WriteString("idem " + v)
	if rev == "" {
		b.WriteString(", VCS revision unknown (built outside a repository or with -buildvcs=false)")
	} else {
		b.WriteString(", revision " + rev)
		if at != "" {
			b.WriteString(" (" + at + ")")
		}
		if dirty {
			b.WriteString(", dirty")
		}
	}
	b.WriteString(", " + info.GoVersion)
	return b.String()
}
