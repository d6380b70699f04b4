package idemclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
)

// DefaultMaxResponse bounds the body of one answer: a 4 MiB outcome (the
// server's default outcome limit) written as base64, with room to spare.
const DefaultMaxResponse = 64 << 20

// Config configures a Client. A nil *Config means defaults.
type Config struct {
	// HTTPClient sends the requests. Default: a client of its own with a
	// 30 s timeout, keep-alive connections (up to 64 idle ones) and no
	// redirects followed (a redirect means the base URL is wrong). Close
	// closes its idle connections, also of a client passed here.
	HTTPClient *http.Client
	// UserAgent is sent with every request. Default "idemclient".
	UserAgent string
	// MaxResponse bounds the body of one answer in bytes. Default
	// DefaultMaxResponse.
	MaxResponse int64
}

// Client is an idem.Store and idem.Lister backed by a remote `idem serve`
// over its HTTP API. It is safe for concurrent use.
type Client struct {
	base    string // scheme://host[/prefix], without a trailing slash
	auth    string
	hc      *http.Client
	ua      string
	maxBody int64
	closed  atomic.Bool
}

var (
	_ idem.Store  = (*Client)(nil)
	_ idem.Lister = (*Client)(nil)
)

// New returns a Client of the server at baseURL (like
// "http://127.0.0.1:7070"), sending token as its bearer token. The token
// must be bound to the scopes the caller uses ("*" for Sweep). A nil cfg
// means defaults.
func New(baseURL, token string, cfg *Config) (*Client, error) {
	u, err := url.Parse(baseURL)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: idemclient: base URL %q does not parse (%v); want one like http://127.0.0.1:7070", idem.ErrInvalid, baseURL, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%w: idemclient: base URL %q: want http:// or https://, like http://127.0.0.1:7070", idem.ErrInvalid, baseURL)
	case u.Host == "":
		return nil, fmt.Errorf("%w: idemclient: base URL %q has no host; want one like http://127.0.0.1:7070", idem.ErrInvalid, baseURL)
	case u.User != nil:
		return nil, fmt.Errorf("%w: idemclient: base URL %q holds credentials; pass the token as the token argument", idem.ErrInvalid, baseURL)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("%w: idemclient: base URL %q has a query or fragment; give only scheme, host and an optional path prefix", idem.ErrInvalid, baseURL)
	}
	if token == "" {
		return nil, fmt.Errorf("%w: idemclient: the token is empty; pass one from the server's tokens file", idem.ErrInvalid)
	}
	for i := 0; i < len(token); i++ {
		if token[i] < 0x21 || token[i] > 0x7e {
			return nil, fmt.Errorf("%w: idemclient: the token must be printable ASCII without spaces (byte %d is not)", idem.ErrInvalid, i+1)
		}
	}
	c := &Client{
		base:    strings.TrimSuffix(u.Scheme+"://"+u.Host+u.EscapedPath(), "/"),
		auth:    "Bearer " + token,
		ua:      "idemclient",
		maxBody: DefaultMaxResponse,
	}
	if cfg != nil {
		c.hc = cfg.HTTPClient
		if cfg.UserAgent != "" {
			c.ua = cfg.UserAgent
		}
		if cfg.MaxResponse < 0 {
			return nil, fmt.Errorf("%w: idemclient: Config.MaxResponse must be positive (or 0 for %d), got %d", idem.ErrInvalid, DefaultMaxResponse, cfg.MaxResponse)
		}
		if cfg.MaxResponse > 0 {
			c.maxBody = cfg.MaxResponse
		}
	}
	if c.hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 64
		c.hc = &http.Client{
			Transport: t,
			Timeout:   30 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}
	return c, nil
}

// Close makes every later call fail with idem.ErrClosed and closes idle
// connections. It does not touch the server's store.
func (c *Client) Close() error {
	c.closed.Store(true)
	c.hc.CloseIdleConnections()
	return nil
}

// call sends one request and returns the body of a 2xx answer whose status
// is want; every other answer becomes an error.
func (c *Client) call(ctx context.Context, op, method, path string, in any, want int) ([]byte, error) {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("idemclient: %s: encode the request: %w", op, err)
		}
		body = b
	}
	ct := ""
	if in != nil {
		ct = "application/json"
	}
	_, data, err := c.send(ctx, op, method, path, ct, body, "application/json", want)
	return data, err
}

