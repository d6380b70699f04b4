package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/internal/wait"
	"github.com/idemkit/idem/storetest"
)

var prefixes atomic.Int64

// bundle is what a test of this package needs: a client on the real Redis
// and a store with a key prefix of its own, whose keys are removed when the
// test ends.
type bundle struct {
	t      testing.TB
	ctx    context.Context
	client *redis.Client
	store  *Store
	prefix string
}

// uniquePrefix names a fresh key space for one store.
func uniquePrefix() string {
	return fmt.Sprintf("idemtest-%d-%d", time.Now().UnixNano(), prefixes.Add(1))
}

func setup(t testing.TB, cfg *Config) *bundle {
	t.Helper()
	url := servicetest.Redis.Need(t)
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	b := &bundle{t: t, ctx: context.Background(), client: redis.NewClient(opts), prefix: uniquePrefix()}
	t.Cleanup(func() {
		b.cleanup()
		b.client.Close()
	})
	c := Config{}
	if cfg != nil {
		c = *cfg
	}
	c.Prefix = b.prefix
	if b.store, err = New(b.client, &c); err != nil {
		t.Fatal(err)
	}
	return b
}

// cleanup removes every key of the bundle's prefix.
func (b *bundle) cleanup() {
	b.t.Helper()
	iter := b.client.Scan(b.ctx, 0, b.prefix+":*", 1000).Iterator()
	var batch []string
	for iter.Next(b.ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 1000 {
			b.client.Unlink(b.ctx, batch...)
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		b.t.Errorf("cleanup of %s: %v", b.prefix, err)
	}
	if len(batch) > 0 {
		b.client.Unlink(b.ctx, batch...)
	}
}

// keyCount counts the keys of the bundle's prefix.
func (b *bundle) keyCount() int {
	b.t.Helper()
	n := 0
	iter := b.client.Scan(b.ctx, 0, b.prefix+":*", 1000).Iterator()
	for iter.Next(b.ctx) {
		n++
	}
	if err := iter.Err(); err != nil {
		b.t.Fatal(err)
	}
	return n
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T, _ idem.Clock) idem.Store {
		return setup(t, nil).store
	}, &storetest.Options{RealClock: true})
}

func (b *bundle) acquire(scope, key string, lease, window time.Duration) *idem.Record {
	b.t.Helper()
	res, err := b.store.Begin(b.ctx, &idem.BeginParams{Scope: scope, Key: key, Fingerprint: "f", Lease: lease, Window: window})
	if err != nil {
		b.t.Fatalf("Begin(%s/%s): %v", scope, key, err)
	}
	if res.Decision != idem.Acquired {
		b.t.Fatalf("Begin(%s/%s): %s, want acquired", scope, key, res.Decision)
	}
	return res.Record
}

// TestScriptFlush: after SCRIPT FLUSH (a restart, a failover to a server
// that never saw the scripts) every operation loads its script again.
func TestScriptFlush(t *testing.T) {
	for _, wait := range []bool{false, true} {
		t.Run(fmt.Sprintf("wait=%v", wait), func(t *testing.T) {
			cfg := &Config{}
			if wait {
				cfg.WaitTimeout = 100 * time.Millisecond // WAIT 0: the pipeline path
			}
			b := setup(t, cfg)
			flush := func() {
				t.Helper()
				if err := b.client.ScriptFlush(b.ctx).Err(); err != nil {
					t.Fatal(err)
				}
			}
			flush()
			rec := b.acquire("s", "k", time.Hour, time.Hour)
			flush()
			if err := b.store.Checkpoint(b.ctx, &idem.CheckpointParams{Scope: "s", Key: "k", Token: rec.Token, Point: "p"}); err != nil {
				t.Fatalf("Checkpoint after SCRIPT FLUSH: %v", err)
			}
			flush()
			if _, err := b.store.Extend(b.ctx, &idem.ExtendParams{Scope: "s", Key: "k", Token: rec.Token, Lease: time.Hour}); err != nil {
				t.Fatalf("Extend after SCRIPT FLUSH: %v", err)
			}
			flush()
			if _, err := b.store.Complete(b.ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: rec.Token, Outcome: idem.Outcome{Data: []byte("done")}}); err != nil {
				t.Fatalf("Complete after SCRIPT FLUSH: %v", err)
			}
			flush()
			res, err := b.store.Begin(b.ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Hour, Window: time.Hour})
			if err != nil || res.Decision != idem.Replay || string(res.Record.Outcome.Data) != "done" {
				t.Fatalf("Begin after SCRIPT FLUSH: %+v, %v; want a replay of done", res, err)
			}
			rel := b.acquire("s", "r", time.Hour, time.Hour)
			flush()
			if err := b.store.Release(b.ctx, &idem.ReleaseParams{Scope: "s", Key: "r", Token: rel.Token}); err != nil {
				t.Fatalf("Release after SCRIPT FLUSH: %v", err)
			}
			flush()
			if err := b.store.Delete(b.ctx, &idem.KeyParams{Scope: "s", Key: "r"}); err != nil {
				t.Fatalf("Delete after SCRIPT FLUSH: %v", err)
			}
			b.acquire("s", "due", time.Millisecond, time.Millisecond)
			waitExpired(t, b, "s", "due")
			flush()
			if res, err := b.store.Sweep(b.ctx, &idem.SweepParams{}); err != nil || res.Deleted != 1 {
				t.Fatalf("Sweep after SCRIPT FLUSH: %+v, %v; want 1 removed", res, err)
			}
		})
	}
}

