package main

// The embedded-store figures come from the same load as idemhttp's
// BenchmarkMiddleware (internal/loadgen).

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/internal/bench"
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

// BenchmarkMiddlewareStoresPaired measures first executions through
// idemhttp.Middleware on the embedded store (pebblestore, every write
// synced) against the same on memstore, by turns (bench.Paired, 9 rounds
// of 10 000 requests a side, 64 keep-alive clients over loopback):
// pebble-ratio is pebblestore's rate over memstore's. Run it with
// -benchtime 1x.
func BenchmarkMiddlewareStoresPaired(b *testing.B) {
	serve := func(st idem.Store) string {
		ledger, err := idem.New(st, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = ledger.Close() })
		mw := idemhttp.Middleware(ledger, &idemhttp.Config{Logger: slog.New(slog.DiscardHandler)})
		srv := httptest.NewServer(mw(http.HandlerFunc(loadgen.Handler)))
		b.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	peb, err := pebblestore.Open(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	bench.Paired(b, "req/s", 9,
		loadgen.Closed("mem", serve(memstore.New(nil)), loadgen.First, 10000),
		loadgen.Closed("pebble", serve(peb), loadgen.First, 10000))
}
