package redisstore

import (
	"fmt"
	"hash/fnv"
	"strings"
	"testing"
)

// crc16 is the CRC16-CCITT (XMODEM) Redis Cluster hashes keys with.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// slot is the cluster slot of a key, with Redis's hash-tag rule: when the
// key has a '{' followed later by a '}' with something between them, only
// that something is hashed.
func slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key)) % 16384
}

func TestSlotFunction(t *testing.T) {
	t.Parallel()
	// Values from the Redis Cluster specification and CLUSTER KEYSLOT.
	if got := crc16("123456789"); got != 0x31C3 {
		t.Errorf("crc16(123456789) = %#x, want 0x31c3", got)
	}
	for key, want := range map[string]int{"foo": 12182, "bar": 5061, "{user1000}.following": 3443, "somekey": 11058, "{foo}x": 12182, "{}foo": int(crc16("{}foo")) % 16384} {
		if got := slot(key); got != want {
			t.Errorf("slot(%q) = %d, want %d", key, got, want)
		}
	}
}

// sameSlot fails unless every key one script can touch for (scope, key)
// maps to one cluster slot, and the record key Sweep rebuilds from the
// index member is the same.
func sameSlot(t *testing.T, prefix, scope, key string) {
	t.Helper()
	k := keysOf(prefix, scope, key)
	want := slot(k.record)
	for _, other := range []string{k.index, k.token} {
		if got := slot(other); got != want {
			t.Fatalf("scope %q key %q: %q in slot %d, record %q in slot %d", scope, key, other, got, k.record, want)
		}
	}
	if l := makeLayout(prefix); l.keys(scope, key) != k || l.recordKey(scope, key) != k.record {
		t.Fatalf("scope %q key %q: layout keys %+v record %q, want %+v", scope, key, l.keys(scope, key), l.recordKey(scope, key), k)
	}
	rk, err := makeLayout(prefix).recordKeyOfMember(shardOf(scope), k.member)
	if err != nil || rk != k.record {
		t.Fatalf("scope %q key %q: recordKeyOfMember = %q %v, want %q", scope, key, rk, err, k.record)
	}
}

func TestOneSlotPerRecord(t *testing.T) {
	t.Parallel()
	scopes := []string{"tenant-1", "a:b", "{x}", "}{", "%7D", "with space", "日本", "\x00", strings.Repeat("}", 255)}
	keysToTry := []string{"k", ":", "{", "}", "{a}", "a}b{c", "%", "x", strings.Repeat("{", 255)}
	slots := map[int]bool{}
	for _, s := range scopes {
		for _, k := range keysToTry {
			sameSlot(t, "idem", s, k)
			sameSlot(t, "other:prefix", s, k)
		}
		slots[slot(keysOf("idem", s, "k").record)] = true
	}
	// Scopes spread over shards (and so over slots).
	if len(slots) < 3 {
		t.Errorf("%d scopes landed in %d slots", len(scopes), len(slots))
	}
	// Every shard is its own slot.
	seen := map[int]int{}
	for i := range shards {
		s := slot(makeLayout("idem")[i].index)
		if j, dup := seen[s]; dup {
			t.Errorf("shards %d and %d share slot %d", j, i, s)
		}
		seen[s] = i
	}
}

// FuzzKeyEncoding: distinct (scope, key) pairs never share a record key or
// an index member, a member lies in the lexical range List reads for a scope
// exactly when it is of that scope (after a cursor: and after the cursor's
// key), and every key of a record stays in one slot.
func FuzzKeyEncoding(f *testing.F) {
	f.Add("a", "b:c", "a:b", "c")
	f.Add("a%3Ab", "k", "a:b", "k")
	f.Add("{", "}", "%7B", "}")
	f.Add("s", "k", "s", "k")
	f.Fuzz(func(t *testing.T, s1, k1, s2, k2 string) {
		if s1 == "" || k1 == "" || s2 == "" || k2 == "" {
			return
		}
		a, b := keysOf("idem", s1, k1), keysOf("idem", s2, k2)
		same := s1 == s2 && k1 == k2
		if (a.record == b.record) != same || (a.member == b.member) != same {
			t.Fatalf("(%q,%q) and (%q,%q): records %q %q members %q %q", s1, k1, s2, k2, a.record, b.record, a.member, b.member)
		}
		if (a.index == b.index) != (shardOf(s1) == shardOf(s2)) {
			t.Fatalf("scopes %q and %q: index keys %q and %q", s1, s2, a.index, b.index)
		}
		if got := inLexRange(scopeRange(s2, ""))(a.member); got != (s1 == s2) {
			t.Fatalf("member %q in the range of scope %q: %v", a.member, s2, got)
		}
		if got := inLexRange(scopeRange(s2, k2))(a.member); got != (s1 == s2 && k1 > k2) {
			t.Fatalf("member %q in the range of scope %q after %q: %v", a.member, s2, k2, got)
		}
		if slot(a.record) != slot(keysOf("idem", s1, "other").record) {
			t.Fatalf("scope %q: keys in two slots", s1)
		}
		sameSlot(t, "idem", s1, k1)
	})
}

// TestLayoutStable: the shard of a scope and the hash tag of a shard are
// those of the layout (FNV-1a of the scope modulo 64, two hex digits), and
// the layout's recordKey agrees with keysOf.
func TestLayoutStable(t *testing.T) {
	t.Parallel()
	for _, scope := range []string{"", "a", "tenant-42", "a:b{c}%", "héllo"} {
		h := fnv.New32a()
		h.Write([]byte(scope))
		if got, want := shardOf(scope), int(h.Sum32()%shards); got != want {
			t.Errorf("shardOf(%q) = %d, want %d", scope, got, want)
		}
		if got, want := makeLayout("p").recordKey(scope, "k:1"), keysOf("p", scope, "k:1").record; got != want {
			t.Errorf("recordKey(%q) = %q, want %q", scope, got, want)
		}
	}
	for i := range shards {
		if got, want := tag("p", i), fmt.Sprintf("p:{%02x}:", i); got != want {
			t.Errorf("tag(%d) = %q, want %q", i, got, want)
		}
	}
}

// keysOf spells out layout 2 (see layout.keys) independently of the
// layout the Store builds once, as the reference the tests check it
// against and build expected keys with.
func keysOf(prefix, scope, key string) keys {
	shard := shardOf(scope)
	t := tag(prefix, shard)
	member := escapeScope(scope) + ":" + key
	return keys{
		record: t + "r:" + member,
		index:  t + "i",
		token:  t + "t",
		member: member,
		shard:  shard,
	}
}

// inLexRange says whether a member lies in the ZRANGE BYLEX range
// min..max ('[' inclusive, '(' exclusive; Redis compares bytes, as Go does).
func inLexRange(min, max string) func(m string) bool {
	return func(m string) bool {
		above := m > min[1:] || (min[0] == '[' && m == min[1:])
		below := m < max[1:] || (max[0] == '[' && m == max[1:])
		return above && below
	}
}
