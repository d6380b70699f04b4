// Package pgcluster starts a PostgreSQL primary and a streaming standby of
// its own on loopback, from the installed server binaries, for the
// failover tests: initdb in a temporary directory, pg_basebackup -R for
// the standby, two free ports, and a teardown that stops both and removes
// the directory. The shared test server (servicetest.Postgres) is left
// alone. It is test support, with no use in production.
//
// The binaries are those of IDEM_PG_BIN (a directory holding initdb,
// pg_ctl, pg_basebackup and postgres), else of the newest
// /usr/lib/postgresql/*/bin, else of PATH. Without them Start skips the
// test, or fails it under IDEM_REQUIRE_SERVICES=1. PostgreSQL refuses to
// run as root: when the test runs as root, every binary runs as the
// postgres user (runuser -u postgres), which then owns the directory.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/servicetest"
	"github.com/jackc/pgx/v5"
)

// BinEnv names the directory of the PostgreSQL binaries, over the search.
const BinEnv = "IDEM_PG_BIN"

// Config says which cluster to make. A nil *Config is a synchronous one.
type Config struct {
	// Async makes the standby asynchronous: synchronous_standby_names is
	// empty, so a commit is acknowledged once the primary has flushed it,
	// before the standby has it. Default: synchronous
	// (synchronous_standby_names = '*', synchronous_commit = on), so a
	// commit is acknowledged only once the standby has flushed it too.
	Async bool
}

// Node is one server of a cluster.
type Node struct {
	Name string // "node1", "node2": its log is ROOT/NAME.log
	Port int
	Dir  string // the data directory

	killed bool
	// killedPID is the postmaster KillPrimary killed.
	killedPID int
}

// Cluster is a primary and a standby streaming from it.
type Cluster struct {
	Primary, Standby *Node
	// Sync says whether the standby is synchronous.
	Sync bool

	t     testing.TB
	bin   string
	owner *user.User // nil: the binaries run as the test's user
	root  string
}

// Start makes and starts a cluster, waits until the standby streams (and,
// when synchronous, is the synchronous one), and registers its teardown
// with t. The database is "postgres", the user "postgres", with trust
// authentication on loopback only.
func Start(t testing.TB, cfg *Config) *Cluster {
	t.Helper()
	if cfg == nil {
		cfg = &Config{}
	}
	bin, err := findBin()
	if err != nil {
		if servicetest.Required() {
			t.Fatalf("pgcluster: %v and IDEM_REQUIRE_SERVICES=1", err)
		}
		t.Skipf("pgcluster: %v; set %s or install the PostgreSQL server", err, BinEnv)
	}
	c := &Cluster{t: t, bin: bin, Sync: !cfg.Async}
	if os.Geteuid() == 0 {
		if c.owner, err = user.Lookup("postgres"); err != nil {
			t.Fatalf("pgcluster: running as root, PostgreSQL needs another user: %v", err)
		}
	}
	if c.root, err = os.MkdirTemp("", "idem-pgcluster-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.teardown)
	if c.owner != nil {
		uid, _ := strconv.Atoi(c.owner.Uid)
		gid, _ := strconv.Atoi(c.owner.Gid)
		if err := os.Chown(c.root, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	ports := servicetest.FreePorts(t, 2, 0)
	c.Primary = &Node{Name: "node1", Port: ports[0], Dir: filepath.Join(c.root, "node1")}
	c.Standby = &Node{Name: "node2", Port: ports[1], Dir: filepath.Join(c.root, "node2")}

	c.run("initdb", "-D", c.Primary.Dir, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	names := "''"
	if c.Sync {
		names = "'*'"
	}
	c.appendConf(c.Primary, fmt.Sprintf(`
listen_addresses = '127.0.0.1'
unix_socket_directories = '%s'
wal_level = replica
max_wal_senders = 4
hot_standby = on
synchronous_commit = on
synchronous_standby_names = %s
shared_buffers = 32MB
max_connections = 60
`, c.root, names))
	c.startNode(c.Primary)
	c.run("pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(c.Primary.Port), "-U", "postgres",
		"-D", c.Standby.Dir, "-R", "-X", "stream", "-c", "fast", "--no-sync")
	// The standby's own synchronous_standby_names is the one its
	// promotion brings into force: a promoted standby has no standby of its
	// own, and with the primary's '*' every commit on it would wait for
	// one forever. Empty, it commits alone, as a failover manager's
	// non-strict synchronous mode does until a new standby attaches.
	c.appendConf(c.Standby, "cluster_name = 'idem_standby'\nsynchronous_standby_names = ''\n")
	c.startNode(c.Standby)
	c.waitStreaming()
	return c
}

// URL returns the multi-host URL of database db on both nodes, primary
// first, with target_session_attrs=read-write: a connection goes to
// whichever node accepts writes. extra, when not empty, is appended to the
// query (like "pool_max_conns=8").
func (c *Cluster) URL(db, extra string) string {
	u := fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write&connect_timeout=2",
		c.Primary.Port, c.Standby.Port, db)
	if extra != "" {
		u += "&" + extra
	}
	return u
}

// NodeURL returns the URL of database db on node n alone.
func (c *Cluster) NodeURL(n *Node, db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable&connect_timeout=2", n.Port, db)
}

// KillPrimary stops the primary as a crash of its machine would: SIGKILL
// to the postmaster and to every process it started, at once, with no
// shutdown checkpoint. (Killed alone, a postmaster leaves its backends
// running until they notice; with an asynchronous standby they go on
// acknowledging commits for a moment, which a machine crash does not.)
func (c *Cluster) KillPrimary() error {
	pid, err := postmasterPID(c.Primary.Dir)
	if err != nil {
		return err
	}
	// Frozen, the postmaster starts no process while its children are
	// listed and killed.
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return err
	}
	children, err := childrenOf(pid)
	for _, child := range children {
		_ = syscall.Kill(child, syscall.SIGKILL)
	}
	c.Primary.killed = true
	c.Primary.killedPID = pid
	return errors.Join(err, syscall.Kill(pid, syscall.SIGKILL))
}

// clearKilled waits until the killed postmaster of n is dead (gone, or a
// zombie nobody reaps: in a container the process that inherits it may
// never wait for it), then removes the lock file of its socket, which a
// new postmaster on the port would otherwise take for a live one's.
func (c *Cluster) clearKilled(n *Node) error {
	for deadline := time.Now().Add(30 * time.Second); ; {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n.killedPID))
		if err != nil {
			break // gone
		}
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 {
			if f := strings.Fields(string(stat[i+1:])); len(f) > 0 && (f[0] == "Z" || f[0] == "X") {
				break // dead, not reaped
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgcluster: the killed postmaster %d of %s is still running", n.killedPID, n.Name)
		}
		<-time.After(10 * time.Millisecond)
	}
	lock := filepath.Join(c.root, fmt.Sprintf(".s.PGSQL.%d.lock", n.Port))
	if err := c.command("rm", "-f", lock, strings.TrimSuffix(lock, ".lock")).Run(); err != nil {
		return fmt.Errorf("pgcluster: remove %s: %w", lock, err)
	}
	return nil
}

// childrenOf lists the processes whose parent is pid, from /proc.
func childrenOf(pid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var children []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			children = append(children, child)
		}
	}
	return children, nil
}

