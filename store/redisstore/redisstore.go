package redisstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/batch"
)

// ErrNotDurable: a write took effect on the Redis primary, but the
// acknowledgement Config asks for (WAIT, WAITAOF) did not come: the change
// may be lost if the primary fails before it reaches a replica or its
// append-only file. The method returns its usual result beside the error.
var ErrNotDurable = errors.New("redisstore: write not confirmed durable")

// DefaultPrefix begins every key of a store whose Config.Prefix is empty.
const DefaultPrefix = "idem"

// DefaultWaitTimeout bounds WAIT and WAITAOF when waiting is on and
// Config.WaitTimeout is zero.
const DefaultWaitTimeout = time.Second

// Config configures a Store. A nil *Config means defaults.
type Config struct {
	// Prefix begins every key the store writes, so several ledgers (or a
	// ledger and other data) can share a server. Default "idem". It must not
	// contain '{' or '}' (they would move the cluster hash tag).
	Prefix string

	// WaitReplicas, when positive, makes every write wait (WAIT) until that
	// many replicas acknowledged it, for at most WaitTimeout; when fewer do,
	// the method returns an error wrapping ErrNotDurable. On a cluster
	// client they are the replicas of the master of the write's slot; set
	// it to the replicas each master has, so any replica a failover
	// promotes holds every acknowledged write.
	WaitReplicas int

	// WaitAOF makes every write wait (WAITAOF 1 WaitReplicas) until the
	// primary, and WaitReplicas replicas, fsynced it to their append-only
	// file. It needs Redis 7.2 or later with appendonly yes; Open fails on
	// an older server with an error wrapping idem.ErrNotImplemented.
	WaitAOF bool

	// WaitTimeout bounds each wait. Default DefaultWaitTimeout when
	// WaitReplicas or WaitAOF asks for a wait. Set on its own (with
	// WaitReplicas 0), it sends WAIT 0, which confirms nothing: it only
	// exercises the path.
	WaitTimeout time.Duration
}

// Store is an idem.Store, idem.Lister and idem.Sizer on Redis. It is safe
// for concurrent use. See the package doc for the layout and durability.
// It is no idem.StateSizer: counting by state would mean reading every
// record (see the package doc).
type Store struct {
	client redis.UniversalClient
	owned  bool                              // Close closes the client
	shard  *layout                           // the keys of each shard, made once
	batch  [shards]batch.Batcher[*pendingOp] // see batch.go
	// noBatch runs every Begin and Complete in a script of its own (for
	// benchmarks that compare).
	noBatch bool
	wait    bool
	// cluster is the client when it is a cluster client: with a wait, each
	// write and its wait go to the master of the write's slot, and a failed
	// call makes it reload its map of the slots (see redisErr).
	cluster *redis.ClusterClient
	cfg     Config
	closed  atomic.Bool
}

var (
	_ idem.Store  = (*Store)(nil)
	_ idem.Lister = (*Store)(nil)
	_ idem.Sizer  = (*Store)(nil)

	_ idem.Describer = (*Store)(nil)
)

