package idem

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
)

// OpenConfig says what the caller of OpenStore needs from the store. A nil
// *OpenConfig means a long-lived ledger on a schema that is already up to
// date.
type OpenConfig struct {
	// Migrate brings the store's schema up to the version this build needs
	// before it opens (pgstore). Without it such a store refuses a schema
	// at another version. Stores without a schema ignore it.
	Migrate bool
	// Inspect opens the store for a short look by a tool: nothing runs in
	// the background (no sweeper), and nothing is created where there was
	// no store (an error wrapping ErrNotFound says so instead).
	Inspect bool
}

// Opener opens the store a URL names. The URL's scheme is the one the
// opener was registered for; the rest is the store's to read, and a part it
// does not understand is an error wrapping ErrInvalid. cfg is never nil.
type Opener func(ctx context.Context, u *url.URL, cfg *OpenConfig) (Store, error)

// Describer is implemented by stores that can say where they keep their
// data, for people: a directory, a database and schema, a server and key
// prefix. The description never holds a password.
type Describer interface {
	Describe() string
}

var registry struct {
	sync.RWMutex
	openers map[string]Opener
}

// RegisterStore makes a store openable by OpenStore under a URL scheme.
// Store packages call it from an init function, so importing the package
// is enough (as database/sql drivers do):
//
//	import _ "github.com/idemkit/idem/store/pgstore" // postgres://, postgresql://
//
// It panics when scheme is already registered, is not a lower-case URL
// scheme, or open is nil: all are mistakes in a program, not in its input.
func RegisterStore(scheme string, open Opener) {
	if !validScheme(scheme) || strings.ToLower(scheme) != scheme {
		panic(fmt.Sprintf("idem: RegisterStore: %q is not a lower-case URL scheme", scheme))
	}
	if open == nil {
		panic("idem: RegisterStore: nil opener for scheme " + scheme)
	}
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.openers[scheme]; dup {
		panic("idem: RegisterStore called twice for scheme " + scheme)
	}
	if registry.openers == nil {
		registry.openers = make(map[string]Opener)
	}
	registry.openers[scheme] = open
}

// StoreSchemes returns the registered URL schemes, sorted.
func StoreSchemes() []string {
	registry.RLock()
	defer registry.RUnlock()
	schemes := make([]string, 0, len(registry.openers))
	for s := range registry.openers {
		schemes = append(schemes, s)
	}
	slices.Sort(schemes)
	return schemes
}

// OpenStore opens the store rawURL names with the opener registered for
// its scheme (see RegisterStore): "mem:" once memstore is imported,
// "file:DIR" with store/pebblestore, "postgres://…?schema=NAME" with
// store/pgstore, "redis://…?prefix=NAME" with store/redisstore. A URL that
// does not parse, or whose scheme no imported package registered, is an
// error wrapping ErrInvalid that names the registered schemes. Errors never
// show the URL's password.
func OpenStore(ctx context.Context, rawURL string, cfg *OpenConfig) (Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error quotes the whole URL, password included: keep its reason only.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%w: the store URL does not parse: %v", ErrInvalid, err)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("%w: the store URL %q names no scheme; want one of %s", ErrInvalid, u.Redacted(), schemeList())
	}
	registry.RLock()
	open := registry.openers[u.Scheme]
	registry.RUnlock()
	if open == nil {
		return nil, fmt.Errorf("%w: the store URL %q: no store is registered for scheme %q (registered: %s); "+
			"a store registers its scheme when its package is imported, e.g. import _ %q",
			ErrInvalid, u.Redacted(), u.Scheme, schemeList(), "github.com/idemkit/idem/store/pgstore")
	}
	var c OpenConfig
	if cfg != nil {
		c = *cfg
	}
	return open(ctx, u, &c)
}

// schemeList names the registered schemes for an error message.
func schemeList() string {
	schemes := StoreSchemes()
	if len(schemes) == 0 {
		return "none"
	}
	return strings.Join(schemes, ", ")
}

// validScheme reports whether s is a URL scheme (RFC 3986: a letter, then
// letters, digits, '+', '-' or '.').
func validScheme(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}
