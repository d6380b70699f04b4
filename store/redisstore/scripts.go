package redisstore

import "github.com/redis/go-redis/v9"

// The Lua scripts. Each operation on a record is one script, so it is
// atomic on the server; every key a script touches is passed in KEYS and
// shares the record's hash tag. Time comes from the server (TIME, in
// microseconds); Redis 7 replicates a script's effects, not the script, so
// reading the clock in a writing script is allowed. Numbers are written
// with '%.0f' because Lua's tostring would round them (%.14g).
//
// Replies are tables whose first element is a code: "ok", "acquired",
// "takeover", "replay", "in_flight", "mismatch", or a failure: "gone" (no
// record), "stale" (another token), "completed", "released". Records come
// back as the values of recordFields, in that order (false for an absent
// field).

// recordFields are the hash fields of a record, in the order the scripts
// return them. The last two (outcome data and meta) are only returned where
// the caller needs them.
var recordFields = []string{"s", "f", "t", "a", "lu", "cr", "co", "ex", "ru", "w", "re", "cp", "cd", "od", "om"}

// Lua helpers, put before the scripts that use them (a script pays for
// every function it defines, on every call).
const (
	luaNow = `
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function num(x) return string.format('%.0f', x) end
`
	// reply returns code, now and the record's fields; all of them (with
	// the outcome) when full.
	luaReply = `
local function reply(code, now, key, full)
  local r
  if full then
    r = redis.call('HMGET', key, 's','f','t','a','lu','cr','co','ex','ru','w','re','cp','cd','od','om')
  else
    r = redis.call('HMGET', key, 's','f','t','a','lu','cr','co','ex','ru','w','re','cp','cd')
  end
  table.insert(r, 1, num(now))
  table.insert(r, 1, code)
  return r
end
`
	// expire sets the record's Redis TTL at ru (µs), rounded up to the
	// millisecond Redis keeps.
	luaExpire = `
local function expire(rec, ru)
  redis.call('PEXPIREAT', rec, num(math.ceil(ru / 1000)))
end
`
	// owned checks that token is the current owner; nil when it is.
	luaOwned = `
local function owned(cur, token)
  if not cur[1] then return 'gone' end
  if cur[2] ~= token then return 'stale' end
  if cur[1] == 'c' then return 'completed' end
  if cur[1] ~= 'p' then return 'released' end
  return nil
end
`
)

// KEYS: record, list, expiry, token. ARGV: member, key, fingerprint,
// lease µs, window µs, retention µs.
var beginScript = redis.NewScript(luaNow + luaReply + luaExpire + `
local now = now_us()
local cur = redis.call('HMGET', KEYS[1], 's', 'f', 't', 'a', 'lu', 'ex', 'cr')
local st = cur[1]
local live = st == 'p' or (st == 'c' and now < tonumber(cur[6]))
if live then
  if cur[2] ~= ARGV[3] then return {'mismatch', num(now)} end
  if st == 'c' then return reply('replay', now, KEYS[1], true) end
  if now < tonumber(cur[5]) then return reply('in_flight', now, KEYS[1], false) end
end
-- The token is max(shard counter + 1, server time in µs, record token + 1),
-- and the counter keeps it: tokens of a key increase across Delete and
-- expiry (the counter outlives records), across a lost counter (the clock),
-- and across a clock that steps back (the counter). Usually one call.
local old = tonumber(redis.call('SET', KEYS[4], num(now), 'GET'))
local tok = now
if old and old >= tok then tok = old + 1 end
local prev = tonumber(cur[3])
if prev and prev >= tok then tok = prev + 1 end
if tok ~= now then redis.call('SET', KEYS[4], num(tok)) end
local lu = now + tonumber(ARGV[4])
local ru = lu + tonumber(ARGV[5])
-- The expiry entry is a lower bound of RetainUntil: every RetainUntil this
-- lease can reach (Extend, Complete, Release) is at least now + window, so
-- only Begin writes the entry; Sweep moves an entry that comes due early.
local low = now + tonumber(ARGV[5])
if live then
  -- Pending with an expired lease: take over, keeping the checkpoint.
  redis.call('HSET', KEYS[1], 't', num(tok), 'a', num(tonumber(cur[4]) + 1), 'lu', num(lu), 'ru', num(ru), 'w', ARGV[5], 're', ARGV[6])
  expire(KEYS[1], ru)
  redis.call('ZADD', KEYS[3], 'LT', num(low), ARGV[1])
  return reply('takeover', now, KEYS[1], false)
end
local attempts, created = 1, now
if st then
  -- A released record, or a completed one past its window: only the
  -- attempt count (and creation time) survive a release.
  if st == 'r' then
    attempts = tonumber(cur[4]) + 1
    created = tonumber(cur[7])
  end
  redis.call('DEL', KEYS[1])
else
  -- A record that exists has its list entry already.
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
end
local t, a, l, c, r = num(tok), num(attempts), num(lu), num(created), num(ru)
redis.call('HSET', KEYS[1], 's', 'p', 'f', ARGV[3], 't', t, 'a', a, 'lu', l, 'cr', c, 'ru', r, 'w', ARGV[5], 're', ARGV[6])
expire(KEYS[1], ru)
redis.call('ZADD', KEYS[3], 'LT', num(low), ARGV[1])
return {'acquired', num(now), 'p', ARGV[3], t, a, l, c, false, false, r, ARGV[5], ARGV[6], false, false}
`)

