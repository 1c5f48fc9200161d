-- Apply a batch of stream entries to the live counters exactly once.
-- An entry counts only if this call is the one that acknowledges it (XACK returns
-- 1): acknowledgement and counting are one atomic step, so a redelivered, claimed
-- or concurrently held entry can never count twice, and an unacknowledged one is
-- still pending and will be applied later. The applied deltas go to the outbox
-- stream in the same step, for the PostgreSQL writer.
-- KEYS: 1 votes stream, 2 outbox stream, 3.. per poll: counts, version, closed;
--       then one per (poll, second): per-second counts
-- ARGV: 1 group, 2 number of entries, 3 ttl of per-second keys,
--       then per entry: id, kind ('v'|'c'), poll, option, count, sec, counts key index,
--       second key index
local stream, outbox, group = KEYS[1], KEYS[2], ARGV[1]
local n, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local agg, order, touched, closes, deferred, expire = {}, {}, {}, {}, {}, {}
local applied = 0
for i = 0, n - 1 do
  local o = 4 + i * 8
  local id, kind, poll = ARGV[o], ARGV[o + 1], ARGV[o + 2]
  local ci = tonumber(ARGV[o + 6])
  if kind == 'v' then
    if redis.call('XACK', stream, group, id) == 1 then
      local opt, cnt, sec, si = ARGV[o + 3], tonumber(ARGV[o + 4]), ARGV[o + 5], tonumber(ARGV[o + 7])
      redis.call('HINCRBY', KEYS[ci], opt, cnt)
      redis.call('HINCRBY', KEYS[si], opt, cnt)
      expire[si] = true
      touched[ci] = true
      local k = poll .. '\0' .. opt .. '\0' .. sec
      if agg[k] == nil then
        agg[k] = 0
        order[#order + 1] = {poll, opt, sec, k}
      end
      agg[k] = agg[k] + cnt
      applied = applied + 1
    end
  else
    -- A close marker is final only once every entry before it has been applied.
    local earlier = redis.call('XPENDING', stream, group, '-', '(' .. id, 1)
    if #earlier > 0 then
      deferred[#deferred + 1] = id
    elseif redis.call('XACK', stream, group, id) == 1 then
      redis.call('SET', KEYS[ci + 2], '1')
      touched[ci] = true
      closes[#closes + 1] = poll
    end
  end
end
for si, _ in pairs(expire) do redis.call('EXPIRE', KEYS[si], ttl) end
for ci, _ in pairs(touched) do
  redis.call('INCR', KEYS[ci + 1])
end
if #order > 0 or #closes > 0 then
  -- Poll ids and option keys are slugs ([a-z0-9_-]), so plain concatenation is valid JSON.
  local parts = {}
  for j, d in ipairs(order) do
    parts[j] = '["' .. d[1] .. '","' .. d[2] .. '",' .. d[3] .. ',' .. agg[d[4]] .. ']'
  end
  local cl = {}
  for j, p in ipairs(closes) do cl[j] = '"' .. p .. '"' end
  redis.call('XADD', outbox, '*', 'd',
    '{"deltas":[' .. table.concat(parts, ',') .. '],"closes":[' .. table.concat(cl, ',') .. ']}')
end
return {applied, #closes, deferred}
