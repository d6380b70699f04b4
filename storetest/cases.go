package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

func testLifecycle(t *testing.T, e *env) {
	p := &idem.BeginParams{Scope: e.scope("lifecycle"), Key: "order-1", Fingerprint: "fp-a", Lease: 10 * e.unit, Window: 100 * e.unit}
	res := e.begin(p)
	if res.Decision != idem.Acquired || res.Record == nil {
		t.Fatalf("first Begin: %s %+v, want acquired with a record", res.Decision, res.Record)
	}
	rec := res.Record
	if rec.Token <= 0 || rec.Attempts != 1 || rec.State != idem.StatePending || rec.Checkpoint != nil || res.Takeover {
		t.Fatalf("first Begin: token %d attempts %d state %s checkpoint %v takeover %v; want token>0, 1, pending, nil, false",
			rec.Token, rec.Attempts, rec.State, rec.Checkpoint, res.Takeover)
	}
	if e.manual != nil && !rec.LeaseUntil.Equal(start.Add(p.Lease)) {
		t.Errorf("lease until %s, want %s", rec.LeaseUntil, start.Add(p.Lease))
	}

	e.pass(e.unit)
	out := idem.Outcome{Data: []byte(`{"id":"ch_1","amount":500}`), Meta: map[string]string{"status": "201", "content-type": "application/json"}}
	e.complete(p.Scope, p.Key, rec.Token, out)

	for i := range 2 {
		res := e.begin(p)
		if res.Decision != idem.Replay || res.Record == nil || res.Record.Outcome == nil {
			t.Fatalf("Begin %d after Complete: %s %+v, want replay with the outcome", i, res.Decision, res.Record)
		}
		if why := sameOutcome(res.Record.Outcome, &out); why != "" {
			t.Errorf("replay %d: %s", i, why)
		}
		e.pass(e.unit)
	}

	got := e.get(p.Scope, p.Key)
	if got.State != idem.StateCompleted || got.Token != rec.Token || got.Attempts != 1 || got.Fingerprint != p.Fingerprint {
		t.Errorf("Get: state %s token %d attempts %d fingerprint %q; want completed %d 1 %q",
			got.State, got.Token, got.Attempts, got.Fingerprint, rec.Token, p.Fingerprint)
	}
	if why := sameOutcome(got.Outcome, &out); why != "" {
		t.Errorf("Get: %s", why)
	}
	switch {
	case got.Created.IsZero() || got.Completed.Before(got.Created):
		t.Errorf("Get: created %s, completed %s: want created set and not after completed", got.Created, got.Completed)
	case !got.Expires.Equal(got.Completed.Add(p.Window)):
		t.Errorf("Get: expires %s, want completed + window = %s", got.Expires, got.Completed.Add(p.Window))
	case !got.RetainUntil.Equal(got.Completed.Add(p.Window)):
		t.Errorf("Get: retain until %s, want completed + window = %s (no retention)", got.RetainUntil, got.Completed.Add(p.Window))
	}
	if e.manual != nil && (!got.Created.Equal(start) || !got.Completed.Equal(start.Add(e.unit))) {
		t.Errorf("Get: created %s completed %s, want %s and %s", got.Created, got.Completed, start, start.Add(e.unit))
	}
}

func testFingerprintBeforeInFlight(t *testing.T, e *env) {
	scope := e.scope("fingerprint")
	pending := &idem.BeginParams{Scope: scope, Key: "pending", Fingerprint: "fp-a", Lease: 100 * e.unit, Window: 100 * e.unit}
	e.acquire(pending)
	other := *pending
	other.Fingerprint = "fp-b"
	if res := e.begin(&other); res.Decision != idem.Mismatch || res.Record != nil {
		t.Errorf("other fingerprint on a pending key: %s %+v, want mismatch without a record", res.Decision, res.Record)
	}
	if res := e.begin(pending); res.Decision != idem.InFlight {
		t.Errorf("same fingerprint on a pending key: %s, want in flight", res.Decision)
	}

	done := &idem.BeginParams{Scope: scope, Key: "done", Fingerprint: "fp-a", Lease: 100 * e.unit, Window: 100 * e.unit}
	rec := e.acquire(done)
	out := idem.Outcome{Data: []byte("first"), Meta: map[string]string{"status": "200"}}
	e.complete(scope, done.Key, rec.Token, out)
	before := e.get(scope, done.Key)
	other = *done
	other.Fingerprint = "fp-b"
	if res := e.begin(&other); res.Decision != idem.Mismatch || res.Record != nil {
		t.Errorf("other fingerprint on a completed key: %s %+v, want mismatch without a record", res.Decision, res.Record)
	}
	if why := sameStored(before, e.get(scope, done.Key)); why != "" {
		t.Errorf("a mismatched Begin changed the record: %s", why)
	}
	if res := e.begin(done); res.Decision != idem.Replay || res.Record == nil || sameOutcome(res.Record.Outcome, &out) != "" {
		t.Errorf("same fingerprint after a mismatch: %s, want the original replay", res.Decision)
	}
}

func testConcurrentBegin(t *testing.T, e *env) {
	const n = 64
	p := &idem.BeginParams{Scope: e.scope("concurrent"), Key: "hot", Fingerprint: "fp", Lease: 100 * e.unit, Window: 100 * e.unit}
	results := make([]*idem.BeginResult, n)
	errs := make([]error, n)
	startGate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-startGate
			results[i], errs[i] = e.store.Begin(e.ctx, p)
		})
	}
	close(startGate)
	wg.Wait()
	acquired, inflight := 0, 0
	for i, res := range results {
		if errs[i] != nil {
			t.Errorf("Begin %d: %v", i, errs[i])
			continue
		}
		switch res.Decision {
		case idem.Acquired:
			acquired++
		case idem.InFlight:
			inflight++
			if res.RetryAfter <= 0 || res.RetryAfter > p.Lease {
				t.Errorf("Begin %d: in flight with retry after %s, want in (0, %s]", i, res.RetryAfter, p.Lease)
			}
		default:
			t.Errorf("Begin %d: %s", i, res.Decision)
		}
	}
	if acquired != 1 || inflight != n-1 {
		t.Errorf("%d concurrent Begins: %d acquired, %d in flight; want 1 and %d", n, acquired, inflight, n-1)
	}
}

