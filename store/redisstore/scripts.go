package redisstore

import "github.com/redis/go-redis/v9"

// The Lua scripts. Each operation on a record is one script, so it is
// atomic on the server; every key a script touches is passed in KEYS and
// shares the record's hash tag. Time comes from the server (TIME, in
// microseconds); Redis 7 replicates a script's effects, not the script, so
// reading the clock in a writing script is allowed. Numbers go to Redis
// commands as Lua numbers: Redis writes them with %.17g (7.2 and later with
// an equivalent), so every integer below 1e17 is written exactly, without an
// exponent, and every time in µs is below it (a time.Duration spans at most
// 292 years); string.format would cost a quarter of a microsecond a call.
//
// A record is one string (record.go): a script reads it with one GET,
// unpacks the fixed header with struct.unpack, compares the fingerprint
// section as bytes and keeps the sections it does not change as one
// substring, so it never decodes an outcome; it writes the record and its
// expiry with one SET … PXAT. What a script must judge, it judges; what it
// returns, Go decodes.
//
// Replies are tables whose first element is a code: "ok", "acquired",
// "takeover", "replay", "in_flight", "mismatch", or a failure: "gone" (no
// record), "stale" (another token), "completed", "released", "corrupt" (a
// value that is not a record of this format). Times come back as integers
// (µs) and records as their bytes.

// luaHeader is the struct format of a record's fixed header; luaOwned
// defines owned(record key, token bytes), which reads the record and
// returns it when the token (eight bytes) is its current owner's, or nil
// and the failure to reply; luaCheck does that for the record of KEYS[1]
// and ARGV[1], leaving the record in s; luaNow reads the server's clock.
const (
	luaHeader = `'<Bc1Bi8i8i8i8i8i8i8i8i8'`
	luaOwned  = `
local function owned(kr, token)
  local s = redis.call('GET', kr)
  if not s then return nil, {'gone'} end
  if #s < 95 or string.byte(s, 1) ~= 1 then return nil, {'corrupt'} end
  if string.sub(s, 4, 11) ~= token then return nil, {'stale'} end
  local st = string.sub(s, 2, 2)
  if st == 'c' then return nil, {'completed'} end
  if st ~= 'p' then return nil, {'released'} end
  return s
end
`
	luaCheck = luaOwned + `
local s, fail = owned(KEYS[1], ARGV[1])
if not s then return fail end
`
	luaNow = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
`
)

// KEYS: record, index, token. ARGV: member, fingerprint section, and lease,
// window and retention in µs as three little-endian int64 (no decimal to
// parse). A replay, an owner in flight or a mismatch reads and writes
// nothing else.
var beginScript = redis.NewScript(luaNow + luaToken + luaIndex + luaBegin + `
return begin(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])
`)

// luaToken defines token(counter key, the record's token or nil), the
// fencing token of an acquisition. The token is max(shard counter + 1,
// server time in µs, record token + 1), and the counter keeps it: tokens of
// a key increase across Delete and expiry (the counter outlives records),
// across a lost counter (the clock), and across a clock that steps back
// (the counter). The counter is 8 bytes, so no number is formatted or
// parsed. Usually one call.
//
// luaNextToken is the rule, shared with luaBatchToken: nextToken(counter
// value or nil, record token or nil); counter(the counter's bytes or nil)
// reads it.
const luaNextToken = `
local function counter(old)
  if not old then return nil end
  return (struct.unpack('<i8', old))
end
local function nextToken(ctr, prev)
  local tok = now
  if ctr and ctr >= tok then tok = ctr + 1 end
  if prev and prev >= tok then tok = prev + 1 end
  return tok
end
`
const luaToken = luaNextToken + `
local function token(kt, prev)
  local tok = nextToken(counter(redis.call('SET', kt, struct.pack('<i8', now), 'GET')), prev)
  if tok ~= now then redis.call('SET', kt, struct.pack('<i8', tok)) end
  return tok
end
`

// luaIndex defines index(index key, member): every acquisition puts the
// index entry (a no-op when it is there), so a record is listed from its
// first Begin on; a string score, no number to format.
const luaIndex = `
local function index(ki, member)
  redis.call('ZADD', ki, '0', member)
