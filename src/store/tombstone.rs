//! `duplex.tombstone`: the deleted incarnations of a key, on both sides. Written by the
//! in-stream triggers; the scanner clears one when it brings its row back; the conflict
//! worker removes those both directions have passed.

use std::time::Duration;

use tokio_postgres::Client;

use crate::pg::{Context, Error};

/// Delete up to `$2` tombstones deleted more than `$1` seconds ago.
const DELETE_OLDER_THAN: &str = "DELETE FROM duplex.tombstone
  WHERE ctid = ANY(ARRAY(SELECT ctid FROM duplex.tombstone
                          WHERE deleted_at < now() - make_interval(secs => $1)
                          LIMIT $2))";

/// The same for `duplex.displaced`: a row of cloud's that main's version replaced is kept
/// for the tombstones' retention, counted from the replacement (it goes sooner when main's
/// delete of the replacing row arrives, or cloud deletes that row).
const DELETE_DISPLACED_OLDER_THAN: &str = "DELETE FROM duplex.displaced
  WHERE ctid = ANY(ARRAY(SELECT ctid FROM duplex.displaced
                          WHERE displaced_at < now() - make_interval(secs => $1)
                          LIMIT $2))";

/// Delete up to `batch` tombstones (and as many replaced rows) older than `retention`;
/// returns how many tombstones went (the count a caller repeats the call on, and the
/// metric's).
pub async fn delete_older_than(
    client: &Client,
    retention: Duration,
    batch: i64,
) -> Result<u64, Error> {
    let secs = retention.as_secs_f64();
    let tombstones = client
        .execute(DELETE_OLDER_THAN, &[&secs, &batch])
        .await
        .context("deleting old tombstones")?;
    client
        .execute(DELETE_DISPLACED_OLDER_THAN, &[&secs, &batch])
        .await
        .context("deleting old replaced rows (duplex.displaced)")?;
    Ok(tombstones)
}

const SET_INCARNATION: &str = "SELECT duplex.set_incarnation($1, $2, $3, $4)";
const CLEAR: &str = "DELETE FROM duplex.tombstone WHERE rel = $1 AND key = $2 AND inc = $3";

/// A row of `rel`/`key` written as incarnation `inc` (which had seen `seen`) lives again
/// on this side: record its incarnation and clear that incarnation's tombstone.
pub async fn revive(
    client: &Client,
    rel: &str,
    key: &str,
    inc: &str,
    seen: &Option<Vec<String>>,
) -> Result<(), Error> {
    client
        .execute(SET_INCARNATION, &[&rel, &key, &inc, seen])
        .await
        .context("recording the incarnation of a repaired row")?;
    client
        .execute(CLEAR, &[&rel, &key, &inc])
        .await
        .context("clearing the tombstone of a repaired row")?;
    Ok(())
}

const SET_INCARNATIONS: &str = "SELECT duplex.set_incarnation($1, x.key, x.inc, x.seen)
  FROM jsonb_to_recordset($2::jsonb) AS x(key text, inc text, seen text[])";
const CLEAR_MANY: &str = "DELETE FROM duplex.tombstone tb
 USING jsonb_to_recordset($2::jsonb) AS x(key text, inc text)
 WHERE tb.rel = $1 AND tb.key = x.key AND tb.inc = x.inc";

/// [`revive`] for many rows of `rel` in two statements: `rows` a JSON array of objects
/// `{"key": ..., "inc": ..., "seen": [...] | null}`.
pub async fn revive_many(
    client: &Client,
    rel: &str,
    rows: &serde_json::Value,
) -> Result<(), Error> {
    client
        .execute(SET_INCARNATIONS, &[&rel, rows])
        .await
        .context("recording the incarnations of repaired rows")?;
    client
        .execute(CLEAR_MANY, &[&rel, rows])
        .await
        .context("clearing the tombstones of repaired rows")?;
    Ok(())
}
