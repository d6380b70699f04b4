package memstore

import (
	"context"
	"fmt"
	"net/url"

	"github.com/idemkit/idem"
)

// Importing memstore makes "mem:" open a new, empty Store through
// idem.OpenStore.
func init() { idem.RegisterStore("mem", openURL) }

func openURL(_ context.Context, u *url.URL, _ *idem.OpenConfig) (idem.Store, error) {
	if u.Opaque != "" || u.Host != "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: memstore: the store URL %q: mem: takes nothing after the colon", idem.ErrInvalid, u.Redacted())
	}
	return New(nil), nil
}

// Describe implements idem.Describer.
func (s *Store) Describe() string { return "memory (nothing is kept after exit)" }