func testTakeover(t *testing.T, e *env) {
	scope := e.scope("takeover")
	p := &idem.BeginParams{Scope: scope, Key: "job", Fingerprint: "fp", Lease: 5 * e.unit, Window: 100 * e.unit}
	old := e.acquire(p)
	cp := &idem.CheckpointParams{Scope: scope, Key: p.Key, Token: old.Token, Point: "charged", Data: []byte{0, 1, 2, 255}}
	if err := e.store.Checkpoint(e.ctx, cp); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if res := e.begin(p); res.Decision != idem.InFlight || res.RetryAfter <= 0 || res.RetryAfter > p.Lease {
		t.Fatalf("Begin during the lease: %s retry after %s, want in flight within (0, %s]", res.Decision, res.RetryAfter, p.Lease)
	}
	if e.manual != nil {
		// The lease ends exactly at LeaseUntil: one tick before, still live.
		tick := e.opts.Resolution
		e.pass(p.Lease - tick)
		if res := e.begin(p); res.Decision != idem.InFlight || res.RetryAfter != tick {
			t.Errorf("Begin %s before the lease ends: %s retry after %s, want in flight, %s", tick, res.Decision, res.RetryAfter, tick)
		}
		e.pass(tick)
	} else {
		e.pass(p.Lease)
	}
	res := e.begin(p)
	if res.Decision != idem.Acquired || res.Record == nil {
		t.Fatalf("Begin after the lease: %s, want acquired", res.Decision)
	}
	rec := res.Record
	if rec.Token <= old.Token || rec.Attempts != 2 || !res.Takeover {
		t.Errorf("takeover: token %d (old %d) attempts %d takeover %v; want greater token, 2, true", rec.Token, old.Token, rec.Attempts, res.Takeover)
	}
	if rec.Checkpoint == nil || rec.Checkpoint.Point != cp.Point || !bytes.Equal(rec.Checkpoint.Data, cp.Data) {
		t.Errorf("takeover: checkpoint %+v, want the predecessor's %+v", rec.Checkpoint, cp)
	}

	before := e.get(scope, p.Key)
	_, err := e.store.Complete(e.ctx, &idem.CompleteParams{Scope: scope, Key: p.Key, Token: old.Token, Outcome: idem.Outcome{Data: []byte("stale")}})
	wantErr(t, "stale Complete", err, idem.ErrLeaseLost)
	err = e.store.Checkpoint(e.ctx, &idem.CheckpointParams{Scope: scope, Key: p.Key, Token: old.Token, Point: "stale", Data: []byte("x")})
	wantErr(t, "stale Checkpoint", err, idem.ErrLeaseLost)
	_, err = e.store.Extend(e.ctx, &idem.ExtendParams{Scope: scope, Key: p.Key, Token: old.Token, Lease: time.Hour})
	wantErr(t, "stale Extend", err, idem.ErrLeaseLost)
	err = e.store.Release(e.ctx, &idem.ReleaseParams{Scope: scope, Key: p.Key, Token: old.Token})
	wantErr(t, "stale Release", err, idem.ErrLeaseLost)
	if why := sameStored(before, e.get(scope, p.Key)); why != "" {
		t.Errorf("a stale owner changed the record: %s", why)
	}
}

func testExpiredOwnerCompletes(t *testing.T, e *env) {
	scope := e.scope("expired-owner")
	p := &idem.BeginParams{Scope: scope, Key: "slow", Fingerprint: "fp", Lease: e.unit, Window: 100 * e.unit}
	rec := e.acquire(p)
	e.pass(2 * e.unit)
	out := idem.Outcome{Data: []byte("late but still the owner")}
	e.complete(scope, p.Key, rec.Token, out)
	res := e.begin(p)
	if res.Decision != idem.Replay || res.Record == nil || sameOutcome(res.Record.Outcome, &out) != "" {
		t.Errorf("Begin after a late Complete: %s, want a replay of it", res.Decision)
	}
}

func testCompleteTwice(t *testing.T, e *env) {
	scope := e.scope("complete-twice")
	p := &idem.BeginParams{Scope: scope, Key: "k", Fingerprint: "fp", Lease: 10 * e.unit, Window: 100 * e.unit}
	rec := e.acquire(p)
	first := idem.Outcome{Data: []byte("first"), Meta: map[string]string{"n": "1"}}
	e.complete(scope, p.Key, rec.Token, first)
	before := e.get(scope, p.Key)

	_, err := e.store.Complete(e.ctx, &idem.CompleteParams{Scope: scope, Key: p.Key, Token: rec.Token, Outcome: idem.Outcome{Data: []byte("second")}})
	wantErr(t, "second Complete", err, idem.ErrCompleted)
	err = e.store.Release(e.ctx, &idem.ReleaseParams{Scope: scope, Key: p.Key, Token: rec.Token})
	wantErr(t, "Release of a completed key", err, idem.ErrCompleted)
	_, err = e.store.Extend(e.ctx, &idem.ExtendParams{Scope: scope, Key: p.Key, Token: rec.Token, Lease: e.unit})
	wantErr(t, "Extend of a completed key", err, idem.ErrCompleted)
	err = e.store.Checkpoint(e.ctx, &idem.CheckpointParams{Scope: scope, Key: p.Key, Token: rec.Token, Point: "p"})
	wantErr(t, "Checkpoint of a completed key", err, idem.ErrCompleted)
	_, err = e.store.Complete(e.ctx, &idem.CompleteParams{Scope: scope, Key: p.Key, Token: rec.Token + 1000, Outcome: idem.Outcome{Data: []byte("other")}})
	wantErr(t, "Complete with a token never issued", err, idem.ErrLeaseLost)

	if why := sameStored(before, e.get(scope, p.Key)); why != "" {
		t.Errorf("the completed record changed: %s", why)
	}
}

