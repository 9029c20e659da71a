-- duplex's own metadata, local to each instance and never published.
CREATE TABLE duplex.sync_log (
    id             bigserial PRIMARY KEY,
    sync_type      text        NOT NULL,
    last_sync_at   timestamptz NOT NULL DEFAULT now(),
    status         text        NOT NULL,
    records_synced bigint      NOT NULL DEFAULT 0,
    error_message  text,
    details        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_log_status_latest ON duplex.sync_log (status, created_at DESC);
CREATE INDEX sync_log_type_latest ON duplex.sync_log (sync_type, created_at DESC);

CREATE TABLE duplex.conflict_log (
    id                 bigserial PRIMARY KEY,
    table_name         text        NOT NULL,
    record_id          text        NOT NULL,
    conflict_type      text        NOT NULL,
    main_version       jsonb,
    cloud_version      jsonb,
    resolution         text,
    resolution_details jsonb       NOT NULL DEFAULT '{}'::jsonb,
    resolved_by        text,
    resolved_at        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conflict_log_table_name ON duplex.conflict_log (table_name);
CREATE INDEX conflict_log_record_id ON duplex.conflict_log (record_id);

-- Exactly one row: the primary key is a boolean that can only be true.
CREATE TABLE duplex.sync_state (
    id                 boolean     PRIMARY KEY DEFAULT true CHECK (id),
    instance_role      text        NOT NULL CHECK (instance_role IN ('MAIN', 'CLOUD')),
    last_heartbeat     timestamptz,
    replication_lag_ms bigint,
    storage_queue_size bigint      NOT NULL DEFAULT 0,
    is_connected       boolean     NOT NULL DEFAULT false,
    sync_enabled       boolean     NOT NULL DEFAULT true,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
