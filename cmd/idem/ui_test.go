package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem/store/pgstore"
)

// browser is a form-posting client with a cookie jar, as a browser is.
type browser struct {
	t    *testing.T
	base string
	http *http.Client
}

func newBrowser(t *testing.T, addr string) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: "http://" + addr, http: &http.Client{Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browser) get(path string) (int, string) {
	b.t.Helper()
	resp, err := b.http.Get(b.base + path)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (b *browser) signIn(token string) int {
	b.t.Helper()
	resp, err := b.http.PostForm(b.base+"/ui/signin", url.Values{"token": {token}})
	if err != nil {
		b.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestServeDashboard(t *testing.T) {
	dir := t.TempDir()
	p := startServe(t, dir, "--listen", "127.0.0.1:0", "--store", "mem:", "--tokens", writeTokens(t, dir), "--log-level", "error")
	line := p.next(t)
	for !strings.HasPrefix(line, "idem serve: dashboard on ") {
		line = p.next(t)
	}
	if line != "idem serve: dashboard on http://"+p.addr+"/ui/ (sign in with a token)" {
		t.Fatalf("startup line %q", line)
	}
	if status, err := newClient(p.addr, "billing-0123456789").cycle("billing", "invoice-9", []byte("paid")); err != nil || status != 200 {
		t.Fatalf("cycle: %d %v", status, err)
	}

	b := newBrowser(t, p.addr)
	if code := b.signIn("wrong-token"); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}
	if code, body := b.get("/ui/keys?scope=billing"); code != http.StatusUnauthorized || strings.Contains(body, "invoice-9</code>") {
		t.Fatalf("keys before sign-in: %d", code)
	}
	if code := b.signIn("billing-0123456789"); code != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", code)
	}
	code, body := b.get("/ui/keys?scope=billing")
	if code != http.StatusOK || !strings.Contains(body, "<code>invoice-9</code>") {
		t.Fatalf("keys: %d", code)
	}
	// The API's own operations feed the Rates page's totals.
	code, body = b.get("/ui/rates")
	if code != http.StatusOK || !strings.Contains(body, "<tbody><tr><td>1</td><td>1</td>") {
		t.Fatalf("rates: %d %s", code, body)
	}
	if code, body := b.get("/ui/workflows"); code != http.StatusForbidden || !strings.Contains(body, "bound to no workflow type") {
		t.Fatalf("workflows with a billing token: %d", code)
	}

	// --ui=false: /ui is the API's, which has no such route.
	p2 := startServe(t, dir, "--listen", "127.0.0.1:0", "--store", "mem:", "--tokens", writeTokens(t, dir), "--log-level", "error", "--ui=false")
	if code, body := newBrowser(t, p2.addr).get("/ui/signin"); code != http.StatusNotFound || !strings.Contains(body, "no-such-route") {
		t.Fatalf("--ui=false: %d %s", code, body)
	}
}

func TestProxyDashboard(t *testing.T) {
	dir := t.TempDir()
	up := newUpstream(t, false)
	uiTokens := filepath.Join(dir, "ui-tokens")
	if err := os.WriteFile(uiTokens, []byte("ops-0123456789 *\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, dir, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--upstream", up.url(),
		"--store", "mem:", "--ui-tokens", uiTokens, "--log-level", "error")
	mustSend(t, testClient(), http.MethodPost, "http://"+p.addr+"/orders", `{"sku":"x"}`, "Idempotency-Key", `"order-1"`)

	b := newBrowser(t, p.admin)
	if code := b.signIn("ops-0123456789"); code != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", code)
	}
	code, body := b.get("/ui/keys?scope=" + url.QueryEscape("9:anonymous POST /orders"))
	if code != http.StatusOK || !strings.Contains(body, "<code>order-1</code>") {
		t.Fatalf("keys: %d %s", code, body)
	}
	if code, _ := b.get("/metrics"); code != http.StatusOK {
		t.Fatalf("metrics beside the dashboard: %d", code)
	}

	// --ui-tokens without an admin listener is refused.
	if _, stderr, code := runIdem(t, dir, "proxy", "--upstream", up.url(), "--admin", "", "--ui-tokens", uiTokens); code != 2 || !strings.Contains(stderr, "give --admin ADDR") {
		t.Fatalf("--ui-tokens without --admin: exit %d, %s", code, stderr)
	}

	// Without --ui-tokens the admin listener has no dashboard.
	p2 := startProxy(t, dir, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--upstream", up.url(), "--store", "mem:", "--log-level", "error")
	if code, _ := newBrowser(t, p2.admin).get("/ui/signin"); code != http.StatusNotFound {
		t.Fatalf("without --ui-tokens: %d", code)
	}
}

// On a postgres:// store the Messaging page counts the outbox's unsent
// rows, for a token bound to * only.
func TestServeDashboardOutbox(t *testing.T) {
	storeURL, schema, pool, store := outboxStore(t, "idem_ui")
	var msgs []*pgstore.OutboxMessage
	for i := range 3 {
		msgs = append(msgs, &pgstore.OutboxMessage{ID: fmt.Sprintf("m%d", i), Entity: "acct-1", Subject: "ledger.entries", Payload: []byte("x")})
	}
	enqueue(t, pool, store, msgs...)
	// The first row was written long ago: the page says when.
	if _, err := pool.Exec(context.Background(), `UPDATE `+pgx.Identifier{schema}.Sanitize()+`.outbox SET created = '2026-01-02T03:04:05Z' WHERE message_id = 'm0'`); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	p := startServe(t, dir, "--listen", "127.0.0.1:0", "--store", storeURL, "--tokens", writeTokens(t, dir), "--log-level", "error")
	ops := newBrowser(t, p.addr)
	if code := ops.signIn("ops-0123456789"); code != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", code)
	}
	code, body := ops.get("/ui/messaging")
	if code != http.StatusOK || !strings.Contains(body, `<p id="outbox-backlog">3 unsent rows.</p>`) || !strings.Contains(body, "<code>m2</code>") {
		t.Fatalf("messaging: %d %s", code, body)
	}
	if !strings.Contains(body, `<p id="outbox-oldest">The oldest was written at 2026-01-02T03:04:05Z (`) {
		t.Fatalf("messaging page without the oldest row's time: %s", body)
	}
	billing := newBrowser(t, p.addr)
	billing.signIn("billing-0123456789")
	if _, body := billing.get("/ui/messaging"); strings.Contains(body, "outbox-backlog") || !strings.Contains(body, "only a token bound to") {
		t.Fatalf("billing token sees the outbox: %s", body)
	}
}
