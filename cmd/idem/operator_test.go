package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/crashtest"
)

// spawnEnv starts `idem args...` in dir with env added to the test's
// environment, and returns it once it printed a line starting with until
// (the rest of the line is the result), or fails the test.
func spawnEnv(t *testing.T, dir string, env []string, until string, args ...string) (*proc, string) {
	t.Helper()
	cmd := exec.Command(idemBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	p := &proc{cmd: cmd, lines: make(chan string, 100), stderr: &crashtest.Buffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	deadline := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				<-p.exited
				t.Fatalf("idem %s exited (%v) before printing %q; stderr:\n%s", strings.Join(args, " "), p.err, until, p.stderr)
			}
			if rest, found := strings.CutPrefix(line, until); found {
				return p, rest
			}
		case <-deadline:
			t.Fatalf("idem %s did not print %q in 30s; stderr:\n%s", strings.Join(args, " "), until, p.stderr)
		}
	}
}

func runIdemEnv(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(idemBin, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), env...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if _, exit := err.(*exec.ExitError); err != nil && !exit {
		t.Fatal(err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

func TestEnvSetsFlags(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"IDEM_STORE": "mem:", "IDEM_MIGRATE": "true", "IDEM_SWEEP_INTERVAL": "5m",
		"IDEM_LISTEN": "256.0.0.1:1", // the command line's wins
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	store := fs.String("store", "file:./x", "")
	listen := fs.String("listen", "127.0.0.1:7070", "")
	migrate := fs.Bool("migrate", false, "")
	sweep := fs.Duration("sweep-interval", time.Minute, "")
	lease := fs.Duration("lease", time.Second, "")
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := parseWithLookup(fs, []string{"--listen", "127.0.0.1:0"}, lookup); err != nil {
		t.Fatal(err)
	}
	if *store != "mem:" || *listen != "127.0.0.1:0" || !*migrate || *sweep != 5*time.Minute || *lease != time.Second {
		t.Fatalf("store %q listen %q migrate %v sweep %s lease %s", *store, *listen, *migrate, *sweep, *lease)
	}

	env = map[string]string{"IDEM_SWEEP_INTERVAL": "often"}
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Duration("sweep-interval", time.Minute, "")
	err := parseWithLookup(fs, nil, lookup)
	if err == nil || !strings.Contains(err.Error(), `environment variable IDEM_SWEEP_INTERVAL="often" (for --sweep-interval): `) {
		t.Fatalf("invalid variable: %v", err)
	}
}

// TestEnvServeAndProxy: the binaries read their flags from IDEM_...
func TestEnvServeAndProxy(t *testing.T) {
	t.Parallel()
	p, addr := spawnEnv(t, t.TempDir(), []string{"IDEM_STORE=mem:", "IDEM_LISTEN=127.0.0.1:1"},
		"idem serve: listening on http://", "serve", "--listen", "127.0.0.1:0")
	if !strings.HasPrefix(addr, "127.0.0.1:") || addr == "127.0.0.1:1" {
		t.Errorf("serve listens on %s: --listen should win over IDEM_LISTEN", addr)
	}
	if line := p.next(t); !strings.HasPrefix(line, "idem serve: store mem:, data in memory") {
		t.Errorf("IDEM_STORE=mem: gave %q", line)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Errorf("serve exit %d", code)
	}

	_, rest := spawnEnv(t, t.TempDir(), []string{"IDEM_STORE=mem:", "IDEM_LISTEN=127.0.0.1:0", "IDEM_ADMIN=", "IDEM_UPSTREAM=http://127.0.0.1:9"},
		"idem proxy: listening on http://", "proxy")
	if !strings.HasSuffix(rest, ", upstream http://127.0.0.1:9") {
		t.Errorf("proxy line %q, want IDEM_UPSTREAM's upstream", rest)
	}

	_, errOut, code := runIdemEnv(t, []string{"IDEM_MAX_BODY=lots"}, "serve", "--store", "mem:")
	if code != 2 || !strings.Contains(errOut, `idem serve: environment variable IDEM_MAX_BODY="lots" (for --max-body): `) {
		t.Errorf("serve with IDEM_MAX_BODY=lots: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = runIdemEnv(t, []string{"IDEM_LEASE=-1s"}, "proxy", "--upstream", "http://127.0.0.1:9")
	if code != 2 || !strings.Contains(errOut, "--lease must be positive") {
		t.Errorf("proxy with IDEM_LEASE=-1s: exit %d, stderr %q", code, errOut)
	}
	for _, cmd := range []string{"serve", "proxy"} {
		out, _, _ := runIdem(t, t.TempDir(), cmd, "--help")
		if !strings.Contains(out, "IDEM_SWEEP_INTERVAL") || !strings.Contains(out, "--tls-cert FILE") {
			t.Errorf("%s --help does not document IDEM_ variables and --tls-cert", cmd)
		}
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key into dir and
// returns their paths and a pool that trusts the certificate.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "idem test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pool
}

func TestServeTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key, pool := selfSigned(t, dir)
	_, addr := spawnEnv(t, dir, nil, "idem serve: listening on https://",
		"serve", "--listen", "127.0.0.1:0", "--store", "mem:", "--tls-cert", cert, "--tls-key", key)
	trusting := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := trusting.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Fatalf("GET /healthz over TLS: %d, TLS %v", resp.StatusCode, resp.TLS != nil)
	}
	// A client that does not trust the certificate is refused, and so is
	// plain HTTP.
	if _, err := (&http.Client{Timeout: 10 * time.Second}).Get("https://" + addr + "/healthz"); err == nil {
		t.Error("a client without the certificate in its roots connected")
	}
	if resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP got 200 from the TLS listener")
		}
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--tls-cert", cert}, 2, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-key", key}, 2, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-cert", key, "--tls-key", cert}, 1, "--tls-cert " + key + ", --tls-key " + cert + ": "},
	} {
		args := append([]string{"serve", "--listen", "127.0.0.1:0", "--store", "mem:"}, tc.args...)
		if _, errOut, code := runIdem(t, dir, args...); code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d saying %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}

func TestProxyTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key, pool := selfSigned(t, dir)
	var runs atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		io.WriteString(w, "charged")
	}))
	defer up.Close()
	_, rest := spawnEnv(t, dir, nil, "idem proxy: listening on https://",
		"proxy", "--listen", "127.0.0.1:0", "--admin", "", "--store", "mem:", "--upstream", up.URL, "--tls-cert", cert, "--tls-key", key)
	addr, _, _ := strings.Cut(rest, ",")
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for i, replayed := range []string{"false", "true"} {
		req, _ := http.NewRequest("POST", "https://"+addr+"/charges", strings.NewReader(`{"amount":500}`))
		req.Header.Set("Idempotency-Key", `"order-7"`)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "charged" || resp.Header.Get("Idempotent-Replayed") != replayed {
			t.Fatalf("request %d over TLS: %d %q replayed %q", i+1, resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"))
		}
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("the upstream ran %d times, want 1", n)
	}
}

func TestServeKeepsItsToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	args := []string{"serve", "--listen", "127.0.0.1:0", "--store", "file:./data"}
	p, addr := spawnEnv(t, dir, nil, "idem serve: listening on http://", args...)
	p.next(t) // the store line
	token, ok := strings.CutPrefix(p.next(t), `idem serve: token for scope "default" (new, kept in data/token, mode 0600): `)
	if !ok || len(token) != 43 {
		t.Fatalf("first start: no new-token line (token %q)", token)
	}
	path := filepath.Join(dir, "data", "token")
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, mode %v; want 0600", err, fi.Mode())
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != token+"\n" {
		t.Fatalf("token file holds %q (%v), want the token and a newline", b, err)
	}
	if status, err := newClient(addr, token).cycle("default", "k", []byte("v")); err != nil || status != 200 {
		t.Fatalf("cycle: %d %v", status, err)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d", code)
	}

	// A restart reuses it, says where it is, and does not print it again.
	p, addr = spawnEnv(t, dir, nil, "idem serve: listening on http://", args...)
	p.next(t)
	if line := p.next(t); line != `idem serve: token for scope "default" kept in data/token (read it with: cat data/token)` {
		t.Fatalf("restart: token line %q", line)
	}
	if status, err := newClient(addr, token).cycle("default", "k2", []byte("v")); err != nil || status != 200 {
		t.Fatalf("cycle with the kept token after a restart: %d %v", status, err)
	}

	// mem: has no data directory: a new token each start, kept nowhere.
	p, _ = spawnEnv(t, dir, nil, "idem serve: listening on http://", "serve", "--listen", "127.0.0.1:0", "--store", "mem:")
	p.next(t)
	if line := p.next(t); !strings.HasPrefix(line, `idem serve: token for scope "default" (shown once, kept nowhere: the store has no data directory; pass --tokens FILE to keep tokens): `) {
		t.Errorf("mem: token line %q", line)
	}
}

func TestServeRefusesABadTokenFile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		want    string
	}{
		{"readable by others", "0123456789abcdef0123456789abcdef\n", 0o644, "has mode 0644, so other users may read the token: run chmod 600 data/token"},
		{"readable by the group", "0123456789abcdef0123456789abcdef\n", 0o640, "has mode 0640"},
		{"too short", "short\n", 0o600, "token file data/token: want the token alone on one line, 16 to 512 characters"},
		{"two lines", "0123456789abcdef\n0123456789abcdef\n", 0o600, "printable ASCII without spaces; byte 16 is '\\n'"},
		{"empty", "", 0o600, "want the token alone on one line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "data", "token")
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(tc.content), tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil { // past the umask
				t.Fatal(err)
			}
			_, errOut, code := runIdem(t, dir, "serve", "--listen", "127.0.0.1:0", "--store", "file:./data")
			if code != 1 || !strings.Contains(errOut, tc.want) || strings.Count(errOut, "\n") != 1 {
				t.Fatalf("exit %d, stderr %q; want 1 and one line saying %q", code, errOut, tc.want)
			}
			if b, _ := os.ReadFile(path); string(b) != tc.content {
				t.Errorf("the token file was changed to %q", b)
			}
		})
	}
}

// FuzzTokenFile: parseTokenFile never panics, and what it accepts is a
// bearer token that reads back the same from the file serve writes.
func FuzzTokenFile(f *testing.F) {
	for _, s := range []string{"0123456789abcdef0123456789abcdef\n", "short", "a b c d e f g h i j\n", "0123456789abcdef\r\n", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := parseTokenFile(b)
		if err != nil {
			return
		}
		if len(tok) < 16 || strings.ContainsAny(tok, " \t\r\n") {
			t.Fatalf("accepted %q", tok)
		}
		if again, err := parseTokenFile([]byte(tok + "\n")); err != nil || again != tok {
			t.Fatalf("%q written back reads %q, %v", tok, again, err)
		}
	})
}

// TestServeRefusesOtherMachinesBeforeOpening: without --tokens a
// non-loopback --listen is refused before the store directory (and the
// token in it) is made.
func TestServeRefusesOtherMachinesBeforeOpening(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, errOut, code := runIdem(t, dir, "serve", "--listen", "0.0.0.0:0", "--store", "file:./data"); code != 1 || !strings.Contains(errOut, "loopback") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("the refused serve made ./data: %v", err)
	}
}
