package pebblestore

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/idemkit/idem"
)

func TestOpenByURL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	for _, raw := range []string{"file:" + dir, "file://" + dir, "file:" + strings.ReplaceAll(dir, "/", "%2F")} {
		s, err := idem.OpenStore(ctx, raw, nil)
		if err != nil {
			t.Fatalf("OpenStore(%q): %v", raw, err)
		}
		ps, ok := s.(*Store)
		if !ok || ps.Dir() != dir || ps.Describe() != dir {
			t.Errorf("OpenStore(%q) = %T in %q described %q, want a *Store in %s", raw, s, ps.Dir(), ps.Describe(), dir)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpenByURLInspectCreatesNothing(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "nothing-here")
	_, err := idem.OpenStore(context.Background(), "file:"+dir, &idem.OpenConfig{Inspect: true})
	if !errors.Is(err, idem.ErrNotFound) || !strings.Contains(err.Error(), "no store at "+dir) {
		t.Fatalf("Inspect of a missing directory: %v, want ErrNotFound naming it", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("Inspect created %s: %v", dir, err)
	}
	// Without Inspect the store is made.
	s, err := idem.OpenStore(context.Background(), "file:"+dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = idem.OpenStore(context.Background(), "file:"+dir, &idem.OpenConfig{Inspect: true})
	if err != nil {
		t.Fatalf("Inspect of an existing store: %v", err)
	}
	s.Close()
}

func TestDescribeRelative(t *testing.T) {
	t.Parallel()
	s := &Store{dir: "./idem-data"}
	abs, err := filepath.Abs("./idem-data")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.Describe(), "./idem-data ("+abs+")"; got != want {
		t.Errorf("Describe = %q, want %q", got, want)
	}
}

func TestOpenByURLRefuses(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		"file:":            "names no directory",
		"file://":          "names no directory",
		"file:./x?sync=no": "file: takes no parameters",
		"file:./x#frag":    "file: takes no parameters",
		"file:./%zz":       "directory does not parse",
	} {
		s, err := idem.OpenStore(context.Background(), raw, nil)
		if err == nil {
			s.Close()
			t.Errorf("OpenStore(%q) opened a store", raw)
			continue
		}
		if !errors.Is(err, idem.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("OpenStore(%q) = %v, want ErrInvalid saying %q", raw, err, want)
		}
	}
}

// FuzzURLDir: no file: URL panics urlDir; it names a directory or refuses
// with ErrInvalid, and a directory written as file:DIR (escaped) comes back.
func FuzzURLDir(f *testing.F) {
	for _, s := range []string{"./idem-data", "/var/lib/idem", "//./x", "///abs", "a%20b", "%zz", "x?y", "x#y", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rest string) {
		u, err := url.Parse("file:" + rest)
		if err != nil {
			return
		}
		dir, err := urlDir(u)
		if err != nil {
			if !errors.Is(err, idem.ErrInvalid) {
				t.Fatalf("urlDir(%q) = %v, not ErrInvalid", rest, err)
			}
			return
		}
		if dir == "" {
			t.Fatalf("urlDir(%q) accepted an empty directory", rest)
		}
		if strings.HasPrefix(rest, "/") || rest == "" {
			return
		}
		// An opaque file:DIR with DIR path-escaped reads back as DIR.
		escaped, _ := url.Parse("file:" + url.PathEscape(dir))
		if back, err := urlDir(escaped); err != nil || back != dir {
			t.Fatalf("file:%s (from %q) reads back %q, %v; want %q", url.PathEscape(dir), rest, back, err, dir)
		}
	})
}
