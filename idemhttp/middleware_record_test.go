package idemhttp_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
)

const testScope = "9:anonymous POST /orders" // post's scope without Authorization

// Complete failpoints of faultyStore.
const (
	completeOK int32 = iota
	failBeforeCommit
	failAfterCommit
)

// faultyStore is memstore whose next Complete fails: before committing (a
// timeout that never reached the store) or after (the reply was lost).
type faultyStore struct {
	*memstore.Store
	fail atomic.Int32
}

func (s *faultyStore) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	switch s.fail.Swap(completeOK) {
	case failBeforeCommit:
		return nil, fmt.Errorf("timeout: %w", idem.ErrUnavailable)
	case failAfterCommit:
		if _, err := s.Store.Complete(ctx, p); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("reply lost: %w", idem.ErrUnavailable)
	}
	return s.Store.Complete(ctx, p)
}

type faultyBundle struct {
	store  *faultyStore
	ledger *idem.Ledger
	clock  *idem.ManualClock
	logs   *syncBuffer
	runs   atomic.Int64
	h      http.Handler
}

// setupFaulty returns the middleware over faultyStore on a manual clock,
// with a 10 s lease and no Wait, serving created.
func setupFaulty(t *testing.T) *faultyBundle {
	t.Helper()
	b := &faultyBundle{clock: idem.NewManualClock(start), logs: &syncBuffer{}}
	b.store = &faultyStore{Store: memstore.New(&memstore.Config{Clock: b.clock})}
	l, err := idem.New(b.store, &idem.Config{Clock: b.clock, Lease: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b.ledger = l
	// Wait -1: a duplicate answers 409 at once, instead of waiting on the
	// manual clock.
	cfg := &idemhttp.Config{Clock: b.clock, Wait: -1, Logger: slog.New(slog.NewTextHandler(b.logs, nil))}
	b.h = idemhttp.Middleware(l, cfg)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.runs.Add(1)
		created(w, r)
	}))
	return b
}

// checkingWriter calls onHeader when the response's status reaches it.
type checkingWriter struct {
	*httptest.ResponseRecorder
	onHeader func(status int)
	wrote    bool
}

func (w *checkingWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		w.onHeader(code)
	}
	w.ResponseRecorder.WriteHeader(code)
}

func (w *checkingWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseRecorder.Write(p)
}

func TestAnswerOnlyOnceRecorded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status int
		want   idem.State // the record's state when the client gets the status
	}{
		{http.StatusCreated, idem.StateCompleted},
		{http.StatusInternalServerError, idem.StateReleased},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			t.Parallel()
			cfg := &idemhttp.Config{}
			b := setup(t, false, cfg)
			h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/plain")
				w.WriteHeader(tc.status)
				fmt.Fprint(w, "part one, ")
				fmt.Fprint(w, "part two")
			})
			var state idem.State
			w := &checkingWriter{ResponseRecorder: httptest.NewRecorder(), onHeader: func(int) {
				rec, err := b.ledger.Get(context.Background(), testScope, "k")
				if err != nil {
					t.Errorf("no record when the status was written: %v", err)
					return
				}
				state = rec.State
			}}
			h.ServeHTTP(w, post("k", "x"))
			if state != tc.want {
				t.Fatalf("record %q when the client got the status, want %q", state, tc.want)
			}
			if w.Code != tc.status || w.Body.String() != "part one, part two" || w.Header().Get("Content-Type") != "text/plain" {
				t.Fatalf("response %d %q %v", w.Code, w.Body, w.Header())
			}
		})
	}
}

