package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/store/redisstore/internal/rediscluster"
)

// TestClusterFailover kills (SIGKILL) a master of a loopback Redis Cluster
// under a load of Begin/Complete cycles, three times, each time waiting for
// its replica to take over (cluster-node-timeout 1s, the cluster's own
// failover) and starting the killed node again, which rejoins as a replica.
// It then checks every acknowledged Begin and Complete, and logs the
// figures: operations acknowledged, failovers, acknowledged operations
// lost, duplicate owners, tokens handed out again, and the time from each
// kill until operations on the killed master's slots run again.
//
// Each setting runs twice: a plain kill, and a kill of a master whose
// replica lags (paused with SIGSTOP and cut off with CLIENT KILL TYPE
// replica while the master acknowledges 20 more operations on its slots).
// With WaitReplicas 1 nothing acknowledged may be lost: the test fails on
// any loss. Without it the test only measures what was lost (replication is
// asynchronous; a loss needs a write the master acknowledged and did not
// send before it died). docs/store-redis.md has the figures.
func TestClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("kills Redis Cluster masters; takes about a minute")
	}
	for _, tc := range []struct {
		waitReplicas int
		cut          bool
	}{{0, false}, {0, true}, {1, false}, {1, true}} {
		waitReplicas := tc.waitReplicas
		name := fmt.Sprintf("WaitReplicas=%d/kill", waitReplicas)
		if tc.cut {
			name = fmt.Sprintf("WaitReplicas=%d/cut-then-kill", waitReplicas)
		}
		t.Run(name, func(t *testing.T) {
			f := runFailovers(t, waitReplicas, 3, tc.cut)
			t.Log(f)
			if f.acked() == 0 || f.failovers != 3 {
				t.Fatalf("%d operations acknowledged over %d failovers: the load did not run", f.acked(), f.failovers)
			}
			if waitReplicas > 0 && (f.lostBegins+f.lostCompletes > 0 || f.duplicates.Load() > 0 || f.reissued.Load() > 0) {
				t.Errorf("with WaitReplicas %d: acknowledged operations lost or owners duplicated: %s", waitReplicas, f)
			}
		})
	}
}

// failoverFigures are what runFailovers measured.
type failoverFigures struct {
	waitReplicas          int
	cut                   bool         // the replica's link was cut before each kill
	begins, completes     atomic.Int64 // acknowledged
	notDurable, failed    atomic.Int64 // not acknowledged: the wait fell short; an error
	failovers             int
	recoveries            []recovery
	lostBegins            int          // an acknowledged Begin whose record (with that token or later) is gone
	lostCompletes         int          // an acknowledged Complete whose outcome is not there, byte for byte
	duplicates, reissued  atomic.Int64 // a second owner while an acknowledged owner's lease was live; a token not above an acknowledged one of the key
	checkedOnce, verified int
}

// recovery is one kill: how long until the replica said it was master, the
// first operation on the killed master's slots ran, and the first one was
// acknowledged.
type recovery struct{ promoted, ran, acked time.Duration }

func (f *failoverFigures) acked() int64 { return f.begins.Load() + f.completes.Load() }

func (f *failoverFigures) String() string {
	kill := "SIGKILL"
	if f.cut {
		kill = "replica paused and cut off, then SIGKILL"
	}
	s := fmt.Sprintf("WaitReplicas=%d, %s: operations acknowledged %d (%d Begin, %d Complete); not acknowledged: %d wait fell short, %d errors; failovers %d; "+
		"acknowledged operations lost %d (%d Begin, %d Complete, of %d checked); duplicate owners %d; tokens not above an acknowledged one %d",
		f.waitReplicas, kill, f.acked(), f.begins.Load(), f.completes.Load(), f.notDurable.Load(), f.failed.Load(), f.failovers,
		f.lostBegins+f.lostCompletes, f.lostBegins, f.lostCompletes, f.verified, f.duplicates.Load(), f.reissued.Load())
	for i, r := range f.recoveries {
		s += fmt.Sprintf("; kill %d: replica master after %s, operations on its slots ran after %s, acknowledged after %s",
			i+1, r.promoted.Round(time.Millisecond), r.ran.Round(time.Millisecond), r.acked.Round(time.Millisecond))
	}
	return s
}

// killWatch follows one kill: the victim's slots and when operations on
// them ran and were acknowledged again (nanoseconds after the kill).
type killWatch struct {
	shard      rediscluster.Shard
	at         time.Time
	ran, acked atomic.Int64
	count      atomic.Int64 // operations that ran

	mu     sync.Mutex
	errors map[string]int // errors of operations on the victim's slots, for the log
}

// completion is an acknowledged Complete.
type completion struct {
	token int64
	data  string
}

type failoverLoad struct {
	t     *testing.T
	s     *Store
	f     *failoverFigures
	watch atomic.Pointer[killWatch]

	mu        sync.Mutex
	begun     map[[2]string]int64      // acknowledged Begin, Complete not acknowledged: its token
	completed map[[2]string]completion // acknowledged Complete
}

