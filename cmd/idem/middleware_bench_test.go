package main

// The embedded-store figures come from the same load as idemhttp's
// BenchmarkMiddleware (internal/loadgen).

import (
	"log/slog"
	"net/http"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/internal/loadgen"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/store/pebblestore"
)

// BenchmarkMiddleware measures idemhttp.Middleware against the bare
// handler on memstore and on the embedded store (pebblestore, fsync per
// commit), 64 keep-alive clients over loopback:
//
//	go test -run '^$' -bench BenchmarkMiddleware -benchtime 20000x -count 5
func BenchmarkMiddleware(b *testing.B) {
	b.Run("bare", func(b *testing.B) { loadgen.Run(b, http.HandlerFunc(loadgen.Handler), loadgen.Bare) })
	stores := []struct {
		name string
		open func(b *testing.B) idem.Store
	}{
		{"mem", func(*testing.B) idem.Store { return memstore.New(nil) }},
		{"pebble", func(b *testing.B) idem.Store {
			s, err := pebblestore.Open(b.TempDir(), nil)
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
	}
	for _, st := range stores {
		for _, mode := range []loadgen.Mode{loadgen.First, loadgen.Replay} {
			b.Run(st.name+"/"+mode.String(), func(b *testing.B) {
				ledger, err := idem.New(st.open(b), nil)
				if err != nil {
					b.Fatal(err)
				}
				defer ledger.Close()
				mw := idemhttp.Middleware(ledger, &idemhttp.Config{Logger: slog.New(slog.DiscardHandler)})
				loadgen.Run(b, mw(http.HandlerFunc(loadgen.Handler)), mode)
			})
		}
	}
}
