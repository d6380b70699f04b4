package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
)

// The crash test: concurrent clients drive `idem serve` through the /v1
// API while the test SIGKILLs the process at random moments and restarts it
// on the same store. The clients keep their own record of what the server
// acknowledged, and the test checks it against the server after every
// restart and at the end: no acknowledged outcome lost or changed, no key
// with a stored outcome acquired again, tokens of a key strictly increasing.
const (
	crashWorkers = 16
	// crashKills is the least number of kills; the test goes on killing
	// past it until the clients have done enough work to judge
	// (crashEnoughAcks completed keys, a release and a replay), for at most
	// crashMaxRun: a slow or busy machine does less work between kills.
	crashKills      = 40
	crashEnoughAcks = 200
	crashMaxRun     = 4 * time.Minute
	// crashMaxDelay bounds the random time a server lives before it is
	// killed; with every worker always in a request, every kill lands on
	// requests in flight.
	crashMaxDelay = 400 * time.Millisecond
	crashScope    = "billing"
	crashToken    = "billing-0123456789"
	// crashLease is the server's default lease: short, so that keys whose
	// Begin was cut by a kill (acquired, but the token never arrived) are
	// taken over within the test.
	crashLease = "1s"
)

// TestCrash runs the crash test on the embedded store and on PostgreSQL.
// IDEM_CRASH_SEED=N repeats the kill timings and the clients' choices of a
// run (the interleaving of processes is the machine's).
func TestCrash(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("IDEM_CRASH_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("IDEM_CRASH_SEED=%q: %v", v, err)
		}
		seed = s
	}
	t.Logf("seed %d (IDEM_CRASH_SEED=%d repeats it)", seed, seed)
	t.Run("file", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		runCrash(t, seed, dir, "file:"+filepath.Join(dir, "data"))
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		store := pgSchemaURL(t, fmt.Sprintf("idem_crash_%d", time.Now().UnixNano()))
		if out, errOut, code := runIdem(t, dir, "migrate", "--store", store); code != 0 {
			t.Fatalf("idem migrate: exit %d\n%s%s", code, out, errOut)
		}
		runCrash(t, seed, dir, store)
	})
}

// crashRun is one store's crash test: the server of the moment, the
// clients' record and the counts for the log.
type crashRun struct {
	t    *testing.T
	dir  string
	args []string
	stop chan struct{} // closed when the workers are to stop

	mu      sync.Mutex
	gen     int           // bumped by every restart
	killed  int           // the last generation killed
	cl      *client       // of the server of generation gen
	changed chan struct{} // closed, and replaced, by every restart
	procs   []*proc

	recMu  sync.Mutex
	tokens map[string]*acquired // every key acquired
	acked  map[string]ack       // every key the record says is completed
	order  []string             // acked keys, oldest first
	lost   map[string]string

	ops      [4]atomic.Int64 // answered requests by crashOp
	inFlight atomic.Int64    // requests sent and not yet answered
	cut      atomic.Int64    // requests cut by a kill
	refused  atomic.Int64    // requests sent to a killed server
	acquired atomic.Int64
	takeover atomic.Int64
	ackLost  atomic.Int64 // completes whose 200 was lost in a kill, found completed on retry
	replays  atomic.Int64 // duplicate begins of completed keys that replayed
	released atomic.Int64
	wrong    atomic.Int64 // answers the protocol does not allow, other than losses
}

// acquired is what the clients know of a key they acquired.
type acquired struct {
	tokens  []int64 // in the order acquired
	outcome []byte  // the outcome its owner completes it with
}

// ack is what the clients know of a completed key.
type ack struct {
	outcome []byte
	token   int64 // the token that completed it
}

type crashOp int

const (
	opBegin crashOp = iota
	opComplete
	opRelease
	opGet
)

// keyState is a worker's own key.
type keyState struct {
	key       string
	outcome   []byte
	release   bool  // release once before completing
	token     int64 // the token held, 0 when none
	notBefore time.Time
}

type tokenBody struct {
	Scope string `json:"scope"`
	Key   string `json:"key"`
	Token int64  `json:"token"`
}

