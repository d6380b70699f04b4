package idemui

import (
	"encoding/base64"
	"errors"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemhttp"
)

// keysPageSize is how many records the Keys page lists at once.
const keysPageSize = 50

type keysData struct {
	Scope, State, Cursor, Next string
	Hashed                     bool
	Lister                     bool
	Records                    []*idem.Record
	Scopes                     []string
	Any                        bool // the token may name any scope
	Deleted                    string
}

// ledgerScopes are the token's ledger scopes: its scopes but "*" and
// the workflow ones.
func ledgerScopes(s *session) []string {
	var out []string
	for _, sc := range s.grant.Scopes() {
		if sc != idemapi.AllScopes && !strings.HasPrefix(sc, idemapi.WorkflowScopePrefix) {
			out = append(out, sc)
		}
	}
	return out
}

// keys serves the Keys page: a scope's records, filtered by state, a page
// at a time; a search by key or digest opens the record.
func (h *Handler) keys(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	d := &keysData{Scope: q.Get("scope"), State: q.Get("state"), Cursor: q.Get("cursor"), Hashed: h.digests != nil,
		Scopes: ledgerScopes(s), Any: s.grant.All(), Deleted: q.Get("deleted")}
	if d.Scope == "" && len(d.Scopes) > 0 {
		d.Scope = d.Scopes[0]
	}
	pg := &page{Title: "Keys", Data: d}
	if key, stored := q.Get("key"), q.Get("digest"); key != "" || stored != "" {
		v := url.Values{"scope": {d.Scope}}
		if key != "" {
			v.Set("key", key)
		} else {
			v.Set("stored", stored)
		}
		http.Redirect(w, r, h.cfg.Prefix+"/keys/record?"+v.Encode(), http.StatusSeeOther)
		return
	}
	if d.Scope == "" {
		h.render(w, r, http.StatusOK, "keys", pg, s)
		return
	}
	if !s.grant.Allows(d.Scope) {
		pg.Flash = "This token is not bound to scope " + d.Scope + "."
		h.render(w, r, http.StatusForbidden, "keys", pg, s)
		return
	}
	lister, ok := h.cfg.Store.(idem.Lister)
	d.Lister = ok
	if !ok {
		h.render(w, r, http.StatusOK, "keys", pg, s)
		return
	}
	params := &idem.ListParams{Scope: d.Scope, State: idem.State(d.State), Cursor: d.Cursor, Limit: keysPageSize}
	if err := params.Validate(); err != nil || !utf8.ValidString(d.Cursor) {
		pg.Flash = "The filter is not valid: " + errText(err)
		h.render(w, r, http.StatusBadRequest, "keys", pg, s)
		return
	}
	res, err := lister.List(r.Context(), params)
	if err != nil {
		h.fail(w, r, s, http.StatusServiceUnavailable, "The store did not answer: try again.")
		return
	}
	d.Records, d.Next = res.Records, res.NextCursor
	h.render(w, r, http.StatusOK, "keys", pg, s)
}

func errText(err error) string {
	if err == nil {
		return "the cursor is not valid UTF-8"
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, idem.ErrInvalid.Error()+": "); i >= 0 {
		return msg[i+len(idem.ErrInvalid.Error())+2:]
	}
	return msg
}

type recordData struct {
	Scope, Stored, Key string
	Hashed             bool
	Record             *idem.Record
	Bodies             bool
	// The stored outcome, decoded as idemhttp stores responses when it is
	// one.
	HTTP       bool
	Status     int
	Headers    [][2]string
	Body       string
	BodyBinary bool
	Meta       [][2]string
	Data       string
	DataLen    int
	Checkpoint string
}