// send sends one request with body (none when contentType is "") and
// returns the status and body of a 2xx answer whose status is one of want
// and whose content type is accept (none for 204); every other answer
// becomes an error.
func (c *Client) send(ctx context.Context, op, method, path, contentType string, in []byte, accept string, want ...int) (int, []byte, error) {
	if c.closed.Load() {
		return 0, nil, fmt.Errorf("idemclient: %s: %w", op, idem.ErrClosed)
	}
	var body io.Reader
	if contentType != "" {
		body = bytes.NewReader(in)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, nil, fmt.Errorf("idemclient: %s: %w", op, err)
	}
	req.Header.Set("Authorization", c.auth)
	req.Header.Set("Accept", accept+", application/problem+json")
	req.Header.Set("User-Agent", c.ua)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("idemclient: %s: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.maxBody+1))
	if err != nil {
		return 0, nil, fmt.Errorf("idemclient: %s: read the answer: %w", op, err)
	}
	if int64(len(data)) > c.maxBody {
		return 0, nil, protocolf(op, "the answer is over %d bytes (Config.MaxResponse)", c.maxBody)
	}
	if resp.StatusCode >= 300 {
		pe := decodeProblem(op, resp.StatusCode, resp.Header.Get("Content-Type"), data)
		if resp.StatusCode < 400 {
			pe.Detail = "redirected to " + snippet([]byte(resp.Header.Get("Location"))) + "; point the client at the server itself"
		}
		return 0, nil, pe
	}
	if !slices.Contains(want, resp.StatusCode) {
		return 0, nil, protocolf(op, "status %d, want %d", resp.StatusCode, want[0])
	}
	if resp.StatusCode == http.StatusNoContent {
		return resp.StatusCode, nil, nil
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, accept) {
		return 0, nil, protocolf(op, "content type %q, want %s (%q)", snippet([]byte(ct)), accept, snippet(data))
	}
	return resp.StatusCode, data, nil
}

// keyPath is the path of one record: the key is one percent-encoded
// segment; "." and ".." are encoded too, so that no proxy folds them.
func keyPath(p *idem.KeyParams) string {
	seg := url.PathEscape(p.Key)
	if p.Key == "." || p.Key == ".." {
		seg = strings.ReplaceAll(seg, ".", "%2E")
	}
	return "/v1/keys/" + seg + "?" + url.Values{"scope": {p.Scope}}.Encode()
}

// Begin implements idem.Store. Durations are sent as whole milliseconds,
// rounded up. The Record of the result holds what the API answers: for
// Acquired the token, attempt, lease end and checkpoint; for Replay the
// outcome and its times; for InFlight only the retry delay. Get returns the
// whole record. A fingerprint-mismatch answer is the Mismatch decision.
func (c *Client) Begin(ctx context.Context, p *idem.BeginParams) (*idem.BeginResult, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	in := idemapi.BeginRequest{Scope: p.Scope, Key: p.Key, Fingerprint: p.Fingerprint,
		LeaseMS: millis(p.Lease), WindowMS: millis(p.Window), RetentionMS: millis(p.Retention)}
	body, err := c.call(ctx, "begin", http.MethodPost, "/v1/begin", in, http.StatusOK)
	if isProblem(err, idemapi.ProblemFingerprintMismatch) {
		return &idem.BeginResult{Decision: idem.Mismatch}, nil
	}
	if err != nil {
		return nil, err
	}
	return decodeBegin(p, body)
}

// Complete implements idem.Store. The record returned holds the outcome
// and the times the server answered (created, completed, expires).
func (c *Client) Complete(ctx context.Context, p *idem.CompleteParams) (*idem.Record, error) {
	const op = "complete"
	if err := p.Validate(); err != nil {
		return nil, err
	}
	in := idemapi.CompleteRequest{Scope: p.Scope, Key: p.Key, Token: p.Token, Outcome: p.Outcome}
	if in.Outcome.Data == nil {
		in.Outcome.Data = []byte{}
	}
	body, err := c.call(ctx, op, http.MethodPost, "/v1/complete", in, http.StatusOK)
	if err != nil {
		return nil, err
	}
	var r idemapi.CompleteResponse
	if err := decodeJSON(op, body, &r); err != nil {
		return nil, err
	}
	rec := &idem.Record{Scope: p.Scope, Key: p.Key, State: idem.StateCompleted, Token: p.Token, Outcome: &idem.Outcome{Data: bytes.Clone(p.Outcome.Data), Meta: p.Outcome.Meta}}
	if rec.Completed, err = parseTimePtr(op, "completed_at", r.CompletedAt); err != nil {
		return nil, err
	}
	if rec.Expires, err = parseTimePtr(op, "expires_at", r.ExpiresAt); err != nil {
		return nil, err
	}
	if rec.Created, err = parseTime(op, "created", r.Created, false); err != nil {
		return nil, err
	}
	return rec, nil
}

// Release implements idem.Store.
func (c *Client) Release(ctx context.Context, p *idem.ReleaseParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	body, err := c.call(ctx, "release", http.MethodPost, "/v1/release", idemapi.ReleaseRequest{Scope: p.Scope, Key: p.Key, Token: p.Token}, http.StatusOK)
	if err != nil {
		return err
	}
	return decodeJSON("release", body, &struct{}{})
}

// Extend implements idem.Store. The record returned holds the new lease
// end.
func (c *Client) Extend(ctx context.Context, p *idem.ExtendParams) (*idem.Record, error) {
	const op = "extend"
	if err := p.Validate(); err != nil {
		return nil, err
	}
	in := idemapi.ExtendRequest{Scope: p.Scope, Key: p.Key, Token: p.Token, LeaseMS: millis(p.Lease)}
	body, err := c.call(ctx, op, http.MethodPost, "/v1/extend", in, http.StatusOK)
	if err != nil {
		return nil, err
	}
	var r idemapi.ExtendResponse
	if err := decodeJSON(op, body, &r); err != nil {
		return nil, err
	}
	lease, err := parseTimePtr(op, "lease_until", r.LeaseUntil)
	if err != nil {
		return nil, err
	}
	return &idem.Record{Scope: p.Scope, Key: p.Key, State: idem.StatePending, Token: p.Token, LeaseUntil: lease}, nil
}

// Checkpoint implements idem.Store.
func (c *Client) Checkpoint(ctx context.Context, p *idem.CheckpointParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	in := idemapi.CheckpointRequest{Scope: p.Scope, Key: p.Key, Token: p.Token, Point: p.Point, Data: p.Data}
	if in.Data == nil {
		in.Data = []byte{}
	}
	body, err := c.call(ctx, "checkpoint", http.MethodPost, "/v1/checkpoint", in, http.StatusOK)
	if err != nil {
		return err
	}
	return decodeJSON("checkpoint", body, &struct{}{})
}

// Get implements idem.Store.
func (c *Client) Get(ctx context.Context, p *idem.KeyParams) (*idem.Record, error) {
	const op = "get"
	if err := p.Validate(); err != nil {
		return nil, err
	}
	body, err := c.call(ctx, op, http.MethodGet, keyPath(p), nil, http.StatusOK)
	if err != nil {
		return nil, err
	}
	rec, err := decodeRecord(op, body)
	if err != nil {
		return nil, err
	}
	if rec.Scope != p.Scope || rec.Key != p.Key {
		return nil, protocolf(op, "asked for one record, got another")
	}
	return rec, nil
}

// Delete implements idem.Store.
func (c *Client) Delete(ctx context.Context, p *idem.KeyParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	_, err := c.call(ctx, "delete", http.MethodDelete, keyPath(p), nil, http.StatusNoContent)
	return err
}

// Sweep implements idem.Store. It sweeps the whole server, so it needs a
// token bound to every scope ("*"); others get ErrForbidden.
func (c *Client) Sweep(ctx context.Context, p *idem.SweepParams) (*idem.SweepResult, error) {
	const op = "sweep"
	if err := p.Validate(); err != nil {
		return nil, err
	}
	body, err := c.call(ctx, op, http.MethodPost, "/v1/sweep", idemapi.SweepRequest{Limit: p.Limit}, http.StatusOK)
	if err != nil {
		return nil, err
	}
	var r idemapi.SweepResponse
	if err := decodeJSON(op, body, &r); err != nil {
		return nil, err
	}
	if r.Deleted == nil || *r.Deleted < 0 || (p.Limit > 0 && *r.Deleted > p.Limit) {
		return nil, protocolf(op, "the answer has no valid deleted count")
	}
	return &idem.SweepResult{Deleted: *r.Deleted}, nil
}

// List implements idem.Lister.
func (c *Client) List(ctx context.Context, p *idem.ListParams) (*idem.ListResult, error) {
	q := *p
	if err := q.Validate(); err != nil {
		return nil, err
	}
	if !utf8.ValidString(q.Cursor) {
		return nil, fmt.Errorf("%w: idemclient: list: the cursor is not valid UTF-8 (pass a next_cursor the server gave)", idem.ErrInvalid)
	}
	v := url.Values{"scope": {q.Scope}, "limit": {strconv.Itoa(q.Limit)}}
	if q.State != "" {
		v.Set("state", string(q.State))
	}
	if q.Cursor != "" {
		v.Set("cursor", q.Cursor)
	}
	body, err := c.call(ctx, "list", http.MethodGet, "/v1/keys?"+v.Encode(), nil, http.StatusOK)
	if err != nil {
		return nil, err
	}
	return decodeList(&q, body)
}