func runCrash(t *testing.T, seed uint64, dir, store string) {
	tokens := writeTokens(t, dir)
	r := &crashRun{
		t: t, dir: dir, stop: make(chan struct{}), changed: make(chan struct{}),
		args:   []string{"--listen", "127.0.0.1:0", "--store", store, "--tokens", tokens, "--lease", crashLease, "--log-level", "warn"},
		tokens: map[string]*acquired{}, acked: map[string]ack{}, lost: map[string]string{},
	}
	start := time.Now()
	r.publish(r.restart())

	var wg sync.WaitGroup
	for w := range crashWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.work(w, rand.New(rand.NewPCG(seed, uint64(w+1))))
		}()
	}

	rng := rand.New(rand.NewPCG(seed, 0))
	var atKill []int64
	for last := false; !last; {
		<-time.After(time.Duration(rng.Int64N(int64(crashMaxDelay))))
		last = len(atKill)+1 >= crashKills && (r.enoughWork() || time.Since(start) > crashMaxRun)
		atKill = append(atKill, r.inFlight.Load())
		r.kill()
		if last {
			close(r.stop)
			wg.Wait()
		}
		c := r.restart()
		r.checkRecent(c, rng)
		r.publish(c)
	}
	kills := len(atKill)
	acks, open := r.checkAll()

	slices.Sort(atKill)
	r.recMu.Lock()
	losses := len(r.lost)
	r.recMu.Unlock()
	var ops int64
	for i := range r.ops {
		ops += r.ops[i].Load()
	}
	t.Logf("%d kills (requests in flight at a kill: min %d, median %d), %d operations answered "+
		"(begin %d, complete %d, release %d, get %d), %d requests cut by a kill and %d refused by a dead server, all retried, "+
		"%d acquisitions (%d takeovers), %d releases, %d completed keys checked (%d whose 200 was lost in a kill), %d other keys checked, "+
		"%d duplicate begins replayed, %d losses, in %s",
		kills, atKill[0], atKill[len(atKill)/2], ops,
		r.ops[opBegin].Load(), r.ops[opComplete].Load(), r.ops[opRelease].Load(), r.ops[opGet].Load(), r.cut.Load(), r.refused.Load(),
		r.acquired.Load(), r.takeover.Load(), r.released.Load(), acks, r.ackLost.Load(), open,
		r.replays.Load(), losses, time.Since(start).Round(time.Millisecond))
	if losses > 0 {
		t.Errorf("%d keys lost", losses)
	}
	if n := r.wrong.Load(); n > 0 {
		t.Errorf("%d answers the protocol does not allow", n)
	}
	if acks < crashEnoughAcks || r.released.Load() == 0 || r.replays.Load() == 0 {
		t.Errorf("too little work to judge: %d completed keys, %d releases, %d duplicate begins", acks, r.released.Load(), r.replays.Load())
	}
	for _, p := range r.procs {
		if s := p.stderr.String(); strings.Contains(s, "level=ERROR") || strings.Contains(s, "panic") {
			t.Errorf("a server logged errors:\n%s", s)
		}
	}
}

// enoughWork reports whether the clients have done enough to judge the
// run: crashEnoughAcks completed keys, a release and a replay.
func (r *crashRun) enoughWork() bool {
	r.recMu.Lock()
	acks := len(r.order)
	r.recMu.Unlock()
	return acks >= crashEnoughAcks && r.released.Load() > 0 && r.replays.Load() > 0
}

// restart starts a server on the store and waits until /healthz answers.
// The workers keep using the previous one until publish.
func (r *crashRun) restart() *client {
	t := r.t
	t.Helper()
	p := startServe(t, r.dir, r.args...)
	r.procs = append(r.procs, p)
	c := newClient(p.addr, crashToken)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		if status, _, err := c.do(http.MethodGet, "/healthz", nil); err == nil && status == http.StatusOK {
			break
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("/healthz did not answer 200 within 30s; stderr:\n%s", p.stderr)
		}
	}
	return c
}

// publish sends the workers to the server c.
func (r *crashRun) publish(c *client) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	r.cl = c
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *crashRun) kill() {
	r.mu.Lock()
	r.killed = r.gen
	c := r.cl
	r.mu.Unlock()
	r.procs[len(r.procs)-1].stop(r.t, syscall.SIGKILL)
	c.http.CloseIdleConnections()
}