// Promote makes the standby the primary (pg_ctl promote, which waits until
// the standby accepts writes).
func (c *Cluster) Promote() error {
	_, err := c.exec("pg_ctl", "promote", "-w", "-t", "60", "-D", c.Standby.Dir)
	return err
}

// Rejoin rebuilds the killed primary's node as a standby of the promoted
// one, on the same port (pg_basebackup -R into an emptied directory, as an
// operator rebuilds a failed node), and swaps the roles: Primary is the
// promoted node, Standby the rebuilt one. With a synchronous cluster the
// new primary's synchronous_standby_names is set to '*' again (ALTER
// SYSTEM and a reload) once the standby streams, so that the next kill
// loses nothing either. Load may run meanwhile.
func (c *Cluster) Rejoin() error {
	old, promoted := c.Primary, c.Standby
	if !old.killed {
		return errors.New("pgcluster: Rejoin before KillPrimary")
	}
	if err := c.clearKilled(old); err != nil {
		return err
	}
	if out, err := c.command("rm", "-rf", old.Dir).CombinedOutput(); err != nil {
		return fmt.Errorf("pgcluster: empty %s: %v: %s", old.Dir, err, out)
	}
	if out, err := c.exec("pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(promoted.Port), "-U", "postgres",
		"-D", old.Dir, "-R", "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		return fmt.Errorf("pgcluster: pg_basebackup from the promoted node: %v: %s", err, out)
	}
	// The copy carries the promoted node's settings, ALTER SYSTEM's
	// included: as a standby it must again have none of its own.
	if err := c.appendFile(filepath.Join(old.Dir, "postgresql.auto.conf"), "synchronous_standby_names = ''\n"); err != nil {
		return err
	}
	old.killed = false
	if err := c.start(old); err != nil {
		return err
	}
	c.Primary, c.Standby = promoted, old
	if c.Sync {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, c.NodeURL(c.Primary, "postgres"))
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, `ALTER SYSTEM SET synchronous_standby_names = '*'`); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, `SELECT pg_reload_conf()`); err != nil {
			return err
		}
	}
	c.waitStreaming()
	return nil
}

