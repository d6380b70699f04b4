package main

import (
	"cmp"
	"encoding/json"
	"os/exec"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionLine(t *testing.T) {
	t.Parallel()
	rev := "76d141e2f3ab0123456789abcdef0123456789ab"
	for _, tc := range []struct {
		name     string
		version  string
		settings []debug.BuildSetting
		want     string
	}{
		{"release", "v1.2.0", []debug.BuildSetting{
			{Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: "2026-12-04T18:31:36Z"}, {Key: "vcs.modified", Value: "false"},
		}, "idem v1.2.0, revision " + rev + " (2026-12-04T18:31:36Z), go1.26.8"},
		{"dirty", "(devel)", []debug.BuildSetting{
			{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "true"},
		}, "idem (devel), revision " + rev + ", dirty, go1.26.8"},
		{"no vcs", "", []debug.BuildSetting{{Key: "-buildvcs", Value: "false"}},
			"idem (devel), VCS revision unknown (built outside a repository or with -buildvcs=false), go1.26.8"},
	} {
		info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/idemkit/idem/cmd/idem", Version: tc.version}, Settings: tc.settings}
		if got := versionLine(info, true); got != tc.want {
			t.Errorf("%s: versionLine =\n%q, want\n%q", tc.name, got, tc.want)
		}
		v := readVersion(info, true)
		if v.Go != "go1.26.8" || v.Dirty != (tc.name == "dirty") || (v.Revision == rev) != (tc.name != "no vcs") ||
			(v.Time != "") != (tc.name == "release") || v.Version != cmp.Or(tc.version, "(devel)") {
			t.Errorf("%s: readVersion = %+v", tc.name, v)
		}
	}
	if got := versionLine(nil, false); got != "idem (devel), no build information recorded" {
		t.Errorf("without build info: %q", got)
	}
}

// TestVersion: the binary says what the go command recorded in it (go
// version -m reads the same record independently): the revision, and
// whether the tree was dirty. A git worktree or a tarball records none.
func TestVersion(t *testing.T) {
	t.Parallel()
	meta, err := exec.Command("go", "version", "-m", idemBin).Output()
	if err != nil {
		t.Fatal(err)
	}
	recorded := map[string]string{}
	for line := range strings.SplitSeq(string(meta), "\n") {
		if kv, ok := strings.CutPrefix(strings.TrimSpace(line), "build\t"); ok {
			k, v, _ := strings.Cut(kv, "=")
			recorded[k] = v
		}
	}
	for _, arg := range []string{"version", "--version"} {
		out, errOut, code := runIdem(t, ".", arg)
		if code != 0 || errOut != "" || strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "idem ") {
			t.Fatalf("idem %s: exit %d, stdout %q, stderr %q; want one line", arg, code, out, errOut)
		}
		rev := recorded["vcs.revision"]
		if rev == "" {
			if !strings.Contains(out, "VCS revision unknown") {
				t.Errorf("idem %s = %q from a build without a revision, want it said to be unknown", arg, out)
			}
			continue
		}
		if want := ", revision " + rev + " (" + recorded["vcs.time"] + ")"; !strings.Contains(out, want) {
			t.Errorf("idem %s = %q, want it to contain %q", arg, out, want)
		}
		if dirty := recorded["vcs.modified"] == "true"; dirty != strings.Contains(out, ", dirty") {
			t.Errorf("idem %s = %q, but the build recorded vcs.modified=%v", arg, out, dirty)
		}
		if head, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil && strings.TrimSpace(string(head)) != rev {
			t.Errorf("the binary records revision %s, git says HEAD is %s", rev, head)
		}
	}

	// --json holds the same record, field by field.
	out, errOut, code := runIdem(t, ".", "version", "--json")
	var v versionInfo
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 || errOut != "" {
		t.Fatalf("version --json: exit %d, %v, %q, %q", code, err, out, errOut)
	}
	if v.Revision != recorded["vcs.revision"] || v.Time != recorded["vcs.time"] || v.Dirty != (recorded["vcs.modified"] == "true") ||
		!strings.HasPrefix(v.Go, "go1.") || v.Version == "" || !strings.HasPrefix(string(meta), idemBin+": "+v.Go+"\n") {
		t.Errorf("version --json = %+v, the binary records %v (%.80q)", v, recorded, meta)
	}
	if _, _, code := runIdem(t, ".", "version", "--bogus"); code != 2 {
		t.Errorf("version --bogus: exit %d, want 2", code)
	}
}