// ran notes that an operation on slot ran (err nil or ErrNotDurable) and
// whether it was acknowledged.
func (l *failoverLoad) ran(start time.Time, scope, key string, err error) {
	w := l.watch.Load()
	if w != nil && (start.Before(w.at) || !w.shard.Owns(slot(l.s.shard.recordKey(scope, key)))) {
		w = nil // only operations on the victim's slots started after the kill count
	}
	if err != nil && !errors.Is(err, ErrNotDurable) {
		l.f.failed.Add(1)
		if w != nil {
			msg := err.Error()
			if i := strings.Index(msg, "127.0.0.1:"); i >= 0 {
				msg = msg[:i] // one line per kind, whatever the port
			}
			w.mu.Lock()
			w.errors[msg]++
			w.mu.Unlock()
		}
		return
	}
	if err != nil {
		l.f.notDurable.Add(1)
	}
	if w == nil {
		return
	}
	w.count.Add(1)
	d := max(int64(time.Since(w.at)), 1)
	w.ran.CompareAndSwap(0, d)
	if err == nil {
		w.acked.CompareAndSwap(0, d)
	}
}

// oneShot begins a fresh key and completes it, and notes what was
// acknowledged, for the check after the failovers.
func (l *failoverLoad) oneShot(ctx context.Context, scope, key string) {
	id := [2]string{scope, key}
	start := time.Now()
	res, err := l.s.Begin(ctx, &idem.BeginParams{Scope: scope, Key: key, Fingerprint: "f", Lease: 10 * time.Minute, Window: time.Hour})
	l.ran(start, scope, key, err)
	if err != nil || res.Decision != idem.Acquired {
		return // not acknowledged (a retry of the client may find its own first try in flight)
	}
	l.f.begins.Add(1)
	tok := res.Record.Token
	l.mu.Lock()
	l.begun[id] = tok
	l.mu.Unlock()
	data := fmt.Sprintf("outcome of %s/%s token %d", scope, key, tok)
	start = time.Now()
	_, err = l.s.Complete(ctx, &idem.CompleteParams{Scope: scope, Key: key, Token: tok, Outcome: idem.Outcome{Data: []byte(data)}})
	l.ran(start, scope, key, err)
	if err != nil {
		return
	}
	l.f.completes.Add(1)
	l.mu.Lock()
	delete(l.begun, id)
	l.completed[id] = completion{tok, data}
	l.mu.Unlock()
}

// cycled is one key a worker begins and completes again and again (window
// 1ms): each acquisition's token must be above the key's acknowledged
// ones, and no Begin may acquire while the worker's acknowledged lease
// (2s from the start of its Begin) is live and not completed.
type cycled struct {
	scope, key string
	last       int64
	open       bool
	leaseEnd   time.Time
}

func (l *failoverLoad) cycle(ctx context.Context, c *cycled) {
	const lease = 2 * time.Second
	start := time.Now()
	res, err := l.s.Begin(ctx, &idem.BeginParams{Scope: c.scope, Key: c.key, Fingerprint: "f", Lease: lease, Window: time.Millisecond})
	l.ran(start, c.scope, c.key, err)
	if err != nil || res.Decision != idem.Acquired {
		return
	}
	l.f.begins.Add(1)
	tok := res.Record.Token
	if tok <= c.last {
		l.f.reissued.Add(1)
		l.t.Logf("%s/%s: token %d acquired after acknowledged token %d", c.scope, c.key, tok, c.last)
	}
	if c.open && time.Now().Before(c.leaseEnd) {
		l.f.duplicates.Add(1)
		l.t.Logf("%s/%s: acquired (token %d) while the acknowledged owner of token %d held its lease", c.scope, c.key, tok, c.last)
	}
	c.last, c.open, c.leaseEnd = max(c.last, tok), true, start.Add(lease)
	cstart := time.Now()
	_, err = l.s.Complete(ctx, &idem.CompleteParams{Scope: c.scope, Key: c.key, Token: tok, Outcome: idem.Outcome{Data: []byte("x")}})
	l.ran(cstart, c.scope, c.key, err)
	if err == nil {
		l.f.completes.Add(1)
		c.open = false
	}
}

