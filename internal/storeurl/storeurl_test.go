package storeurl

import (
	"errors"
	"net/url"
	"testing"

	"github.com/idemkit/idem"
)

func TestCutParam(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw, rest, value string
	}{
		{"postgres://u:secret@h:5432/db?sslmode=disable&schema=billing", "postgres://u:secret@h:5432/db?sslmode=disable", "billing"},
		{"postgres://h/db?schema=billing", "postgres://h/db", "billing"},
		{"postgres://h/db?sslmode=disable", "postgres://h/db?sslmode=disable", ""}, // untouched without it
		{"postgres://h/db", "postgres://h/db", ""},
		{"redis://h:6379/0?prefix=a%20b&dial_timeout=1s", "redis://h:6379/0?dial_timeout=1s", "a b"},
	} {
		u, err := url.Parse(tc.raw)
		if err != nil {
			t.Fatal(err)
		}
		name := "schema"
		if u.Scheme == "redis" {
			name = "prefix"
		}
		rest, value, err := CutParam(u, name)
		if err != nil || rest.String() != tc.rest || value != tc.value {
			t.Errorf("CutParam(%q) = %q %q %v, want %q %q", tc.raw, rest, value, err, tc.rest, tc.value)
		}
		if u.String() != tc.raw {
			t.Errorf("CutParam changed its argument to %q", u)
		}
	}
}

func TestCutParamRefuses(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{"postgres://h/db?schema=a&schema=b", "postgres://h/db?schema=%zz"} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := CutParam(u, "schema"); !errors.Is(err, idem.ErrInvalid) {
			t.Errorf("CutParam(%q) = %v, want ErrInvalid", raw, err)
		}
	}
}

// FuzzCutParam: whatever the query, CutParam never panics, and what it
// returns holds no trace of the parameter while every other one is kept.
func FuzzCutParam(f *testing.F) {
	f.Add("sslmode=disable&schema=billing")
	f.Add("schema=a&schema=b")
	f.Add("schema=%zz;x")
	f.Fuzz(func(t *testing.T, query string) {
		u := &url.URL{Scheme: "postgres", Host: "h", Path: "/db", RawQuery: query}
		rest, value, err := CutParam(u, "schema")
		if err != nil {
			if !errors.Is(err, idem.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		before, _ := url.ParseQuery(query)
		after, err := url.ParseQuery(rest.RawQuery)
		if err != nil {
			t.Fatalf("the rest's query %q does not parse: %v", rest.RawQuery, err)
		}
		if _, ok := after["schema"]; ok {
			t.Fatalf("rest %q still has schema", rest.RawQuery)
		}
		if got := before.Get("schema"); got != value {
			t.Fatalf("value %q, want %q", value, got)
		}
		for k, vs := range before {
			if k != "schema" && len(after[k]) != len(vs) {
				t.Fatalf("parameter %q lost: %q -> %q", k, query, rest.RawQuery)
			}
		}
	})
}
