-- The verifying scanner's progress per table, on the repairing side: when the last pass
-- that compared it completely started, and when the last full pass did. An incremental
-- pass looks only at rows committed since the last pass (minus a margin for clock skew);
-- a full pass runs again after conflicts.full_scan_interval_hours.
CREATE TABLE duplex.scan_state (
    rel          text        PRIMARY KEY,
    last_pass_at timestamptz NOT NULL,
    last_full_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
