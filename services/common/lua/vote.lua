-- Accept one vote atomically: idempotency, poll state, device rate, device vote
-- limit and the append happen in one step, so no interleaving of ingest processes
-- can double a vote or slip one past a close.
-- KEYS: 1 state, 2 dedupe, 3 device votes, 4 device rate, 5 votes stream
-- ARGV: 1 fingerprint, 2 max votes (0 = unlimited), 3 rate limit per s (0 = off),
--       4 dedupe ttl s, 5 count, 6 device-votes ttl s, 7.. stream entry field/value pairs
local prev = redis.call('GET', KEYS[2])
if prev then
  if prev == ARGV[1] then return {202, tonumber(ARGV[5]), 1} end
  return {422, 'vote_id_reused', 0}
end
local st = redis.call('GET', KEYS[1])
if st ~= 'open' then return {409, st or 'draft', 0} end
local limit = tonumber(ARGV[3])
if limit > 0 then
  local r = redis.call('INCR', KEYS[4])
  if r == 1 then redis.call('PEXPIRE', KEYS[4], 1000) end
  if r > limit then return {429, 'rate', redis.call('PTTL', KEYS[4])} end
end
local n = tonumber(ARGV[5])
local maxv = tonumber(ARGV[2])
if maxv > 0 then
  local used = tonumber(redis.call('GET', KEYS[3]) or '0')
  if used + n > maxv then return {422, 'vote_limit', maxv} end
  redis.call('SET', KEYS[3], used + n, 'EX', ARGV[6])
end
redis.call('XADD', KEYS[5], '*', unpack(ARGV, 7))
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[4])
return {202, n, 0}
