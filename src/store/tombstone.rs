//! `duplex.tombstone`: the deleted incarnations of a key, on both sides. Written by the
//! in-stream triggers; the conflict worker removes those both directions have passed.

use std::time::Duration;

use tokio_postgres::Client;

use crate::pg::{Context, Error};

/// Delete up to `$2` tombstones deleted more than `$1` seconds ago.
const DELETE_OLDER_THAN: &str = "DELETE FROM duplex.tombstone
  WHERE ctid = ANY(ARRAY(SELECT ctid FROM duplex.tombstone
                          WHERE deleted_at < now() - make_interval(secs => $1)
                          LIMIT $2))";

/// Delete up to `batch` tombstones older than `retention`; returns how many went.
pub async fn delete_older_than(
    client: &Client,
    retention: Duration,
    batch: i64,
) -> Result<u64, Error> {
    client
        .execute(DELETE_OLDER_THAN, &[&retention.as_secs_f64(), &batch])
        .await
        .context("deleting old tombstones")
}
