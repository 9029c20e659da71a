//! `duplex.change_meta`: the carrier of what each local change was based on. It is
//! published insert-only and decoding reads the WAL, so committed rows can be deleted at
//! any time without the peer noticing; the conflict worker empties it every cycle.

use tokio_postgres::Client;

use crate::pg::{Context, Error};

/// Delete up to `$1` rows. Not TRUNCATE: its exclusive lock would stall the application's
/// writes, whose capture triggers insert here.
const DELETE_BATCH: &str = "DELETE FROM duplex.change_meta
  WHERE ctid = ANY(ARRAY(SELECT ctid FROM duplex.change_meta LIMIT $1))";

/// Delete up to `batch` carrier rows; returns how many went.
pub async fn delete_batch(client: &Client, batch: i64) -> Result<u64, Error> {
    client
        .execute(DELETE_BATCH, &[&batch])
        .await
        .context("emptying duplex.change_meta")
}