// runFailovers runs the load on a fresh cluster, kills a master kills
// times, and checks what was acknowledged.
func runFailovers(t *testing.T, waitReplicas, kills int, cut bool) *failoverFigures {
	c := rediscluster.Start(t, &rediscluster.Options{NodeTimeout: time.Second})
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	t.Cleanup(func() { client.Close() })
	s, err := New(client, &Config{Prefix: uniquePrefix(), WaitReplicas: waitReplicas})
	if err != nil {
		t.Fatal(err)
	}
	f := &failoverFigures{waitReplicas: waitReplicas, cut: cut}
	l := &failoverLoad{t: t, s: s, f: f, begun: map[[2]string]int64{}, completed: map[[2]string]completion{}}

	const workers = 8
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var cyc []*cycled
			for j := range 4 {
				cyc = append(cyc, &cycled{scope: fmt.Sprintf("cycled-%d-%d", w, j), key: "k"})
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				l.oneShot(ctx, fmt.Sprintf("tenant-%d", (i*workers+w)%256), fmt.Sprintf("k-%d-%d", w, i))
				l.cycle(ctx, cyc[i%len(cyc)])
				cancel()
			}
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	ctx := context.Background()
	for k := range kills {
		base := f.acked()
		c.Poll("500 more operations acknowledged", func(context.Context) error {
			if n := f.acked() - base; n < 500 {
				return fmt.Errorf("%d acknowledged", n)
			}
			return nil
		})
		shards, err := c.Shards(ctx)
		if err != nil {
			t.Fatal(err)
		}
		victim := shards[k%len(shards)]
		if len(victim.Replicas) != 1 {
			t.Fatalf("master %s has %d replicas, want 1", victim.Master.Addr, len(victim.Replicas))
		}
		replica := victim.Replicas[0]
		if cut {
			// A replica that lags (a slow link, a network blip), made on
			// loopback: the replica is paused (SIGSTOP) and the master drops
			// its connection, so the master goes on acknowledging writes
			// that reach no replica; the kill comes once 20 operations on
			// its slots have run meanwhile, and the replica resumes.
			if err := replica.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			cw := &killWatch{shard: victim, at: time.Now(), errors: map[string]int{}}
			l.watch.Store(cw)
			if err := victim.Master.Do(ctx, "CLIENT", "KILL", "TYPE", "replica"); err != nil {
				t.Fatal(err)
			}
			c.Poll("20 operations on the master's slots while its replica is cut off", func(context.Context) error {
				if n := cw.count.Load(); n < 20 {
					return fmt.Errorf("%d", n)
				}
				return nil
			})
		}
		w := &killWatch{shard: victim, at: time.Now(), errors: map[string]int{}}
		l.watch.Store(w)
		victim.Master.Kill()
		if cut {
			if err := replica.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
		}
		var r recovery
		c.Poll("the replica of the killed master to take over", func(ctx context.Context) error {
			role, err := replica.Role(ctx)
			if err == nil && role != "master" {
				err = fmt.Errorf("%s is %s", replica.Addr, role)
			}
			return err
		})
		r.promoted = time.Since(w.at)
		c.Poll("an operation on the killed master's slots to run", func(context.Context) error {
			if w.ran.Load() == 0 {
				return errors.New("none yet")
			}
			return nil
		})
		// The killed node starts again, empty, and rejoins as a replica of
		// the new master, so the next kill finds a replica everywhere.
		victim.Master.Start()
		c.WaitHealthy()
		c.Poll("an operation on the killed master's slots to be acknowledged", func(context.Context) error {
			if w.acked.Load() == 0 {
				return errors.New("none yet")
			}
			return nil
		})
		r.ran, r.acked = time.Duration(w.ran.Load()), time.Duration(w.acked.Load())
		w.mu.Lock()
		t.Logf("kill %d of %s: errors on its slots: %v", k+1, victim.Master.Addr, w.errors)
		w.mu.Unlock()
		f.recoveries = append(f.recoveries, r)
		f.failovers++
		l.watch.Store(nil)
	}
	close(stop)
	wg.Wait()
	c.WaitHealthy()

	// Every acknowledged Begin and Complete, checked once the cluster is
	// whole again; an operation that fails is tried again (the client may
	// still have the old map of the slots).
	try := func(what string, op func() error) {
		t.Helper()
		var err error
		c.Poll(what, func(context.Context) error {
			err = op()
			if err != nil && (errors.Is(err, idem.ErrUnavailable) || redis.HasErrorPrefix(errors.Unwrap(err), "MOVED")) {
				return err
			}
			return nil
		})
		if err != nil && !errors.Is(err, idem.ErrNotFound) {
			t.Fatalf("%s: %v", what, err)
		}
	}
	check := func(id [2]string, token int64, done *completion) {
		var rec *idem.Record
		try("Get "+id[0]+"/"+id[1], func() (err error) {
			rec, err = s.Get(ctx, &idem.KeyParams{Scope: id[0], Key: id[1]})
			return err
		})
		switch {
		case done != nil && (rec == nil || rec.State != idem.StateCompleted || rec.Token != done.token || rec.Outcome == nil || string(rec.Outcome.Data) != done.data):
			f.lostCompletes++
		case done == nil && (rec == nil || rec.Token < token):
			f.lostBegins++
		}
		var res *idem.BeginResult
		try("Begin "+id[0]+"/"+id[1], func() (err error) {
			res, err = s.Begin(ctx, &idem.BeginParams{Scope: id[0], Key: id[1], Fingerprint: "f", Lease: 10 * time.Minute, Window: time.Hour})
			if errors.Is(err, ErrNotDurable) {
				err = nil
			}
			return err
		})
		if res.Decision == idem.Acquired {
			// The acknowledged owner's lease (10 minutes) or outcome (an
			// hour's window) is live: this is a second owner.
			f.duplicates.Add(1)
			if res.Record.Token <= token {
				f.reissued.Add(1)
			}
		}
		f.verified++
	}
	for id, tok := range l.begun {
		check(id, tok, nil)
	}
	for id, done := range l.completed {
		check(id, done.token, &done)
	}
	return f
}