// New returns a Store on client, which the caller keeps and closes: a
// *redis.Client, a Sentinel failover client or a *redis.ClusterClient.
// Writes are acknowledged as Redis acknowledges them unless cfg asks for
// WAIT or WAITAOF; on a cluster client the wait goes, with the write, to
// the master that serves the write's slot (not on a *redis.Ring).
func New(client redis.UniversalClient, cfg *Config) (*Store, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: redisstore.New: client is nil", idem.ErrInvalid)
	}
	s := &Store{client: client}
	if cfg != nil {
		s.cfg = *cfg
	}
	c := &s.cfg
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	switch {
	case strings.ContainsAny(c.Prefix, "{}"):
		return nil, fmt.Errorf("%w: redisstore: Config.Prefix %q contains a brace; braces would move the cluster hash tag, choose a prefix without them", idem.ErrInvalid, c.Prefix)
	case c.WaitReplicas < 0:
		return nil, fmt.Errorf("%w: redisstore: Config.WaitReplicas is %d; use 0 (no replicas to wait for) or more", idem.ErrInvalid, c.WaitReplicas)
	case c.WaitTimeout < 0:
		return nil, fmt.Errorf("%w: redisstore: Config.WaitTimeout is %s; use 0 (the default, %s) or more", idem.ErrInvalid, c.WaitTimeout, DefaultWaitTimeout)
	}
	s.shard = makeLayout(c.Prefix)
	run := s.runBatch // one method value for every shard
	for i := range s.batch {
		s.batch[i] = batch.Batcher[*pendingOp]{Run: run, MaxBatch: maxBatch, MaxInFlight: maxInFlight}
	}
	s.cluster, _ = client.(*redis.ClusterClient)
	s.wait = c.WaitReplicas > 0 || c.WaitAOF || c.WaitTimeout > 0
	if s.wait && c.WaitTimeout == 0 {
		c.WaitTimeout = DefaultWaitTimeout
	}
	if s.wait {
		var rt time.Duration
		switch cl := client.(type) {
		case *redis.Client:
			rt = cl.Options().ReadTimeout
		case *redis.ClusterClient:
			rt = cl.Options().ReadTimeout
		case *redis.Ring:
			return nil, fmt.Errorf("%w: redisstore: WaitReplicas, WaitAOF and WaitTimeout need the wait on the write's own connection, which a *redis.Ring does not promise; use a client per primary, a cluster client, or drop the wait", idem.ErrInvalid)
		}
		if rt > 0 && c.WaitTimeout >= rt {
			return nil, fmt.Errorf("%w: redisstore: Config.WaitTimeout %s is not below the client's ReadTimeout %s: the client would give up on WAIT first; lower the one or raise the other", idem.ErrInvalid, c.WaitTimeout, rt)
		}
	}
	return s, nil
}

// Open connects to the Redis server at url (redis://, rediss:// or unix://,
// as redis.ParseURL reads them), checks that it answers, and returns a Store
// that owns the client: Close closes it. With cfg.WaitAOF it also checks
// that the server has WAITAOF.
func Open(ctx context.Context, url string, cfg *Config) (*Store, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("%w: redisstore: %v", idem.ErrInvalid, err)
	}
	client := redis.NewClient(opts)
	s, err := New(client, cfg)
	if err != nil {
		client.Close()
		return nil, err
	}
	s.owned = true
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("redisstore: connect to %s: %w: %w", opts.Addr, idem.ErrUnavailable, err)
	}
	if s.cfg.WaitAOF {
		if err := client.WaitAOF(ctx, 0, 0, 0).Err(); err != nil {
			client.Close()
			return nil, waitAOFError(err)
		}
	}
	return s, nil
}

func waitAOFError(err error) error {
	if strings.Contains(strings.ToLower(err.Error()), "unknown command") {
		return fmt.Errorf("%w: redisstore: Config.WaitAOF needs the WAITAOF command (Redis 7.2 or later); the server answered: %v", idem.ErrNotImplemented, err)
	}
	return fmt.Errorf("redisstore: WAITAOF: %w", err)
}

// Close implements idem.Store: later calls fail with idem.ErrClosed. It
// closes the client only when Open made it.
func (s *Store) Close() error {
	if s.closed.Swap(true) || !s.owned {
		return nil
	}
	return s.client.Close()
}

// check fails once the store is closed.
func (s *Store) check() error {
	if s.closed.Load() {
		return idem.ErrClosed
	}
	return nil
}

// redisErr wraps an error of the client with what the store was doing.
// A node that refused the slot (MOVED, ASK, CLUSTERDOWN, TRYAGAIN: the
// command did not run, the cluster is moving slots or failing over) counts
// as unavailable, like a connection that failed: the caller may try again.
func (s *Store) redisErr(op string, err error) error {
	switch {
	case errors.Is(err, redis.ErrClosed) || s.closed.Load():
		return fmt.Errorf("redisstore: %s: %w", op, idem.ErrClosed)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("redisstore: %s: %w", op, err)
	}
	s.reloadSlots(err)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("redisstore: %s: %w", op, err)
	}
	var redisErr redis.Error
	if errors.As(err, &redisErr) && !slotRefused(err) {
		return fmt.Errorf("redisstore: %s: redis: %w", op, err)
	}
	// Not an answer from Redis: the connection failed.
	return fmt.Errorf("redisstore: %s: %w: %w", op, idem.ErrUnavailable, err)
}