end
`

// luaBatchToken and luaBatchIndex are token and index for a batch, whose
// operations share one shard: the counter is read once and written once,
// and the index entries go in one ZADD, when the batch ends (flush), with
// the same result as one call each in turn.
const luaBatchToken = luaNextToken + `
local ctr, ctrKey
local function token(kt, prev)
  if not ctrKey then
    ctrKey = kt
    ctr = counter(redis.call('GET', kt))
  end
  ctr = nextToken(ctr, prev)
  return ctr
end
`
const luaBatchIndex = `
local idxKey, entries = nil, {}
local function index(ki, member)
  idxKey = ki
  entries[#entries + 1] = '0'
  entries[#entries + 1] = member
end
local function flush()
  if ctrKey then redis.call('SET', ctrKey, struct.pack('<i8', ctr)) end
  if idxKey then redis.call('ZADD', idxKey, unpack(entries)) end
end
`

// luaBegin defines begin(record, index, token, member, fingerprint
// section, durations), the rules of Begin at the server time now.
const luaBegin = `
local function begin(kr, ki, kt, member, fp, times)
  local s = redis.call('GET', kr)
  local live, st, fl, prev, att, lu, cr, co, ex = false
  if s then
    if #s < 95 or string.byte(s, 1) ~= 1 then return {'corrupt', now} end
    local _
    _, st, fl, prev, att, lu, cr, co, ex = struct.unpack('<Bc1Bi8i8i8i8i8i8', s)
    live = st == 'p' or (st == 'c' and now < ex)
    if live then
      if string.sub(s, 76, 75 + #fp) ~= fp then return {'mismatch', now} end
      if st == 'c' then return {'replay', now, s} end
      if now < lu then return {'in_flight', now, s} end
    end
  end
  local tok = token(kt, prev)
  local lease, w, re = struct.unpack('<i8i8i8', times)
  local l = now + lease
  local ru = l + w
  local rec, code
  if live then
    -- Pending with an expired lease: take over, keeping the checkpoint.
    rec = struct.pack(` + luaHeader + `, 1, 'p', fl, tok, att + 1, l, cr, co, 0, ru, w, re) .. string.sub(s, 76)
    code = 'takeover'
  else
    -- Absent, released, or completed past its window: a new record; only the
    -- attempt count and creation time survive a release.
    local attempts, created = 1, now
    if st == 'r' then attempts, created = att + 1, cr end
    rec = struct.pack(` + luaHeader + `, 1, 'p', 0, tok, attempts, l, created, 0, 0, ru, w, re) .. fp .. '` + luaEmptySections + `'
    code = 'acquired'
  end
  redis.call('SET', kr, rec, 'PXAT', math.ceil(ru / 1000))
  index(ki, member)
  return {code, now, rec}
end
`

// luaEmptySections are emptySections as a Lua string literal.
const luaEmptySections = `\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0`

// KEYS: record. ARGV: token bytes, the sections after the fingerprint (no
// checkpoint, the outcome). Returns the record's header and fingerprint.
var completeScript = redis.NewScript(luaNow + luaComplete + `
return complete(KEYS[1], ARGV[1], ARGV[2])
`)

// luaComplete defines complete(record, token bytes, sections after the
// fingerprint), the rules of Complete at the server time now, and owned,
// which it calls.
const luaComplete = luaOwned + `
local function complete(kr, token, rest)
  local s, fail = owned(kr, token)
  if not s then return fail end
  -- Token, attempts, lease and creation (bytes 4-35) and window, retention
  -- and fingerprint (from byte 60) are copied as they are.
  local w, re, fpl = struct.unpack('<i8i8I4', s, 60)
  local r = now + math.max(w, re)
  local head = '\1c\0' .. string.sub(s, 4, 35) .. struct.pack('<i8i8i8', now, now + w, r) .. string.sub(s, 60, 79 + fpl)
  -- A large outcome is appended rather than joined to the header in Lua:
  -- Redis's Lua hashes every byte of every string it makes, so joining would
  -- hash (and copy) the outcome a second time.
  if #rest > 4096 then
    redis.call('SET', kr, head, 'PXAT', math.ceil(r / 1000))
    redis.call('APPEND', kr, rest)
  else
    redis.call('SET', kr, head .. rest, 'PXAT', math.ceil(r / 1000))
  end
  return {'ok', head}
end
`

// batchScript runs a batch of Begins and Completes on records of one shard
// (every key declared, one slot) at one server time, in order, and returns
// the reply of each, as beginScript and completeScript would. KEYS: the
// keys of each operation in turn (record, index, token for a Begin; record
// for a Complete). ARGV: the operations as a string of 'b' and 'c', then
// the arguments of each in turn.
var batchScript = redis.NewScript(luaNow + luaBatchToken + luaBatchIndex + luaBegin + luaComplete + `
local ops = ARGV[1]
local out = {}
local k, a = 1, 2
for i = 1, #ops do
  if string.byte(ops, i) == 98 then
    out[i] = begin(KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[a], ARGV[a + 1], ARGV[a + 2])
    k, a = k + 3, a + 3
  else
    out[i] = complete(KEYS[k], ARGV[a], ARGV[a + 1])
    k, a = k + 1, a + 2
  end
end
flush()
return out
`)

// KEYS: record. ARGV: token bytes. Only the token, attempt count and
// creation time survive.
var releaseScript = redis.NewScript(luaCheck + luaNow + `
local _, _, _, tok, att, lu, cr, co, ex, ru, w, re = struct.unpack(` + luaHeader + `, s)
local r = now + w
local rec = struct.pack(` + luaHeader + `, 1, 'r', 0, tok, att, now, cr, 0, now, r, w, re) .. '\0\0\0\0` + luaEmptySections + `'
redis.call('SET', KEYS[1], rec, 'PXAT', math.ceil(r / 1000))
return {'ok'}
`)

// KEYS: record. ARGV: token bytes, lease µs. Returns the server's time and
// the record.
var extendScript = redis.NewScript(luaCheck + luaNow + `
local _, _, fl, tok, att, lu, cr, co, ex, ru, w, re = struct.unpack(` + luaHeader + `, s)
local l = now + tonumber(ARGV[2])
local r = l + w
local rec = struct.pack(` + luaHeader + `, 1, 'p', fl, tok, att, l, cr, co, ex, r, w, re) .. string.sub(s, 76)
redis.call('SET', KEYS[1], rec, 'PXAT', math.ceil(r / 1000))
return {'ok', now, rec}
`)

// KEYS: record. ARGV: token bytes, the sections after the fingerprint (the
// checkpoint, no outcome). The expiry stays.
var checkpointScript = redis.NewScript(luaCheck + `
local fpl = struct.unpack('<I4', s, 76)
redis.call('SET', KEYS[1], '\1p\1' .. string.sub(s, 4, 79 + fpl) .. ARGV[2], 'KEEPTTL')
return {'ok'}
`)

// KEYS: record, index. ARGV: member. The index entry goes even when Redis
// has already expired the record.
var deleteScript = redis.NewScript(`
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if n == 0 then return {'gone'} end
return {'ok'}
`)

// sweepScript removes, from one batch of one shard's index, the entries
// whose record Redis has expired (or that something deleted without its
// entry), at most ARGV[1] of them (0: no limit), and returns how many it
// removed and how many entries it looked at. A record that is still there
// stays with its entry: Redis removes it at its RetainUntil, and a later
// Sweep its entry. All keys are declared and share the shard's hash tag.
// KEYS: index, then the record of each entry. ARGV: limit, then the member
// of each entry.
var sweepScript = redis.NewScript(`
local limit = tonumber(ARGV[1])
local gone, seen = {}, #KEYS - 1
for i = 2, #KEYS do
  if limit > 0 and #gone >= limit then seen = i - 2 break end
  if redis.call('EXISTS', KEYS[i]) == 0 then gone[#gone + 1] = ARGV[i] end
end
local n = 0
if #gone > 0 then n = redis.call('ZREM', KEYS[1], unpack(gone)) end
return {n, seen}
`)

// dropScript removes an index entry whose record Redis has expired (List
// does it lazily), counted by no Sweep. KEYS: record, index. ARGV: member.
var dropScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('ZREM', KEYS[2], ARGV[1]) end
return 0
`)
