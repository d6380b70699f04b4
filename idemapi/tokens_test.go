package idemapi_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
)

func TestParseTokens(t *testing.T) {
	t.Parallel()
	got, err := idemapi.ParseTokens(strings.NewReader(`# who may use the ledger
ops-5f1e9c *

  billing-77d0	billing,orders  
# a comment after the tokens
orders-c3 orders
`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"ops-5f1e9c": {"*"}, "billing-77d0": {"billing", "orders"}, "orders-c3": {"orders"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestParseTokensNamesTheBadLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"ok a\nlonely\n", "line 2: want `TOKEN SCOPE[,SCOPE...]`, got 1 fields"},
		{"# c\n\nt a b\n", "line 3: want `TOKEN SCOPE[,SCOPE...]`, got 3 fields"},
		{"t a,,b\n", "line 1: empty scope"},
		{"t a,\n", "line 1: empty scope"},
		{"t a\nu b\nt c\n", "line 3: the token is already defined on line 1"},
		{"t " + strings.Repeat("s", 256) + "\n", "line 1: scope is 256 bytes"},
		{"t \xffscope\n", "line 1: scope is not valid UTF-8"},
		{"t\x01x a\n", "line 1: token byte 2 is not printable ASCII"},
		{"tök a\n", "line 1: token byte 2 is not printable ASCII"},
	} {
		_, err := idemapi.ParseTokens(strings.NewReader(tc.in))
		if !errors.Is(err, idem.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseTokens(%q) = %v, want ErrInvalid with %q", tc.in, err, tc.want)
		}
	}
}

func TestParseTokensEmptyFile(t *testing.T) {
	t.Parallel()
	got, err := idemapi.ParseTokens(strings.NewReader("# nothing yet\n\n"))
	if err != nil || len(got) != 0 {
		t.Fatalf("got %v, %v", got, err)
	}
}