// call sends one request to the server of the moment. When the server dies
// under it, it waits for the next one and sends the same request again;
// retried says so. ok is false when the workers are stopping.
func (r *crashRun) call(op crashOp, method, path string, v any) (status int, data []byte, retried, ok bool) {
	for {
		r.mu.Lock()
		gen, c := r.gen, r.cl
		r.mu.Unlock()
		r.inFlight.Add(1)
		status, data, err := c.do(method, path, v)
		r.inFlight.Add(-1)
		if err == nil {
			r.ops[op].Add(1)
			return status, data, retried, true
		}
		r.mu.Lock()
		killed := r.killed >= gen
		r.mu.Unlock()
		switch {
		case !killed:
			r.wrongf("%s %s failed with no kill: %v", method, path, err)
		case errors.Is(err, syscall.ECONNREFUSED):
			r.refused.Add(1)
		default:
			r.cut.Add(1)
		}
		retried = true
		if !r.awaitRestart(gen) {
			return 0, nil, retried, false
		}
	}
}

// awaitRestart waits until a server newer than generation gen is up; false
// when the workers are to stop.
func (r *crashRun) awaitRestart(gen int) bool {
	for {
		r.mu.Lock()
		now, changed := r.gen, r.changed
		r.mu.Unlock()
		if now > gen {
			return true
		}
		select {
		case <-changed:
		case <-r.stop:
			return false
		}
	}
}

// work is one client: it begins and completes keys of its own (releasing
// some once first), and begins keys already completed again.
func (r *crashRun) work(w int, rng *rand.Rand) {
	var waiting []*keyState // keys in flight under a lease nobody answers for
	for i := 0; ; i++ {
		select {
		case <-r.stop:
			return
		default:
		}
		if rng.IntN(5) == 0 {
			if !r.beginCompletedKey(rng) {
				return
			}
			continue
		}
		var ks *keyState
		if j := slices.IndexFunc(waiting, func(k *keyState) bool { return !time.Now().Before(k.notBefore) }); j >= 0 {
			ks = waiting[j]
			waiting = slices.Delete(waiting, j, j+1)
		} else {
			key := fmt.Sprintf("w%02d-%d", w, i)
			data := make([]byte, rng.IntN(200))
			for j := range data {
				data[j] = byte(rng.Uint32())
			}
			ks = &keyState{key: key, outcome: append([]byte(key+"\x00"), data...), release: rng.IntN(8) == 0}
		}
		waits, ok := r.drive(ks)
		if !ok {
			return
		}
		if waits {
			waiting = append(waiting, ks)
		}
	}
}

// drive takes a key as far as it goes: completed, or in flight under a
// lease (waits: try again after ks.notBefore). ok is false when the workers
// are to stop.
func (r *crashRun) drive(ks *keyState) (waits, ok bool) {
	for {
		switch {
		case ks.token == 0:
			status, data, _, ok := r.call(opBegin, http.MethodPost, "/v1/begin", beginBody{Scope: crashScope, Key: ks.key, Fingerprint: "f"})
			if !ok {
				return false, false
			}
			var b beginAnswer
			if status != http.StatusOK || json.Unmarshal(data, &b) != nil {
				r.wrongf("begin %s: %d %s", ks.key, status, data)
				return false, true
			}
			switch b.Decision {
			case "acquired":
				r.recordAcquired(ks, b.Token)
				ks.token = b.Token
				if b.Takeover {
					r.takeover.Add(1)
				}
			case "in_flight":
				// A Begin cut by a kill took the key; its lease runs out.
				ks.notBefore = time.Now().Add(time.Duration(b.RetryAfterMS) * time.Millisecond)
				return true, true
			default:
				r.wrongf("begin %s, never completed: %s", ks.key, data)
				return false, true
			}
		case ks.release:
			status, data, retried, ok := r.call(opRelease, http.MethodPost, "/v1/release", tokenBody{Scope: crashScope, Key: ks.key, Token: ks.token})
			if !ok {
				return false, false
			}
			// A retry of a release that took effect finds the token gone.
			if status != http.StatusOK && !(retried && problemIs(status, data, idemapi.ProblemLeaseLost)) {
				r.wrongf("release %s token %d: %d %s", ks.key, ks.token, status, data)
				return false, true
			}
			ks.release, ks.token = false, 0
			r.released.Add(1)
		default:
			status, data, retried, ok := r.call(opComplete, http.MethodPost, "/v1/complete", completeBody{Scope: crashScope, Key: ks.key, Token: ks.token, Outcome: idem.Outcome{Data: ks.outcome}})
			if !ok {
				return false, false
			}
			switch {
			case status == http.StatusOK:
			case retried && problemIs(status, data, idemapi.ProblemCompleted):
				// The first complete took effect and its answer died with
				// the server: the record must hold exactly this outcome.
				if what, ok := r.confirm(ks); !ok {
					return false, false
				} else if what != "" {
					r.wrongf("complete %s token %d retried: %s", ks.key, ks.token, what)
					return false, true
				}
				r.ackLost.Add(1)
			default:
				r.wrongf("complete %s token %d: %d %s", ks.key, ks.token, status, data)
				return false, true
			}
			r.recMu.Lock()
			r.acked[ks.key] = ack{outcome: ks.outcome, token: ks.token}
			r.order = append(r.order, ks.key)
			r.recMu.Unlock()
			return false, true
		}
	}
}

