-- The object-storage mirror (issue 9): files referenced by local rows that this side's
-- store lacks, and where verified copies live locally. Local to each instance, never
-- published: nothing here replicates, so mirroring writes no replicated row.
CREATE TABLE duplex.storage_queue (
    object_key      text        PRIMARY KEY,          -- location-independent key
    table_name      text        NOT NULL,             -- schema.table of a row referencing it
    row_ref         text        NOT NULL,             -- that row's primary key, for messages
    expected_sha256 text        NOT NULL,             -- as the row says (checked before use)
    expected_size   bigint      NOT NULL,
    priority        timestamptz,                      -- newest first
    -- pending: to transfer; failed: a transfer failed, retried on a later cycle;
    -- invalid: the row itself is unusable (bad key, hash or size), never transferred.
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'failed', 'invalid')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    scan_id         bigint      NOT NULL DEFAULT 0,   -- the scan that last saw it missing
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX storage_queue_due ON duplex.storage_queue (state, priority DESC NULLS LAST, object_key);

-- Verified copies in this side's store: the application resolves a key to its local URL
-- here (docs/storage.md) instead of rewriting replicated rows.
CREATE TABLE duplex.object_location (
    object_key  text        PRIMARY KEY,
    local_url   text        NOT NULL,
    sha256      text        NOT NULL,
    size        bigint      NOT NULL,
    verified_at timestamptz NOT NULL DEFAULT now()
);
