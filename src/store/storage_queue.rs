//! `duplex.storage_queue`: files that local rows reference and this side's store lacks
//! (or holds with the wrong size), with their expected hash and size, newest first.
//!
//! A scan stamps every entry it still finds missing with its `scan_id` and then removes
//! the others (present now, or no longer referenced). Transfers take due entries newest
//! first, record failures (`failed`, retried on a later cycle) and delete an entry once
//! its object is verified in place. Rows that cannot be mirrored at all (a key with `..`,
//! a hash that is not 64 hex characters, a negative size) are kept as `invalid` with the
//! reason, so they are reported once and never transferred.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::{Context, Error};

const UPSERT_MISSING: &str = "INSERT INTO duplex.storage_queue AS q
        (object_key, table_name, row_ref, expected_sha256, expected_size, priority, scan_id)
     SELECT k, t, r, h, s, p, $7
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                   $6::timestamptz[]) AS u(k, t, r, h, s, p)
     ON CONFLICT (object_key) DO UPDATE SET
        table_name = excluded.table_name,
        row_ref = excluded.row_ref,
        priority = excluded.priority,
        scan_id = excluded.scan_id,
        state = CASE WHEN q.state = 'invalid'
                       OR q.expected_sha256 <> excluded.expected_sha256
                       OR q.expected_size <> excluded.expected_size
                     THEN 'pending' ELSE q.state END,
        attempts = CASE WHEN q.state = 'invalid'
                          OR q.expected_sha256 <> excluded.expected_sha256
                          OR q.expected_size <> excluded.expected_size
                        THEN 0 ELSE q.attempts END,
        last_error = CASE WHEN q.state = 'invalid' THEN NULL ELSE q.last_error END,
        expected_sha256 = excluded.expected_sha256,
        expected_size = excluded.expected_size";

const PREVIOUS_ERROR: &str =
    "SELECT state, last_error FROM duplex.storage_queue WHERE object_key = $1";

const UPSERT_INVALID: &str = "INSERT INTO duplex.storage_queue AS q
        (object_key, table_name, row_ref, expected_sha256, expected_size, priority, scan_id,
         state, last_error)
     VALUES ($1, $2, $3, $4, $5, $6, $7, 'invalid', $8)
     ON CONFLICT (object_key) DO UPDATE SET
        table_name = excluded.table_name, row_ref = excluded.row_ref,
        expected_sha256 = excluded.expected_sha256, expected_size = excluded.expected_size,
        priority = excluded.priority, scan_id = excluded.scan_id, state = 'invalid',
        last_error = excluded.last_error,
        updated_at = CASE WHEN q.last_error IS DISTINCT FROM excluded.last_error
                          THEN now() ELSE q.updated_at END";

const PRUNE: &str = "DELETE FROM duplex.storage_queue WHERE scan_id <> $1";

const DUE: &str = "SELECT object_key, table_name, row_ref, expected_sha256, expected_size,
        priority, attempts
   FROM duplex.storage_queue
  WHERE state IN ('pending', 'failed') AND next_attempt_at <= now() AND updated_at < $1
    AND object_key <> ALL($3::text[])
  ORDER BY priority DESC NULLS LAST, object_key
  LIMIT $2";

const FAILED: &str = "UPDATE duplex.storage_queue
    SET state = 'failed', attempts = attempts + $2, last_error = $3,
        next_attempt_at = now() + make_interval(secs => $4), updated_at = clock_timestamp()
  WHERE object_key = $1";

const DONE: &str = "DELETE FROM duplex.storage_queue WHERE object_key = $1";

const COUNT: &str = "SELECT count(*) FILTER (WHERE state IN ('pending', 'failed')),
        count(*) FILTER (WHERE state = 'failed'),
        count(*) FILTER (WHERE state = 'invalid'),
        coalesce(sum(expected_size) FILTER (WHERE state IN ('pending', 'failed')), 0)::bigint,
        min(priority) FILTER (WHERE state IN ('pending', 'failed')),
        (array_agg(object_key ORDER BY priority ASC NULLS FIRST, object_key)
            FILTER (WHERE state IN ('pending', 'failed')))[1]
   FROM duplex.storage_queue";