// run runs a script. Without waiting it is one EVALSHA (EVAL when the
// server lost the script: after a restart or SCRIPT FLUSH). With waiting
// the script and the wait go in one pipeline on one connection, and
// waitErr says whether the wait confirmed the write.
func (s *Store) run(ctx context.Context, script *redis.Script, keys []string, args ...any) (reply any, waitErr error, err error) {
	if !s.wait {
		reply, err = script.Run(ctx, s.client, keys, args...).Result()
		return reply, nil, err
	}
	var client interface {
		redis.Scripter
		Pipeline() redis.Pipeliner
	} = s.client
	if s.cluster != nil {
		// A cluster client would split the pipeline by node and send WAIT,
		// which names no key, to every master: the script and its wait go
		// to the master of the script's slot, on one of its connections.
		node, err := s.cluster.MasterForKey(ctx, keys[0])
		if err != nil {
			return nil, nil, err
		}
		client = node
	}
	for attempt := 0; ; attempt++ {
		pipe := client.Pipeline()
		evalCmd := script.EvalSha(ctx, pipe, keys, args...)
		waitCmd := s.queueWait(ctx, pipe)
		_, _ = pipe.Exec(ctx)
		reply, err = evalCmd.Result()
		if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") && attempt == 0 {
			// The script did not run: load it and send both again.
			if err := script.Load(ctx, client).Err(); err != nil {
				return nil, nil, err
			}
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		return reply, s.waitResult(waitCmd), nil
	}
}

// reloadSlots reacts, on a cluster client, to an error that is not a
// script's or a command's answer: the node did not answer (a killed
// master: go-redis follows MOVED by itself but, on a refused connection,
// keeps its map of the slots until ClusterOptions.ClusterStateReloadInterval,
// a minute by default), or it refused the slot (MOVED, ASK, CLUSTERDOWN,
// TRYAGAIN: a wait's write sent by the store to the master it named). The
// slots may have moved (a failover, a resharding), so the client reloads
// its map in the background, at most every 200ms, for the next calls. The
// error still goes to the caller, who may try again.
func (s *Store) reloadSlots(err error) {
	if s.cluster == nil {
		return
	}
	var rerr redis.Error
	if errors.As(err, &rerr) && !slotRefused(err) {
		return // an answer
	}
	s.cluster.ReloadState(context.Background())
}

