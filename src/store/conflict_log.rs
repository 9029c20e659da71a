//! `duplex.conflict_log`: one entry per conflict, written by the in-stream triggers
//! (`duplex.log_conflict`), read by `duplex conflicts`, the API and the metrics, and marked
//! resolved by a manual resolution.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::{Client, Row};

use crate::model::Role;
use crate::pg::{Context, Error};

/// `$1` open (true) / resolved (false) / either (NULL), `$2` table (`schema.table` or just
/// the table's name) or NULL, `$3` limit. Newest first.
const LIST: &str = "SELECT id, table_name, record_id, conflict_type, main_version, cloud_version,
    diff, policy, winner, resolved_by, resolved_at, resolution, detected_by, detected_on,
    conflict_key, created_at
  FROM duplex.conflict_log
 WHERE ($1::bool IS NULL OR (resolved_at IS NULL) = $1)
   AND ($2::text IS NULL OR table_name = $2
        OR substr(table_name, strpos(table_name, '.') + 1) = $2)
 ORDER BY id DESC
 LIMIT $3";

const GET: &str = "SELECT id, table_name, record_id, conflict_type, main_version, cloud_version,
    diff, policy, winner, resolved_by, resolved_at, resolution, detected_by, detected_on,
    conflict_key, created_at
  FROM duplex.conflict_log WHERE id = $1";

/// Mark a conflict resolved by hand on one side, by its conflict key: the side's own copy
/// is updated, and a side that never logged it gets a resolved copy. An entry already
/// resolved stays as it is. `$11` is the resolution (MAIN or CLOUD).
const MARK_RESOLVED: &str = "INSERT INTO duplex.conflict_log
    (table_name, record_id, conflict_type, main_version, cloud_version, diff, policy, winner,
     detected_by, detected_on, conflict_key, resolution, resolved_by, resolved_at, created_at)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, $11, 'MANUAL', now(), $13)
  ON CONFLICT (conflict_key) DO UPDATE
    SET resolution = EXCLUDED.resolution, resolved_by = 'MANUAL', resolved_at = now()
  WHERE conflict_log.resolved_at IS NULL";

/// The same for an entry without a conflict key (logged before keys existed): by id.
const MARK_RESOLVED_BY_ID: &str = "UPDATE duplex.conflict_log
    SET resolution = $2, resolved_by = 'MANUAL', resolved_at = now()
  WHERE id = $1 AND resolved_at IS NULL";

/// Totals for the metrics, one grouped scan.
const COUNTS: &str = "SELECT table_name, conflict_type, coalesce(policy, ''), count(*),
    count(*) FILTER (WHERE resolved_at IS NULL)
  FROM duplex.conflict_log GROUP BY 1, 2, 3 ORDER BY 1, 2, 3";

/// One conflict log entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Conflict {
    /// Entry id on this side.
    pub id: i64,
    /// `schema.table`.
    pub table_name: String,
    /// The primary key as a JSON array, e.g. `["42"]`.
    pub record_id: String,
    /// `insert_insert`, `update_update`, `update_delete`, `delete_update` or `unique_key`.
    pub conflict_type: String,
    /// Main's version; NULL for a deleted row.
    pub main_version: Option<Value>,
    /// Cloud's version; NULL for a deleted row.
    pub cloud_version: Option<Value>,
    /// Stored field-level diff, when one was stored.
    pub diff: Option<Value>,
    /// The table's policy when it was logged.
    pub policy: Option<String>,
    /// MAIN, CLOUD or DELETED.
    pub winner: Option<String>,
    /// `LAST_WRITE_WINS`, `MAIN_AUTHORITATIVE` or `MANUAL`; NULL while open.
    pub resolved_by: Option<String>,
    /// When it was resolved; NULL while open.
    pub resolved_at: Option<DateTime<Utc>>,
    /// A manual resolution's choice: MAIN or CLOUD.
    pub resolution: Option<String>,
    /// `in_stream` or `scanner`.
    pub detected_by: String,
    /// The side that noticed it: main or cloud.
    pub detected_on: Option<String>,
    /// The same conflict seen by both sides has the same key.
    pub conflict_key: Option<String>,
    /// When it was logged.
    pub created_at: DateTime<Utc>,
}