// recordAcquired adds an acquisition to the record; a key's tokens must
// strictly increase.
func (r *crashRun) recordAcquired(ks *keyState, token int64) {
	r.acquired.Add(1)
	r.recMu.Lock()
	defer r.recMu.Unlock()
	a := r.tokens[ks.key]
	if a == nil {
		a = &acquired{outcome: ks.outcome}
		r.tokens[ks.key] = a
	}
	if n := len(a.tokens); n > 0 && token <= a.tokens[n-1] {
		r.wrongf("begin %s acquired token %d after token %d", ks.key, token, a.tokens[n-1])
	}
	a.tokens = append(a.tokens, token)
}

// confirm reads the record of a key whose complete was retried.
func (r *crashRun) confirm(ks *keyState) (what string, ok bool) {
	status, data, _, ok := r.call(opGet, http.MethodGet, keyURL(ks.key), nil)
	if !ok {
		return "", false
	}
	return recordDiffers(status, data, ack{outcome: ks.outcome, token: ks.token}), true
}

// beginCompletedKey begins a completed key again, preferring the latest:
// the answer must replay the outcome.
func (r *crashRun) beginCompletedKey(rng *rand.Rand) bool {
	key, a, found := r.pick(rng)
	if !found {
		return true
	}
	status, data, _, ok := r.call(opBegin, http.MethodPost, "/v1/begin", beginBody{Scope: crashScope, Key: key, Fingerprint: "f"})
	if !ok {
		return false
	}
	if what := replayDiffers(status, data, a); what != "" {
		r.lose(key, "begin again: "+what)
		return true
	}
	r.replays.Add(1)
	return true
}

func (r *crashRun) pick(rng *rand.Rand) (string, ack, bool) {
	r.recMu.Lock()
	defer r.recMu.Unlock()
	n := len(r.order)
	if n == 0 {
		return "", ack{}, false
	}
	i := rng.IntN(n)
	if rng.IntN(2) == 0 {
		i = n - 1 - rng.IntN(min(n, 32))
	}
	key := r.order[i]
	return key, r.acked[key], true
}

// checkRecent checks, on a server just restarted and before the workers
// use it, the keys completed last before the kill and a few at random.
func (r *crashRun) checkRecent(c *client, rng *rand.Rand) {
	r.recMu.Lock()
	n := len(r.order)
	keys := slices.Clone(r.order[max(0, n-32):])
	for range min(n, 16) {
		keys = append(keys, r.order[rng.IntN(n)])
	}
	acks := make([]ack, len(keys))
	for i, k := range keys {
		acks[i] = r.acked[k]
	}
	r.recMu.Unlock()
	for i, k := range keys {
		r.check(c, k, acks[i])
	}
}

// checkAll checks, on the last server and with the workers stopped, every
// completed key in the record, and every other key acquired: its token has
// not gone back, and if a complete cut by the last kill took effect, the
// outcome is its owner's. It returns how many keys of each kind it checked.
func (r *crashRun) checkAll() (completed, open int) {
	r.mu.Lock()
	c := r.cl
	r.mu.Unlock()
	r.recMu.Lock()
	keys := slices.Clone(r.order)
	completed = len(keys)
	for k := range r.tokens {
		if _, ok := r.acked[k]; !ok {
			keys = append(keys, k)
		}
	}
	r.recMu.Unlock()
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range crashWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(len(keys)); i = next.Add(1) - 1 {
				r.recMu.Lock()
				a, acked := r.acked[keys[i]]
				acq := r.tokens[keys[i]]
				r.recMu.Unlock()
				if acked {
					r.check(c, keys[i], a)
				} else {
					r.checkOpen(c, keys[i], acq)
				}
			}
		}()
	}
	wg.Wait()
	return completed, len(keys) - completed
}

