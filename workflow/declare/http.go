package declare

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/idemkit/idem/workflow"
)

// Bounds of the HTTP executor.
const (
	maxResponse  = 1 << 20 // a response body larger than this fails the step for good
	maxErrorBody = 1 << 10 // how much of an error response's body an error quotes
)

// FencingTokenHeader is the request header that carries the instance's
// fencing token (workflow.Step.Token, in decimal) on every request of an
// action or compensation. A downstream that remembers the highest token
// it has seen for an Idempotency-Key can refuse a lower one: the request
// of an engine that lost the instance and woke late.
const FencingTokenHeader = "Fencing-Token"

// executor sends one request of a declarative action.
type executor struct {
	action   string // the action's name, for errors
	what     string // "request" or "compensate"
	req      *requestDoc
	defaults []header
	timeout  time.Duration // 0: the client's
	client   *http.Client
	vars     map[string]string
	event    bool // the action's transition has an event
}

// run is the workflow.StepFunc of the request.
func (x *executor) run(ctx context.Context, step *workflow.Step) ([]byte, error) {
	s := &scope{step: step, vars: x.vars, event: x.event}
	req, err := x.build(ctx, s)
	if err != nil {
		return nil, workflow.Permanent(fmt.Errorf("declare: action %q %s: %w", x.action, x.what, err))
	}
	if x.timeout > 0 {
		c, cancel := context.WithTimeout(req.Context(), x.timeout)
		defer cancel()
		req = req.WithContext(c)
	}
	where := req.Method + " " + redact(req.URL)
	fail := func(err error) error {
		return fmt.Errorf("declare: action %q %s: %s: %w", x.action, x.what, where, err)
	}
	resp, err := x.client.Do(req)
	if err != nil {
		// A transport error (refused, reset, timed out): worth another
		// attempt. The url.Error repeats the URL with its query: drop it.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fail(err)
	}
	defer resp.Body.Close()
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
		if err != nil {
			return nil, fail(fmt.Errorf("reading the response: %w", err))
		}
		if len(body) > maxResponse {
			return nil, workflow.Permanent(fail(fmt.Errorf("%s: response body exceeds %d bytes", resp.Status, maxResponse)))
		}
		return result(body), nil
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		err := fail(statusError(resp))
		if d, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			err = workflow.RetryAfter(err, d)
		}
		return nil, err
	default:
		// 4xx, and a 1xx or 3xx that reached here: asking again will
		// not change the answer.
		return nil, workflow.Permanent(fail(statusError(resp)))
	}
}

// result is the step's result from a 2xx body: the body if it is JSON,
// else the body as a JSON string, null if empty.
func result(body []byte) []byte {
	if len(bytes.TrimSpace(body)) == 0 {
		return []byte("null")
	}
	if json.Valid(body) {
		return body
	}
	return jsonString(strings.ToValidUTF8(string(body), "\uFFFD"))
}

// statusError describes a failed response by its status and the start of
// its body.
func statusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponse)) // let the connection be reused
	text := strings.TrimSpace(strings.ToValidUTF8(string(b), "\uFFFD"))
	if text == "" {
		return fmt.Errorf("%s", resp.Status)
	}
	return fmt.Errorf("%s: %s", resp.Status, text)
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(24*time.Hour/time.Second)*365 {
			secs = int64(24*time.Hour/time.Second) * 365
		}
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// redact returns the URL without its query, fragment and user info, for
// errors.
func redact(u *url.URL) string {
	c := *u
	c.User, c.RawQuery, c.Fragment, c.RawFragment = nil, "", "", ""
	return c.String()
}

// build renders the request.
func (x *executor) build(ctx context.Context, s *scope) (*http.Request, error) {
	raw, err := x.req.url.text(s)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("url %q is not an absolute http(s) URL", redactString(raw))
	}
	var body io.Reader
	if x.req.body != nil {
		b, err := x.req.body.render(nil, s)
		if err != nil {
			return nil, fmt.Errorf("body: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, x.req.method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for _, hs := range [][]header{x.defaults, x.req.headers} {
		for _, h := range hs {
			v, err := h.value.text(s)
			if err != nil {
				return nil, fmt.Errorf("header %s: %w", h.name, err)
			}
			if strings.ContainsAny(v, "\r\n\x00") {
				return nil, fmt.Errorf("header %s: the value holds a line break or NUL", h.name)
			}
			req.Header.Set(h.name, v)
		}
	}
	req.Header.Set("Idempotency-Key", s.step.Key)
	req.Header.Set(FencingTokenHeader, strconv.FormatInt(s.step.Token, 10))
	return req, nil
}

func redactString(raw string) string {
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		return raw[:i]
	}
	return raw
}
