package idemapi

import (
	"bufio"
	"fmt"
	"io"
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