const LIST: &str = "SELECT object_key, table_name, row_ref, expected_sha256, expected_size,
        priority, state, attempts, last_error
   FROM duplex.storage_queue
  ORDER BY state <> 'invalid', priority DESC NULLS LAST, object_key
  LIMIT $1";

const NOW: &str = "SELECT clock_timestamp()";

/// One storage mirror cycle at a time per database (daemon and `duplex storage sync`).
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1)";
/// "storage" in ASCII.
const LOCK_KEY: i64 = 0x73_746f_7261_6765;

/// A file to mirror, as the inventory found it missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// The object key (location-independent).
    pub object_key: String,
    /// `schema.table` of a row referencing it.
    pub table: String,
    /// That row's primary key, as text.
    pub row_ref: String,
    /// Expected SHA-256, lower-case hex.
    pub sha256: String,
    /// Expected size in bytes.
    pub size: i64,
    /// Priority (newest first).
    pub priority: Option<DateTime<Utc>>,
}

/// A due entry.
#[derive(Debug, Clone, Serialize)]
pub struct Due {
    /// What to transfer.
    #[serde(flatten)]
    pub file: Missing,
    /// Attempts so far (over all cycles).
    pub attempts: i32,
}

/// One entry of `duplex storage status`.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The file.
    #[serde(flatten)]
    pub file: Missing,
    /// `pending`, `failed` or `invalid`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i32,
    /// Why the last attempt failed, or why the row is invalid.
    pub last_error: Option<String>,
}

/// Counts for status, metrics and `sync_state.storage_queue_size`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Files waiting (pending or failed): the queue size.
    pub queued: i64,
    /// Of those, the ones whose last attempt failed.
    pub failed: i64,
    /// Rows that cannot be mirrored (bad key, hash or size).
    pub invalid: i64,
    /// Bytes waiting.
    pub queued_bytes: i64,
    /// Priority of the oldest waiting file.
    pub oldest_priority: Option<DateTime<Utc>>,
    /// Its key.
    pub oldest_key: Option<String>,
}

/// Record files found missing by scan `scan_id` (at most one entry per key). An entry
/// whose expected hash or size changed starts over as `pending`.
pub async fn upsert_missing(client: &Client, files: &[Missing], scan_id: i64) -> Result<(), Error> {
    if files.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = files.iter().map(|f| f.object_key.as_str()).collect();
    let tables: Vec<&str> = files.iter().map(|f| f.table.as_str()).collect();
    let rows: Vec<&str> = files.iter().map(|f| f.row_ref.as_str()).collect();
    let hashes: Vec<&str> = files.iter().map(|f| f.sha256.as_str()).collect();
    let sizes: Vec<i64> = files.iter().map(|f| f.size).collect();
    let prios: Vec<Option<DateTime<Utc>>> = files.iter().map(|f| f.priority).collect();
    client
        .execute(
            UPSERT_MISSING,
            &[&keys, &tables, &rows, &hashes, &sizes, &prios, &scan_id],
        )
        .await
        .context("recording missing files in duplex.storage_queue")?;
    Ok(())
}

/// Record a row that cannot be mirrored; returns true when this is news (new entry, or
/// a different reason than last time), so the caller logs it once.
pub async fn upsert_invalid(
    client: &Client,
    file: &Missing,
    reason: &str,
    scan_id: i64,
) -> Result<bool, Error> {
    let before = client
        .query_opt(PREVIOUS_ERROR, &[&file.object_key])
        .await
        .context("reading duplex.storage_queue")?;
    let news = match before {
        None => true,
        Some(r) => {
            r.get::<_, String>(0) != "invalid"
                || r.get::<_, Option<String>>(1).as_deref() != Some(reason)
        }
    };
    client
        .execute(
            UPSERT_INVALID,
            &[
                &file.object_key,
                &file.table,
                &file.row_ref,
                &file.sha256,
                &file.size,
                &file.priority,
                &scan_id,
                &reason,
            ],
        )
        .await
        .context("recording an invalid row in duplex.storage_queue")?;
    Ok(news)
}