func testRelease(t *testing.T, e *env) {
	scope := e.scope("release")
	p := &idem.BeginParams{Scope: scope, Key: "k", Fingerprint: "fp-a", Lease: 100 * e.unit, Window: 100 * e.unit}
	old := e.acquire(p)
	if err := e.store.Checkpoint(e.ctx, &idem.CheckpointParams{Scope: scope, Key: p.Key, Token: old.Token, Point: "half"}); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if err := e.store.Release(e.ctx, &idem.ReleaseParams{Scope: scope, Key: p.Key, Token: old.Token}); err != nil {
		t.Fatalf("Release: %v", err)
	}
	got := e.get(scope, p.Key)
	if got.State != idem.StateReleased || got.Attempts != 1 || got.Token != old.Token || got.Outcome != nil {
		t.Errorf("Get after Release: state %s attempts %d token %d outcome %v; want released, 1, %d, nil",
			got.State, got.Attempts, got.Token, got.Outcome, old.Token)
	}
	err := e.store.Release(e.ctx, &idem.ReleaseParams{Scope: scope, Key: p.Key, Token: old.Token})
	wantErr(t, "second Release", err, idem.ErrLeaseLost)

	next := *p
	next.Fingerprint = "fp-b" // a released key takes any fingerprint
	res := e.begin(&next)
	if res.Decision != idem.Acquired || res.Record == nil {
		t.Fatalf("Begin after Release: %s, want acquired", res.Decision)
	}
	if res.Record.Token <= old.Token || res.Record.Attempts != 2 || res.Takeover || res.Record.Checkpoint != nil {
		t.Errorf("Begin after Release: token %d (old %d) attempts %d takeover %v checkpoint %v; want greater, 2, false, nil",
			res.Record.Token, old.Token, res.Record.Attempts, res.Takeover, res.Record.Checkpoint)
	}
	before := e.get(scope, p.Key)
	_, err = e.store.Complete(e.ctx, &idem.CompleteParams{Scope: scope, Key: p.Key, Token: old.Token, Outcome: idem.Outcome{Data: []byte("stale")}})
	wantErr(t, "Complete with the released token", err, idem.ErrLeaseLost)
	err = e.store.Release(e.ctx, &idem.ReleaseParams{Scope: scope, Key: p.Key, Token: old.Token})
	wantErr(t, "Release with the released token", err, idem.ErrLeaseLost)
	_, err = e.store.Extend(e.ctx, &idem.ExtendParams{Scope: scope, Key: p.Key, Token: old.Token, Lease: e.unit})
	wantErr(t, "Extend with the released token", err, idem.ErrLeaseLost)
	err = e.store.Checkpoint(e.ctx, &idem.CheckpointParams{Scope: scope, Key: p.Key, Token: old.Token, Point: "p"})
	wantErr(t, "Checkpoint with the released token", err, idem.ErrLeaseLost)
	if why := sameStored(before, e.get(scope, p.Key)); why != "" {
		t.Errorf("the released token changed the record: %s", why)
	}
	if got := e.get(scope, p.Key); got.Fingerprint != "fp-b" {
		t.Errorf("fingerprint after re-acquire %q, want fp-b", got.Fingerprint)
	}
}

func testExtendAndCheckpoint(t *testing.T, e *env) {
	scope := e.scope("extend")
	p := &idem.BeginParams{Scope: scope, Key: "k", Fingerprint: "fp", Lease: 4 * e.unit, Window: 100 * e.unit}
	rec := e.acquire(p)
	e.pass(2 * e.unit)
	ext, err := e.store.Extend(e.ctx, &idem.ExtendParams{Scope: scope, Key: p.Key, Token: rec.Token, Lease: 20 * e.unit})
	if err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if ext == nil || !ext.LeaseUntil.After(rec.LeaseUntil) {
		t.Errorf("Extend: record %+v, want a lease ending after %s", ext, rec.LeaseUntil)
	} else if e.manual != nil && !ext.LeaseUntil.Equal(start.Add(22*e.unit)) {
		t.Errorf("Extend: lease until %s, want %s", ext.LeaseUntil, start.Add(22*e.unit))
	}
	for i, data := range [][]byte{[]byte("first point"), {0, 255, 128}} {
		point := fmt.Sprintf("phase-%d", i)
		if err := e.store.Checkpoint(e.ctx, &idem.CheckpointParams{Scope: scope, Key: p.Key, Token: rec.Token, Point: point, Data: data}); err != nil {
			t.Fatalf("Checkpoint %d: %v", i, err)
		}
		got := e.get(scope, p.Key)
		if got.Checkpoint == nil || got.Checkpoint.Point != point || !bytes.Equal(got.Checkpoint.Data, data) {
			t.Errorf("Get after Checkpoint %d: %+v, want %s %q", i, got.Checkpoint, point, data)
		}
		if got.State != idem.StatePending || got.Token != rec.Token {
			t.Errorf("Get after Checkpoint %d: state %s token %d, want pending %d", i, got.State, got.Token, rec.Token)
		}
	}
	e.pass(4 * e.unit) // past the original lease end
	res := e.begin(p)
	if res.Decision != idem.InFlight || res.RetryAfter <= 0 {
		t.Errorf("Begin past the original lease end: %s retry after %s, want in flight", res.Decision, res.RetryAfter)
	} else if e.manual != nil && res.RetryAfter != 16*e.unit {
		t.Errorf("Begin past the original lease end: retry after %s, want %s", res.RetryAfter, 16*e.unit)
	}
	e.complete(scope, p.Key, rec.Token, idem.Outcome{Data: []byte("done")})
}

