package idemhttp_test

import (
	"net/http"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/internal/loadgen"
	"github.com/idemkit/idem/memstore"
)

// BenchmarkMiddleware drives a small JSON handler through a loopback
// server with 64 concurrent keep-alive clients: bare, first executions
// (a fresh key per request) and replays (one stored key), on memstore.
func BenchmarkMiddleware(b *testing.B) {
	ledger, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		b.Fatal(err)
	}
	mw := idemhttp.Middleware(ledger, nil)
	for _, mode := range loadgen.Modes {
		b.Run(mode.String(), func(b *testing.B) {
			var h http.Handler = http.HandlerFunc(loadgen.Handler)
			if mode != loadgen.Bare {
				h = mw(h)
			}
			loadgen.Run(b, h, mode)
		})
	}
}
