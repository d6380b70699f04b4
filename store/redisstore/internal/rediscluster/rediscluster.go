// Package rediscluster starts a Redis Cluster on loopback for tests: three
// masters and one replica each, run from the installed redis-server and
// joined with redis-cli --cluster create. Every node gets free ports found
// at run time and a temporary directory of its own; t.Cleanup kills the
// processes and removes the directories.
//
// Like the tests of internal/servicetest, a test that cannot start the
// cluster (redis-server or redis-cli not installed) skips, or fails under
// IDEM_REQUIRE_SERVICES=1.
package rediscluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/internal/servicetest"
)

// Options configure a cluster. A nil *Options means defaults.
type Options struct {
	// NodeTimeout is cluster-node-timeout: how long a master may not answer
	// before the others mark it failed and its replica takes over. Default
	// 1s.
	NodeTimeout time.Duration

	// AppendOnly turns on the append-only file (appendfsync everysec) on
	// every node. Default off: no persistence at all (save "").
	AppendOnly bool
}

// Ready is how long Start and the waits of a Cluster allow for the cluster
// to settle (nodes answering, every slot covered, replicas in sync).
const Ready = 60 * time.Second

// Node is one redis-server of the cluster.
type Node struct {
	Addr string // 127.0.0.1:PORT
	Port int
	Dir  string // its working directory (nodes.conf, logs, AOF)

	c    *Cluster
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has ended
	err  error         // cmd.Wait's answer, once done is closed
}

// Cluster is a running Redis Cluster of six nodes.
type Cluster struct {
	Nodes []*Node
	t     testing.TB
	opts  Options
}

// Start starts a cluster of three masters with one replica each, waits
// until every node says cluster_state:ok with all 16384 slots covered and
// every replica is in sync, and registers its teardown with t.Cleanup.
func Start(t testing.TB, opts *Options) *Cluster {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			if servicetest.Required() {
				t.Fatalf("Redis Cluster: %s is not installed (%v) and IDEM_REQUIRE_SERVICES=1", bin, err)
			}
			t.Skipf("Redis Cluster: %s is not installed (%v); CI requires it", bin, err)
		}
	}
	c := &Cluster{t: t}
	if opts != nil {
		c.opts = *opts
	}
	if c.opts.NodeTimeout <= 0 {
		c.opts.NodeTimeout = time.Second
	}
	root := t.TempDir()                                       // removed after the processes are killed (cleanups run last in, first out)
	for i, port := range servicetest.FreePorts(t, 6, 10000) { // the bus port is port+10000
		n := &Node{Addr: "127.0.0.1:" + strconv.Itoa(port), Port: port, Dir: filepath.Join(root, fmt.Sprintf("node%d", i)), c: c}
		if err := os.Mkdir(n.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	t.Cleanup(c.stop)
	for _, n := range c.Nodes {
		n.Start()
	}
	c.Poll("every node answering PING", func(ctx context.Context) error {
		for _, n := range c.Nodes {
			if err := n.exited(); err != nil {
				t.Fatalf("Redis Cluster: %v", err)
			}
			if err := n.Do(ctx, "PING"); err != nil {
				return fmt.Errorf("%w\n%s", err, n.logTail())
			}
		}
		return nil
	})
	args := []string{"--cluster", "create"}
	for _, n := range c.Nodes {
		args = append(args, n.Addr)
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	c.WaitHealthy()
	return c
}

// Start starts the node's redis-server (again, after Kill: it rejoins
// the cluster from its nodes.conf).
func (n *Node) Start() {
	t := n.c.t
	t.Helper()
	args := []string{
		"--bind", "127.0.0.1", "--port", strconv.Itoa(n.Port), "--protected-mode", "no",
		"--dir", n.Dir, "--logfile", "redis.log", "--daemonize", "no", "--save", "",
		"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", strconv.FormatInt(n.c.opts.NodeTimeout.Milliseconds(), 10),
		// The masters that still answer keep serving their slots while one
		// is down.
		"--cluster-require-full-coverage", "no",
	}
	if n.c.opts.AppendOnly {
		args = append(args, "--appendonly", "yes", "--appendfsync", "everysec")
	} else {
		args = append(args, "--appendonly", "no")
	}
	cmd := exec.Command("redis-server", args...)
	cmd.Dir = n.Dir
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server on %s: %v", n.Addr, err)
	}
	done := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.done = cmd, done
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.err = err
		n.mu.Unlock()
		close(done)
	}()
}

