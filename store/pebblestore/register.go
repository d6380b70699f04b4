package pebblestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/idemkit/idem"
)

// Importing pebblestore makes "file:DIR" open the store in DIR through
// idem.OpenStore: file:./idem-data, file:/var/lib/idem or
// file:///var/lib/idem. With idem.OpenConfig.Inspect the store runs no
// sweeper and a missing directory is an error wrapping idem.ErrNotFound
// rather than a new, empty store.
func init() { idem.RegisterStore("file", openURL) }

func openURL(_ context.Context, u *url.URL, cfg *idem.OpenConfig) (idem.Store, error) {
	dir, err := urlDir(u)
	if err != nil {
		return nil, err
	}
	c := &Config{}
	if cfg.Inspect {
		c.SweepInterval = -1
		if fi, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) || err == nil && !fi.IsDir() {
			return nil, fmt.Errorf("%w: pebblestore: no store at %s", idem.ErrNotFound, dir)
		}
	}
	return Open(dir, c)
}

// urlDir reads the directory of a file: URL: the opaque part of file:DIR
// (percent-decoded), or the host and path of file://HOST/PATH, so that
// file://./idem-data is ./idem-data as people mean it.
func urlDir(u *url.URL) (string, error) {
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%w: pebblestore: the store URL %q: file: takes no parameters (write a '?' or '#' in a directory name as %%3F or %%23)", idem.ErrInvalid, u.Redacted())
	}
	dir := u.Host + u.Path
	if u.Opaque != "" {
		var err error
		if dir, err = url.PathUnescape(u.Opaque); err != nil {
			return "", fmt.Errorf("%w: pebblestore: the store URL's directory does not parse: %v", idem.ErrInvalid, err)
		}
	}
	if dir == "" {
		return "", fmt.Errorf("%w: pebblestore: the store URL %q names no directory; want one like file:./idem-data", idem.ErrInvalid, u.Redacted())
	}
	return dir, nil
}

// Dir returns the directory the store is in, as it was given to Open.
func (s *Store) Dir() string { return s.dir }

// Describe implements idem.Describer: the directory, and its absolute path
// when it was given relative.
func (s *Store) Describe() string {
	if abs, err := filepath.Abs(s.dir); err == nil && abs != s.dir {
		return s.dir + " (" + abs + ")"
	}
	return s.dir
}
