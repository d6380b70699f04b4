package idemotel_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/idemotel"
	"github.com/idemkit/idem/internal/bench"
	"github.com/idemkit/idem/internal/loadgen"
	"github.com/idemkit/idem/memstore"
)

// BenchmarkMiddlewareOTelPaired is the overhead of idemotel on the
// middleware's first executions, by turns (bench.Paired): 9 rounds of
// 10 000 first executions through idemhttp.Middleware over memstore, bare
// (the baseline) and with idemotel (Handler around it, the ledger's
// Observer): its metrics recorded in the SDK, its spans batched to an
// exporter that drops them, with 1 % of the traces sampled
// (sampled=1pct, ParentBased(TraceIDRatioBased(0.01)), a common production
// setting) or all of them (sampled=all). otel-ratio is the rate with
// idemotel over the rate without. Run it with -benchtime 1x.
func BenchmarkMiddlewareOTelPaired(b *testing.B) {
	for _, c := range []struct {
		name    string
		sampler sdktrace.Sampler
	}{
		{"sampled=1pct", sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.01))},
		{"sampled=all", sdktrace.AlwaysSample()},
	} {
		b.Run(c.name, func(b *testing.B) { middlewareOTelPaired(b, c.sampler) })
	}
}

func middlewareOTelPaired(b *testing.B, sampler sdktrace.Sampler) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()), sdktrace.WithSampler(sampler))
	defer tp.Shutdown(b.Context())
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(b.Context())
	tel, err := idemotel.New(&idemotel.Config{TracerProvider: tp, MeterProvider: mp})
	if err != nil {
		b.Fatal(err)
	}
	plain, err := idem.New(memstore.New(nil), nil)
	if err != nil {
		b.Fatal(err)
	}
	observed, err := idem.New(memstore.New(nil), &idem.Config{Observer: tel})
	if err != nil {
		b.Fatal(err)
	}
	app := http.HandlerFunc(loadgen.Handler)
	without := httptest.NewServer(idemhttp.Middleware(plain, nil)(app))
	defer without.Close()
	with := httptest.NewServer(tel.Handler("/", idemhttp.Middleware(observed, nil)(app)))
	defer with.Close()
	addr := func(s *httptest.Server) string { return s.Listener.Addr().String() }
	bench.Paired(b, "req/s", 9,
		loadgen.Closed("first", addr(without), loadgen.First, 10000),
		loadgen.Closed("otel", addr(with), loadgen.First, 10000))
}