func testWindow(t *testing.T, e *env) {
	scope := e.scope("window")
	window, retention := 2*e.unit, 10*e.unit
	if e.manual == nil {
		// On the real clock, room for a loaded machine's pauses between
		// a Complete and the checks that must come within its window.
		window, retention = 3*window, 3*retention
	}
	params := func(key, fp string) *idem.BeginParams {
		return &idem.BeginParams{Scope: scope, Key: key, Fingerprint: fp, Lease: 100 * e.unit, Window: window, Retention: retention}
	}
	a, b := e.acquire(params("a", "fp")), e.acquire(params("b", "fp"))
	e.complete(scope, "a", a.Token, idem.Outcome{Data: []byte("a")})
	e.complete(scope, "b", b.Token, idem.Outcome{Data: []byte("b")})
	got := e.get(scope, "b")
	if !got.Expires.Equal(got.Completed.Add(window)) || !got.RetainUntil.Equal(got.Completed.Add(retention)) {
		t.Errorf("completed %s: expires %s retain until %s, want + %s and + %s", got.Completed, got.Expires, got.RetainUntil, window, retention)
	}
	if res := e.begin(params("a", "fp")); res.Decision != idem.Replay {
		t.Errorf("Begin within the window: %s, want replay", res.Decision)
	}

	e.pass(window)
	res := e.begin(params("a", "other-fp"))
	if res.Decision != idem.Acquired || res.Record == nil {
		t.Fatalf("Begin after the window: %s, want acquired (the record counts as absent)", res.Decision)
	}
	if res.Record.Token <= a.Token || res.Record.Attempts != 1 || res.Takeover {
		t.Errorf("Begin after the window: token %d (old %d) attempts %d takeover %v; want greater, 1, false",
			res.Record.Token, a.Token, res.Record.Attempts, res.Takeover)
	}
	if got := e.get(scope, "b"); got.State != idem.StateCompleted || string(got.Outcome.Data) != "b" {
		t.Errorf("Get after the window, within retention: %s, want the completed record", got.State)
	}
	if n := e.sweep(0); n != 0 {
		t.Errorf("Sweep within retention removed %d records, want 0", n)
	}

	e.pass(retention - window)
	if n := e.sweep(0); n != 1 {
		t.Errorf("Sweep after retention removed %d records, want 1 (b)", n)
	}
	_, err := e.store.Get(e.ctx, &idem.KeyParams{Scope: scope, Key: "b"})
	wantErr(t, "Get of a swept record", err, idem.ErrNotFound)
	if got := e.get(scope, "a"); got.State != idem.StatePending || got.Token != res.Record.Token {
		t.Errorf("Get of the re-acquired key after Sweep: %s %d, want pending %d", got.State, got.Token, res.Record.Token)
	}
}

func testSweep(t *testing.T, e *env) {
	scope := e.scope("sweep")
	tiny := time.Nanosecond
	// window is the records' window. On the real clock the first Sweep
	// must come before it ends: when writing the records and sweeping took
	// longer than that (a loaded machine), they are deleted and written
	// again with twice the window.
	window := e.unit
	if e.manual == nil {
		tiny = time.Millisecond // what a store that counts in milliseconds can hold
		window = 5 * e.unit
	}
	keys := []string{"live", "done-0", "done-1", "done-2", "done-3", "done-4", "released"}
	var live *idem.Record
	var tokens []int64
	for attempt := 1; ; attempt++ {
		began := time.Now()
		// Pending with a live lease and a tiny window: never swept.
		live = e.acquire(&idem.BeginParams{Scope: scope, Key: "live", Fingerprint: "fp", Lease: 1000 * e.unit, Window: tiny})
		tokens = tokens[:0]
		for i := range 5 {
			rec := e.acquire(&idem.BeginParams{Scope: scope, Key: fmt.Sprintf("done-%d", i), Fingerprint: "fp", Lease: 100 * e.unit, Window: window})
			e.complete(scope, rec.Key, rec.Token, idem.Outcome{Data: []byte("x")})
			tokens = append(tokens, rec.Token)
		}
		rel := e.acquire(&idem.BeginParams{Scope: scope, Key: "released", Fingerprint: "fp", Lease: 100 * e.unit, Window: window})
		if err := e.store.Release(e.ctx, &idem.ReleaseParams{Scope: scope, Key: rel.Key, Token: rel.Token}); err != nil {
			t.Fatalf("Release: %v", err)
		}
		n := e.sweep(0)
		if took := time.Since(began); e.manual == nil && took >= window {
			if attempt == 4 {
				t.Fatalf("writing 7 records and sweeping took %v, longer than their window %v, 4 times", took, window)
			}
			t.Logf("writing 7 records and sweeping took %v, longer than their window %v: again with %v", took, window, 2*window)
			for _, k := range keys {
				if err := e.store.Delete(e.ctx, &idem.KeyParams{Scope: scope, Key: k}); err != nil && !errors.Is(err, idem.ErrNotFound) {
					t.Fatalf("Delete(%s): %v", k, err)
				}
			}
			window *= 2
			continue
		}
		if n != 0 {
			t.Errorf("Sweep before anything is due removed %d, want 0", n)
		}
		break
	}
	e.pass(2 * window)
	total := 0
	for i, want := range []int{2, 2, 2, 0} {
		n := e.sweep(2)
		if n != want {
			t.Errorf("Sweep %d with limit 2 removed %d, want %d", i, n, want)
		}
		total += n
	}
	if total != 6 {
		t.Errorf("Sweeps removed %d records in all, want 6", total)
	}
	for i := range 5 {
		_, err := e.store.Get(e.ctx, &idem.KeyParams{Scope: scope, Key: fmt.Sprintf("done-%d", i)})
		wantErr(t, "Get of a swept record", err, idem.ErrNotFound)
	}
	if got := e.get(scope, "live"); got.State != idem.StatePending || got.Token != live.Token {
		t.Errorf("the pending record with a live lease: %s %d, want pending %d", got.State, got.Token, live.Token)
	}
	if sz, ok := e.store.(idem.Sizer); ok {
		if n, err := sz.Size(e.ctx); err != nil || n != 1 {
			t.Errorf("Size after Sweep: %d, %v; want 1", n, err)
		}
	}
	// A swept key starts again with a greater token.
	rec := e.acquire(&idem.BeginParams{Scope: scope, Key: "done-0", Fingerprint: "fp", Lease: e.unit, Window: e.unit})
	if rec.Token <= tokens[0] || rec.Attempts != 1 {
		t.Errorf("Begin of a swept key: token %d (old %d) attempts %d, want greater and 1", rec.Token, tokens[0], rec.Attempts)
	}
}

