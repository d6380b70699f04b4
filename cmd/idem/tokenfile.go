package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/store/pebblestore"
)

// tokenFileName is the file in a file: store's directory that keeps the
// token serve makes without --tokens, so that a restart keeps it.
const tokenFileName = "token"

// dataDir is the directory a store keeps its files in, "" for a store
// that has none (mem:, postgres://, redis://).
func dataDir(s idem.Store) string {
	if ps, ok := s.(*pebblestore.Store); ok {
		return ps.Dir()
	}
	return ""
}

// newToken makes a token: 32 random bytes, base64url.
func newToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("making a token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// keptToken returns the token kept in dir's token file, making the file
// (mode 0600) with a new token when there is none. The file must be
// readable by its owner only and hold the token alone on one line: any
// other content or mode is an error that says how to fix it, never a
// silently replaced token that would lock clients out.
func keptToken(dir string) (token, path string, made bool, err error) {
	path = filepath.Join(dir, tokenFileName)
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		token, err = newToken()
		if err != nil {
			return "", path, false, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return "", path, false, fmt.Errorf("keeping the token: %w", err)
		}
		_, err = f.WriteString(token + "\n")
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(path)
			return "", path, false, fmt.Errorf("keeping the token in %s: %w", path, err)
		}
		return token, path, true, nil
	}
	if err != nil {
		return "", path, false, fmt.Errorf("token file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", path, false, fmt.Errorf("token file %s is not a regular file (%s); remove it, and serve makes a new token", path, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", path, false, fmt.Errorf("token file %s has mode %04o, so other users may read the token: run chmod 600 %s (or remove it, and serve makes a new token)", path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", path, false, fmt.Errorf("token file: %w", err)
	}
	token, err = parseTokenFile(b)
	if err != nil {
		return "", path, false, fmt.Errorf("token file %s: %w; fix it or remove it, and serve makes a new token", path, err)
	}
	return token, path, false, nil
}

// parseTokenFile reads a token file: the token alone on one line (a final
// newline allowed), 16 to 512 printable ASCII characters without spaces,
// as a bearer token must be.
func parseTokenFile(b []byte) (string, error) {
	s := strings.TrimSuffix(string(b), "\n")
	s = strings.TrimSuffix(s, "\r")
	if len(s) < 16 || len(s) > 512 {
		return "", fmt.Errorf("want the token alone on one line, 16 to 512 characters; found %d bytes", len(b))
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' {
			return "", fmt.Errorf("want the token alone on one line, printable ASCII without spaces; byte %d is %q", i, c)
		}
	}
	return s, nil
}
