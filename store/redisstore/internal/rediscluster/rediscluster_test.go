package rediscluster

import (
	"context"
	"testing"
)

// TestStart: the cluster has three masters, each with one replica, that
// together serve all 16384 slots, and a cluster client writes to it.
func TestStart(t *testing.T) {
	c := Start(t, nil)
	ctx := context.Background()
	shards, err := c.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) != 3 {
		t.Fatalf("%d masters, want 3: %+v", len(shards), shards)
	}
	covered := 0
	seen := map[*Node]bool{}
	for _, s := range shards {
		if len(s.Replicas) != 1 {
			t.Errorf("master %s has %d replicas, want 1", s.Master.Addr, len(s.Replicas))
		}
		for _, n := range append([]*Node{s.Master}, s.Replicas...) {
			if seen[n] {
				t.Errorf("node %s appears twice", n.Addr)
			}
			seen[n] = true
		}
		for _, r := range s.Slots {
			covered += r.End - r.Start + 1
		}
		if role, err := s.Master.Role(ctx); err != nil || role != "master" {
			t.Errorf("master %s: role %q, %v", s.Master.Addr, role, err)
		}
	}
	if covered != 16384 {
		t.Errorf("masters cover %d slots, want 16384", covered)
	}
	cc := c.Client()
	for _, k := range []string{"{a}x", "{b}x", "{c}x", "{d}x"} {
		if err := cc.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
		if v, err := cc.Get(ctx, k).Result(); err != nil || v != "v" {
			t.Fatalf("GET %s: %q, %v", k, v, err)
		}
	}
}