// exited returns an error with the end of the node's log if its process
// was started and has ended without Kill.
func (n *Node) exited() error {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		n.mu.Lock()
		err := n.err
		n.mu.Unlock()
		return fmt.Errorf("redis-server on %s ended: %v\n%s", n.Addr, err, n.logTail())
	default:
		return nil
	}
}

// logTail returns the last lines of the node's redis.log, for messages.
func (n *Node) logTail() string {
	b, err := os.ReadFile(filepath.Join(n.Dir, "redis.log"))
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return n.Addr + " redis.log:\n  " + strings.Join(lines, "\n  ")
}

// Kill sends SIGKILL to the node's process and waits for it to end.
func (n *Node) Kill() {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.cmd, n.done = nil, nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Signal sends sig to the node's process: SIGSTOP and SIGCONT pause and
// resume it (a node that does not answer, without dying).
func (n *Node) Signal(sig os.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("node %s is not running", n.Addr)
	}
	return n.cmd.Process.Signal(sig)
}

// Running reports whether the node's process was started and not killed.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// stop kills every node; t.TempDir removes the directories afterwards.
func (c *Cluster) stop() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// Addrs are the addresses of the nodes, for redis.ClusterOptions.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr
	}
	return addrs
}

// Client returns a cluster client on the cluster, closed by t.Cleanup.
func (c *Cluster) Client() *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	c.t.Cleanup(func() { cc.Close() })
	return cc
}

// client is a plain client on the node alone, without retries, for a
// command or two: the caller closes it.
func (n *Node) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: n.Addr, MaxRetries: -1, DialTimeout: time.Second})
}

// Do sends one command to the node on a connection of its own.
func (n *Node) Do(ctx context.Context, args ...any) error {
	cl := n.client()
	defer cl.Close()
	return cl.Do(ctx, args...).Err()
}

// Info returns the fields of a section of INFO (or CLUSTER INFO, with
// section "cluster info") of the node.
func (n *Node) Info(ctx context.Context, section string) (map[string]string, error) {
	cl := n.client()
	defer cl.Close()
	var text string
	var err error
	if section == "cluster info" {
		text, err = cl.ClusterInfo(ctx).Result()
	} else {
		text, err = cl.Info(ctx, section).Result()
	}
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
			m[k] = v
		}
	}
	return m, nil
}

// SlotRange is a range of hash slots, both ends included.
type SlotRange struct{ Start, End int }

// Shard is a master and the slot ranges it serves, as CLUSTER SHARDS of a
// running node reports them.
type Shard struct {
	Master   *Node
	Replicas []*Node
	Slots    []SlotRange
}

// Owns reports whether slot is in one of the shard's ranges.
func (s Shard) Owns(slot int) bool {
	for _, r := range s.Slots {
		if slot >= r.Start && slot <= r.End {
			return true
		}
	}
	return false
}

// Shards asks a running node (CLUSTER NODES) for the cluster's masters
// that serve slots, their slot ranges and their replicas not marked failed.
func (c *Cluster) Shards(ctx context.Context) ([]Shard, error) {
	var lastErr error
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		cl := n.client()
		text, err := cl.ClusterNodes(ctx).Result()
		cl.Close()
		if err != nil {
			lastErr = err
			continue
		}
		return c.parseNodes(text)
	}
	return nil, fmt.Errorf("no running node answered CLUSTER NODES: %v", lastErr)
}

