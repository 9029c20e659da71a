//! `duplex.conflict_log`, the conflict worker's statements: copy the conflicts the peer
//! detected (one entry per conflict on each side, deduplicated by `conflict_key`) and
//! prune resolved entries past retention. Listing and resolving live in `conflict_log`.

use tokio_postgres::Client;

use crate::model::Role;
use crate::pg::{Context, Error};

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
