-- Every accepted vote, exactly once, for the recount and for "was my vote counted?".
-- One partition per poll (created by the archiver on a poll's first vote): a poll's
-- recount, digest and export read only its own rows, and a night's 100 million rows
-- never share one index. Text columns sort bytewise (COLLATE "C"), so the primary key
-- is already the canonical order of the digest, whatever the server's locale.
-- The key holds the stream id: a redelivered entry conflicts with its own row and adds
-- nothing, while two entries of one vote id (after its dedupe key expired) both count,
-- as they did in the tally.
CREATE TABLE vote_archive (
    poll_id     text COLLATE "C" NOT NULL,
    device      text COLLATE "C" NOT NULL,
    vote_id     text COLLATE "C" NOT NULL,
    stream_id   text COLLATE "C" NOT NULL,
    option_key  text NOT NULL,
    count       integer NOT NULL,
    client_ts   bigint NOT NULL,
    recv_ts     bigint NOT NULL,
    partition   integer NOT NULL,
    -- SHA-256 of the row's canonical line at archive time: the recount names a row
    -- changed afterwards.
    row_hash    bytea NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (poll_id, device, vote_id, stream_id)
) PARTITION BY LIST (poll_id);

-- A partition's archive is complete for a poll once the archiver stored its close marker
-- with every vote before it.
CREATE TABLE archive_partition_closed (
    poll_id    text NOT NULL,
    partition  integer NOT NULL,
    closed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (poll_id, partition)
);

-- Stored with the frozen result once both the totals and the archive are complete.
ALTER TABLE polls
    ADD COLUMN archive_digest text,
    ADD COLUMN archived_votes bigint,
    ADD COLUMN archived_rows bigint;