// parseNodes reads the reply of CLUSTER NODES: id, address@bus, flags,
// master id, ping, pong, epoch, link state, then the slots.
func (c *Cluster) parseNodes(text string) ([]Shard, error) {
	byID := map[string]*Shard{}
	var order []string
	type replica struct{ master, addr string }
	var replicas []replica
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return nil, fmt.Errorf("CLUSTER NODES line %q", line)
		}
		addr, _, _ := strings.Cut(f[1], "@")
		flags := "," + f[2] + ","
		if strings.Contains(flags, ",fail,") || strings.Contains(flags, ",noaddr,") {
			continue
		}
		if strings.Contains(flags, ",slave,") {
			replicas = append(replicas, replica{f[3], addr})
			continue
		}
		if len(f) == 8 {
			continue // a master without slots
		}
		node := c.node(addr)
		if node == nil {
			return nil, fmt.Errorf("CLUSTER NODES names %s, not a node of the cluster", addr)
		}
		sh := &Shard{Master: node}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // a slot being migrated
			}
			lo, hi, isRange := strings.Cut(r, "-")
			if !isRange {
				hi = lo
			}
			start, err1 := strconv.Atoi(lo)
			end, err2 := strconv.Atoi(hi)
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("CLUSTER NODES slots %q", r)
			}
			sh.Slots = append(sh.Slots, SlotRange{start, end})
		}
		byID[f[0]] = sh
		order = append(order, f[0])
	}
	for _, r := range replicas {
		if sh := byID[r.master]; sh != nil {
			if n := c.node(r.addr); n != nil {
				sh.Replicas = append(sh.Replicas, n)
			}
		}
	}
	out := make([]Shard, len(order))
	for i, id := range order {
		out[i] = *byID[id]
	}
	return out, nil
}

func (c *Cluster) node(addr string) *Node {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// WaitHealthy waits until every running node reports cluster_state:ok with
// all 16384 slots assigned and ok, and every running replica's link to its
// master is up; it fails the test after Ready.
func (c *Cluster) WaitHealthy() {
	c.t.Helper()
	c.Poll("cluster_state:ok, 16384 slots ok, replicas in sync", func(ctx context.Context) error {
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			ci, err := n.Info(ctx, "cluster info")
			if err != nil {
				return err
			}
			if ci["cluster_state"] != "ok" || ci["cluster_slots_assigned"] != "16384" || ci["cluster_slots_ok"] != "16384" {
				return fmt.Errorf("%s: cluster_state %s, slots assigned %s, ok %s", n.Addr, ci["cluster_state"], ci["cluster_slots_assigned"], ci["cluster_slots_ok"])
			}
			repl, err := n.Info(ctx, "replication")
			if err != nil {
				return err
			}
			switch repl["role"] {
			case "slave":
				if repl["master_link_status"] != "up" {
					return fmt.Errorf("%s: replica link %s", n.Addr, repl["master_link_status"])
				}
			case "master":
				// A node that has not yet become a replica is a master
				// without slots.
				if ci["cluster_size"] == "" {
					return fmt.Errorf("%s: no cluster_size", n.Addr)
				}
				if slots, err := n.ownSlots(ctx); err != nil || !slots {
					return fmt.Errorf("%s: a master without slots (%v)", n.Addr, err)
				}
			}
		}
		return nil
	})
}

// ownSlots reports whether the node's own line of CLUSTER NODES lists
// slots.
func (n *Node) ownSlots(ctx context.Context) (bool, error) {
	cl := n.client()
	defer cl.Close()
	text, err := cl.ClusterNodes(ctx).Result()
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && strings.Contains(f[2], "myself") {
			return len(f) > 8, nil
		}
	}
	return false, fmt.Errorf("no myself line in CLUSTER NODES")
}

// Role returns the node's role as INFO replication reports it: "master" or
// "slave".
func (n *Node) Role(ctx context.Context) (string, error) {
	repl, err := n.Info(ctx, "replication")
	if err != nil {
		return "", err
	}
	return repl["role"], nil
}

// Poll calls check until it returns nil, every 20ms, and fails the test
// with its last error after Ready.
func (c *Cluster) Poll(what string, check func(ctx context.Context) error) {
	c.t.Helper()
	deadline := time.Now().Add(Ready)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := check(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("Redis Cluster: waited %s for %s: %v", Ready, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
