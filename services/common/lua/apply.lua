-- Apply a batch of stream entries to the live counters exactly once.
-- An entry counts only if this call is the one that acknowledges it (XACK returns
-- 1): acknowledgement and counting are one atomic step, so a redelivered, claimed
-- or concurrently held entry can never count twice, and an unacknowledged one is
-- still pending and will be applied later. The applied deltas go to the outbox
-- stream in the same step, for the PostgreSQL writer.
--
-- The layout comes with every call, built by services/common/scripts.py (apply_args,
-- from the named lists PollKeys and ApplyArgs), and each poll key and argument is
-- found here by name:
-- KEYS: 1 votes stream, 2 outbox stream, then per poll its npk keys; then one per
--       (poll, second): that second's counts
-- ARGV: 1 group, 2 entries n, 3 ttl of per-second keys, 4 npk, 5 na (arguments per
--       entry), then the npk poll key names, the na argument names, then per entry its
--       na values
-- Returns {applied, closes, deferred ids} (ApplyResult in scripts.py).
local stream, outbox, group = KEYS[1], KEYS[2], ARGV[1]
local n, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local npk, na = tonumber(ARGV[4]), tonumber(ARGV[5])
local pk, arg = {}, {}
for j = 1, npk do pk[ARGV[5 + j]] = j - 1 end
for j = 1, na do arg[ARGV[5 + npk + j]] = j - 1 end
-- A name missing from the layout is a caller out of step: refuse the whole call.
for _, name in ipairs({'counts', 'version', 'closed'}) do
  if pk[name] == nil then return redis.error_reply('apply.lua: no poll key ' .. name) end
end
for _, name in ipairs({'id', 'kind', 'poll', 'option', 'taps', 'sec', 'poll_keys', 'second_key'}) do
  if arg[name] == nil then return redis.error_reply('apply.lua: no argument ' .. name) end
end
local P_COUNTS, P_VERSION, P_CLOSED = pk.counts, pk.version, pk.closed
local first = 6 + npk + na
local agg, order, touched, closes, deferred, expire = {}, {}, {}, {}, {}, {}
local applied = 0
for i = 0, n - 1 do
  local o = first + i * na
  local id, kind, poll = ARGV[o + arg.id], ARGV[o + arg.kind], ARGV[o + arg.poll]
  local ci = tonumber(ARGV[o + arg.poll_keys])
  if kind == 'v' then
    if redis.call('XACK', stream, group, id) == 1 then
      local opt, cnt = ARGV[o + arg.option], tonumber(ARGV[o + arg.taps])
      local sec, si = ARGV[o + arg.sec], tonumber(ARGV[o + arg.second_key])
      redis.call('HINCRBY', KEYS[ci + P_COUNTS], opt, cnt)
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
      redis.call('SET', KEYS[ci + P_CLOSED], '1')
      touched[ci] = true
      closes[#closes + 1] = poll
    end
  end
end
for si, _ in pairs(expire) do redis.call('EXPIRE', KEYS[si], ttl) end
for ci, _ in pairs(touched) do
  redis.call('INCR', KEYS[ci + P_VERSION])
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