func TestCompleteFailsAnswersProblem(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		fail     int32
		wantRuns int64 // after the retry
	}{
		{"before-commit", failBeforeCommit, 2},
		{"after-commit", failAfterCommit, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupFaulty(t)
			b.store.fail.Store(tc.fail)
			res := do(b.h, post("secret-key-1", "secret-body"))
			if got := res.Header.Get("Retry-After"); got == "" {
				t.Fatal("no Retry-After")
			}
			for _, name := range []string{"Location", "Set-Cookie", "X-Request-Id", idemhttp.HeaderReplayed} {
				if v := res.Header.Get(name); v != "" {
					t.Fatalf("the problem carries the handler's %s %q", name, v)
				}
			}
			wantProblem(t, res, http.StatusServiceUnavailable, "not-recorded")
			if logs := b.logs.String(); !strings.Contains(logs, "storing the response failed") || strings.Contains(logs, "secret") {
				t.Fatalf("log %q: want the failure, never the key or body", logs)
			}

			retry := do(b.h, post("secret-key-1", "secret-body"))
			if tc.fail == failBeforeCommit {
				// The first owner's lease holds the key until it ends.
				wantProblem(t, retry, http.StatusConflict, "in-flight")
				b.clock.Advance(10*time.Second + time.Millisecond)
				retry = do(b.h, post("secret-key-1", "secret-body"))
			}
			body := readBody(t, retry)
			if retry.StatusCode != http.StatusCreated || body != `{"id":1,"echo":"secret-body"}` || retry.Header.Get("Location") != "/orders/1" {
				t.Fatalf("retry %d %q %v", retry.StatusCode, body, retry.Header)
			}
			if got := b.runs.Load(); got != tc.wantRuns {
				t.Fatalf("handler ran %d times, want %d", got, tc.wantRuns)
			}
			wantReplayed := map[int64]string{1: "true", 2: "false"}[tc.wantRuns]
			if got := retry.Header.Get(idemhttp.HeaderReplayed); got != wantReplayed {
				t.Fatalf("retry %s %q, want %q", idemhttp.HeaderReplayed, got, wantReplayed)
			}
			// Whatever the client got last is what duplicates get now.
			again := do(b.h, post("secret-key-1", "secret-body"))
			if got := readBody(t, again); got != body || again.Header.Get(idemhttp.HeaderReplayed) != "true" || b.runs.Load() != tc.wantRuns {
				t.Fatalf("duplicate %q replayed=%q after %d runs", got, again.Header.Get(idemhttp.HeaderReplayed), b.runs.Load())
			}
		})
	}
}

// TestLeaseLostAnswersConflict: while the first owner works its key is
// deleted and taken by a second request, which completes; the first
// owner's answer is never sent, and its client's retry replays the
// second's.
func TestLeaseLostAnswersConflict(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{}
	b := setup(t, false, cfg)
	var h http.Handler
	var nested *http.Response
	h = b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		run := b.runs.Load()
		if run == 1 {
			if err := b.ledger.Delete(context.Background(), testScope, "k"); err != nil {
				t.Error(err)
			}
			nested = do(h, post("k", "x"))
		}
		w.Header().Set("Location", fmt.Sprintf("/orders/%d", run))
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "run %d", run)
	})
	res := do(h, post("k", "x"))
	if got := res.Header.Get("Retry-After"); got == "" {
		t.Fatal("no Retry-After")
	}
	if got := res.Header.Get("Location"); got != "" {
		t.Fatalf("the problem carries the handler's Location %q", got)
	}
	wantProblem(t, res, http.StatusConflict, "lease-lost")
	if got := readBody(t, nested); nested.StatusCode != http.StatusCreated || got != "run 2" {
		t.Fatalf("second owner %d %q", nested.StatusCode, got)
	}
	retry := do(h, post("k", "x"))
	if got := readBody(t, retry); got != "run 2" || retry.Header.Get("Location") != "/orders/2" || retry.Header.Get(idemhttp.HeaderReplayed) != "true" {
		t.Fatalf("retry %q %v", got, retry.Header)
	}
	if got := b.runs.Load(); got != 2 {
		t.Fatalf("handler ran %d times, want 2", got)
	}
}