impl Conflict {
    /// Still waiting for a person.
    pub fn is_open(&self) -> bool {
        self.resolved_at.is_none()
    }

    fn from_row(r: &Row) -> Conflict {
        Conflict {
            id: r.get(0),
            table_name: r.get(1),
            record_id: r.get(2),
            conflict_type: r.get(3),
            main_version: r.get(4),
            cloud_version: r.get(5),
            diff: r.get(6),
            policy: r.get(7),
            winner: r.get(8),
            resolved_by: r.get(9),
            resolved_at: r.get(10),
            resolution: r.get(11),
            detected_by: r.get(12),
            detected_on: r.get(13),
            conflict_key: r.get(14),
            created_at: r.get(15),
        }
    }
}

/// Which entries [`list`] returns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `Some(true)` open only, `Some(false)` resolved only, `None` both.
    pub open: Option<bool>,
    /// `schema.table` or the table's name alone.
    pub table: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// Entries matching `filter`, newest first.
pub async fn list(client: &Client, filter: &Filter) -> Result<Vec<Conflict>, Error> {
    Ok(client
        .query(LIST, &[&filter.open, &filter.table, &filter.limit])
        .await
        .context("listing duplex.conflict_log")?
        .iter()
        .map(Conflict::from_row)
        .collect())
}

/// Entry `id`, if it exists.
pub async fn get(client: &Client, id: i64) -> Result<Option<Conflict>, Error> {
    Ok(client
        .query_opt(GET, &[&id])
        .await
        .context(format!("reading conflict {id}"))?
        .as_ref()
        .map(Conflict::from_row))
}

/// Mark `c` resolved by hand with `resolution` (MAIN or CLOUD) on the side `client` talks
/// to, matching by conflict key so both sides' copies are marked. Returns the number of
/// entries changed (0 when it was already resolved there).
pub async fn mark_resolved(client: &Client, c: &Conflict, resolution: &str) -> Result<u64, Error> {
    let context = format!("marking conflict {} resolved", c.id);
    match &c.conflict_key {
        Some(key) => client
            .execute(
                MARK_RESOLVED,
                &[
                    &c.table_name,
                    &c.record_id,
                    &c.conflict_type,
                    &c.main_version,
                    &c.cloud_version,
                    &c.diff,
                    &c.policy,
                    &c.winner,
                    &c.detected_by,
                    &c.detected_on,
                    &resolution,
                    key,
                    &c.created_at,
                ],
            )
            .await
            .context(context),
        None => client
            .execute(MARK_RESOLVED_BY_ID, &[&c.id, &resolution])
            .await
            .context(context),
    }
}

/// Entries per table, type and policy, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    /// `schema.table`.
    pub table: String,
    /// Conflict type.
    pub conflict_type: String,
    /// Policy (empty when unknown).
    pub policy: String,
    /// All entries.
    pub total: i64,
    /// Entries still open.
    pub open: i64,
}

/// [`Count`]s of the whole log.
pub async fn counts(client: &Client) -> Result<Vec<Count>, Error> {
    Ok(client
        .query(COUNTS, &[])
        .await
        .context("counting duplex.conflict_log")?
        .iter()
        .map(|r| Count {
            table: r.get(0),
            conflict_type: r.get(1),
            policy: r.get(2),
            total: r.get(3),
            open: r.get(4),
        })
        .collect())
}

// The conflict worker's statements: copy the conflicts the peer detected (one entry per
// conflict on each side, deduplicated by `conflict_key`) and prune resolved entries past
// retention.