// KEYS: record. ARGV: token, data, meta.
var completeScript = redis.NewScript(luaNow + luaExpire + luaOwned + `
local cur = redis.call('HMGET', KEYS[1], 's', 't', 'w', 're', 'f', 'a', 'lu', 'cr', 'cp')
local e = owned(cur, ARGV[1])
if e then return {e} end
local now = now_us()
local w, re = tonumber(cur[3]), tonumber(cur[4])
local ru = now + math.max(w, re)
if cur[9] then redis.call('HDEL', KEYS[1], 'cp', 'cd') end
local co, ex, r = num(now), num(now + w), num(ru)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 's', 'c', 'co', co, 'ex', ex, 'ru', r, 'od', ARGV[2], 'om', ARGV[3])
else
  redis.call('HSET', KEYS[1], 's', 'c', 'co', co, 'ex', ex, 'ru', r, 'od', ARGV[2])
end
expire(KEYS[1], ru)
return {'ok', co, 'c', cur[5], cur[2], cur[6], cur[7], cur[8], co, ex, r, cur[3], cur[4], false, false}
`)

// KEYS: record. ARGV: token.
var releaseScript = redis.NewScript(luaNow + luaExpire + luaOwned + `
local cur = redis.call('HMGET', KEYS[1], 's', 't', 'a', 'cr', 'w', 're')
local e = owned(cur, ARGV[1])
if e then return {e} end
local now = now_us()
local ru = now + tonumber(cur[5])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 's', 'r', 't', cur[2], 'a', cur[3], 'cr', cur[4], 'lu', num(now), 'ex', num(now), 'ru', num(ru), 'w', cur[5], 're', cur[6])
expire(KEYS[1], ru)
return {'ok'}
`)

// KEYS: record. ARGV: token, lease µs.
var extendScript = redis.NewScript(luaNow + luaReply + luaExpire + luaOwned + `
local cur = redis.call('HMGET', KEYS[1], 's', 't', 'w')
local e = owned(cur, ARGV[1])
if e then return {e} end
local now = now_us()
local lu = now + tonumber(ARGV[2])
local ru = lu + tonumber(cur[3])
redis.call('HSET', KEYS[1], 'lu', num(lu), 'ru', num(ru))
expire(KEYS[1], ru)
return reply('ok', now, KEYS[1], false)
`)

// KEYS: record. ARGV: token, point, data.
var checkpointScript = redis.NewScript(luaOwned + `
local cur = redis.call('HMGET', KEYS[1], 's', 't')
local e = owned(cur, ARGV[1])
if e then return {e} end
redis.call('HSET', KEYS[1], 'cp', ARGV[2], 'cd', ARGV[3])
return {'ok'}
`)

// KEYS: record, list, expiry. ARGV: member, key. The index entries go even
// when Redis has already expired the record.
var deleteScript = redis.NewScript(`
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if n == 0 then return {'gone'} end
return {'ok'}
`)

// sweepScript removes the due records of one batch of one shard, with
// their index entries, and returns how many it removed. A record that is not
// due (a live lease, a later RetainUntil than its entry said) stays and its
// entry is moved to its RetainUntil; an entry whose record Redis already
// expired is removed and counted; an entry another sweep took is not. All
// keys are declared and share the shard's hash tag.
// KEYS: expiry, then record and list key of each entry. ARGV: member and
// key of each entry.
var sweepScript = redis.NewScript(luaNow + `
local now = now_us()
local n = 0
for i = 1, #ARGV / 2 do
  local rec, list = KEYS[2 * i], KEYS[2 * i + 1]
  local member, key = ARGV[2 * i - 1], ARGV[2 * i]
  local cur = redis.call('HMGET', rec, 's', 'lu', 'ru')
  local due = true
  if cur[1] then
    local ru = tonumber(cur[3])
    if now < ru or (cur[1] == 'p' and now < tonumber(cur[2])) then
      redis.call('ZADD', KEYS[1], num(ru), member)
      due = false
    else
      redis.call('DEL', rec)
    end
  end
  if due then
    redis.call('ZREM', list, key)
    n = n + redis.call('ZREM', KEYS[1], member)
  end
end
return n
`)

// dropScript removes a list entry whose record Redis has expired (List does
// it lazily); the expiry entry stays for Sweep to count. KEYS: record, list.
// ARGV: key.
var dropScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('ZREM', KEYS[2], ARGV[1]) end
return 0
`)