// slotRefused reports whether err is a cluster node's refusal of a slot it
// does not serve now: the command did not run.
func slotRefused(err error) bool {
	for _, p := range []string{"MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// queueWait adds WAIT or WAITAOF to a pipeline, after the write it is to
// confirm: both go on the pipeline's one connection.
func (s *Store) queueWait(ctx context.Context, pipe redis.Pipeliner) *redis.Cmd {
	c := &s.cfg
	ms := c.WaitTimeout.Milliseconds()
	if c.WaitAOF {
		return pipe.Do(ctx, "WAITAOF", 1, c.WaitReplicas, ms)
	}
	return pipe.Do(ctx, "WAIT", c.WaitReplicas, ms)
}

// waitResult turns the answer of WAIT or WAITAOF into nil or an error
// wrapping ErrNotDurable.
func (s *Store) waitResult(cmd *redis.Cmd) error {
	c := &s.cfg
	if c.WaitAOF {
		acks, err := cmd.Int64Slice()
		if err != nil {
			return fmt.Errorf("%w: the write is on the primary, but %w", ErrNotDurable, waitAOFError(err))
		}
		if len(acks) != 2 || acks[0] < 1 || acks[1] < int64(c.WaitReplicas) {
			return fmt.Errorf("%w: the write is on the primary, but WAITAOF within %s confirmed %v (local, replicas) of (1, %d) append-only fsyncs; a crash may lose it",
				ErrNotDurable, c.WaitTimeout, acks, c.WaitReplicas)
		}
		return nil
	}
	n, err := cmd.Int64()
	if err != nil {
		return fmt.Errorf("%w: the write is on the primary, but WAIT failed: %v", ErrNotDurable, err)
	}
	if n < int64(c.WaitReplicas) {
		return fmt.Errorf("%w: the write is on the primary, but only %d of %d replicas acknowledged it within %s; a failover may lose it",
			ErrNotDurable, n, c.WaitReplicas, c.WaitTimeout)
	}
	return nil
}

// code reads the code a script replied with, and the rest of the reply.
func code(reply any) (string, []any, error) {
	arr, ok := reply.([]any)
	if !ok || len(arr) == 0 {
		return "", nil, fmt.Errorf("redisstore: unexpected script reply %T", reply)
	}
	c, ok := arr[0].(string)
	if !ok {
		return "", nil, fmt.Errorf("redisstore: unexpected script reply code %T", arr[0])
	}
	return c, arr[1:], nil
}

// ownerErr maps a failure code of an owner's operation to a sentinel.
func ownerErr(c string, token int64) error {
	switch c {
	case "gone":
		return fmt.Errorf("%w: no record for the key", idem.ErrLeaseLost)
	case "stale":
		return fmt.Errorf("%w: token %d is not current", idem.ErrLeaseLost, token)
	case "completed":
		return fmt.Errorf("%w: token %d", idem.ErrCompleted, token)
	case "released":
		return fmt.Errorf("%w: token %d was released", idem.ErrLeaseLost, token)
	case "corrupt":
		return corrupt("not a record of format %d", recordVersion)
	}
	return fmt.Errorf("redisstore: unexpected script reply code %q", c)
}

// timeAndRecord reads the server time (µs) and the record bytes a script
// replied with.
func timeAndRecord(rest []any) (time.Time, string, error) {
	if len(rest) != 2 {
		return time.Time{}, "", fmt.Errorf("redisstore: script reply of %d elements, want a time and a record", len(rest))
	}
	n, ok := rest[0].(int64)
	if !ok {
		return time.Time{}, "", fmt.Errorf("redisstore: script reply time %T", rest[0])
	}
	b, ok := rest[1].(string)
	if !ok {
		return time.Time{}, "", fmt.Errorf("redisstore: script reply record %T", rest[1])
	}
	return time.UnixMicro(n).UTC(), b, nil
}

// Begin implements idem.Store.
func (s *Store) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	k := s.shard.keys(p.Scope, p.Key)
	reply, waitErr, err := s.exec(ctx, k.shard, &pendingOp{script: beginScript, kind: 'b',
		keys: []string{k.record, k.index, k.token}, args: beginArgs(k, p)})
	if err != nil {
		return nil, s.redisErr("begin", err)
	}
	c, rest, err := code(reply)
	if err != nil {
		return nil, err
	}
	switch c {
	case "mismatch":
		return &idem.BeginResult{Decision: idem.Mismatch}, nil
	case "corrupt":
		return nil, fmt.Errorf("redisstore: begin: %w", ownerErr(c, 0))
	}
	now, b, err := timeAndRecord(rest)
	if err != nil {
		return nil, err
	}
	rec, err := decodeRecord(p.Scope, p.Key, b)
	if err != nil {
		return nil, err
	}
	res := &idem.BeginResult{Record: rec}
	switch c {
	case "replay":
		res.Decision = idem.Replay
	case "in_flight":
		res.Decision = idem.InFlight
		res.RetryAfter = rec.LeaseUntil.Sub(now)
	case "acquired", "takeover":
		res.Decision = idem.Acquired
		res.Takeover = c == "takeover"
		if waitErr != nil {
			return res, fmt.Errorf("redisstore: begin acquired token %d: %w", rec.Token, waitErr)
		}
	default:
		return nil, fmt.Errorf("redisstore: begin: unexpected script reply code %q", c)
	}
	return res, nil
}

// beginArgs are the ARGV of beginScript: the member, the fingerprint
// section and the three durations, in one buffer.
func beginArgs(k keys, p *idem.BeginParams) []any {
	b := make([]byte, 24, 24+4+len(p.Fingerprint))
	binary.LittleEndian.PutUint64(b, uint64(micros(p.Lease)))
	binary.LittleEndian.PutUint64(b[8:], uint64(micros(p.Window)))
	binary.LittleEndian.PutUint64(b[16:], uint64(micros(p.Retention)))
	b = appendSection(b, p.Fingerprint)
	return []any{k.member, b[24:], b[:24]}
}

// owner runs the script of an owner's operation; rest is the reply after
// the code.
func (s *Store) owner(ctx context.Context, op string, script *redis.Script, scope, key string, token int64, arg any) (rest []any, err error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	args := []any{tokenBytes(token), arg}
	if arg == nil {
		args = args[:1]
	}
	k := s.shard.keys(scope, key)
	keys := []string{k.record}
	var reply any
	var waitErr error
	if script == completeScript {
		reply, waitErr, err = s.exec(ctx, k.shard, &pendingOp{script: script, kind: 'c', keys: keys, args: args})
	} else {
		reply, waitErr, err = s.run(ctx, script, keys, args...)
	}
	if err != nil {
		return nil, s.redisErr(op, err)
	}
	c, rest, err := code(reply)
	if err != nil {
		return nil, err
	}
	if c != "ok" {
		return nil, fmt.Errorf("redisstore: %s: %w", op, ownerErr(c, token))
	}
	if waitErr != nil {
		return rest, fmt.Errorf("redisstore: %s: %w", op, waitErr)
	}
	return rest, nil
}

// Complete implements idem.Store.
func (s *Store) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	rest, err := s.owner(ctx, "complete", completeScript, p.Scope, p.Key, p.Token, outcomeSections(&p.Outcome))
	if rest == nil {
		return nil, err
	}
	head, _ := rest[0].(string)
	rec, r, derr := decodeHead(p.Scope, p.Key, head)
	if derr == nil && r.b != "" {
		derr = corrupt("complete replied %d bytes after the fingerprint", len(r.b))
	}
	if derr != nil {
		return nil, derr
	}
	rec.Outcome = &idem.Outcome{Data: append([]byte{}, p.Outcome.Data...)}
	if len(p.Outcome.Meta) > 0 {
		rec.Outcome.Meta = make(map[string]string, len(p.Outcome.Meta))
		for k, v := range p.Outcome.Meta {
			rec.Outcome.Meta[k] = v
		}
	}
	return rec, err
}

