-- Accept a batch of votes of one partition atomically, each as vote.lua would:
-- idempotency, poll state, device rate, device vote limit, then the append. One call
-- per partition per event-loop turn instead of one per vote.
-- KEYS: 1 votes stream, then per vote: state, dedupe, device votes, device rate
-- ARGV: 1 number of votes n, 2 number of entry fields f, 3..2+f the field names,
--       then per vote: fingerprint, max votes (0 = unlimited), rate limit per s (0 = off),
--       dedupe ttl s, count, device-votes ttl s, and the f field values
-- Returns per vote {code, a, b} as vote.lua does.
local n, f = tonumber(ARGV[1]), tonumber(ARGV[2])
local names = {}
for j = 1, f do names[j] = ARGV[2 + j] end
local out = {}
local base = 3 + f
local stride = 6 + f
for i = 0, n - 1 do
  local a = base + i * stride
  local k = 2 + i * 4
  local state, dedupe, dv, rate = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local res
  local prev = redis.call('GET', dedupe)
  if prev then
    if prev == ARGV[a] then res = {202, tonumber(ARGV[a + 4]), 1}
    else res = {422, 'vote_id_reused', 0} end
  else
    local st = redis.call('GET', state)
    if st ~= 'open' then
      res = {409, st or 'draft', 0}
    else
      local limit = tonumber(ARGV[a + 2])
      if limit > 0 then
        local r = redis.call('INCR', rate)
        if r == 1 then redis.call('PEXPIRE', rate, 1000) end
        if r > limit then res = {429, 'rate', redis.call('PTTL', rate)} end
      end
      if res == nil then
        local cnt = tonumber(ARGV[a + 4])
        local maxv = tonumber(ARGV[a + 1])
        if maxv > 0 then
          local used = tonumber(redis.call('GET', dv) or '0')
          if used + cnt > maxv then res = {422, 'vote_limit', maxv}
          else redis.call('SET', dv, used + cnt, 'EX', ARGV[a + 5]) end
        end
        if res == nil then
          local entry = {}
          for j = 1, f do
            entry[2 * j - 1] = names[j]
            entry[2 * j] = ARGV[a + 5 + j]
          end
          redis.call('XADD', KEYS[1], '*', unpack(entry))
          redis.call('SET', dedupe, ARGV[a], 'EX', ARGV[a + 3])
          res = {202, cnt, 0}
        end
      end
    end
  end
  out[i + 1] = res
end
return out
