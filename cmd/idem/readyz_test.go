package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem/idemapi"
)

// pgCutter is a TCP proxy between a store and PostgreSQL that a test cuts
// and mends, to make a real database unreachable and reachable again.
type pgCutter struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	mode  cutMode
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

type cutMode int

const (
	cutForward cutMode = iota // pass bytes both ways
	cutReset                  // accept, then close at once: refused
	cutHold                   // accept and never answer: a black hole
)

// newPGCutter proxies to the host:port of the PostgreSQL URL raw and
// returns raw with the proxy's address in its place.
func newPGCutter(t *testing.T, raw string) (*pgCutter, string) {
	t.Helper()
	u, err := neturl.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &pgCutter{ln: ln, target: u.Host, conns: map[net.Conn]bool{}}
	c.wg.Go(c.accept)
	t.Cleanup(func() {
		ln.Close()
		c.set(cutReset)
		c.wg.Wait()
	})
	u.Host = ln.Addr().String()
	return c, u.String()
}

// set switches the mode and drops every connection open so far.
func (c *pgCutter) set(m cutMode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mode = m
	for conn := range c.conns {
		conn.Close()
	}
	clear(c.conns)
}

func (c *pgCutter) accept() {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.mu.Lock()
		mode := c.mode
		if mode == cutReset {
			c.mu.Unlock()
			conn.Close()
			continue
		}
		c.conns[conn] = true
		c.mu.Unlock()
		if mode == cutHold {
			continue // closed by the next set
		}
		up, err := net.Dial("tcp", c.target)
		if err != nil {
			conn.Close()
			continue
		}
		c.mu.Lock()
		if c.mode != cutForward || !c.conns[conn] { // cut meanwhile
			c.mu.Unlock()
			conn.Close()
			up.Close()
			continue
		}
		c.conns[up] = true
		c.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		c.wg.Go(func() { pipe(up, conn) })
		c.wg.Go(func() { pipe(conn, up) })
	}
}

// waitReady polls url until it answers want (200 or 503) and checks the
// answer's form; it fails the test after 15 s.
func waitReady(t *testing.T, url string, want int) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(15 * time.Second)
	var last string
	for {
		resp, err := hc.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = fmt.Sprintf("%d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			if resp.StatusCode == want {
				switch want {
				case http.StatusOK:
					if string(body) != "ready\n" {
						t.Fatalf("GET %s: %s", url, last)
					}
				case http.StatusServiceUnavailable:
					var p idemapi.Problem
					if resp.Header.Get("Content-Type") != "application/problem+json" || json.Unmarshal(body, &p) != nil ||
						p.Type != idemapi.ProblemBase+idemapi.ProblemUnavailable || p.Status != 503 {
						t.Fatalf("GET %s: %s, want an unavailable problem", url, last)
					}
				}
				return
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s did not answer %d within 15s; last: %s", url, want, last)
		}
		<-time.After(20 * time.Millisecond)
	}
}

// wantStatus checks one GET's status.
func wantStatus(t *testing.T, url string, want int) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("GET %s: %d, want %d", url, resp.StatusCode, want)
	}
}

// cutAndMend runs the readiness cycle against a server whose store goes
// through cut: ready, refused (503), ready again, black-holed (503 after
// the probe's timeout), ready again; /healthz answers 200 throughout.
// work, when not nil, checks that the server records work while ready.
func cutAndMend(t *testing.T, cut *pgCutter, base string, work func(ok bool)) {
	t.Helper()
	ready, health := base+"/readyz", base+"/healthz"
	waitReady(t, ready, 200)
	if work != nil {
		work(true)
	}
	for _, m := range []cutMode{cutReset, cutHold} {
		cut.set(m)
		waitReady(t, ready, 503)
		wantStatus(t, health, 200)
		if work != nil {
			work(false)
		}
		cut.set(cutForward)
		waitReady(t, ready, 200)
		if work != nil {
			work(true)
		}
	}
}

// TestServeReadyzPostgres: idem serve on a real PostgreSQL behind a TCP
// proxy the test cuts: /readyz answers 503 while the database cannot be
// reached (refused, or silent) and 200 again once it can, and /healthz
// stays 200.
func TestServeReadyzPostgres(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cut, url := newPGCutter(t, pgSchemaURL(t, "readyz_serve"))
	url = withParam(t, url, "connect_timeout", "2")
	p := startServe(t, dir, "--store", url, "--migrate", "--tokens", writeTokens(t, dir),
		"--listen", "127.0.0.1:0", "--ready-timeout", "300ms", "--ready-cache", "50ms")
	c := newClient(p.addr, "billing-0123456789")
	n := 0
	cutAndMend(t, cut, "http://"+p.addr, func(ok bool) {
		n++
		status, err := c.cycle("billing", fmt.Sprintf("k%d", n), []byte("x"))
		switch {
		case ok && (err != nil || status != 200):
			t.Fatalf("a begin and complete while ready: %d %v", status, err)
		case !ok && status == 200 && err == nil:
			t.Fatalf("a begin and complete succeeded while /readyz said 503")
		}
	})
}

// TestProxyReadyzPostgres: the same on idem proxy's admin listener.
func TestProxyReadyzPostgres(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cut, url := newPGCutter(t, pgSchemaURL(t, "readyz_proxy"))
	url = withParam(t, url, "connect_timeout", "2")
	// The proxy has no --migrate: the schema is made as an operator
	// makes it.
	if _, stderr, code := runIdem(t, dir, "migrate", "--store", url); code != 0 {
		t.Fatalf("idem migrate: %d\n%s", code, stderr)
	}
	up := newUpstream(t, false)
	p := startProxy(t, dir, "--upstream", up.url(), "--store", url, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--ready-timeout", "300ms", "--ready-cache", "50ms")
	cutAndMend(t, cut, "http://"+p.admin, nil)
}