// target reads the record a request names: scope, and the raw key (key,
// digested when the store keeps digests) or the key as stored (stored).
// When they do not name a record, or name one in a scope the session's
// token is not bound to, it answers the request (400, 403) and ok is
// false.
func (h *Handler) target(w http.ResponseWriter, r *http.Request, s *session, v url.Values) (scope, stored, key string, ok bool) {
	scope, key, stored = v.Get("scope"), v.Get("key"), v.Get("stored")
	if stored == "" {
		stored = key
		if h.digests != nil && key != "" {
			stored = h.digests.StoredKey(key)
		}
	}
	p := &idem.KeyParams{Scope: scope, Key: stored}
	if key != "" {
		p.Key = key
	}
	if err := p.Validate(); err != nil {
		h.fail(w, r, s, http.StatusBadRequest, "Name a scope and a key: "+errText(err))
		return "", "", "", false
	}
	if !s.grant.Allows(scope) {
		h.fail(w, r, s, http.StatusForbidden, "This token is not bound to scope "+scope+".")
		return "", "", "", false
	}
	return scope, stored, key, true
}

// record serves a record's page. Bodies (the outcome's data and the
// checkpoint's) are shown only with bodies=1.
func (h *Handler) record(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	scope, stored, key, ok := h.target(w, r, s, q)
	if !ok {
		return
	}
	rec, err := h.cfg.Store.Get(r.Context(), &idem.KeyParams{Scope: scope, Key: stored})
	if errors.Is(err, idem.ErrNotFound) {
		h.fail(w, r, s, http.StatusNotFound, "No record for this key in scope "+scope+".")
		return
	}
	if err != nil {
		h.fail(w, r, s, http.StatusServiceUnavailable, "The store did not answer: try again.")
		return
	}
	d := &recordData{Scope: scope, Stored: stored, Key: key, Hashed: h.digests != nil, Record: rec, Bodies: q.Get("bodies") == "1"}
	if out := rec.Outcome; out != nil {
		status, header, body, err := idemhttp.StoredResponse(out)
		if err == nil && len(out.Meta) == 0 {
			d.HTTP, d.Status = true, status
			for _, name := range slices.Sorted(maps.Keys(header)) {
				for _, v := range header[name] {
					d.Headers = append(d.Headers, [2]string{name, v})
				}
			}
			d.DataLen = len(body)
			d.Body, d.BodyBinary = showBytes(body)
		} else {
			for _, k := range slices.Sorted(maps.Keys(out.Meta)) {
				d.Meta = append(d.Meta, [2]string{k, out.Meta[k]})
			}
			d.DataLen = len(out.Data)
			d.Data, d.BodyBinary = showBytes(out.Data)
		}
	}
	if cp := rec.Checkpoint; cp != nil {
		d.Checkpoint, _ = showBytes(cp.Data)
	}
	h.render(w, r, http.StatusOK, "record", &page{Title: "Record", Nav: "keys", Data: d}, s)
}

// showBytes is b as text when it is UTF-8, else as base64.
func showBytes(b []byte) (string, bool) {
	if utf8.Valid(b) {
		return string(b), false
	}
	return base64.StdEncoding.EncodeToString(b), true
}

type deleteData struct {
	Scope, Stored, Key string
}

// confirmDelete asks before deleting a record.
func (h *Handler) confirmDelete(w http.ResponseWriter, r *http.Request, s *session) {
	scope, stored, key, ok := h.target(w, r, s, r.URL.Query())
	if !ok {
		return
	}
	h.render(w, r, http.StatusOK, "delete", &page{Title: "Delete a record", Nav: "keys", Data: &deleteData{Scope: scope, Stored: stored, Key: key}}, s)
}

// deleteKey deletes a record, once confirmed (confirm=yes).
func (h *Handler) deleteKey(w http.ResponseWriter, r *http.Request, s *session) {
	scope, stored, _, ok := h.target(w, r, s, r.PostForm)
	if !ok {
		return
	}
	if r.PostForm.Get("confirm") != "yes" {
		h.fail(w, r, s, http.StatusBadRequest, "Deleting needs the confirmation box ticked.")
		return
	}
	err := h.cfg.Store.Delete(r.Context(), &idem.KeyParams{Scope: scope, Key: stored})
	if err != nil && !errors.Is(err, idem.ErrNotFound) {
		h.fail(w, r, s, http.StatusServiceUnavailable, "The store did not answer: the record may not be deleted.")
		return
	}
	h.log.Info("idemui: record deleted", "scope", scope)
	http.Redirect(w, r, h.cfg.Prefix+"/keys?"+url.Values{"scope": {scope}, "deleted": {"1"}}.Encode(), http.StatusSeeOther)
}