// waitExpired polls until Redis has expired the record of (scope, key),
// which it does at the record's RetainUntil rounded up to the millisecond.
func waitExpired(t *testing.T, b *bundle, scope, key string) {
	t.Helper()
	wait.For(t, fmt.Sprintf("Redis to expire %s/%s", scope, key), func() bool {
		return b.client.Exists(b.ctx, keysOf(b.prefix, scope, key).record).Val() == 0
	})
}

// TestTTLAndList: every record carries a Redis expiry at its RetainUntil
// and an entry in its shard's index; List skips (and drops from the index) a
// record Redis expired, and Sweep removes and counts the entries of expired
// records List has not met.
func TestTTLAndList(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := b.ctx
	check := func(key string) {
		t.Helper()
		rec, err := b.store.Get(ctx, &idem.KeyParams{Scope: "s", Key: key})
		if err != nil {
			t.Fatal(err)
		}
		k := keysOf(b.prefix, "s", key)
		at, err := b.client.PExpireTime(ctx, k.record).Result()
		if err != nil {
			t.Fatal(err)
		}
		wantMs := (rec.RetainUntil.UnixMicro() + 999) / 1000
		if at.Milliseconds() != wantMs {
			t.Errorf("%s (%s): Redis expiry at %d ms, want RetainUntil %s rounded up = %d ms", key, rec.State, at.Milliseconds(), rec.RetainUntil, wantMs)
		}
		if score, err := b.client.ZScore(ctx, k.index, k.member).Result(); err != nil || score != 0 {
			t.Errorf("%s: index score %v (%v), want an entry of score 0", key, score, err)
		}
	}
	rec := b.acquire("s", "a", time.Hour, 2*time.Hour)
	check("a")
	if _, err := b.store.Extend(ctx, &idem.ExtendParams{Scope: "s", Key: "a", Token: rec.Token, Lease: 3 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	check("a")
	if _, err := b.store.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "a", Token: rec.Token}); err != nil {
		t.Fatal(err)
	}
	check("a")
	rel := b.acquire("s", "b", time.Hour, time.Hour)
	if err := b.store.Release(ctx, &idem.ReleaseParams{Scope: "s", Key: "b", Token: rel.Token}); err != nil {
		t.Fatal(err)
	}
	check("b")

	// Records Redis expires by itself: List no longer shows c and drops
	// its entry; Size counts d until Sweep removes its entry and counts it.
	b.acquire("s", "c", time.Millisecond, time.Millisecond)
	b.acquire("other", "d", time.Millisecond, time.Millisecond)
	k := keysOf(b.prefix, "s", "c")
	waitExpired(t, b, "s", "c")
	waitExpired(t, b, "other", "d")
	res, err := b.store.List(ctx, &idem.ListParams{Scope: "s"})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, r := range res.Records {
		keys = append(keys, r.Key)
	}
	if fmt.Sprint(keys) != "[a b]" {
		t.Errorf("List: %v, want [a b]", keys)
	}
	if n := b.client.ZScore(ctx, k.index, k.member).Err(); !errors.Is(n, redis.Nil) {
		t.Errorf("index entry of c after List: %v, want none (dropped)", n)
	}
	if n, err := b.store.Size(ctx); err != nil || n != 3 {
		t.Errorf("Size before Sweep: %d, %v; want 3", n, err)
	}
	if sw, err := b.store.Sweep(ctx, &idem.SweepParams{}); err != nil || sw.Deleted != 1 {
		t.Errorf("Sweep: %+v, %v; want 1 removed (d, which Redis expired)", sw, err)
	}
	if n, err := b.store.Size(ctx); err != nil || n != 2 {
		t.Errorf("Size after Sweep: %d, %v; want 2", n, err)
	}
	// Deleting everything leaves only the token counters (one per shard
	// used).
	for _, key := range []string{"a", "b"} {
		if err := b.store.Delete(ctx, &idem.KeyParams{Scope: "s", Key: key}); err != nil {
			t.Fatal(err)
		}
	}
	want := 1
	if shardOf("s") != shardOf("other") {
		want = 2
	}
	if n := b.keyCount(); n != want {
		t.Errorf("%d keys left after deleting every record, want %d (the token counters)", n, want)
	}
}