// TestHeadersAfterStatusIgnored: as net/http, headers changed after the
// status are not sent, but declared trailers are.
func TestHeadersAfterStatusIgnored(t *testing.T) {
	t.Parallel()
	cfg := &idemhttp.Config{}
	b := setup(t, false, cfg)
	h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Trailer", "X-Sum")
		w.WriteHeader(http.StatusCreated)
		if got := w.Header().Get("Content-Type"); got != "text/plain" {
			t.Errorf("Content-Type after the status %q", got)
		}
		w.Header().Set("Content-Type", "changed/after-status")
		w.Header().Set("X-Late", "1")
		fmt.Fprint(w, "body")
		w.Header().Set("X-Sum", "42")
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	for i, want := range []string{"false", "true"} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/orders", strings.NewReader("x"))
		req.Header.Set(idemhttp.HeaderKey, "k")
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, res)
		res.Body.Close()
		if body != "body" || res.Header.Get("Content-Type") != "text/plain" || res.Header.Get("X-Late") != "" ||
			res.Header.Get(idemhttp.HeaderReplayed) != want {
			t.Fatalf("response %d: %q %v", i, body, res.Header)
		}
		if i == 0 && res.Trailer.Get("X-Sum") != "42" {
			t.Fatalf("trailer %v", res.Trailer)
		}
	}
}

// TestStreamedThenCompleteFails: a response the handler flushed reached
// the client before it was recorded; when storing it then fails, the
// client keeps what it read, the failure is logged, and a retry runs
// again once the lease ends.
func TestStreamedThenCompleteFails(t *testing.T) {
	t.Parallel()
	b := setupFaulty(t)
	h := idemhttp.Middleware(b.ledger, &idemhttp.Config{Clock: b.clock, Logger: slog.New(slog.NewTextHandler(b.logs, nil))})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.runs.Add(1)
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, "chunk;")
			w.(http.Flusher).Flush()
			fmt.Fprint(w, "rest")
		}))
	b.store.fail.Store(failBeforeCommit)
	res := do(h, post("k", "x"))
	if got := readBody(t, res); res.StatusCode != http.StatusCreated || got != "chunk;rest" {
		t.Fatalf("streamed %d %q", res.StatusCode, got)
	}
	if logs := b.logs.String(); !strings.Contains(logs, "storing the response failed") || !strings.Contains(logs, "streamed=true") {
		t.Fatalf("log %q", logs)
	}
	b.clock.Advance(10*time.Second + time.Millisecond)
	if got := readBody(t, do(h, post("k", "x"))); got != "chunk;rest" || b.runs.Load() != 2 {
		t.Fatalf("retry %q after %d runs", got, b.runs.Load())
	}
}

// TestLeaseLostCancelsHandler: a heartbeat that finds the key taken
// cancels the handler's context with cause idem.ErrLeaseLost, whether the
// handler waited on Done before the loss or looks at its context after
// it; the client gets lease-lost.
func TestLeaseLostCancelsHandler(t *testing.T) {
	t.Parallel()
	for _, waits := range []bool{true, false} {
		t.Run(fmt.Sprintf("waits=%v", waits), func(t *testing.T) {
			t.Parallel()
			cfg := &idemhttp.Config{Lease: 9 * time.Second}
			b := setup(t, true, cfg)
			entered := make(chan struct{})
			var cause error
			h := b.serve(cfg, func(w http.ResponseWriter, r *http.Request) {
				ctx := r.Context()
				close(entered)
				if waits {
					<-ctx.Done()
				} else {
					waitFor(t, func() bool { return ctx.Err() != nil })
					<-ctx.Done()
				}
				cause = context.Cause(ctx)
				w.WriteHeader(http.StatusCreated)
			})
			done := make(chan *http.Response)
			go func() { done <- do(h, post("k", "x")) }()
			<-entered
			if err := b.ledger.Delete(context.Background(), testScope, "k"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return b.clock.Waiters() > 0 })
			b.clock.Advance(3 * time.Second) // the heartbeat's Extend is refused
			res := <-done
			if !errors.Is(cause, idem.ErrLeaseLost) {
				t.Fatalf("handler context cause %v, want idem.ErrLeaseLost", cause)
			}
			wantProblem(t, res, http.StatusConflict, "lease-lost")
		})
	}
}
