-- Accept a batch of votes of one partition atomically, in order. For each vote: a
-- retried vote id gets its first answer again; then the poll's state, the device's
-- rate, the device's vote limit and its account's vote limit are checked; then the vote
-- is appended and its id remembered. One call per partition per event-loop turn, not
-- one per vote.
--
-- LAYOUT, the names of the keys, rules and entry fields in the order the caller lays
-- them out, is written in above this line by services/common/scripts.py
-- (vote_batch_source) from its named tuples (VoteKeys, RuleArgs, VOTE_FIELDS), and each
-- key and argument is found here by name, so the two cannot drift apart by position:
-- KEYS: 1 votes stream, then per vote its keys (LAYOUT.keys)
-- ARGV: 1 votes n, 2 rule sets nr, then the nr rule sets (LAYOUT.rules each),
--       then per vote the number of its rule set (1..nr) and its entry field values
--       (LAYOUT.fields); the entry's type field and value (LAYOUT.type) are the same
--       for every vote.
-- Returns per vote {outcome, value}. The outcomes are VoteOutcome in scripts.py, and
-- the value is what that outcome carries:
local ACCEPTED = 'accepted'          -- the count
local REPLAYED = 'replayed'          -- the count
local NOT_OPEN = 'not_open'          -- the poll's state on this partition
local RATE_LIMITED = 'rate_limited'  -- ms until the device's rate window ends
local VOTE_LIMIT = 'vote_limit'      -- the poll's votes per device
local ACCOUNT_LIMIT = 'account_limit' -- the poll's votes per account
local ID_REUSED = 'id_reused'        -- 0

local key, rule, field = {}, {}, {}
for j, name in ipairs(LAYOUT.keys) do key[name] = j - 1 end
for j, name in ipairs(LAYOUT.rules) do rule[name] = j - 1 end
for j, name in ipairs(LAYOUT.fields) do field[name] = j end
-- A name missing from the layout is a caller out of step: refuse the whole call.
for _, name in ipairs({'state', 'dedupe', 'device_votes', 'rate', 'account_votes'}) do
  if key[name] == nil then return redis.error_reply('vote_batch.lua: no key ' .. name) end
end
for _, name in ipairs({'max_votes', 'max_account_votes', 'rate_per_s', 'ttl_s'}) do
  if rule[name] == nil then return redis.error_reply('vote_batch.lua: no rule ' .. name) end
end
for _, name in ipairs({'opt', 'n'}) do
  if field[name] == nil then return redis.error_reply('vote_batch.lua: no field ' .. name) end
end
local nk, nrl, nf = #LAYOUT.keys, #LAYOUT.rules, #LAYOUT.fields
local n, nr = tonumber(ARGV[1]), tonumber(ARGV[2])
local first = 3 + nr * nrl
local stride = 1 + nf
if n == nil or nr == nil or #KEYS ~= 1 + n * nk or #ARGV ~= first - 1 + n * stride then
  return redis.error_reply('vote_batch.lua: ' .. #KEYS .. ' keys and ' .. #ARGV
    .. ' arguments: a call out of step with the layout')
end
-- Each rule set is read once per call, not once per vote.
local rules = {}
for s = 1, nr do
  local r = 3 + (s - 1) * nrl
  rules[s] = {
    max = tonumber(ARGV[r + rule.max_votes]),
    maxa = tonumber(ARGV[r + rule.max_account_votes]),
    rate = tonumber(ARGV[r + rule.rate_per_s]),
    ttl = ARGV[r + rule.ttl_s],
  }
end
-- Every vote's rule set, found before anything is written: a call out of step is
-- refused whole, never half applied.
local rule_of = {}
for i = 0, n - 1 do
  local rs = rules[tonumber(ARGV[first + i * stride])]
  if rs == nil then
    return redis.error_reply('vote_batch.lua: vote ' .. (i + 1) .. ' names no rule set')
  end
  rule_of[i] = rs
end
local K_STATE, K_DEDUPE, K_DV, K_RATE = key.state, key.dedupe, key.device_votes, key.rate
local K_AV = key.account_votes
local F_OPT, F_N = field.opt, field.n
local TYPE_FIELD, TYPE = LAYOUT.type[1], LAYOUT.type[2]

local out = {}
for i = 0, n - 1 do
  local a = first + i * stride
  local k = 2 + i * nk
  local rs = rule_of[i]
  local dedupe = KEYS[k + K_DEDUPE]
  local cnt = tonumber(ARGV[a + F_N])
  -- What a retry with the same vote id must match to be a replay.
  local fp = ARGV[a + F_OPT] .. ':' .. ARGV[a + F_N]
  local res
  local prev = redis.call('GET', dedupe)
  if prev then
    if prev == fp then res = {REPLAYED, cnt}
    else res = {ID_REUSED, 0} end
  else
    local st = redis.call('GET', KEYS[k + K_STATE])
    if st ~= 'open' then
      res = {NOT_OPEN, st or 'draft'}
    else
      local limit = rs.rate
      if limit > 0 then
        local rate = KEYS[k + K_RATE]
        local r = redis.call('INCR', rate)
        if r == 1 then redis.call('PEXPIRE', rate, 1000) end
        if r > limit then res = {RATE_LIMITED, redis.call('PTTL', rate)} end
      end
      if res == nil then
        -- Both limits are checked before either count is written: a vote refused by
        -- its account's limit must not use up its device's.
        local maxv, maxa = rs.max, rs.maxa
        local dv, used, av, aused
        if maxv > 0 then
          dv = KEYS[k + K_DV]
          used = tonumber(redis.call('GET', dv) or '0')
          if used + cnt > maxv then res = {VOTE_LIMIT, maxv} end
        end
        if res == nil and maxa > 0 then
          av = KEYS[k + K_AV]
          aused = tonumber(redis.call('GET', av) or '0')
          if aused + cnt > maxa then res = {ACCOUNT_LIMIT, maxa} end
        end
        if res == nil then
          if dv then redis.call('SET', dv, used + cnt, 'EX', rs.ttl) end
          if av then redis.call('SET', av, aused + cnt, 'EX', rs.ttl) end
          local entry = {TYPE_FIELD, TYPE}
          for j = 1, nf do
            entry[2 * j + 1] = LAYOUT.fields[j]
            entry[2 * j + 2] = ARGV[a + j]
          end
          redis.call('XADD', KEYS[1], '*', unpack(entry))
          redis.call('SET', dedupe, fp, 'EX', rs.ttl)
          res = {ACCEPTED, cnt}
        end
      end
    end
  end
  out[i + 1] = res
end
return out
