package idemapi_test

import (
	"bytes"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/memstore"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLogsNeverHoldKeysTokensOrBodies: one line per request with route,
// scope, status and duration, and nothing of what the client sent.
func TestLogsNeverHoldKeysTokensOrBodies(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	store := memstore.New(nil)
	defer store.Close()
	srv, err := idemapi.NewServer(store, &idemapi.Config{
		Tokens: map[string][]string{"secret-token-9f8e": {"tenant-1"}},
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	send := func(token, body string) {
		req := httptest.NewRequest("POST", "/v1/begin", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		srv.ServeHTTP(httptest.NewRecorder(), req)
	}
	send("secret-token-9f8e", `{"scope":"tenant-1","key":"card-4242-4242","fingerprint":"fp-private"}`)
	send("secret-token-9f8e", `{"scope":"tenant-1","key":"card-4242-4242","fingerprint":"fp-other"}`)
	send("secret-token-9f8e", `{"scope":"tenant-1","key":"card-4242-4242","oops":"body-secret"}`)
	send("wrong-token-1234", `{"scope":"tenant-1","key":"card-4242-4242"}`)

	out := logs.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d log lines, want 4:\n%s", len(lines), out)
	}
	for i, want := range []string{"status=200", "status=422", "status=400", "status=401"} {
		if !strings.Contains(lines[i], "route=begin") || !strings.Contains(lines[i], want) || !strings.Contains(lines[i], "duration=") {
			t.Errorf("line %d = %s, want route=begin %s duration=", i, lines[i], want)
		}
	}
	if !strings.Contains(lines[0], "scope=tenant-1") || !strings.Contains(lines[0], "level=DEBUG") || !strings.Contains(lines[1], "level=INFO") {
		t.Errorf("levels or scope missing:\n%s", out)
	}
	for _, secret := range []string{"card-4242", "secret-token", "wrong-token", "fp-private", "fp-other", "body-secret"} {
		if strings.Contains(out, secret) {
			t.Errorf("log holds %q:\n%s", secret, out)
		}
	}
}
