-- Votes one viewer account may cast in a poll, over all its devices (issue 15). NULL:
-- no such limit, the poll counts devices only.
ALTER TABLE polls ADD COLUMN max_votes_per_account integer
    CHECK (max_votes_per_account IS NULL OR max_votes_per_account > 0);
