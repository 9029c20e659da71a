//! Which referenced files the local store lacks: the rows' inventory (one query over the
//! configured tables, sorted by object key, read through a cursor 1000 rows at a time)
//! merged with a paginated listing of the local store in the same (byte) order. Memory
//! stays constant whatever the number of files, and there is no request per file.

use std::collections::VecDeque;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::key;
use super::store::{Store, StoreError};
use crate::config::StorageSettings;
use crate::model::{quote_ident, TableName};
use crate::pg::{self, Context};
use crate::store::storage_queue::{self, Missing};

/// Rows fetched per round trip.
const FETCH: i32 = 1000;
/// Missing files recorded per statement.
const BATCH: usize = 500;

/// Errors of a scan.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error(transparent)]
    Pg(#[from] pg::Error),
    /// Listing the local store failed.
    #[error("listing the local store: {0}")]
    Store(#[from] StoreError),
    /// A configured table is missing or has no such column.
    #[error("{0}")]
    Config(String),
}

/// What a scan found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    /// Distinct object keys referenced by local rows.
    pub referenced: u64,
    /// Of those, present in the local store with the expected size.
    pub present: u64,
    /// Missing, or present with another size (queued).
    pub missing: u64,
    /// Of the missing, present with the wrong size.
    pub wrong_size: u64,
    /// Rows that cannot be mirrored (bad key, hash or size).
    pub invalid: u64,
    /// Objects listed in the local store.
    pub listed: u64,
    /// Queue entries removed (present now, or no longer referenced).
    pub pruned: u64,
    /// Seconds taken.
    pub seconds: f64,
}

/// A row that cannot be mirrored, newly found (or with a new reason).
#[derive(Debug, Clone, Serialize)]
pub struct Invalid {
    /// The row's file.
    pub file: Missing,
    /// Why.
    pub reason: String,
}

