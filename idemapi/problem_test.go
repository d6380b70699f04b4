package idemapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/idemkit/idem"
)

// TestProblemForSpeaksPlainly: a store's error becomes a problem whose
// detail is a sentence, without the Go prefixes of the error's text.
func TestProblemForSpeaksPlainly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err    error
		status int
		name   string
		detail string
	}{
		{fmt.Errorf("redisstore: complete: %w: key is 300 bytes, over the limit of 255", idem.ErrInvalid), 400, ProblemInvalidRequest, "key is 300 bytes, over the limit of 255"},
		{fmt.Errorf("pgstore: begin: %w", idem.ErrInvalid), 400, ProblemInvalidRequest, "the store refused the request as invalid"},
		{fmt.Errorf("redisstore: complete: %w", idem.ErrLeaseLost), 409, ProblemLeaseLost, "the token no longer owns the key: its lease was taken over, or the key was released or deleted"},
		{fmt.Errorf("memstore: release: %w", idem.ErrCompleted), 409, ProblemCompleted, "the key already holds an outcome, which is never replaced"},
		{fmt.Errorf("pebblestore: get: %w", idem.ErrNotFound), 404, ProblemNotFound, "no record for the key in this scope"},
		{fmt.Errorf("x: %w", idem.ErrFingerprintMismatch), 422, ProblemFingerprintMismatch, "the key was used for a request with another fingerprint; use a new key"},
		{fmt.Errorf("list: %w", idem.ErrNotImplemented), 501, ProblemNotImplemented, "the server's store cannot do this"},
		{fmt.Errorf("pgstore: begin: %w", idem.ErrClosed), 503, ProblemUnavailable, "the server is shutting down; try again"},
		{fmt.Errorf("redisstore: begin: %w: dial tcp 10.0.0.1:6379: connection refused", idem.ErrUnavailable), 503, ProblemUnavailable, "the store did not answer; try again"},
		{fmt.Errorf("pgstore: begin: %w", context.DeadlineExceeded), 503, ProblemUnavailable, "the request ended before the store answered; try again"},
		{errors.New("pgstore: begin: ERROR: relation does not exist"), 503, ProblemUnavailable, "the store did not answer; try again"},
	} {
		p := problemFor(tc.err)
		if p.status != tc.status || p.name != tc.name || p.detail != tc.detail || p.err != tc.err {
			t.Errorf("%v: got %d %s %q, want %d %s %q", tc.err, p.status, p.name, p.detail, tc.status, tc.name, tc.detail)
		}
		if http.StatusText(p.status) == "" || problemTitles[p.name] == "" {
			t.Errorf("%v: status or name without text", tc.err)
		}
	}
}
