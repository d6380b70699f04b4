package redisstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/wait"
	"github.com/idemkit/idem/store/redisstore/internal/rediscluster"
	"github.com/idemkit/idem/storetest"
)

// TestCluster runs the store on a Redis Cluster of three masters with one
// replica each (started on loopback from the installed redis-server),
// through a go-redis cluster client: the conformance suite without and
// with the replica wait, and batches of many scopes spread over the slots
// of every master.
func TestCluster(t *testing.T) {
	c := rediscluster.Start(t, nil)
	client := c.Client()
	for _, cfg := range []Config{{}, {WaitReplicas: 1}} {
		t.Run(fmt.Sprintf("Conformance/WaitReplicas=%d", cfg.WaitReplicas), func(t *testing.T) {
			storetest.Run(t, func(t *testing.T, _ idem.Clock) idem.Store {
				cfg := cfg
				cfg.Prefix = uniquePrefix()
				s, err := New(client, &cfg)
				if err != nil {
					t.Fatal(err)
				}
				return s
			}, &storetest.Options{RealClock: true})
		})
	}
	t.Run("Batches", func(t *testing.T) {
		for _, cfg := range []Config{{}, {WaitReplicas: 1}} {
			t.Run(fmt.Sprintf("WaitReplicas=%d", cfg.WaitReplicas), func(t *testing.T) {
				cfg.Prefix = uniquePrefix()
				s, err := New(client, &cfg)
				if err != nil {
					t.Fatal(err)
				}
				testClusterBatches(t, c, s)
			})
		}
	})
}

// testClusterBatches holds every shard's batcher while Begins (then
// Completes) of many scopes queue, so each shard sends them as one batch:
// every batch's keys must be in one slot, the batches' slots must include
// slots of all three masters, and every record must read back as written.
func testClusterBatches(t *testing.T, c *rediscluster.Cluster, s *Store) {
	ctx := context.Background()
	// Two per shard: a held shard sends its queue once it holds more than
	// two operations per batch on its way.
	const perShard = 2
	// Scopes, perShard of each shard.
	var scopes []string
	count := make([]int, shards)
	for i := 0; len(scopes) < shards*perShard; i++ {
		sc := fmt.Sprintf("tenant-%d", i)
		if sh := shardOf(sc); count[sh] < perShard {
			count[sh]++
			scopes = append(scopes, sc)
		}
	}
	var mu sync.Mutex
	batchSlots := map[int]int{} // slot: batches of more than one operation
	for i := range s.batch {
		s.batch[i].Run = func(ctx context.Context, batch []*pendingOp) {
			sl := slot(batch[0].keys[0])
			for _, o := range batch {
				for _, k := range o.keys {
					if slot(k) != sl {
						t.Errorf("a batch holds key %q of slot %d and key %q of slot %d", batch[0].keys[0], sl, k, slot(k))
					}
				}
			}
			if len(batch) > 1 {
				mu.Lock()
				batchSlots[sl]++
				mu.Unlock()
			}
			s.runBatch(ctx, batch)
		}
	}
	// run starts op for every scope while every batcher is held, waits
	// until each shard has queued perShard operations, and releases them.
	run := func(op func(i int, scope string)) {
		t.Helper()
		var releases []func()
		for i := range s.batch {
			releases = append(releases, s.batch[i].Hold())
		}
		var wg sync.WaitGroup
		for i, sc := range scopes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				op(i, sc)
			}()
		}
		wait.For(t, "every shard's operations queued", func() bool {
			for i := range s.batch {
				if s.batch[i].Queued() != perShard {
					return false
				}
			}
			return true
		})
		for _, release := range releases {
			release()
		}
		wg.Wait()
	}
	tokens := make([]int64, len(scopes))
	run(func(i int, sc string) {
		res, err := s.Begin(ctx, &idem.BeginParams{Scope: sc, Key: "k", Fingerprint: "f", Lease: time.Hour, Window: time.Hour})
		if err != nil || res.Decision != idem.Acquired {
			t.Errorf("Begin(%s): %+v, %v", sc, res, err)
			return
		}
		tokens[i] = res.Record.Token
	})
	run(func(i int, sc string) {
		if _, err := s.Complete(ctx, &idem.CompleteParams{Scope: sc, Key: "k", Token: tokens[i], Outcome: idem.Outcome{Data: []byte("out of " + sc)}}); err != nil {
			t.Errorf("Complete(%s): %v", sc, err)
		}
	})
	for i, sc := range scopes {
		rec, err := s.Get(ctx, &idem.KeyParams{Scope: sc, Key: "k"})
		if err != nil {
			t.Fatalf("Get(%s): %v", sc, err)
		}
		if rec.State != idem.StateCompleted || rec.Token != tokens[i] || string(rec.Outcome.Data) != "out of "+sc {
			t.Errorf("Get(%s): state %s, token %d, outcome %q; want completed, %d, %q", sc, rec.State, rec.Token, rec.Outcome.Data, tokens[i], "out of "+sc)
		}
	}
	if n, err := s.Size(ctx); err != nil || n != int64(len(scopes)) {
		t.Errorf("Size: %d, %v; want %d", n, err, len(scopes))
	}
	// Two rounds of one batch per shard.
	if len(batchSlots) != shards {
		t.Errorf("batches went to %d slots, want %d (one per shard)", len(batchSlots), shards)
	}
	cs, err := c.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range cs {
		n := 0
		for sl := range batchSlots {
			if sh.Owns(sl) {
				n++
			}
		}
		t.Logf("master %s (slots %v): batches to %d of the store's %d slots", sh.Master.Addr, sh.Slots, n, shards)
		if n == 0 {
			t.Errorf("no batch went to master %s (slots %v)", sh.Master.Addr, sh.Slots)
		}
	}
}
