package idemapi

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/idemkit/idem"
)

// AllScopes bound to a token grants it every scope: for operators and for
// conformance tests that make up scopes as they go.
const AllScopes = "*"

// maxTokenLen bounds a token so that a tokens file cannot hold a line that
// no HTTP header would carry.
const maxTokenLen = 4096

// ParseTokens reads a tokens file: one `TOKEN SCOPE[,SCOPE...]` per line,
// separated by spaces or tabs. Blank lines and lines starting with # are
// skipped. A token is printable ASCII without spaces (it travels in an
// Authorization header); a scope is non-empty UTF-8 of at most 255 bytes
// without commas, or "*" for every scope. A token may appear on one line
// only. Errors wrap idem.ErrInvalid and name the line.
func ParseTokens(r io.Reader) (map[string][]string, error) {
	tokens := map[string][]string{}
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("%w: tokens line %d: want `TOKEN SCOPE[,SCOPE...]`, got %d fields", idem.ErrInvalid, n, len(fields))
		}
		token, list := fields[0], fields[1]
		if err := checkToken(token); err != nil {
			return nil, fmt.Errorf("%w: tokens line %d: %s", idem.ErrInvalid, n, err)
		}
		if first, dup := seen[token]; dup {
			return nil, fmt.Errorf("%w: tokens line %d: the token is already defined on line %d", idem.ErrInvalid, n, first)
		}
		seen[token] = n
		var scopes []string
		for s := range strings.SplitSeq(list, ",") {
			if err := checkScope(s); err != nil {
				return nil, fmt.Errorf("%w: tokens line %d: %s", idem.ErrInvalid, n, err)
			}
			scopes = append(scopes, s)
		}
		tokens[token] = scopes
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: tokens line %d: %v", idem.ErrInvalid, n+1, err)
	}
	return tokens, nil
}

func checkToken(t string) error {
	if len(t) > maxTokenLen {
		return fmt.Errorf("token is %d bytes, over the limit of %d", len(t), maxTokenLen)
	}
	for i := 0; i < len(t); i++ {
		if t[i] < 0x21 || t[i] > 0x7e {
			return fmt.Errorf("token byte %d is not printable ASCII", i+1)
		}
	}
	return nil
}

func checkScope(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty scope (check the commas)")
	case len(s) > idem.MaxScopeLen:
		return fmt.Errorf("scope is %d bytes, over the limit of %d", len(s), idem.MaxScopeLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("scope is not valid UTF-8")
	}
	return nil
}

// Grant is what one token may use: the scopes it is bound to. The API
// server and the dashboard (idemui) decide with it alike.
type Grant struct {
	scopes map[string]bool
	all    bool
}

// Allows reports whether the token may use ledger scope scope: it is
// bound to it or to AllScopes.
func (g *Grant) Allows(scope string) bool { return g.all || g.scopes[scope] }

// All reports whether the token is bound to AllScopes, which operations
// spanning every scope (sweep) need.
func (g *Grant) All() bool { return g.all }

// AllowsWorkflow reports whether the token may use workflow type typ: it
// is bound to WorkflowScope(typ) or to AllScopes.
func (g *Grant) AllowsWorkflow(typ string) bool { return g.all || g.scopes[WorkflowScope(typ)] }

// AnyWorkflow reports whether the token may use some workflow type.
func (g *Grant) AnyWorkflow() bool {
	if g.all {
		return true
	}
	for sc := range g.scopes {
		if strings.HasPrefix(sc, WorkflowScopePrefix) {
			return true
		}
	}
	return false
}

// Scopes returns the scopes the token is bound to, sorted ("*" among
// them for AllScopes).
func (g *Grant) Scopes() []string { return slices.Sorted(maps.Keys(g.scopes)) }

// TokenSet holds bearer tokens and their grants, as Config.Tokens gives
// them; it keeps only SHA-256 digests of the tokens.
type TokenSet struct {
	entries []tokenEntry
}

type tokenEntry struct {
	digest [sha256.Size]byte
	grant  Grant
}

// NewTokenSet checks tokens (printable ASCII without spaces, each bound to
// at least one scope) and returns their set. Errors wrap idem.ErrInvalid
// and never show a token.
func NewTokenSet(tokens map[string][]string) (*TokenSet, error) {
	ts := &TokenSet{}
	for token, scopes := range tokens {
		if err := checkToken(token); err != nil || token == "" {
			return nil, fmt.Errorf("%w: idemapi: a token in Config.Tokens is unusable: must be printable ASCII without spaces", idem.ErrInvalid)
		}
		if len(scopes) == 0 {
			return nil, fmt.Errorf("%w: idemapi: a token in Config.Tokens has no scopes", idem.ErrInvalid)
		}
		e := tokenEntry{digest: sha256.Sum256([]byte(token)), grant: Grant{scopes: map[string]bool{}}}
		for _, sc := range scopes {
			if sc == AllScopes {
				e.grant.all = true
			}
			e.grant.scopes[sc] = true
		}
		ts.entries = append(ts.entries, e)
	}
	return ts, nil
}

// Lookup returns the grant of token, nil for an unknown token. Digests
// are compared in constant time, and every entry is compared, so timing
// says nothing about the token.
func (ts *TokenSet) Lookup(token string) *Grant {
	digest := sha256.Sum256([]byte(token))
	var found *Grant
	for i := range ts.entries {
		if subtle.ConstantTimeCompare(digest[:], ts.entries[i].digest[:]) == 1 {
			found = &ts.entries[i].grant
		}
	}
	return found
}