/// The inventory query over every configured table, sorted by key in byte order.
pub async fn query(client: &Client, settings: &StorageSettings) -> Result<String, Error> {
    let mut parts = Vec::new();
    for (name, cols) in &settings.tables {
        let Some((schema, table)) = name.split_once('.') else {
            continue;
        };
        let t = TableName {
            schema: schema.into(),
            name: table.into(),
        };
        let exists: bool = client
            .query_one(
                "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
                &[&t.schema, &t.name],
            )
            .await
            .context("looking up a storage table")?
            .get(0);
        if !exists {
            return Err(Error::Config(format!(
                "[storage.tables] names {name}, which does not exist in the local database"
            )));
        }
        let pk = pg::catalog::keys(client, &t).await?.key;
        let row_ref = if pk.is_empty() {
            "ctid::text".to_string()
        } else {
            format!(
                "concat_ws(',', {})",
                pk.iter()
                    .map(|c| format!("{}::text", quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let k = quote_ident(&cols.key);
        let prio = match &cols.priority {
            Some(p) => format!("{}::timestamptz", quote_ident(p)),
            None => "NULL::timestamptz".into(),
        };
        parts.push(format!(
            "SELECT CASE WHEN {k} LIKE 's3://%' THEN coalesce(substring({k} from '^s3://[^/]*/(.*)$'), '') ELSE {k} END AS k,
                    {lit} AS t, {row_ref} AS r, {h}::text AS h, {s}::bigint AS s, {prio} AS p
               FROM {tbl} WHERE {k} IS NOT NULL",
            lit = pg::quote_literal(name),
            h = quote_ident(&cols.hash),
            s = quote_ident(&cols.size),
            tbl = t.quoted(),
        ));
    }
    Ok(format!(
        "SELECT k, t, r, h, s, p FROM ({}) AS inventory ORDER BY k COLLATE \"C\", p DESC NULLS LAST",
        parts.join(" UNION ALL ")
    ))
}

/// Compare the inventory (read through `client`) with the local store; with a `writer`
/// session, record what is missing in `duplex.storage_queue` (stamped `scan_id`) and
/// prune the rest; without one (a dry run) change nothing. Returns the report, the newly
/// found invalid rows, and up to `sample` missing files.
pub async fn scan(
    client: &mut Client,
    writer: Option<&Client>,
    settings: &StorageSettings,
    local: &Store,
    scan_id: i64,
    sample: usize,
) -> Result<(ScanReport, Vec<Invalid>, Vec<Missing>), Error> {
    let started = Instant::now();
    let mut report = ScanReport::default();
    let mut invalid = Vec::new();
    let mut examples = Vec::new();
    if settings.tables.is_empty() {
        return Ok((report, invalid, examples));
    }
    let sql = query(client, settings).await?;
    let mut lister = local.list();
    let mut listing: VecDeque<(String, i64)> = VecDeque::new();
    let mut listing_done = false;
    let mut batch: Vec<Missing> = Vec::with_capacity(BATCH);
    // The cursor lives in its own read-only transaction; queue writes go through the
    // writer's session and commit as they go.
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .context("starting the inventory")?;
    let portal = tx
        .bind(sql.as_str(), &[])
        .await
        .context("opening the inventory query")?;
    let mut prev: Option<String> = None;
    loop {
        let rows = tx
            .query_portal(&portal, FETCH)
            .await
            .context("reading the inventory")?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let k: String = r.get(0);
            if prev.as_deref() == Some(k.as_str()) {
                continue; // the same file referenced twice: the newest row counts
            }
            prev = Some(k.clone());
            report.referenced += 1;
            let hash: Option<String> = r.get(3);
            let size: Option<i64> = r.get(4);
            let file = Missing {
                object_key: k.clone(),
                table: r.get(1),
                row_ref: r.get(2),
                sha256: hash.clone().unwrap_or_default(),
                size: size.unwrap_or(-1),
                priority: r.get::<_, Option<DateTime<Utc>>>(5),
            };
            let problem = key::problem(&k)
                .or_else(|| match &hash {
                    None => Some("the expected hash is NULL".into()),
                    Some(h) => key::hash_problem(h),
                })
                .or_else(|| match size {
                    None => Some("the expected size is NULL".into()),
                    Some(s) => key::size_problem(s),
                });
            if let Some(reason) = problem {
                report.invalid += 1;
                let news = match writer {
                    Some(w) => storage_queue::upsert_invalid(w, &file, &reason, scan_id).await?,
                    None => true,
                };
                if news {
                    invalid.push(Invalid { file, reason });
                }
                continue;
            }
            // Advance the listing to the first key >= k.
            let found = loop {
                if listing.is_empty() && !listing_done {
                    match lister.next_page().await? {
                        Some(page) => {
                            report.listed += page.len() as u64;
                            listing.extend(page);
                        }
                        None => listing_done = true,
                    }
                    continue;
                }
                match listing.front() {
                    None => break None,
                    Some((lk, _)) if lk.as_bytes() < k.as_bytes() => {
                        listing.pop_front();
                    }
                    Some((lk, size)) if lk == &k => break Some(*size),
                    Some(_) => break None,
                }
            };
            match found {
                Some(s) if s == file.size => report.present += 1,
                other => {
                    report.missing += 1;
                    if other.is_some() {
                        report.wrong_size += 1;
                    }
                    if examples.len() < sample {
                        examples.push(file.clone());
                    }
                    if let Some(w) = writer {
                        batch.push(file);
                        if batch.len() >= BATCH {
                            storage_queue::upsert_missing(w, &batch, scan_id).await?;
                            batch.clear();
                        }
                    }
                }
            }
        }
    }
    tx.commit().await.context("closing the inventory")?;
    if let Some(w) = writer {
        storage_queue::upsert_missing(w, &batch, scan_id).await?;
        report.pruned = storage_queue::prune(w, scan_id).await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok((report, invalid, examples))
}
