"""Every Lua script the Redis store runs, kept in one place.

Session hash fields hold JSON values (``status`` is the string ``"active"`` with its quotes);
fields whose name starts with ``_`` are the store's own (``_created_ts``, ``_call_key``).
Every script touches keys of one hash-tag bucket only (see ``keys.py``), so each runs on Redis
Cluster. Return codes: ``-1`` unknown session, ``0`` session not active, ``1`` done.
"""

from __future__ import annotations

# Raise a key's TTL to at least ARGV-given seconds, never lower it (shared index keys).
_BUMP_TTL = """
local function bump_ttl(key, ttl)
  if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
end
"""

# KEYS: session, deadlines[, call]
# ARGV: session_id, ttl, deadline, fields (one JSON array: name, value, name, value, ...; each
#       value the field's JSON text; with a call, ``_call_key`` names KEYS[3]), session key
#       prefix (``Keys.session_prefix_of``)
# Returns {1, id} opened, {-1, id} the id is taken, {0, id, {name, value, ...}} the call already
# has a session (read under the prefix: a call's session shares its CallSid's bucket). An index
# that outlived its session is dropped and the session opened afresh.
OPEN = (
    _BUMP_TTL
    + """
if #KEYS == 3 then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local current = redis.call('HGETALL', ARGV[5] .. existing)
    if #current > 0 then return {0, existing, current} end
    redis.call('DEL', KEYS[3])
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, ARGV[1]} end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[4])))
if #KEYS == 3 then redis.call('SET', KEYS[3], ARGV[1], 'EX', ttl) end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
bump_ttl(KEYS[2], ttl)
return {1, ARGV[1]}
"""
)

# KEYS: session   ARGV: updated_at, field, value, ...
UPDATE = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= '"active"' then return 0 end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1], unpack(ARGV, 2))
return 1
"""

# KEYS: session   ARGV: field, amount, ...
INCREMENT = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= '"active"' then return 0 end
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: session, msgs, docs, deadlines   ARGV: session_id, ttl, deadline, updated_at
TOUCH = (
    _BUMP_TTL
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= '"active"' then return 0 end
local ttl = tonumber(ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
local call_key = redis.call('HGET', KEYS[1], '_call_key')
if call_key then redis.call('EXPIRE', call_key, ttl) end
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
bump_ttl(KEYS[4], ttl)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
return 1
"""
)

# History and counters of one flush, in one step.
# KEYS: session, msgs   ARGV: updated_at, k, counter_1, amount_1, ... counter_k, amount_k,
#                             message_json, ...
APPEND = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= '"active"' then return 0 end
local k = tonumber(ARGV[2])
for i = 3, 2 + 2 * k, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
local first = 3 + 2 * k
local n
if #ARGV >= first then
  n = redis.call('RPUSH', KEYS[2], unpack(ARGV, first))
  local ttl = redis.call('TTL', KEYS[1])
  if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
  redis.call('HINCRBY', KEYS[1], 'message_count', #ARGV - first + 1)
else
  n = redis.call('LLEN', KEYS[2])
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1])
return n
"""

# KEYS: session, child (docs hash)   ARGV: field, value ('' value deletes)
PUT_CHILD = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= '"active"' then return 0 end
if ARGV[2] == '' then return redis.call('HDEL', KEYS[2], ARGV[1]) + 1 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
return 1
"""

# The exactly-once transition.
# KEYS: session, msgs, docs, deadlines, completed stream
# ARGV: session_id, end_reason, ended_at, ended_ts, duration ('' = measure), retention, stream_ttl,
#       on_expiry ('1': the sweeper is completing it: use the session's _expiry_reason if set)
# A reason the gateway set with MARK_ENDING (it is hanging up) wins over both.
# Returns {-1} unknown, {0} already completed, {1, entry_id, session_json, messages_json}.
COMPLETE = (
    _BUMP_TTL
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {-1} end
if st ~= '"active"' then return {0} end
local ending = redis.call('HGET', KEYS[1], '_ending_reason')
if ending then
  ARGV[2] = ending
elseif ARGV[8] == '1' then
  local reason = redis.call('HGET', KEYS[1], '_expiry_reason')
  if reason then ARGV[2] = reason end
end
local duration = ARGV[5]
if duration == '' then
  local created = tonumber(redis.call('HGET', KEYS[1], '_created_ts')) or tonumber(ARGV[4])
  duration = string.format('%.3f', math.max(0, tonumber(ARGV[4]) - created))
end
redis.call('HSET', KEYS[1], 'status', '"completed"', 'end_reason', ARGV[2],
           'ended_at', ARGV[3], 'updated_at', ARGV[3], 'duration', duration)
redis.call('ZREM', KEYS[4], ARGV[1])
local flat = redis.call('HGETALL', KEYS[1])
local parts = {}
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 1) ~= '_' then
    parts[#parts + 1] = cjson.encode(flat[i]) .. ':' .. flat[i + 1]
  end
end
local session_json = '{' .. table.concat(parts, ',') .. '}'
local messages_json = '[' .. table.concat(redis.call('LRANGE', KEYS[2], 0, -1), ',') .. ']'
local id = redis.call('XADD', KEYS[5], '*', 'session', session_json, 'messages', messages_json)
bump_ttl(KEYS[5], tonumber(ARGV[7]))
local retention = tonumber(ARGV[6])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], retention) end
local call_key = redis.call('HGET', KEYS[1], '_call_key')
if call_key then redis.call('EXPIRE', call_key, retention) end
return {1, id, session_json, messages_json}
"""
)

# KEYS: session, msgs, docs, deadlines   ARGV: session_id
DELETE = """
local existed = redis.call('EXISTS', KEYS[1])
local call_key = redis.call('HGET', KEYS[1], '_call_key')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if call_key then redis.call('DEL', call_key) end
redis.call('ZREM', KEYS[4], ARGV[1])
return existed
"""

# KEYS: completed stream   ARGV: entry_id, ...   (acknowledge, then drop: the stream only
# ever holds records not yet safely in the archive)
ACK = """
local n = redis.call('XACK', KEYS[1], 'archivers', unpack(ARGV))
redis.call('XDEL', KEYS[1], unpack(ARGV))
return n
"""

# Attach a media stream unless the session already has a live one (Twilio sometimes opens two).
# KEYS: session   ARGV: stream_json, updated_at   Returns -1 / 0 / 1 attached / 2 refused.
CLAIM_STREAM = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= '"active"' then return 0 end
local current = redis.call('HGET', KEYS[1], 'stream')
if current and current ~= 'null' then
  local ended = cjson.decode(current)['ended_at']
  if ended == nil or ended == cjson.null then return 2 end
end
redis.call('HSET', KEYS[1], 'stream', ARGV[1], 'updated_at', ARGV[2])
return 1
"""

# The gateway decided how an active call ends (it is about to hang up): whoever completes the
# session from now on (the status callback the hang-up causes, a sweeper) uses this reason.
# KEYS: session   ARGV: end_reason   Returns -1 unknown / 0 not active / 1.
MARK_ENDING = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= '"active"' then return 0 end
redis.call('HSET', KEYS[1], '_ending_reason', ARGV[1])
return 1
"""

# Move a session's deadline (a lease while a call is live, a grace after its stream ended) and
# say which end reason the sweeper should use when it passes.
# KEYS: session, deadlines   ARGV: session_id, deadline, end_reason ('' = expired)
SET_DEADLINE = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= '"active"' then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], '_expiry_reason')
else
  redis.call('HSET', KEYS[1], '_expiry_reason', ARGV[3])
end
return 1
"""