func (e *env) sweep(limit int) int {
	e.t.Helper()
	res, err := e.store.Sweep(e.ctx, &idem.SweepParams{Limit: limit})
	if err != nil || res == nil {
		e.t.Fatalf("Sweep(%d): %v, %v", limit, res, err)
	}
	return res.Deleted
}

func testTokensAcrossDelete(t *testing.T, e *env) {
	scope := e.scope("tokens")
	p := &idem.BeginParams{Scope: scope, Key: "k", Fingerprint: "fp", Lease: 100 * e.unit, Window: 100 * e.unit}
	var last int64
	for i := range 4 {
		rec := e.acquire(p)
		if rec.Token <= last || rec.Attempts != 1 {
			t.Errorf("round %d: token %d after %d, attempts %d; want a greater token, attempt 1", i, rec.Token, last, rec.Attempts)
		}
		if i%2 == 1 {
			e.complete(scope, p.Key, rec.Token, idem.Outcome{Data: []byte("x")})
		}
		if err := e.store.Delete(e.ctx, &idem.KeyParams{Scope: scope, Key: p.Key}); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		_, err := e.store.Get(e.ctx, &idem.KeyParams{Scope: scope, Key: p.Key})
		wantErr(t, "Get after Delete", err, idem.ErrNotFound)
		_, err = e.store.Complete(e.ctx, &idem.CompleteParams{Scope: scope, Key: p.Key, Token: rec.Token})
		wantErr(t, "Complete after Delete", err, idem.ErrLeaseLost)
		last = rec.Token
	}
	if _, err := e.store.Get(e.ctx, &idem.KeyParams{Scope: scope, Key: p.Key}); err == nil {
		t.Error("a stale Complete after Delete created a record")
	}
}

func testLargeOutcome(t *testing.T, e *env) {
	scope := e.scope("large")
	data := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for i := range 256 {
		data[i] = byte(i) // every byte value, whatever the generator does
	}
	meta := map[string]string{"content-type": "application/octet-stream", "x-unicode": "héllo ✓ 日本", "x-empty": "", "quote\"key": "line\nbreak"}
	cases := []struct {
		key string
		out idem.Outcome
	}{
		{"mib", idem.Outcome{Data: data, Meta: meta}},
		{"empty", idem.Outcome{Data: []byte{}}},
		{"nil", idem.Outcome{}},
	}
	for _, c := range cases {
		p := &idem.BeginParams{Scope: scope, Key: c.key, Fingerprint: "fp", Lease: 100 * e.unit, Window: 100 * e.unit}
		rec := e.acquire(p)
		e.complete(scope, c.key, rec.Token, c.out)
		res := e.begin(p)
		if res.Decision != idem.Replay || res.Record == nil {
			t.Fatalf("%s: Begin %s, want replay", c.key, res.Decision)
		}
		if why := sameOutcome(res.Record.Outcome, &c.out); why != "" {
			t.Errorf("%s: replay: %s", c.key, why)
		}
		if why := sameOutcome(e.get(scope, c.key).Outcome, &c.out); why != "" {
			t.Errorf("%s: Get: %s", c.key, why)
		}
	}
	if data[0] != 0 || data[255] != 255 {
		t.Error("the store changed the caller's outcome bytes")
	}
}