/// The peer's entries detected by the peer (`$1`) after id `$2`, at most `$3`, as one
/// JSON array in id order, with their count and highest id. Entries without a
/// `conflict_key` cannot be deduplicated and stay where they were logged; resolved entries
/// already past retention (`$4` days) are not copied only to be pruned.
const PEER_BATCH: &str = "SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.id), '[]'::jsonb),
       count(*), max(c.id)
  FROM (SELECT * FROM duplex.conflict_log
         WHERE detected_on = $1 AND id > $2 AND conflict_key IS NOT NULL
           AND (resolved_at IS NULL OR resolved_at >= now() - make_interval(days => $4))
         ORDER BY id LIMIT $3) c";

/// Insert the entries of a [`PEER_BATCH`] array, keeping every column but the id; an
/// entry already here (this side noticed the same conflict, or an earlier merge copied it)
/// is left as it is.
const INSERT_MERGED: &str = "INSERT INTO duplex.conflict_log
       (table_name, record_id, conflict_type, main_version, cloud_version, resolution,
        resolution_details, resolved_by, resolved_at, created_at, policy, winner,
        detected_by, detected_on, conflict_key, diff)
SELECT table_name, record_id, conflict_type, main_version, cloud_version, resolution,
       coalesce(resolution_details, '{}'::jsonb), resolved_by, resolved_at,
       coalesce(created_at, now()), policy, winner, coalesce(detected_by, 'in_stream'),
       detected_on, conflict_key, diff
  FROM jsonb_populate_recordset(NULL::duplex.conflict_log, $1)
ON CONFLICT (conflict_key) DO NOTHING";

/// Delete up to `$2` entries resolved more than `$1` days ago (open ones never).
const PRUNE_RESOLVED: &str = "DELETE FROM duplex.conflict_log
  WHERE ctid = ANY(ARRAY(SELECT ctid FROM duplex.conflict_log
                          WHERE resolved_at IS NOT NULL
                            AND resolved_at < now() - make_interval(days => $1)
                          LIMIT $2))";

/// One batch of the peer's entries.
#[derive(Debug, Clone)]
pub struct PeerBatch {
    /// The entries, a JSON array of whole rows.
    pub rows: serde_json::Value,
    /// How many.
    pub count: i64,
    /// The highest id among them (the next watermark); `None` when empty.
    pub last_id: Option<i64>,
}

/// Read up to `batch` entries detected by `peer` with id above `after` from the peer.
pub async fn peer_batch(
    remote: &Client,
    peer: Role,
    after: i64,
    batch: i64,
    retention_days: i32,
) -> Result<PeerBatch, Error> {
    let r = remote
        .query_one(
            PEER_BATCH,
            &[&peer.as_str(), &after, &batch, &retention_days],
        )
        .await
        .context("reading the peer's duplex.conflict_log")?;
    Ok(PeerBatch {
        rows: r.get(0),
        count: r.get(1),
        last_id: r.get(2),
    })
}

/// Insert the entries of `batch` here; returns how many were new.
pub async fn insert_merged(local: &Client, batch: &PeerBatch) -> Result<u64, Error> {
    local
        .execute(INSERT_MERGED, &[&batch.rows])
        .await
        .context("copying the peer's conflicts into duplex.conflict_log")
}

/// Delete up to `batch` entries resolved more than `days` ago; returns how many went.
pub async fn prune_resolved(local: &Client, days: i32, batch: i64) -> Result<u64, Error> {
    local
        .execute(PRUNE_RESOLVED, &[&days, &batch])
        .await
        .context("pruning resolved entries of duplex.conflict_log")
}

// The scanner's statements: one entry per difference it settled (deduplicated by
// `conflict_key`), and one open `truncate` entry per table while one is open.

/// `$1..$10`: see [`ScannerEntry`]; resolved now unless `resolved_by` is NULL (manual).
const INSERT_SCANNER: &str = "INSERT INTO duplex.conflict_log
    (table_name, record_id, conflict_type, main_version, cloud_version, policy, winner,
     resolved_by, resolved_at, detected_by, detected_on, conflict_key)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $8::text IS NULL THEN NULL ELSE now() END,
          'scanner', $9, $10)
  ON CONFLICT (conflict_key) DO NOTHING";

