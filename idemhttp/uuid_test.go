package idemhttp_test

import (
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem/idemhttp"
)

// trParseUUIDv7 checks s is a canonical UUIDv7 and returns its time.
func trParseUUIDv7(s string) (time.Time, error) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return time.Time{}, fmt.Errorf("not in 8-4-4-4-12 form: %q", s)
	}
	if strings.ToLower(s) != s {
		return time.Time{}, fmt.Errorf("not lower case: %q", s)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil {
		return time.Time{}, fmt.Errorf("not hex: %q: %w", s, err)
	}
	if v := b[6] >> 4; v != 7 {
		return time.Time{}, fmt.Errorf("version %d, want 7: %q", v, s)
	}
	if b[8]>>6 != 0b10 {
		return time.Time{}, fmt.Errorf("variant bits %02b, want 10: %q", b[8]>>6, s)
	}
	var ms int64
	for _, c := range b[:6] {
		ms = ms<<8 | int64(c)
	}
	return time.UnixMilli(ms), nil
}

func TestNewUUIDv7Format(t *testing.T) {
	t.Parallel()
	before := time.Now().Truncate(time.Millisecond)
	s := idemhttp.NewUUIDv7()
	after := time.Now()
	at, err := trParseUUIDv7(s)
	if err != nil {
		t.Fatal(err)
	}
	// The generator may borrow a millisecond ahead when one fills up.
	if at.Before(before) || at.After(after.Add(time.Second)) {
		t.Fatalf("time %v not within [%v, %v]", at, before, after)
	}
}

func TestNewUUIDv7Ordered(t *testing.T) {
	t.Parallel()
	prev := idemhttp.NewUUIDv7()
	for range 10000 {
		next := idemhttp.NewUUIDv7()
		if next <= prev {
			t.Fatalf("not increasing: %s then %s", prev, next)
		}
		if _, err := trParseUUIDv7(next); err != nil {
			t.Fatal(err)
		}
		prev = next
	}
}

func TestNewUUIDv7UniqueConcurrently(t *testing.T) {
	t.Parallel()
	const workers, each = 8, 2000
	keys := make([][]string, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for range each {
				keys[w] = append(keys[w], idemhttp.NewUUIDv7())
			}
		})
	}
	wg.Wait()
	seen := make(map[string]bool, workers*each)
	for w := range workers {
		for i, k := range keys[w] {
			if seen[k] {
				t.Fatalf("duplicate key %s", k)
			}
			seen[k] = true
			// Each goroutine sees its own keys in order too.
			if i > 0 && k <= keys[w][i-1] {
				t.Fatalf("worker %d: not increasing: %s then %s", w, keys[w][i-1], k)
			}
		}
	}
	if len(seen) != workers*each {
		t.Fatalf("%d keys, want %d", len(seen), workers*each)
	}
}

func BenchmarkNewUUIDv7(b *testing.B) {
	for b.Loop() {
		idemhttp.NewUUIDv7()
	}
}
