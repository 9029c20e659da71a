-- Who runs `duplex run` beside this database. One controller per instance: the daemon
-- holds a session-level advisory lock on its own connection (released when it exits or
-- crashes) and writes itself here, so a second one can be told who holds the lock.
CREATE TABLE duplex.controller (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    pid        integer     NOT NULL,
    host       text        NOT NULL,
    http_addr  text        NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);

-- The tables `duplex setup` set up to replicate, recorded at setup time, so later
-- commands compare the configuration with what was set up instead of re-deriving it.
CREATE TABLE duplex.replicated_table (
    schema_name text        NOT NULL,
    table_name  text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name)
);