// TestWait: WAIT 0 passes; asking for a replica this server does not have
// returns the result with an error wrapping ErrNotDurable, and the write is
// on the server; WAITAOF on Redis 7.0 fails clearly.
func TestWait(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	t.Run("zero replicas", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &Config{WaitTimeout: 100 * time.Millisecond})
		rec := b.acquire("s", "k", time.Hour, time.Hour)
		if _, err := b.store.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: rec.Token, Outcome: idem.Outcome{Data: []byte("x")}}); err != nil {
			t.Fatalf("Complete with WAIT 0: %v", err)
		}
	})
	t.Run("one replica missing", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &Config{WaitReplicas: 1, WaitTimeout: 50 * time.Millisecond})
		if n := b.client.Info(ctx, "replication").Val(); !strings.Contains(n, "connected_slaves:0\r\n") {
			t.Skipf("the server has replicas: %s", n)
		}
		res, err := b.store.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Hour, Window: time.Hour})
		if !errors.Is(err, ErrNotDurable) || res == nil || res.Decision != idem.Acquired {
			t.Fatalf("Begin: %+v, %v; want acquired with an error wrapping ErrNotDurable", res, err)
		}
		t.Logf("the error reads: %v", err)
		rec, err := b.store.Complete(ctx, &idem.CompleteParams{Scope: "s", Key: "k", Token: res.Record.Token, Outcome: idem.Outcome{Data: []byte("x")}})
		if !errors.Is(err, ErrNotDurable) || rec == nil || rec.State != idem.StateCompleted {
			t.Fatalf("Complete: %+v, %v; want the completed record with an error wrapping ErrNotDurable", rec, err)
		}
		got, err := b.store.Get(ctx, &idem.KeyParams{Scope: "s", Key: "k"})
		if err != nil || got.State != idem.StateCompleted || string(got.Outcome.Data) != "x" {
			t.Errorf("Get: %+v, %v; want the write on the primary", got, err)
		}
		// A replay writes nothing, so it waits for nothing.
		if res, err := b.store.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Hour, Window: time.Hour}); err != nil || res.Decision != idem.Replay {
			t.Errorf("replay: %+v, %v", res, err)
		}
	})
	t.Run("WAITAOF", func(t *testing.T) {
		t.Parallel()
		url := servicetest.Redis.Need(t)
		b := setup(t, nil)
		if b.client.Do(ctx, "COMMAND", "INFO", "WAITAOF").String() != "COMMAND INFO WAITAOF: [<nil>]" {
			t.Skip("the server has WAITAOF (Redis 7.2+): nothing to check")
		}
		_, err := Open(ctx, url, &Config{Prefix: b.prefix, WaitAOF: true})
		if !errors.Is(err, idem.ErrNotImplemented) {
			t.Fatalf("Open with WaitAOF on a server without it: %v, want an error wrapping idem.ErrNotImplemented", err)
		}
		t.Logf("Open says: %v", err)
		s, err := New(b.client, &Config{Prefix: b.prefix, WaitAOF: true})
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Hour, Window: time.Hour})
		if !errors.Is(err, ErrNotDurable) || !errors.Is(err, idem.ErrNotImplemented) || res == nil {
			t.Fatalf("Begin with WaitAOF: %+v, %v; want the result and an error wrapping ErrNotDurable and idem.ErrNotImplemented", res, err)
		}
	})
	t.Run("config", func(t *testing.T) {
		t.Parallel()
		client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ReadTimeout: time.Second})
		defer client.Close()
		for _, cfg := range []Config{{Prefix: "a{b"}, {Prefix: "a}"}, {WaitReplicas: -1}, {WaitTimeout: -1},
			{WaitReplicas: 1, WaitTimeout: 2 * time.Second}} {
			if _, err := New(client, &cfg); !errors.Is(err, idem.ErrInvalid) {
				t.Errorf("New(%+v): %v, want an error wrapping idem.ErrInvalid", cfg, err)
			}
		}
		ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
		defer ring.Close()
		if _, err := New(ring, &Config{WaitReplicas: 1}); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("New(ring, WaitReplicas 1): %v, want an error wrapping idem.ErrInvalid", err)
		}
		cluster := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}, ReadTimeout: time.Second})
		defer cluster.Close()
		if _, err := New(cluster, &Config{WaitReplicas: 1, WaitTimeout: 2 * time.Second}); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("New(cluster, WaitTimeout above ReadTimeout): %v, want an error wrapping idem.ErrInvalid", err)
		}
		if _, err := New(cluster, &Config{WaitReplicas: 1, WaitTimeout: 500 * time.Millisecond}); err != nil {
			t.Errorf("New(cluster, WaitReplicas 1): %v", err)
		}
		if _, err := New(nil, nil); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("New(nil): %v, want an error wrapping idem.ErrInvalid", err)
		}
	})
}