// Release implements idem.Store.
func (s *Store) Release(ctx context.Context, p *idem.ReleaseParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	_, err := s.owner(ctx, "release", releaseScript, p.Scope, p.Key, p.Token, nil)
	return err
}

// Extend implements idem.Store.
func (s *Store) Extend(ctx context.Context, p *idem.ExtendParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	rest, err := s.owner(ctx, "extend", extendScript, p.Scope, p.Key, p.Token, micros(p.Lease))
	if rest == nil {
		return nil, err
	}
	_, b, derr := timeAndRecord(rest)
	if derr != nil {
		return nil, derr
	}
	rec, derr := decodeRecord(p.Scope, p.Key, b)
	if derr != nil {
		return nil, derr
	}
	return rec, err
}

// Checkpoint implements idem.Store.
func (s *Store) Checkpoint(ctx context.Context, p *idem.CheckpointParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	_, err := s.owner(ctx, "checkpoint", checkpointScript, p.Scope, p.Key, p.Token, checkpointSections(p.Point, p.Data))
	return err
}

// Get implements idem.Store. A record past its RetainUntil may already be
// gone (Redis expired it) before Sweep runs.
func (s *Store) Get(ctx context.Context, p *idem.KeyParams) (*idem.Record, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	b, err := s.client.Get(ctx, s.shard.recordKey(p.Scope, p.Key)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%w: scope %q", idem.ErrNotFound, p.Scope)
	}
	if err != nil {
		return nil, s.redisErr("get", err)
	}
	return decodeRecord(p.Scope, p.Key, b)
}