// checkOpen checks a key acquired but never known to be completed.
func (r *crashRun) checkOpen(c *client, key string, a *acquired) {
	last := a.tokens[len(a.tokens)-1]
	status, data, err := c.do(http.MethodGet, keyURL(key), nil)
	if err != nil {
		r.wrongf("get %s: %v", key, err)
		return
	}
	r.ops[opGet].Add(1)
	var rec idemapi.Record
	switch {
	case status != http.StatusOK || json.Unmarshal(data, &rec) != nil:
		r.wrongf("get %s, acquired with token %d: %d %s", key, last, status, data)
	case rec.Token < last:
		r.wrongf("get %s: token %d, but token %d was acquired", key, rec.Token, last)
	case rec.State == "completed" && (rec.Token != last || rec.Outcome == nil || !bytes.Equal(rec.Outcome.Data, a.outcome)):
		r.wrongf("get %s: completed with token %d and %.200s, not by its owner (token %d)", key, rec.Token, data, last)
	}
}

// check reads a completed key's record and begins it again, on a server
// nobody kills meanwhile.
func (r *crashRun) check(c *client, key string, a ack) {
	status, data, err := c.do(http.MethodGet, keyURL(key), nil)
	if err != nil {
		r.lose(key, fmt.Sprintf("get: %v", err))
		return
	}
	r.ops[opGet].Add(1)
	if what := recordDiffers(status, data, a); what != "" {
		r.lose(key, "get: "+what)
		return
	}
	status, data, err = c.do(http.MethodPost, "/v1/begin", beginBody{Scope: crashScope, Key: key, Fingerprint: "f"})
	if err != nil {
		r.lose(key, fmt.Sprintf("begin: %v", err))
		return
	}
	r.ops[opBegin].Add(1)
	if what := replayDiffers(status, data, a); what != "" {
		r.lose(key, "begin again: "+what)
	}
}

// recordDiffers says how a GET answer differs from the completed record a,
// "" when it does not.
func recordDiffers(status int, data []byte, a ack) string {
	var rec idemapi.Record
	if status != http.StatusOK || json.Unmarshal(data, &rec) != nil {
		return fmt.Sprintf("%d %s", status, data)
	}
	switch {
	case rec.State != "completed":
		return fmt.Sprintf("state %s", rec.State)
	case rec.Token != a.token:
		return fmt.Sprintf("token %d, completed with %d", rec.Token, a.token)
	case rec.Outcome == nil || !bytes.Equal(rec.Outcome.Data, a.outcome):
		return fmt.Sprintf("outcome %.200s, want the %d bytes completed", data, len(a.outcome))
	}
	return ""
}

// replayDiffers says how a begin answer differs from a replay of a, "" when
// it does not.
func replayDiffers(status int, data []byte, a ack) string {
	var b beginAnswer
	if status != http.StatusOK || json.Unmarshal(data, &b) != nil {
		return fmt.Sprintf("%d %s", status, data)
	}
	if b.Decision != "replay" || b.Outcome == nil || !bytes.Equal(b.Outcome.Data, a.outcome) {
		return fmt.Sprintf("%.200s, want a replay of the %d bytes completed", data, len(a.outcome))
	}
	return ""
}

func (r *crashRun) lose(key, what string) {
	r.recMu.Lock()
	defer r.recMu.Unlock()
	if _, dup := r.lost[key]; !dup && len(r.lost) < 10 {
		r.t.Errorf("completed key %s: %s", key, what)
	}
	r.lost[key] = what
}

func (r *crashRun) wrongf(format string, args ...any) {
	if r.wrong.Add(1) <= 10 {
		r.t.Errorf(format, args...)
	}
}

func problemIs(status int, data []byte, name string) bool {
	var p struct {
		Type string `json:"type"`
	}
	return status == http.StatusConflict && json.Unmarshal(data, &p) == nil && p.Type == idemapi.ProblemBase+name
}

func keyURL(key string) string {
	return "/v1/keys/" + url.PathEscape(key) + "?scope=" + crashScope
}