// TestConnectionError: a server that does not answer gives an error that
// says what the store was doing, not a panic or a bare network error.
func TestConnectionError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if _, err := Open(ctx, "redis://127.0.0.1:1/0", nil); !errors.Is(err, idem.ErrUnavailable) {
		t.Fatalf("Open of a closed port: %v, want an error wrapping idem.ErrUnavailable", err)
	}
	if _, err := Open(ctx, "http://x", nil); !errors.Is(err, idem.ErrInvalid) {
		t.Errorf("Open of a non-Redis URL: %v, want an error wrapping idem.ErrInvalid", err)
	}
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond, DialerRetries: 1})
	defer client.Close()
	s, err := New(client, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Begin(ctx, &idem.BeginParams{Scope: "s", Key: "k", Fingerprint: "f", Lease: time.Second, Window: time.Second})
	if !errors.Is(err, idem.ErrUnavailable) || !strings.Contains(err.Error(), "redisstore: begin") {
		t.Errorf("Begin against a closed port: %v, want idem.ErrUnavailable naming redisstore: begin", err)
	}
}

// TestTokens: a token is above the shard counter, the server's clock (µs)
// and the key's last token, so it increases across Delete also when the
// counter is lost or runs ahead of the clock.
func TestTokens(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	k := keysOf(b.prefix, "s", "k")
	first := b.acquire("s", "k", time.Hour, time.Hour)
	now, err := b.client.Time(b.ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if first.Token > now.UnixMicro() || first.Token < now.Add(-time.Minute).UnixMicro() {
		t.Errorf("first token %d, want the server's time in µs (%d)", first.Token, now.UnixMicro())
	}
	del := func() {
		t.Helper()
		if err := b.store.Delete(b.ctx, &idem.KeyParams{Scope: "s", Key: "k"}); err != nil {
			t.Fatal(err)
		}
	}
	del()
	b.client.Del(b.ctx, k.token) // the counter is lost
	second := b.acquire("s", "k", time.Hour, time.Hour)
	if second.Token <= first.Token {
		t.Errorf("token after Delete and a lost counter: %d, want above %d", second.Token, first.Token)
	}
	del()
	ahead := now.Add(time.Hour).UnixMicro() // a clock that stepped back an hour
	b.client.Set(b.ctx, k.token, tokenBytes(ahead), 0)
	if third := b.acquire("s", "k", time.Hour, time.Hour); third.Token != ahead+1 {
		t.Errorf("token with the counter ahead of the clock: %d, want %d", third.Token, ahead+1)
	}
	if got := b.client.Get(b.ctx, k.token).Val(); got != string(tokenBytes(ahead+1)) {
		t.Errorf("counter %x, want %d as 8 bytes", got, ahead+1)
	}
	// A fresh key whose counter is ahead gets the counter's next token.
	if fourth := b.acquire("s", "other", time.Hour, time.Hour); fourth.Token != ahead+2 {
		t.Errorf("token of a fresh key with the counter ahead: %d, want %d", fourth.Token, ahead+2)
	}
}

// TestSweepBatches: Sweep walks an index longer than one batch, removes the
// entries of every record Redis expired among live ones, stops at its
// limit, and leaves Size exact.
func TestSweepBatches(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const live, due = 1200, 1300 // one scope, so one shard: three batches
	isDue := func(i int) bool { return i%2 == 1 || i >= 2*live }
	for i := range live + due {
		lease := time.Hour
		if isDue(i) {
			lease = time.Millisecond
		}
		b.acquire("s", fmt.Sprintf("k-%05d", i), lease, lease)
	}
	for i := range live + due {
		if isDue(i) {
			waitExpired(t, b, "s", fmt.Sprintf("k-%05d", i))
		}
	}
	if res, err := b.store.Sweep(b.ctx, &idem.SweepParams{Limit: 700}); err != nil || res.Deleted != 700 {
		t.Fatalf("Sweep with limit 700: %+v, %v; want 700 removed", res, err)
	}
	if res, err := b.store.Sweep(b.ctx, &idem.SweepParams{}); err != nil || res.Deleted != due-700 {
		t.Fatalf("Sweep: %+v, %v; want %d removed", res, err, due-700)
	}
	if n, err := b.store.Size(b.ctx); err != nil || n != live {
		t.Errorf("Size after Sweep: %d, %v; want %d", n, err, live)
	}
	res, err := b.store.List(b.ctx, &idem.ListParams{Scope: "s", Limit: idem.MaxListSize})
	if err != nil || len(res.Records) != min(live, idem.MaxListSize) {
		t.Fatalf("List: %d records, %v; want %d", len(res.Records), err, min(live, idem.MaxListSize))
	}
	for _, r := range res.Records {
		if r.State != idem.StatePending || r.LeaseUntil.Sub(r.Created) != time.Hour {
			t.Errorf("List: %s %s lease until %s, want a live record", r.Key, r.State, r.LeaseUntil)
		}
	}
}

// TestSweepPastALiveBatch: a batch of index entries whose records are all
// live does not end Sweep: the expired entry after them goes too.
func TestSweepPastALiveBatch(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	pipe := b.client.Pipeline()
	for i := range sweepBatch {
		k := keysOf(b.prefix, "s", fmt.Sprintf("k-%05d", i))
		pipe.Set(b.ctx, k.record, "x", time.Hour)
		pipe.ZAdd(b.ctx, k.index, redis.Z{Member: k.member})
	}
	gone := keysOf(b.prefix, "s", "z") // sorts after them; its record expired
	pipe.ZAdd(b.ctx, gone.index, redis.Z{Member: gone.member})
	if _, err := pipe.Exec(b.ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := b.store.Sweep(b.ctx, &idem.SweepParams{}); err != nil || res.Deleted != 1 {
		t.Fatalf("Sweep: %+v, %v; want the entry after a full live batch removed", res, err)
	}
	if n, err := b.client.ZCard(b.ctx, gone.index).Result(); err != nil || n != sweepBatch {
		t.Errorf("index after Sweep: %d entries, %v; want %d", n, err, sweepBatch)
	}
}

// TestMalformedIndexMember: an index member that names no record (here
// the scope "s" with an empty key, which no Begin writes) makes List and
// Sweep fail with an error that names it, not panic or skip it silently.
func TestMalformedIndexMember(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	k := keysOf(b.prefix, "s", "k")
	if err := b.client.ZAdd(b.ctx, k.index, redis.Z{Member: "s:"}).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.List(b.ctx, &idem.ListParams{Scope: "s"}); err == nil || !strings.Contains(err.Error(), "malformed index member") {
		t.Errorf("List: %v, want an error about the malformed index member", err)
	}
	if _, err := b.store.Sweep(b.ctx, &idem.SweepParams{}); err == nil || !strings.Contains(err.Error(), "malformed index member") {
		t.Errorf("Sweep: %v, want an error about the malformed index member", err)
	}
}