func testScopes(t *testing.T, e *env) {
	p1 := &idem.BeginParams{Scope: e.scope("tenant-1"), Key: "shared", Fingerprint: "fp-1", Lease: 100 * e.unit, Window: 100 * e.unit}
	p2 := &idem.BeginParams{Scope: e.scope("tenant-2"), Key: "shared", Fingerprint: "fp-2", Lease: 100 * e.unit, Window: 100 * e.unit}
	r1 := e.acquire(p1)
	r2 := e.acquire(p2) // another fingerprint, but another scope: no mismatch
	out := idem.Outcome{Data: []byte("tenant-1's secret")}
	e.complete(p1.Scope, p1.Key, r1.Token, out)
	if res := e.begin(p2); res.Decision != idem.InFlight {
		t.Errorf("tenant-2 after tenant-1 completed: %s, want in flight (its own pending record)", res.Decision)
	}
	if got := e.get(p2.Scope, p2.Key); got.State != idem.StatePending || got.Outcome != nil || got.Token != r2.Token {
		t.Errorf("tenant-2's record: %s outcome %v token %d, want pending without outcome, token %d", got.State, got.Outcome, got.Token, r2.Token)
	}
	for i := range 3 {
		rec := e.acquire(&idem.BeginParams{Scope: p1.Scope, Key: fmt.Sprintf("only-1-%d", i), Fingerprint: "f", Lease: e.unit, Window: e.unit})
		if rec.Scope != "" && rec.Scope != p1.Scope {
			t.Errorf("record scope %q, want %q", rec.Scope, p1.Scope)
		}
	}
	if l, ok := e.store.(idem.Lister); ok {
		keys := listKeys(t, e, l, &idem.ListParams{Scope: p2.Scope})
		if strings.Join(keys, ",") != "shared" {
			t.Errorf("List of tenant-2: %v, want only its own record [shared]", keys)
		}
	}
	if err := e.store.Delete(e.ctx, &idem.KeyParams{Scope: p1.Scope, Key: p1.Key}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if got := e.get(p2.Scope, p2.Key); got.Token != r2.Token {
		t.Errorf("Delete in tenant-1 touched tenant-2: token %d, want %d", got.Token, r2.Token)
	}
}

func testLookupAndList(t *testing.T, e *env) {
	scope := e.scope("list")
	_, err := e.store.Get(e.ctx, &idem.KeyParams{Scope: scope, Key: "missing"})
	wantErr(t, "Get of a missing key", err, idem.ErrNotFound)
	err = e.store.Delete(e.ctx, &idem.KeyParams{Scope: scope, Key: "missing"})
	wantErr(t, "Delete of a missing key", err, idem.ErrNotFound)

	// Seven keys, created out of order: 3 completed, 2 pending, 2 released.
	states := map[string]idem.State{}
	for i, k := range []int{5, 2, 6, 0, 3, 1, 4} {
		key := fmt.Sprintf("key-%02d", k)
		rec := e.acquire(&idem.BeginParams{Scope: scope, Key: key, Fingerprint: "fp", Lease: 100 * e.unit, Window: 100 * e.unit})
		switch i % 3 {
		case 0:
			e.complete(scope, key, rec.Token, idem.Outcome{Data: []byte(key)})
			states[key] = idem.StateCompleted
		case 1:
			states[key] = idem.StatePending
		case 2:
			if err := e.store.Release(e.ctx, &idem.ReleaseParams{Scope: scope, Key: key, Token: rec.Token}); err != nil {
				t.Fatalf("Release: %v", err)
			}
			states[key] = idem.StateReleased
		}
	}
	e.acquire(&idem.BeginParams{Scope: e.scope("list-other"), Key: "key-00b", Fingerprint: "fp", Lease: e.unit, Window: e.unit})
	if sz, ok := e.store.(idem.Sizer); ok {
		if n, err := sz.Size(e.ctx); err != nil || n != 8 {
			t.Errorf("Size: %d, %v; want 8", n, err)
		}
	}
	l, ok := e.store.(idem.Lister)
	if !ok {
		t.Log("the store is no idem.Lister: List not checked")
		return
	}
	var all []string
	for k := range states {
		all = append(all, k)
	}
	slices.Sort(all)
	for _, limit := range []int{1, 3, 7, 0} {
		keys := listKeys(t, e, l, &idem.ListParams{Scope: scope, Limit: limit})
		if strings.Join(keys, ",") != strings.Join(all, ",") {
			t.Errorf("List with limit %d: %v, want %v", limit, keys, all)
		}
	}
	for _, st := range []idem.State{idem.StateCompleted, idem.StatePending, idem.StateReleased} {
		var want []string
		for _, k := range all {
			if states[k] == st {
				want = append(want, k)
			}
		}
		for _, limit := range []int{1, 2, 100} {
			keys := listKeys(t, e, l, &idem.ListParams{Scope: scope, State: st, Limit: limit})
			if strings.Join(keys, ",") != strings.Join(want, ",") {
				t.Errorf("List of %s with limit %d: %v, want %v", st, limit, keys, want)
			}
		}
	}
	res, err := l.List(e.ctx, &idem.ListParams{Scope: e.scope("list-empty")})
	if err != nil || len(res.Records) != 0 || res.NextCursor != "" {
		t.Errorf("List of an empty scope: %+v, %v; want no records, no cursor", res, err)
	}
}

// testSizeByState checks idem.StateSizer, for stores that have it, after
// Begins, Completes, Releases, Deletes, a Begin of a released key and a
// Sweep: the counts are the numbers of records in each state, the same as
// List reports state by state, and add up to Size.
func testSizeByState(t *testing.T, e *env) {
	ss, ok := e.store.(idem.StateSizer)
	if !ok {
		t.Skip("the store is no idem.StateSizer")
	}
	scopes := []string{e.scope("sizes"), e.scope("sizes-other")}
	e.wantSizes("an empty store", ss, scopes, 0, 0, 0)

	window := e.unit // of the records Sweep removes, as in testSweep
	if e.manual == nil {
		window = 5 * e.unit
	}
	long := &idem.BeginParams{Fingerprint: "fp", Lease: 1000 * e.unit, Window: 1000 * e.unit}
	begin := func(scope, key string, p *idem.BeginParams) *idem.Record {
		q := *p
		q.Scope, q.Key = scope, key
		return e.acquire(&q)
	}
	release := func(scope string, rec *idem.Record) {
		if err := e.store.Release(e.ctx, &idem.ReleaseParams{Scope: scope, Key: rec.Key, Token: rec.Token}); err != nil {
			t.Fatalf("Release(%s): %v", rec.Key, err)
		}
	}
	del := func(scope, key string) {
		if err := e.store.Delete(e.ctx, &idem.KeyParams{Scope: scope, Key: key}); err != nil {
			t.Fatalf("Delete(%s): %v", key, err)
		}
	}
	a, b := scopes[0], scopes[1]
	for i := range 4 {
		begin(a, fmt.Sprintf("pending-%d", i), long)
	}
	for i := range 3 {
		rec := begin(a, fmt.Sprintf("completed-%d", i), long)
		e.complete(a, rec.Key, rec.Token, idem.Outcome{Data: []byte("x")})
	}
	short := &idem.BeginParams{Fingerprint: "fp", Lease: 1000 * e.unit, Window: window}
	for i := range 2 {
		rec := begin(a, fmt.Sprintf("swept-%d", i), short)
		e.complete(a, rec.Key, rec.Token, idem.Outcome{Data: []byte("x")})
	}
	for i := range 3 {
		release(a, begin(a, fmt.Sprintf("released-%d", i), long))
	}
	begin(b, "pending", long)
	rec := begin(b, "completed", long)
	e.complete(b, rec.Key, rec.Token, idem.Outcome{Data: []byte("x")})
	release(b, begin(b, "released", long))
	e.wantSizes("after Begins, Completes and Releases", ss, scopes, 5, 6, 4)

	del(a, "pending-3")
	del(a, "completed-2")
	del(a, "released-2")
	begin(a, "released-1", long) // released to pending
	e.wantSizes("after Deletes and a Begin of a released key", ss, scopes, 5, 5, 2)

	e.pass(2 * window)
	if n := e.sweep(0); n != 2 {
		t.Errorf("Sweep removed %d records, want 2 (swept-0, swept-1)", n)
	}
	e.wantSizes("after Sweep", ss, scopes, 5, 3, 2)
}

// wantSizes checks SizeByState against the expected counts, against List
// state by state over scopes (the only scopes with records) when the store
// is an idem.Lister, and against Size when it is an idem.Sizer.
func (e *env) wantSizes(when string, ss idem.StateSizer, scopes []string, pending, completed, released int64) {
	t := e.t
	t.Helper()
	got, err := ss.SizeByState(e.ctx)
	if err != nil {
		t.Fatalf("SizeByState %s: %v", when, err)
	}
	want := map[idem.State]int64{idem.StatePending: pending, idem.StateCompleted: completed, idem.StateReleased: released}
	if len(got) != len(want) || got[idem.StatePending] != pending || got[idem.StateCompleted] != completed || got[idem.StateReleased] != released {
		t.Errorf("SizeByState %s: %v, want %v", when, got, want)
	}
	if l, ok := e.store.(idem.Lister); ok {
		listed := map[idem.State]int64{}
		for st := range want {
			for _, scope := range scopes {
				listed[st] += int64(len(listKeys(t, e, l, &idem.ListParams{Scope: scope, State: st, Limit: idem.MaxListSize})))
			}
		}
		for st, n := range listed {
			if got[st] != n {
				t.Errorf("SizeByState %s: %s %d, List has %d", when, st, got[st], n)
			}
		}
	}
	if sz, ok := e.store.(idem.Sizer); ok {
		n, err := sz.Size(e.ctx)
		if err != nil || n != pending+completed+released {
			t.Errorf("Size %s: %d, %v; want %d, the sum of SizeByState's", when, n, err, pending+completed+released)
		}
	}
}

// listKeys pages through a List and checks each page against its limit.
func listKeys(t *testing.T, e *env, l idem.Lister, p *idem.ListParams) []string {
	t.Helper()
	var keys []string
	limit := p.Limit
	if limit == 0 {
		limit = idem.DefaultListSize
	}
	for page := 0; ; page++ {
		q := *p
		res, err := l.List(e.ctx, &q)
		if err != nil {
			t.Fatalf("List(%+v): %v", p, err)
		}
		if len(res.Records) > limit {
			t.Errorf("List page %d: %d records, over the limit %d", page, len(res.Records), limit)
		}
		for _, r := range res.Records {
			if r.Scope != p.Scope || (p.State != "" && r.State != p.State) {
				t.Errorf("List(%s, %q) returned %s/%s in state %s", p.Scope, p.State, r.Scope, r.Key, r.State)
			}
			keys = append(keys, r.Key)
		}
		if res.NextCursor == "" {
			return keys
		}
		if len(res.Records) == 0 || page > 100 {
			t.Fatalf("List page %d: cursor %q with %d records", page, res.NextCursor, len(res.Records))
		}
		p.Cursor = res.NextCursor
	}
}

func testInvalidParams(t *testing.T, e *env) {
	scope := e.scope("invalid")
	long := strings.Repeat("k", idem.MaxKeyLen+1)
	ok := &idem.BeginParams{Scope: scope, Key: "held", Fingerprint: "fp", Lease: 100 * e.unit, Window: 100 * e.unit}
	rec := e.acquire(ok)
	before := e.get(scope, ok.Key)
	begin := func(f func(p *idem.BeginParams)) error {
		p := *ok
		p.Key = "fresh"
		f(&p)
		_, err := e.store.Begin(e.ctx, &p)
		return err
	}
	checks := []struct {
		what string
		err  error
	}{
		{"Begin with an empty key", begin(func(p *idem.BeginParams) { p.Key = "" })},
		{"Begin with a 256-byte key", begin(func(p *idem.BeginParams) { p.Key = long })},
		{"Begin with an empty scope", begin(func(p *idem.BeginParams) { p.Scope = "" })},
		{"Begin with a 256-byte scope", begin(func(p *idem.BeginParams) { p.Scope = long })},
		{"Begin with lease 0", begin(func(p *idem.BeginParams) { p.Lease = 0 })},
		{"Begin with a negative lease", begin(func(p *idem.BeginParams) { p.Lease = -time.Second })},
		{"Begin with window 0", begin(func(p *idem.BeginParams) { p.Window = 0 })},
		{"Begin with a negative retention", begin(func(p *idem.BeginParams) { p.Retention = -1 })},
		{"Complete with token 0", second(e.store.Complete(e.ctx, &idem.CompleteParams{Scope: scope, Key: ok.Key, Outcome: idem.Outcome{Data: []byte("x")}}))},
		{"Complete with a negative token", second(e.store.Complete(e.ctx, &idem.CompleteParams{Scope: scope, Key: ok.Key, Token: -rec.Token}))},
		{"Complete with an empty key", second(e.store.Complete(e.ctx, &idem.CompleteParams{Scope: scope, Token: rec.Token}))},
		{"Release with token 0", e.store.Release(e.ctx, &idem.ReleaseParams{Scope: scope, Key: ok.Key})},
		{"Extend with token 0", second(e.store.Extend(e.ctx, &idem.ExtendParams{Scope: scope, Key: ok.Key, Lease: e.unit}))},
		{"Extend with lease 0", second(e.store.Extend(e.ctx, &idem.ExtendParams{Scope: scope, Key: ok.Key, Token: rec.Token}))},
		{"Checkpoint with token 0", e.store.Checkpoint(e.ctx, &idem.CheckpointParams{Scope: scope, Key: ok.Key, Point: "p"})},
		{"Checkpoint with an empty point", e.store.Checkpoint(e.ctx, &idem.CheckpointParams{Scope: scope, Key: ok.Key, Token: rec.Token})},
		{"Get with an empty scope", second(e.store.Get(e.ctx, &idem.KeyParams{Key: ok.Key}))},
		{"Get with a 256-byte key", second(e.store.Get(e.ctx, &idem.KeyParams{Scope: scope, Key: long}))},
		{"Delete with an empty key", e.store.Delete(e.ctx, &idem.KeyParams{Scope: scope})},
		{"Sweep with a negative limit", second(e.store.Sweep(e.ctx, &idem.SweepParams{Limit: -1}))},
	}
	if l, isLister := e.store.(idem.Lister); isLister {
		checks = append(checks,
			struct {
				what string
				err  error
			}{"List with a bad state", second(l.List(e.ctx, &idem.ListParams{Scope: scope, State: "bogus"}))},
			struct {
				what string
				err  error
			}{"List with a negative limit", second(l.List(e.ctx, &idem.ListParams{Scope: scope, Limit: -1}))},
			struct {
				what string
				err  error
			}{"List with an empty scope", second(l.List(e.ctx, &idem.ListParams{}))},
		)
	}
	for _, c := range checks {
		wantErr(t, c.what, c.err, idem.ErrInvalid)
	}
	if why := sameStored(before, e.get(scope, ok.Key)); why != "" {
		t.Errorf("invalid calls changed the held record: %s", why)
	}
	_, err := e.store.Get(e.ctx, &idem.KeyParams{Scope: scope, Key: "fresh"})
	wantErr(t, "Get of a key only invalid calls named", err, idem.ErrNotFound)
	if sz, isSizer := e.store.(idem.Sizer); isSizer {
		if n, err := sz.Size(e.ctx); err != nil || n != 1 {
			t.Errorf("Size after invalid calls: %d, %v; want 1", n, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func testClose(t *testing.T, e *env) {
	p := &idem.BeginParams{Scope: e.scope("close"), Key: "k", Fingerprint: "fp", Lease: e.unit, Window: e.unit}
	rec := e.acquire(p)
	if err := e.store.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	calls := map[string]error{
		"Begin":      second(e.store.Begin(e.ctx, p)),
		"Complete":   second(e.store.Complete(e.ctx, &idem.CompleteParams{Scope: p.Scope, Key: p.Key, Token: rec.Token})),
		"Release":    e.store.Release(e.ctx, &idem.ReleaseParams{Scope: p.Scope, Key: p.Key, Token: rec.Token}),
		"Extend":     second(e.store.Extend(e.ctx, &idem.ExtendParams{Scope: p.Scope, Key: p.Key, Token: rec.Token, Lease: e.unit})),
		"Checkpoint": e.store.Checkpoint(e.ctx, &idem.CheckpointParams{Scope: p.Scope, Key: p.Key, Token: rec.Token, Point: "p"}),
		"Get":        second(e.store.Get(e.ctx, &idem.KeyParams{Scope: p.Scope, Key: p.Key})),
		"Delete":     e.store.Delete(e.ctx, &idem.KeyParams{Scope: p.Scope, Key: p.Key}),
		"Sweep":      second(e.store.Sweep(e.ctx, &idem.SweepParams{})),
	}
	if l, ok := e.store.(idem.Lister); ok {
		calls["List"] = second(l.List(e.ctx, &idem.ListParams{Scope: p.Scope}))
	}
	for name, err := range calls {
		wantErr(t, name+" after Close", err, idem.ErrClosed)
	}
	_ = e.store.Close() // a second Close may fail, but must not panic
}

// sameOutcome compares outcomes byte for byte; nil and empty data or meta
// are the same.
func sameOutcome(got, want *idem.Outcome) string {
	if got == nil {
		return "no outcome"
	}
	if !bytes.Equal(got.Data, want.Data) {
		return fmt.Sprintf("data %q, want %q", trim(string(got.Data)), trim(string(want.Data)))
	}
	if encodeMeta(got.Meta) != encodeMeta(want.Meta) {
		return fmt.Sprintf("meta %v, want %v", got.Meta, want.Meta)
	}
	return ""
}

// sameStored compares two readings of a record field by field.
func sameStored(a, b *idem.Record) string {
	type field struct {
		name string
		same bool
	}
	cpEq := (a.Checkpoint == nil) == (b.Checkpoint == nil) &&
		(a.Checkpoint == nil || (a.Checkpoint.Point == b.Checkpoint.Point && bytes.Equal(a.Checkpoint.Data, b.Checkpoint.Data)))
	outEq := (a.Outcome == nil) == (b.Outcome == nil) && (a.Outcome == nil || sameOutcome(b.Outcome, a.Outcome) == "")
	for _, f := range []field{
		{"scope", a.Scope == b.Scope}, {"key", a.Key == b.Key}, {"fingerprint", a.Fingerprint == b.Fingerprint},
		{"state", a.State == b.State}, {"token", a.Token == b.Token}, {"attempts", a.Attempts == b.Attempts},
		{"lease until", a.LeaseUntil.Equal(b.LeaseUntil)}, {"checkpoint", cpEq}, {"outcome", outEq},
		{"created", a.Created.Equal(b.Created)}, {"completed", a.Completed.Equal(b.Completed)},
		{"expires", a.Expires.Equal(b.Expires)}, {"retain until", a.RetainUntil.Equal(b.RetainUntil)},
		{"window", a.Window == b.Window}, {"retention", a.Retention == b.Retention},
	} {
		if !f.same {
			return fmt.Sprintf("%s differs: %+v then %+v", f.name, a, b)
		}
	}
	return ""
}
