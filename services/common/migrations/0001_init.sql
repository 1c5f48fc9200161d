CREATE TABLE shows (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE polls (
    id                    text PRIMARY KEY,
    show_id               text NOT NULL REFERENCES shows(id),
    title                 text NOT NULL,
    state                 text NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'open', 'closed')),
    max_votes_per_device  integer CHECK (max_votes_per_device IS NULL OR max_votes_per_device > 0),
    max_count             integer NOT NULL DEFAULT 100 CHECK (max_count > 0),
    -- Fixed when the poll opens: the number of close markers that finalize it.
    partitions            integer,
    created_at            timestamptz NOT NULL DEFAULT now(),
    opened_at             timestamptz,
    closed_at             timestamptz,
    final                 boolean NOT NULL DEFAULT false,
    finalized_at          timestamptz,
    final_result          jsonb
);
CREATE INDEX polls_show ON polls(show_id);

CREATE TABLE options (
    poll_id   text NOT NULL REFERENCES polls(id) ON DELETE CASCADE,
    key       text NOT NULL,
    label     text NOT NULL,
    position  integer NOT NULL,
    PRIMARY KEY (poll_id, key)
);

CREATE TABLE totals (
    poll_id     text NOT NULL,
    option_key  text NOT NULL,
    count       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (poll_id, option_key),
    FOREIGN KEY (poll_id, option_key) REFERENCES options(poll_id, key) ON DELETE CASCADE
);

CREATE TABLE rate_buckets (
    poll_id     text NOT NULL,
    option_key  text NOT NULL,
    second      bigint NOT NULL,
    count       bigint NOT NULL,
    PRIMARY KEY (poll_id, option_key, second)
);

-- One row per applied outbox entry: a redelivered entry finds its row and is skipped.
-- Rows are deleted once the entry is acknowledged and trimmed from its stream.
CREATE TABLE applied_outbox (
    partition   integer NOT NULL,
    entry_id    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, entry_id)
);

CREATE TABLE poll_partition_closed (
    poll_id    text NOT NULL REFERENCES polls(id) ON DELETE CASCADE,
    partition  integer NOT NULL,
    closed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (poll_id, partition)
);
