-- Accept a batch of votes of one partition atomically, in order. For each vote: a
-- retried vote id gets its first answer again; then the poll's state, the device's
-- rate, the device's vote limit and its account's vote limit are checked; then the vote is appended and its id
-- remembered. One call per partition per event-loop turn, not one per vote.
--
-- The layout comes with every call, built by services/common/scripts.py from its named
-- lists (VoteKeys, VoteArgs, ENTRY_FIELDS), and each key and argument is found here by
-- name, so the two cannot drift apart by position:
-- KEYS: 1 votes stream, then per vote its nk keys
-- ARGV: 1 votes n, 2 nk, 3 na (arguments per vote), 4 ne (entry fields per vote),
--       then the nk key names, the na argument names, the ne entry field names,
--       then per vote its na argument values and ne entry field values
-- Returns per vote {outcome, value}. The outcomes are VoteOutcome in scripts.py, and
-- the value is what that outcome carries:
local ACCEPTED = 'accepted'          -- the count
local REPLAYED = 'replayed'          -- the count
local NOT_OPEN = 'not_open'          -- the poll's state on this partition
local RATE_LIMITED = 'rate_limited'  -- ms until the device's rate window ends
local VOTE_LIMIT = 'vote_limit'      -- the poll's votes per device
local ACCOUNT_LIMIT = 'account_limit' -- the poll's votes per account
local ID_REUSED = 'id_reused'        -- 0

local n, nk, na, ne = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local key, arg, fields = {}, {}, {}
for j = 1, nk do key[ARGV[4 + j]] = j - 1 end
for j = 1, na do arg[ARGV[4 + nk + j]] = j - 1 end
for j = 1, ne do fields[j] = ARGV[4 + nk + na + j] end
-- A name missing from the layout is a caller out of step: refuse the whole call.
for _, name in ipairs({'state', 'dedupe', 'device_votes', 'rate', 'account_votes'}) do
  if key[name] == nil then return redis.error_reply('vote_batch.lua: no key ' .. name) end
end
for _, name in ipairs({'fingerprint', 'taps', 'max_votes', 'max_account_votes', 'rate_per_s', 'ttl_s'}) do
  if arg[name] == nil then return redis.error_reply('vote_batch.lua: no argument ' .. name) end
end
local K_STATE, K_DEDUPE, K_DV, K_RATE = key.state, key.dedupe, key.device_votes, key.rate
local K_AV = key.account_votes
local A_FP, A_TAPS, A_MAX, A_MAXA = arg.fingerprint, arg.taps, arg.max_votes, arg.max_account_votes
local A_RATE, A_TTL = arg.rate_per_s, arg.ttl_s

local out = {}
local first = 5 + nk + na + ne
local stride = na + ne
for i = 0, n - 1 do
  local a = first + i * stride
  local k = 2 + i * nk
  local dedupe = KEYS[k + K_DEDUPE]
  local cnt = tonumber(ARGV[a + A_TAPS])
  local res
  local prev = redis.call('GET', dedupe)
  if prev then
    if prev == ARGV[a + A_FP] then res = {REPLAYED, cnt}
    else res = {ID_REUSED, 0} end
  else
    local st = redis.call('GET', KEYS[k + K_STATE])
    if st ~= 'open' then
      res = {NOT_OPEN, st or 'draft'}
    else
      local limit = tonumber(ARGV[a + A_RATE])
      if limit > 0 then
        local rate = KEYS[k + K_RATE]
        local r = redis.call('INCR', rate)
        if r == 1 then redis.call('PEXPIRE', rate, 1000) end
        if r > limit then res = {RATE_LIMITED, redis.call('PTTL', rate)} end
      end
      if res == nil then
        -- Both limits are checked before either count is written: a vote refused by
        -- its account's limit must not use up its device's.
        local maxv, maxa = tonumber(ARGV[a + A_MAX]), tonumber(ARGV[a + A_MAXA])
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
          if dv then redis.call('SET', dv, used + cnt, 'EX', ARGV[a + A_TTL]) end
          if av then redis.call('SET', av, aused + cnt, 'EX', ARGV[a + A_TTL]) end
          local entry = {}
          for j = 1, ne do
            entry[2 * j - 1] = fields[j]
            entry[2 * j] = ARGV[a + na + j - 1]
          end
          redis.call('XADD', KEYS[1], '*', unpack(entry))
          redis.call('SET', dedupe, ARGV[a + A_FP], 'EX', ARGV[a + A_TTL])
          res = {ACCEPTED, cnt}
        end
      end
    end
  end
  out[i + 1] = res
end
return out