// Delete implements idem.Store.
func (s *Store) Delete(ctx context.Context, p *idem.KeyParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if err := s.check(); err != nil {
		return err
	}
	k := s.shard.keys(p.Scope, p.Key)
	reply, waitErr, err := s.run(ctx, deleteScript, []string{k.record, k.index}, k.member)
	if err != nil {
		return s.redisErr("delete", err)
	}
	c, _, err := code(reply)
	switch {
	case err != nil:
		return err
	case c == "gone":
		return fmt.Errorf("%w: scope %q", idem.ErrNotFound, p.Scope)
	case waitErr != nil:
		return fmt.Errorf("redisstore: delete: %w", waitErr)
	}
	return nil
}

// sweepBatch is how many index entries one round of Sweep reads and
// checks: one ZRANGE, one EXISTS, and a script only when a record is gone.
const sweepBatch = 1000

// Sweep implements idem.Store. Redis removes records by itself at their
// RetainUntil (their key's expiry); Sweep removes the index entries of the
// records that are gone, so List and Size agree with what is stored, and
// counts them. It walks each shard's index in batches of 1000 entries: one
// EXISTS of a batch's records, and, when some are gone, one script that
// checks every record again and removes the entries of the gone ones. It
// reads every entry of the index: its cost grows with the records stored,
// not only with those that expired.
func (s *Store) Sweep(ctx context.Context, p *idem.SweepParams) (*idem.SweepResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	res := &idem.SweepResult{}
	var waitErr error
	for i := range shards {
		after := ""
		for {
			limit := 0
			if p.Limit > 0 {
				if limit = p.Limit - res.Deleted; limit == 0 {
					return res, waitErr
				}
			}
			n, last, werr, err := s.sweepShard(ctx, i, after, limit)
			res.Deleted += n
			if err != nil {
				return res, err
			}
			if werr != nil && waitErr == nil {
				waitErr = fmt.Errorf("redisstore: sweep: %w", werr)
			}
			if last == "" {
				break
			}
			after = last
		}
	}
	return res, waitErr
}

// sweepShard checks up to sweepBatch index entries of one shard after the
// member after ("": from the start) and removes at most limit (0: any
// number) of those whose record is gone. last is the last member it looked
// at, "" when the shard's index has no more.
func (s *Store) sweepShard(ctx context.Context, shard int, after string, limit int) (n int, last string, waitErr, err error) {
	idx := s.shard[shard].index
	min := "-"
	if after != "" {
		min = "(" + after
	}
	members, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{Key: idx, Start: min, Stop: "+", ByLex: true, Count: sweepBatch}).Result()
	if err != nil {
		return 0, "", nil, s.redisErr("sweep", err)
	}
	if len(members) == 0 {
		return 0, "", nil, nil
	}
	if len(members) == sweepBatch {
		last = members[len(members)-1] // the index may have more
	}
	keys := make([]string, 1, 1+len(members))
	keys[0] = idx
	for _, m := range members {
		rk, err := s.shard.recordKeyOfMember(shard, m)
		if err != nil {
			return 0, "", nil, err
		}
		keys = append(keys, rk)
	}
	// Usually every record of a batch is there: one plain EXISTS says so,
	// without sending the batch through Lua.
	live, err := s.client.Exists(ctx, keys[1:]...).Result()
	if err != nil {
		return 0, "", nil, s.redisErr("sweep", err)
	}
	if live == int64(len(members)) {
		return 0, last, nil, nil
	}
	args := make([]any, 1, 1+len(members))
	args[0] = limit
	for _, m := range members {
		args = append(args, m)
	}
	reply, waitErr, err := s.run(ctx, sweepScript, keys, args...)
	if err != nil {
		return 0, "", nil, s.redisErr("sweep", err)
	}
	arr, ok := reply.([]any)
	var removed, seen int64
	if ok && len(arr) == 2 {
		removed, ok = arr[0].(int64)
		if ok {
			seen, ok = arr[1].(int64)
		}
	}
	if !ok || seen < 0 || seen > int64(len(members)) {
		return 0, "", nil, fmt.Errorf("redisstore: sweep: unexpected script reply %v", reply)
	}
	if removed == 0 {
		waitErr = nil // nothing was written that needs confirming
	}
	if seen < int64(len(members)) {
		last = "" // the limit stopped it
	}
	return int(removed), last, waitErr, nil
}

