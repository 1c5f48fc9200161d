-- Close a poll on one partition: from this point the vote script refuses it, and
-- the marker in the stream tells the tally where the poll's votes end.
-- KEYS: 1 state, 2 votes stream (CloseKeys in scripts.py); ARGV: 1 poll id
-- Returns 1 if this call closed the partition, 0 if it was closed already.
local st = redis.call('GET', KEYS[1])
if st == 'closed' then return 0 end
redis.call('SET', KEYS[1], 'closed')
redis.call('XADD', KEYS[2], '*', 't', 'c', 'poll', ARGV[1])
return 1