// WaitCaughtUp waits until the standby has replayed everything the
// primary has written so far.
func (c *Cluster) WaitCaughtUp(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, c.NodeURL(c.Primary, "postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var lsn string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return err
	}
	for {
		var ok bool
		err := conn.QueryRow(ctx, `SELECT coalesce(bool_and(replay_lsn >= $1::pg_lsn), false) FROM pg_stat_replication`, lsn).Scan(&ok)
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitStreaming waits until the primary sees the standby streaming, as
// its synchronous standby when c.Sync.
func (c *Cluster) waitStreaming() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.NodeURL(c.Primary, "postgres"))
	if err != nil {
		c.t.Fatalf("pgcluster: connect to the primary: %v", err)
	}
	defer conn.Close(context.Background())
	want := "async"
	if c.Sync {
		want = "sync"
	}
	for {
		var state, sync string
		err := conn.QueryRow(ctx, `SELECT state, sync_state FROM pg_stat_replication LIMIT 1`).Scan(&state, &sync)
		if err == nil && state == "streaming" && sync == want {
			return
		}
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			c.t.Fatalf("pgcluster: pg_stat_replication: %v", err)
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("pgcluster: the standby did not stream as %s within 60s (last: %q %q)\n%s", want, state, sync, c.logs())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (c *Cluster) startNode(n *Node) {
	c.t.Helper()
	if err := c.start(n); err != nil {
		c.t.Fatalf("%v\n%s", err, c.logs())
	}
}

// start starts node n's server on its port and waits until it accepts
// connections; its log is ROOT/NAME.log.
func (c *Cluster) start(n *Node) error {
	out, err := c.exec("pg_ctl", "start", "-w", "-t", "60", "-D", n.Dir, "-l", filepath.Join(c.root, n.Name+".log"),
		"-o", fmt.Sprintf("-p %d", n.Port))
	if err != nil {
		return fmt.Errorf("pgcluster: start %s: %v: %s", n.Name, err, out)
	}
	return nil
}

// appendConf adds lines to a node's postgresql.conf.
func (c *Cluster) appendConf(n *Node, lines string) {
	c.t.Helper()
	if err := c.appendFile(filepath.Join(n.Dir, "postgresql.conf"), lines); err != nil {
		c.t.Fatal(err)
	}
}

// appendFile appends text to a file of a data directory, as the user the
// directory belongs to.
func (c *Cluster) appendFile(path, text string) error {
	cmd := c.command("sh", "-c", `cat >> "$1"`, "sh", path)
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgcluster: append to %s: %v: %s", path, err, out)
	}
	return nil
}

// run runs a PostgreSQL binary and fails the test when it fails.
func (c *Cluster) run(name string, args ...string) {
	c.t.Helper()
	if out, err := c.exec(name, args...); err != nil {
		c.t.Fatalf("pgcluster: %s %s: %v\n%s\n%s", name, strings.Join(args, " "), err, out, c.logs())
	}
}

func (c *Cluster) exec(name string, args ...string) ([]byte, error) {
	return c.command(filepath.Join(c.bin, name), args...).CombinedOutput()
}

// command runs as the postgres user when the test runs as root.
func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	if c.owner != nil {
		return exec.Command("runuser", append([]string{"-u", c.owner.Username, "--", name}, args...)...)
	}
	return exec.Command(name, args...)
}

// logs returns the servers' logs, for a failure message.
func (c *Cluster) logs() string {
	var b bytes.Buffer
	for _, name := range []string{"node1", "node2"} {
		if data, err := os.ReadFile(filepath.Join(c.root, name+".log")); err == nil {
			fmt.Fprintf(&b, "--- %s.log\n%s", name, data)
		}
	}
	return b.String()
}

// teardown stops both servers (immediately: nothing of theirs is kept),
// kills what is left of them, and removes the directory.
func (c *Cluster) teardown() {
	for _, n := range []*Node{c.Primary, c.Standby} {
		if n == nil || n.killed {
			continue
		}
		if _, err := os.Stat(filepath.Join(n.Dir, "postmaster.pid")); err != nil {
			continue
		}
		if pid, err := postmasterPID(n.Dir); err == nil && syscall.Kill(pid, 0) == nil {
			if out, err := c.exec("pg_ctl", "stop", "-m", "immediate", "-w", "-t", "30", "-D", n.Dir); err != nil {
				c.t.Logf("pgcluster: stop %s: %v\n%s", n.Name, err, out)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if c.t.Failed() {
		c.t.Logf("pgcluster: server logs\n%s", c.logs())
	}
	if err := os.RemoveAll(c.root); err != nil {
		c.t.Logf("pgcluster: remove %s: %v", c.root, err)
	}
}

// postmasterPID reads the postmaster's pid from its data directory.
func postmasterPID(dir string) (int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(data), "\n")
	return strconv.Atoi(strings.TrimSpace(first))
}

// findBin returns the directory of the server binaries.
func findBin() (string, error) {
	has := func(dir string) bool {
		for _, b := range []string{"initdb", "pg_ctl", "pg_basebackup", "postgres"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv(BinEnv); dir != "" {
		if !has(dir) {
			return "", fmt.Errorf("%s=%s lacks initdb, pg_ctl, pg_basebackup or postgres", BinEnv, dir)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { // newest major version first
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if has(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup, postgres) in /usr/lib/postgresql/*/bin or PATH")
}