// List implements idem.Lister: the records of a scope in key order, read
// from the scope's range of its shard's index; the cursor is the last key of
// the previous page. Entries whose record Redis expired are skipped and
// dropped from the index.
func (s *Store) List(ctx context.Context, p *idem.ListParams) (*idem.ListResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	sh := &s.shard[shardOf(p.Scope)]
	skip := len(escapeScope(p.Scope)) + 1 // the member's escaped scope and ':'
	res := &idem.ListResult{}
	cursor := p.Cursor
	batch := int64(p.Limit + 1)
	if p.State != "" {
		batch = max(batch, 100)
	}
	// Collect one more match than the limit, to know whether a next page
	// exists.
	var found []*idem.Record
	for len(found) <= p.Limit {
		min, max := scopeRange(p.Scope, cursor)
		members, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{Key: sh.index, Start: min, Stop: max, ByLex: true, Count: batch}).Result()
		if err != nil {
			return nil, s.redisErr("list", err)
		}
		if len(members) == 0 {
			break
		}
		keys := make([]string, len(members))
		pipe := s.client.Pipeline()
		cmds := make([]*redis.StringCmd, len(members))
		for i, m := range members {
			if len(m) <= skip {
				return nil, fmt.Errorf("redisstore: list: malformed index member %q", m)
			}
			keys[i] = m[skip:]
			cmds[i] = pipe.Get(ctx, sh.record(m))
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, s.redisErr("list", err)
		}
		var gone []string
		for i, key := range keys {
			b, err := cmds[i].Result()
			if errors.Is(err, redis.Nil) {
				gone = append(gone, key)
				continue
			}
			if err != nil {
				return nil, s.redisErr("list", err)
			}
			rec, err := decodeRecord(p.Scope, key, b)
			if err != nil {
				return nil, err
			}
			if p.State == "" || rec.State == p.State {
				found = append(found, rec)
				if len(found) > p.Limit {
					break
				}
			}
		}
		if err := s.drop(ctx, p.Scope, gone); err != nil {
			return nil, err
		}
		cursor = keys[len(keys)-1]
		if int64(len(keys)) < batch {
			break
		}
	}
	if len(found) > p.Limit {
		found = found[:p.Limit]
		res.NextCursor = found[len(found)-1].Key
	}
	res.Records = found
	return res, nil
}

// drop removes index entries whose record is gone, each checked again by a
// script so an entry a concurrent Begin has just renewed stays.
func (s *Store) drop(ctx context.Context, scope string, gone []string) error {
	if len(gone) == 0 {
		return nil
	}
	for attempt := 0; ; attempt++ {
		pipe := s.client.Pipeline()
		for _, key := range gone {
			k := s.shard.keys(scope, key)
			dropScript.EvalSha(ctx, pipe, []string{k.record, k.index}, k.member)
		}
		_, err := pipe.Exec(ctx)
		if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") && attempt == 0 {
			// The server lost the script: load it and try again.
			if err := dropScript.Load(ctx, s.client).Err(); err != nil {
				return s.redisErr("list", err)
			}
			continue
		}
		if err != nil {
			return s.redisErr("list", err)
		}
		return nil
	}
}

// Size implements idem.Sizer: the entries of the shards' indexes, one per
// record. A record Redis has expired counts until Sweep (or a List that
// met it) removes its entry, so Size is exact on a swept store.
func (s *Store) Size(ctx context.Context) (int64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.IntCmd, shards)
	for i := range shards {
		cmds[i] = pipe.ZCard(ctx, s.shard[i].index)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, s.redisErr("size", err)
	}
	var n int64
	for _, c := range cmds {
		n += c.Val()
	}
	return n, nil
}