/// [`INSERT_SCANNER`] for many entries: `$1` a JSON array of [`ScannerEntry`]s (as
/// serialized), logged in that order; returns how many were new.
const INSERT_SCANNER_MANY: &str = "INSERT INTO duplex.conflict_log
    (table_name, record_id, conflict_type, main_version, cloud_version, policy, winner,
     resolved_by, resolved_at, detected_by, detected_on, conflict_key)
  SELECT x.table_name, x.record_id, x.conflict_type, x.main_version, x.cloud_version,
         x.policy, x.winner, x.resolved_by,
         CASE WHEN x.resolved_by IS NULL THEN NULL ELSE now() END, 'scanner', x.detected_on,
         x.conflict_key
    FROM jsonb_to_recordset($1::jsonb) AS x(table_name text, record_id text,
         conflict_type text, main_version jsonb, cloud_version jsonb, policy text,
         winner text, resolved_by text, detected_on text, conflict_key text)
  ON CONFLICT (conflict_key) DO NOTHING";

/// An open `truncate` entry for table `$1`, unless one is open already.
const INSERT_TRUNCATE: &str = "INSERT INTO duplex.conflict_log
    (table_name, record_id, conflict_type, policy, detected_by, detected_on, conflict_key,
     resolution_details)
  SELECT $1, '[]', 'truncate', $2, 'scanner', $3,
         md5('scanner truncate ' || $1 || clock_timestamp()::text), $4
   WHERE NOT EXISTS (SELECT 1 FROM duplex.conflict_log
                      WHERE table_name = $1 AND conflict_type = 'truncate'
                        AND resolved_at IS NULL)";

/// One difference the scanner found and settled.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScannerEntry<'a> {
    /// `schema.table`.
    pub table_name: &'a str,
    /// The key as a JSON array.
    pub record_id: &'a str,
    /// Conflict type.
    pub conflict_type: &'a str,
    /// Main's version (NULL: no row).
    pub main_version: Option<&'a Value>,
    /// Cloud's version (NULL: no row).
    pub cloud_version: Option<&'a Value>,
    /// The table's policy.
    pub policy: &'a str,
    /// MAIN, CLOUD or DELETED.
    pub winner: &'a str,
    /// `LAST_WRITE_WINS`, `MAIN_AUTHORITATIVE`, or `None` (manual: stays open).
    pub resolved_by: Option<&'a str>,
    /// The side that found it.
    pub detected_on: &'a str,
    /// Derived from the table, key and both versions.
    pub conflict_key: &'a str,
}

/// Log a scanner finding; returns 1 when new, 0 when logged before.
pub async fn insert_scanner(client: &Client, e: &ScannerEntry<'_>) -> Result<u64, Error> {
    client
        .execute(
            INSERT_SCANNER,
            &[
                &e.table_name,
                &e.record_id,
                &e.conflict_type,
                &e.main_version,
                &e.cloud_version,
                &e.policy,
                &e.winner,
                &e.resolved_by,
                &e.detected_on,
                &e.conflict_key,
            ],
        )
        .await
        .context(format!("logging a scanner conflict on {}", e.table_name))
}

/// Log many scanner findings in one statement, in order; returns how many were new (the
/// others were logged before).
pub async fn insert_scanner_many(
    client: &Client,
    entries: &[ScannerEntry<'_>],
) -> Result<u64, Error> {
    if entries.is_empty() {
        return Ok(0);
    }
    let json = serde_json::to_value(entries).unwrap_or(Value::Null);
    client
        .execute(INSERT_SCANNER_MANY, &[&json])
        .await
        .context(format!(
            "logging {} scanner conflicts on {}",
            entries.len(),
            entries[0].table_name
        ))
}

/// Log an open `truncate` conflict for `table` unless one is open; returns 1 when new.
pub async fn insert_truncate(
    client: &Client,
    table: &str,
    policy: Option<&str>,
    detected_on: &str,
    details: &Value,
) -> Result<u64, Error> {
    client
        .execute(INSERT_TRUNCATE, &[&table, &policy, &detected_on, details])
        .await
        .context(format!("logging a truncate conflict on {table}"))
}
