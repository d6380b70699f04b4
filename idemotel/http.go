package idemotel

import (
	"context"
	"net/http"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/httpstatus"
)

// Header names read by Handler and Transport (as package idemhttp's).
const (
	headerKey      = "Idempotency-Key"
	headerReplayed = "Idempotent-Replayed"
)

// Handler wraps next (an idemhttp.Middleware or idemhttp.Proxy, or a
// whole server) with a server span per request: named after the method
// and route ("POST /orders"; route names the route, "" for the path's
// first segment), a child of the W3C traceparent the request carries.
// It carries http.request.method, http.route, http.response.status_code,
// idem.key.digest (of the Idempotency-Key header, if any) and
// idem.replayed (the response's Idempotent-Replayed), never the key,
// the URL's query or a body. The ledger operations of the request (the
// middleware's Begin and Complete) become its children, and it records
// idem.http.server.request.duration.
func (t *Telemetry) Handler(route string, next http.Handler) http.Handler {
	// Span names of the standard methods, made once when the route is
	// fixed.
	names := map[string]string{}
	if route != "" {
		for _, m := range standardMethods {
			names[m] = m + " " + route
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx := r.Context()
		if len(r.Header["Traceparent"]) > 0 {
			ctx = t.prop.Extract(ctx, propagation.HeaderCarrier(r.Header))
		}
		rt := route
		if rt == "" {
			rt = firstSegment(r.URL.Path)
		}
		name, ok := names[r.Method]
		if !ok {
			name = r.Method + " " + rt
		}
		ctx, span := t.tracer.Start(ctx, name, serverSpan...)
		rec := httpstatus.New(w)
		next.ServeHTTP(rec, r.WithContext(ctx))
		status := rec.Status()
		if status == 0 {
			status = http.StatusOK
		}
		replayed := w.Header().Get(headerReplayed) == "true"
		recording := span.IsRecording()
		if recording {
			attrs := []attribute.KeyValue{
				attribute.String("http.request.method", r.Method),
				attribute.String("http.route", rt),
				attribute.Int("http.response.status_code", status),
				AttrReplayed.Bool(replayed),
			}
			if k := r.Header.Get(headerKey); k != "" {
				attrs = append(attrs, AttrKeyDigest.String(idem.KeyDigest(k)))
			}
			span.SetAttributes(attrs...)
			if status >= 500 {
				span.SetStatus(codes.Error, http.StatusText(status))
			}
		}
		span.End()
		mctx := context.Background() // exemplars only for sampled spans, as the SDK keeps
		if recording {
			mctx = ctx
		}
		t.httpDuration.Record(mctx, time.Since(start).Seconds(), t.httpSet(r.Method, status, replayed)...)
	})
}

// serverSpan are the options of Handler's spans, made once.
var serverSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}

var standardMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete,
	http.MethodHead, http.MethodOptions, http.MethodConnect, http.MethodTrace}

// httpKey identifies the attribute set of an idem.http.server.request.duration
// point. Its values are bounded: methods outside the standard ones are
// "_OTHER", statuses outside 100-599 are 0.
type httpKey struct {
	method   string
	status   int
	replayed bool
}

// httpSet returns the (cached) attribute set of a request's point, so
// that recording builds no set.
func (t *Telemetry) httpSet(method string, status int, replayed bool) []metric.RecordOption {
	if !slices.Contains(standardMethods, method) {
		method = "_OTHER"
	}
	if status < 100 || status > 599 {
		status = 0
	}
	k := httpKey{method, status, replayed}
	if o, ok := t.httpSets.Load(k); ok {
		return o.([]metric.RecordOption)
	}
	o := []metric.RecordOption{set(attribute.String("http.request.method", method),
		attribute.Int("http.response.status_code", status), AttrReplayed.Bool(replayed))}
	t.httpSets.Store(k, o)
	return o
}

// firstSegment is "/orders" of "/orders/42": a route name of bounded
// cardinality when the caller names none.
func firstSegment(path string) string {
	for i := 1; i < len(path); i++ {
		if path[i] == '/' {
			return path[:i]
		}
	}
	return path
}

// Transport wraps base (nil: http.DefaultTransport) with a client span per
// request, a child of the request context's span, and sends the W3C
// traceparent (and tracestate) with the request, so the server's spans
// join the trace. Put it under idemhttp.Transport (as its
// TransportConfig.Base) so that the span sees the Idempotency-Key that
// transport adds: the span carries its digest (idem.key.digest; or that of
// idem.KeyFrom(ctx) when the request has no header), http.request.method,
// server.address and http.response.status_code.
func (t *Telemetry) Transport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return roundTripper{t: t, base: base}
}

type roundTripper struct {
	t    *Telemetry
	base http.RoundTripper
}

func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, span := rt.t.tracer.Start(req.Context(), req.Method, trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	out := req.Clone(ctx)
	rt.t.prop.Inject(ctx, propagation.HeaderCarrier(out.Header))
	if span.IsRecording() {
		attrs := []attribute.KeyValue{attribute.String("http.request.method", req.Method),
			attribute.String("server.address", req.URL.Hostname())}
		if k := req.Header.Get(headerKey); k != "" {
			attrs = append(attrs, AttrKeyDigest.String(idem.KeyDigest(k)))
		} else if k, ok := idem.KeyFrom(ctx); ok {
			attrs = append(attrs, AttrKeyDigest.String(idem.KeyDigest(k)))
		}
		span.SetAttributes(attrs...)
	}
	resp, err := rt.base.RoundTrip(out)
	if err != nil {
		span.SetStatus(codes.Error, "round trip failed")
		return resp, err
	}
	span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode),
		AttrReplayed.Bool(resp.Header.Get(headerReplayed) == "true"))
	if resp.StatusCode >= 500 {
		span.SetStatus(codes.Error, http.StatusText(resp.StatusCode))
	}
	return resp, nil
}
