package idem_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

// fakeOpened records what the opener of the test's scheme was given, by
// URL.
var fakeOpened struct {
	sync.Mutex
	cfgs map[string][]idem.OpenConfig
}

func init() {
	fakeOpened.cfgs = map[string][]idem.OpenConfig{}
	idem.RegisterStore("fake+test", func(_ context.Context, u *url.URL, cfg *idem.OpenConfig) (idem.Store, error) {
		fakeOpened.Lock()
		defer fakeOpened.Unlock()
		fakeOpened.cfgs[u.String()] = append(fakeOpened.cfgs[u.String()], *cfg)
		return memstore.New(nil), nil
	})
}

func opened(url string) []idem.OpenConfig {
	fakeOpened.Lock()
	defer fakeOpened.Unlock()
	return fakeOpened.cfgs[url]
}

func TestOpenStoreMem(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := idem.OpenStore(ctx, "mem:", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, ok := s.(*memstore.Store); !ok {
		t.Fatalf("mem: opened a %T", s)
	}
	if d := s.(idem.Describer).Describe(); d != "memory (nothing is kept after exit)" {
		t.Errorf("Describe = %q", d)
	}
	// Each mem: URL is a store of its own.
	other, err := idem.OpenStore(ctx, "mem:", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := s.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: 1e9, Window: 1e9}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Get(ctx, &idem.KeyParams{Scope: "s", Key: "k"}); !errors.Is(err, idem.ErrNotFound) {
		t.Errorf("the second mem: store sees the first's record: %v", err)
	}
}

func TestOpenStoreHandsTheOpenerItsURLAndConfig(t *testing.T) {
	t.Parallel()
	// The registry is the process's: with -count > 1 earlier runs' opens
	// are recorded too, so only this run's are looked at.
	before := len(opened("fake+test://user:pw@host/path?a=1"))
	beforeNil := len(opened("fake+test:nil-config"))
	s, err := idem.OpenStore(context.Background(), "FAKE+test://user:pw@host/path?a=1", &idem.OpenConfig{Migrate: true, Inspect: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Schemes are case-insensitive (RFC 3986): the opener sees it in lower case.
	if got := opened("fake+test://user:pw@host/path?a=1")[before:]; len(got) != 1 || got[0] != (idem.OpenConfig{Migrate: true, Inspect: true}) {
		t.Fatalf("the opener got %+v, want once {Migrate:true Inspect:true}", got)
	}
	if s, err = idem.OpenStore(context.Background(), "fake+test:nil-config", nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if got := opened("fake+test:nil-config")[beforeNil:]; len(got) != 1 || got[0] != (idem.OpenConfig{}) {
		t.Errorf("a nil config reached the opener as %+v, want once the zero OpenConfig", got)
	}
}

func TestOpenStoreRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ raw, want string }{
		{"nowhere://x", `no store is registered for scheme "nowhere" (registered: fake+test, mem); a store registers its scheme when its package is imported, e.g. import _ "github.com/idemkit/idem/store/pgstore"`},
		{"postgres://u:secret@h/db", `the store URL "postgres://u:xxxxx@h/db": no store is registered for scheme "postgres"`},
		{"./idem-data", `names no scheme; want one of fake+test, mem`},
		{"", `names no scheme`},
		{"postgres://u:secret@h/%zz", `the store URL does not parse: invalid URL escape "%zz"`},
		{"mem:x", `mem: takes nothing after the colon`},
		{"mem://h", `mem: takes nothing after the colon`},
	} {
		s, err := idem.OpenStore(context.Background(), tc.raw, nil)
		if err == nil {
			s.Close()
			t.Errorf("OpenStore(%q) opened a store", tc.raw)
			continue
		}
		if !errors.Is(err, idem.ErrInvalid) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("OpenStore(%q) = %v\nwant ErrInvalid saying %s, without the password", tc.raw, err, tc.want)
		}
	}
}

func TestStoreSchemes(t *testing.T) {
	t.Parallel()
	if got := strings.Join(idem.StoreSchemes(), " "); got != "fake+test mem" {
		t.Errorf("StoreSchemes = %q, want the test's and memstore's", got)
	}
}

func TestRegisterStorePanics(t *testing.T) {
	t.Parallel()
	open := func(context.Context, *url.URL, *idem.OpenConfig) (idem.Store, error) { return nil, nil }
	for name, register := range map[string]func(){
		"duplicate":     func() { idem.RegisterStore("mem", open) },
		"nil opener":    func() { idem.RegisterStore("nil-opener", nil) },
		"upper case":    func() { idem.RegisterStore("Upper", open) },
		"empty":         func() { idem.RegisterStore("", open) },
		"digit first":   func() { idem.RegisterStore("1x", open) },
		"with a colon":  func() { idem.RegisterStore("x:", open) },
		"with a space":  func() { idem.RegisterStore("a b", open) },
		"with a slash":  func() { idem.RegisterStore("a/b", open) },
		"with a hash":   func() { idem.RegisterStore("a#b", open) },
		"with a query":  func() { idem.RegisterStore("a?b", open) },
		"underscore":    func() { idem.RegisterStore("a_b", open) },
		"percent":       func() { idem.RegisterStore("a%b", open) },
		"non-ASCII":     func() { idem.RegisterStore("é", open) },
		"trailing nul":  func() { idem.RegisterStore("a\x00", open) },
		"leading space": func() { idem.RegisterStore(" a", open) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("RegisterStore (%s) did not panic", name)
				}
			}()
			register()
		}()
	}
	if got := strings.Join(idem.StoreSchemes(), " "); got != "fake+test mem" {
		t.Errorf("after refused registrations StoreSchemes = %q", got)
	}
}

// FuzzOpenStore: no input panics OpenStore; every refusal wraps ErrInvalid
// and never shows the URL's password.
func FuzzOpenStore(f *testing.F) {
	for _, s := range []string{"mem:", "mem:x", "fake+test://u:pw@h/p?q=1", "postgres://u:pw@h/%zz", "://", "a:b:c", "%", "fake+test:%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		s, err := idem.OpenStore(context.Background(), raw, nil)
		if err == nil {
			s.Close()
			return
		}
		if !errors.Is(err, idem.ErrInvalid) {
			t.Fatalf("OpenStore(%q) = %v, not ErrInvalid", raw, err)
		}
		if u, perr := url.Parse(raw); perr == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok && len(pw) >= 4 && strings.Contains(err.Error(), pw) && !strings.Contains(u.Redacted(), pw) {
				t.Fatalf("OpenStore(%q) = %v shows the password", raw, err)
			}
		}
	})
}
