package redisstore

import (
	"fmt"
	"strings"
)

// shards is how many hash tags the records of one prefix are spread over.
// A scope lives in one shard, chosen by a hash of the scope; it is part of
// the layout, so changing it would lose records (see the package doc).
const shards = 64

// keys are the Redis keys one script touches for one record. They share the
// hash tag of the record's shard, so they map to one cluster slot.
type keys struct {
	record string // string: the record (format in record.go)
	index  string // sorted set: the shard's records, score 0, members in lexical order, for List, Sweep and Size
	token  string // string: the shard's last fencing token (8 bytes); never expires
	member string // the record's member in the index: escaped scope, ':', key
	shard  int    // shardOf(scope), whose batcher runs the record's Begin and Complete
}

// escapeScope makes a scope safe inside a key: it holds no ':' (which ends
// the scope part) and no braces (which would move the hash tag). '%' is
// escaped too, so the encoding is injective.
var scopeEscaper = strings.NewReplacer("%", "%25", ":", "%3A", "{", "%7B", "}", "%7D")

func escapeScope(scope string) string {
	if !strings.ContainsAny(scope, "%:{}") {
		return scope
	}
	return scopeEscaper.Replace(scope)
}

// shardOf picks the shard of a scope: FNV-1a (32 bits) of the scope,
// modulo shards.
func shardOf(scope string) int {
	h := uint32(2166136261)
	for i := 0; i < len(scope); i++ {
		h ^= uint32(scope[i])
		h *= 16777619
	}
	return int(h % shards)
}

// tag is the common beginning of every key of one shard: PREFIX:{hh}:
func tag(prefix string, shard int) string {
	const hex = "0123456789abcdef"
	return prefix + ":{" + string([]byte{hex[shard>>4&0xf], hex[shard&0xf]}) + "}:"
}

// shardKeys are the keys of one shard that do not depend on the record,
// made once per Store.
type shardKeys struct {
	tag   string // PREFIX:{hh}:
	index string
	token string
}

// record is the record key an index member of the shard names.
func (sh *shardKeys) record(member string) string { return sh.tag + "r:" + member }

// layout is the keys of every shard of one prefix.
type layout [shards]shardKeys

// makeLayout makes the shard keys of prefix.
func makeLayout(prefix string) *layout {
	var sk layout
	for i := range sk {
		t := tag(prefix, i)
		sk[i] = shardKeys{tag: t, index: t + "i", token: t + "t"}
	}
	return &sk
}

// keys returns the keys of the record (scope, key) with one allocation:
// the record key, of which the member is the end. Layout 2:
//
//	PREFIX:{hh}:r:SCOPE:KEY   the record (a string, record.go)
//	PREFIX:{hh}:i             the shard's index, members SCOPE:KEY
//	PREFIX:{hh}:t             the shard's token counter
//
// SCOPE is the escaped scope (no ':', '{' or '}'); KEY is the raw key, the
// rest of the string. keys_test.go spells the layout out again (keysOf) and
// checks that this agrees.
func (sk *layout) keys(scope, key string) keys {
	shard := shardOf(scope)
	sh := &sk[shard]
	record := sh.tag + "r:" + escapeScope(scope) + ":" + key
	return keys{record: record, index: sh.index, token: sh.token, member: record[len(sh.tag)+2:], shard: shard}
}

// recordKey is the record key of (scope, key), for Get, which reads the
// record alone.
func (sk *layout) recordKey(scope, key string) string { return sk.keys(scope, key).record }

// recordKeyOfMember is the record an index member of shard names.
func (sk *layout) recordKeyOfMember(shard int, member string) (string, error) {
	esc, key, ok := strings.Cut(member, ":")
	if !ok || esc == "" || key == "" {
		return "", fmt.Errorf("redisstore: malformed index member %q in shard %d", member, shard)
	}
	return sk[shard].record(member), nil
}

// scopeRange is the lexical range of a scope's members in its shard's index,
// for ZRANGE BYLEX: every member that begins with the escaped scope and ':'.
// The escaped scope holds no ':', so no other scope's member falls in it.
// after, when not empty, starts the range after that key.
func scopeRange(scope, after string) (min, max string) {
	esc := escapeScope(scope)
	if after != "" {
		return "(" + esc + ":" + after, "(" + esc + ";"
	}
	return "[" + esc + ":", "(" + esc + ";"
}
