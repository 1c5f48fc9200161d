-- Per partition, the outbox stream id below which every entry was applied, acknowledged
-- and trimmed. The trimmer raises it while deleting applied_outbox rows below it, so a
-- writer that still holds such an entry (a slow holder whose claim was overtaken) finds
-- neither the row nor a place above the watermark, and cannot apply it a second time.
CREATE TABLE outbox_watermark (
    partition  integer PRIMARY KEY,
    ms         bigint NOT NULL,
    seq        bigint NOT NULL
);