/// Remove the entries scan `scan_id` did not find missing; returns how many.
pub async fn prune(client: &Client, scan_id: i64) -> Result<u64, Error> {
    client
        .execute(PRUNE, &[&scan_id])
        .await
        .context("pruning duplex.storage_queue")
}

/// The database's clock now: entries updated after it are left for a later cycle.
pub async fn clock(client: &Client) -> Result<DateTime<Utc>, Error> {
    Ok(client
        .query_one(NOW, &[])
        .await
        .context("reading the clock")?
        .get(0))
}

/// Up to `limit` due entries not touched since `before`, newest first, other than `skip`
/// (the keys being transferred).
pub async fn due(
    client: &Client,
    before: DateTime<Utc>,
    skip: &[&str],
    limit: i64,
) -> Result<Vec<Due>, Error> {
    Ok(client
        .query(DUE, &[&before, &limit, &skip])
        .await
        .context("reading duplex.storage_queue")?
        .iter()
        .map(|r| Due {
            file: Missing {
                object_key: r.get(0),
                table: r.get(1),
                row_ref: r.get(2),
                sha256: r.get(3),
                size: r.get(4),
                priority: r.get(5),
            },
            attempts: r.get(6),
        })
        .collect())
}

/// A transfer failed after `attempts` attempts: retry no sooner than `retry_after_secs`.
pub async fn failed(
    client: &Client,
    key: &str,
    attempts: i32,
    error: &str,
    retry_after_secs: f64,
) -> Result<(), Error> {
    client
        .execute(FAILED, &[&key, &attempts, &error, &retry_after_secs])
        .await
        .context("recording a failed transfer in duplex.storage_queue")?;
    Ok(())
}

/// The object is verified in place: the entry is done.
/// Which of `keys` are in the queue (in any state).
pub async fn queued_among(
    client: &Client,
    keys: &[&str],
) -> Result<std::collections::HashSet<String>, Error> {
    Ok(client
        .query(
            "SELECT object_key FROM duplex.storage_queue WHERE object_key = ANY($1)",
            &[&keys],
        )
        .await
        .context("reading which unfinished uploads are queued files")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

pub async fn done(client: &Client, key: &str) -> Result<(), Error> {
    client
        .execute(DONE, &[&key])
        .await
        .context("removing a done entry from duplex.storage_queue")?;
    Ok(())
}

/// Counts, for status and `sync_state.storage_queue_size`.
pub async fn summary(client: &Client) -> Result<Summary, Error> {
    let r = client
        .query_one(COUNT, &[])
        .await
        .context("counting duplex.storage_queue")?;
    Ok(Summary {
        queued: r.get(0),
        failed: r.get(1),
        invalid: r.get(2),
        queued_bytes: r.get(3),
        oldest_priority: r.get(4),
        oldest_key: r.get(5),
    })
}

/// Up to `limit` entries: invalid ones first, then newest first.
pub async fn list(client: &Client, limit: i64) -> Result<Vec<Entry>, Error> {
    Ok(client
        .query(LIST, &[&limit])
        .await
        .context("reading duplex.storage_queue")?
        .iter()
        .map(|r| Entry {
            file: Missing {
                object_key: r.get(0),
                table: r.get(1),
                row_ref: r.get(2),
                sha256: r.get(3),
                size: r.get(4),
                priority: r.get(5),
            },
            state: r.get(6),
            attempts: r.get(7),
            last_error: r.get(8),
        })
        .collect())
}

/// Take the mirror's lock for this session (released when the session ends); false when
/// another cycle holds it.
pub async fn try_lock(client: &Client) -> Result<bool, Error> {
    Ok(client
        .query_one(TRY_LOCK, &[&LOCK_KEY])
        .await
        .context("taking the storage mirror lock")?
        .get(0))
}
