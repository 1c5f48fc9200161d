-- Trim a stream of what every one of its consumer groups acknowledged, in one step.
--
-- The groups' positions are read and the trim is made on the same node at the same
-- instant. Read in one command and trimmed in the next, a failover between them sends
-- the trim to the promoted replica with the dead primary's positions: the replica has
-- the entries but is behind in their deliveries and acknowledgements, so the trim
-- deleted entries it had never applied, and those votes were lost.
--
-- A group's safe point is its oldest pending id when anything is pending, otherwise
-- the id right after its last-delivered one; the stream keeps every id at or above
-- the least of them.
-- KEYS: 1 stream (TrimKeys in scripts.py); ARGV: the group names
-- Returns {removed, safe point, first remaining id or false}, or false while the
-- stream or one of the groups does not exist (TrimResult in scripts.py).
local stream = KEYS[1]
if redis.call('EXISTS', stream) == 0 then return false end

-- Ids compared as digit strings, exactly: a sequence number can exceed what a double
-- holds in ones, and two such ids would compare equal as numbers.
local function numless(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end

local function less(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if ams ~= bms then return numless(ams, bms) end
  return numless(aseq, bseq)
end

local function after(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  -- Past 15 digits a double no longer counts in ones: keep the id itself (one more
  -- entry kept, never one too few). Stream sequence numbers never get there in practice.
  if #seq > 15 then return id end
  return ms .. '-' .. string.format('%d', tonumber(seq) + 1)
end

local delivered = {}
for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  delivered[name] = last
end

local safe
for _, group in ipairs(ARGV) do
  if delivered[group] == nil then return false end
  local pending = redis.call('XPENDING', stream, group)
  local point
  if tonumber(pending[1]) > 0 then point = pending[2] else point = after(delivered[group]) end
  if safe == nil or less(point, safe) then safe = point end
end

local removed = redis.call('XTRIM', stream, 'MINID', safe)
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
return {removed, safe, first and first[1] or false}
