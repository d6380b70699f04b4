// Package servicetest finds the real services (PostgreSQL, Redis, NATS,
// RabbitMQ) that store and broker tests run against. A test asks for a
// service by name; when it does not answer, the test skips with the reason,
// or fails when IDEM_REQUIRE_SERVICES=1 (CI), so a green run never hides a
// test that did not run.
package servicetest

import (
	"net"
	"net/url"
	"os"
	"testing"
	"time"
)

// Service is a real service a test needs.
type Service struct {
	Name string // for messages: "PostgreSQL"
	Env  string // the variable that overrides the URL: "IDEM_POSTGRES_URL"
	URL  string // the default on this machine
}

var (
	Postgres = Service{"PostgreSQL", "IDEM_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"}
	Redis    = Service{"Redis", "IDEM_REDIS_URL", "redis://127.0.0.1:6379/0"}
	NATS     = Service{"NATS", "IDEM_NATS_URL", "nats://127.0.0.1:4222"}
	RabbitMQ = Service{"RabbitMQ", "IDEM_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"}
)

// Required reports whether a missing service fails the run.
func Required() bool { return os.Getenv("IDEM_REQUIRE_SERVICES") == "1" }

// Need returns the service's URL after checking that its port answers; it
// skips the test (or fails it under IDEM_REQUIRE_SERVICES=1) when it does
// not.
func (s Service) Need(t testing.TB) string {
	t.Helper()
	raw := s.URL
	if v := os.Getenv(s.Env); v != "" {
		raw = v
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		t.Fatalf("%s: %s=%q is not a URL with a host", s.Name, s.Env, raw)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 2*time.Second)
	if err != nil {
		if Required() {
			t.Fatalf("%s does not answer at %s (%v) and IDEM_REQUIRE_SERVICES=1: start it (see .ci/run)", s.Name, u.Host, err)
		}
		t.Skipf("%s does not answer at %s (%v); set %s or start it; CI requires it", s.Name, u.Host, err, s.Env)
	}
	conn.Close()
	return raw
}
