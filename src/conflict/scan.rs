//! The verifying scanner's engine: find every row that differs between main and cloud and
//! settle it with the table's policy (docs/conflicts.md, "The scanner").
//!
//! Hashing happens inside PostgreSQL and only hashes travel: per table, a whole-table
//! aggregate (row count and `bit_xor` of a 64-bit row hash) on both sides; when they
//! differ, primary-key ranges whose boundaries come from one side's index order, measured
//! the same way on both sides, and only ranges that differ are subdivided, until they are
//! small enough to fetch their keys and row hashes. Ranges are compared with row
//! constructors (`(k1, k2) >= (…)`), so composite and text keys work.
//!
//! The row hash is `hash_record_extended(t.*, 0)` when both servers run the same major
//! version with the same column layout (and every column type has an extended hash
//! function); otherwise the md5 of the row's jsonb text under pinned settings. Both are
//! NULL-safe, independent of the session's `TimeZone`/`DateStyle`, keep numeric scale and
//! ignore jsonb key order.
//!
//! Rows in flight are not differences: before comparing, each side's WAL position is taken
//! and the scan waits (bounded) until the peer's subscription has confirmed it, both ways;
//! each candidate is then read again on both sides, the wait repeated, and only a
//! difference that stayed put is settled. A repair writes only the losing side, under the
//! replication origin of duplex's own (`conflict::origin`, not sent back), in a transaction that first checks
//! the row still has the version that was compared. Re-reads and repairs go by batches of
//! keys (one statement per batch and side, one transaction per batch and losing side),
//! with the same per-row checks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

use super::policy::{Effective, Policy};
use crate::model::{quote_ident, Role, TableName};
use crate::pg::catalog::{self, Computed};
use crate::pg::{self, Context};
use crate::store::conflict_log;

/// Settings pinned in every scanner session, so key and row text are the same on both
/// servers (the in-stream triggers pin the same ones).
const PIN: &str = "SET \"TimeZone\" = 'UTC'; SET \"DateStyle\" = 'ISO, YMD';
  SET \"IntervalStyle\" = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'";
/// A scan statement may read a whole large table.
const SCAN_STATEMENT_TIMEOUT: &str = "SET statement_timeout = '300s'";
/// Ranges with at most this many rows (on the larger side) are fetched row by row.
pub const LEAF_ROWS: i64 = 256;
/// At most this many sub-ranges per split.
const MAX_PARTS: i64 = 4096;
/// Ranges per statement.
const RANGE_BATCH: usize = 2048;
/// Leaf ranges whose rows are fetched per statement: 128 x 256 rows (key and hash each)
/// keeps one result to a few MB, so memory stays flat however many ranges differ.
const LEAF_BATCH: usize = 128;
/// The same for a single integer key, whose rows stream in at 24 bytes each (at most
/// 256 rows a leaf: 6 MB a side at most).
const LEAF_BATCH_INT: usize = 1024;
/// Differing key ranges kept for a report.
const MAX_REPORTED_RANGES: usize = 100;

/// Errors of a scan.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A statement failed or a connection broke. Usually transient: the next scan retries.
    #[error(transparent)]
    Pg(#[from] pg::Error),
    /// Replication did not apply what was committed before the scan in time; comparing
    /// now would report rows in flight. Transient.
    #[error("replication {direction} has not applied everything committed before the scan within {timeout:?}: not comparing rows still in flight (check `duplex status`)")]
    NotCaughtUp {
        /// `main -> cloud` or `cloud -> main`.
        direction: String,
        /// How long the scan waited.
        timeout: Duration,
    },
}

/// One table to compare.
#[derive(Debug, Clone)]
pub struct Target {
    /// The table.
    pub table: TableName,
    /// Primary-key columns in key order.
    pub key: Vec<String>,
    /// Its effective policy; `None` compares only (no repair).
    pub policy: Option<Effective>,
}

/// How a scan runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Settle differences (false: report only).
    pub repair: bool,
    /// Longest wait for replication to catch up before comparing.
    pub catch_up_timeout: Duration,
    /// Stop collecting a table's differences after this many (the rest next scan).
    pub max_differences: usize,
    /// The side whose `duplex.conflict_log` receives entries (the repairing controller).
    pub log_side: Role,
    /// Incremental: compare only rows committed (or deleted) at or after this time on
    /// either side. `None`: a full comparison.
    pub since: Option<DateTime<Utc>>,
    /// The share of wall time (1-100%) the comparison's statements may take: after each
    /// statement pair the scan waits out the rest (`[conflicts] scan_duty_percent`).
    pub duty_percent: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            repair: true,
            catch_up_timeout: Duration::from_secs(30),
            max_differences: 10_000,
            log_side: Role::Main,
            since: None,
            duty_percent: 100,
        }
    }
}

/// The throttle of the scan running in this task ([`scan_table`] sets it): every
/// statement pair of [`on_both`] is followed by a pause that keeps the statements to
/// `duty_percent` of wall time; `paused` adds up the pauses for the report.
struct Pace {
    duty_percent: u64,
    paused: std::cell::Cell<Duration>,
}

tokio::task_local! {
    static PACE: Pace;
}

/// The pause after a statement pair that took `took`, at `duty` percent (at most a
/// minute, so a pass never stalls on one slow statement).
fn pause_after(took: Duration, duty: u64) -> Duration {
    if duty >= 100 || duty == 0 {
        return Duration::ZERO;
    }
    (took * (100 - duty) as u32 / duty as u32).min(Duration::from_secs(60))
}

/// A key range `[from, to)` (`to` open-ended when `None`) whose contents differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RangeDiff {
    /// First key of the range (inclusive), as a JSON array.
    pub from: String,
    /// End of the range (exclusive), `None` up to the last key.
    pub to: Option<String>,
    /// Rows on main in the range.
    pub main_rows: i64,
    /// Rows on cloud in the range.
    pub cloud_rows: i64,
}

/// One row that differs: its key and each side's row hash (`None`: no row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// The primary key as a JSON array (as in `conflict_log.record_id`).
    pub key: String,
    /// Main's row hash.
    pub main: Option<i64>,
    /// Cloud's row hash.
    pub cloud: Option<i64>,
}

/// What comparing one table found (in one snapshot per side).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableDiff {
    /// Rows on main.
    pub main_count: i64,
    /// Rows on cloud.
    pub cloud_count: i64,
    /// `binary` (hash_record_extended) or `text` (md5 of the normalised jsonb text).
    pub method: &'static str,
    /// Whether contents match.
    pub equal: bool,
    /// One side empty or nearly: not settled row by row.
    pub truncated: Option<Role>,
    /// Smallest differing key ranges (at most 100).
    pub ranges: Vec<RangeDiff>,
    /// Differing rows (at most `max_differences`).
    pub candidates: Vec<Candidate>,
    /// More differences exist than were collected.
    pub more: bool,
    /// Bytes of hashes, keys and counts received from both servers (approximate).
    pub bytes_read: u64,
    /// `full` (every row, by key ranges) or `incremental` (only the keys changed since the
    /// last pass; the row counts are then not taken and shown as -1).
    pub mode: &'static str,
    /// Incremental: the keys committed or deleted since the last pass, on either side.
    pub changed_keys: usize,
    /// Incremental: how the changed rows were found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes_by: Option<String>,
    /// Incremental by commit timestamps although the table has an updated-at column:
    /// the index that would make the pass fast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// What a scan did to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableReport {
    /// `schema.table`.
    pub table: String,
    /// The comparison.
    #[serde(flatten)]
    pub diff: TableDiff,
    /// Differences still there after the re-check.
    pub confirmed: usize,
    /// Repairs written.
    pub repaired: usize,
    /// New conflict-log entries.
    pub logged: u64,
    /// Candidates that changed meanwhile (left for the next scan).
    pub skipped: usize,
    /// Why the table was not compared or a repair failed.
    pub errors: Vec<String>,
    /// Seconds taken.
    pub seconds: f64,
    /// Of those, seconds spent re-checking and settling the differences found.
    pub settle_seconds: f64,
    /// Of those, seconds spent waiting by the throttle (`[conflicts] scan_duty_percent`).
    pub throttled_seconds: f64,
}

/// Is one side empty or nearly (more than half its rows missing and at least 100)?
/// Returns the emptied side.
pub fn truncated_side(main: i64, cloud: i64) -> Option<Role> {
    let (small, big, side) = if main < cloud {
        (main, cloud, Role::Main)
    } else {
        (cloud, main, Role::Cloud)
    };
    (big - small >= 100 && small * 2 < big).then_some(side)
}

/// Wait until each side's WAL position at the call is confirmed by the peer's
/// subscription, both ways. A direction without a subscription carries nothing.
pub async fn wait_caught_up(main: &Client, cloud: &Client, timeout: Duration) -> Result<(), Error> {
    const SLOT: &str = "SELECT subslotname::text FROM pg_subscription
      WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())";
    // The insert position, not pg_current_wal_lsn() (the write position): an asynchronous
    // commit (synchronous_commit = off) may still sit in the WAL buffers, past the latter.
    const LSN: &str = "SELECT pg_current_wal_insert_lsn()::text";
    const CONFIRMED: &str =
        "SELECT coalesce(bool_or(confirmed_flush_lsn >= $2::text::pg_lsn), false)
      FROM pg_replication_slots WHERE slot_name = $1";
    let deadline = Instant::now() + timeout;
    let mut targets = Vec::new();
    for (publisher, subscriber, from, to) in [
        (main, cloud, Role::Main, Role::Cloud),
        (cloud, main, Role::Cloud, Role::Main),
    ] {
        let name = format!("duplex_{from}_to_{to}");
        let slot: Option<Option<String>> = subscriber
            .query_opt(SLOT, &[&name])
            .await
            .context(format!("{to}: reading subscription {name}"))?
            .map(|r| r.get(0));
        let Some(Some(slot)) = slot else { continue };
        let lsn: String = publisher
            .query_one(LSN, &[])
            .await
            .context(format!("{from}: reading the WAL position"))?
            .get(0);
        targets.push((publisher, slot, lsn, format!("{from} -> {to}")));
    }
    for (publisher, slot, lsn, direction) in targets {
        loop {
            let done: bool = publisher
                .query_one(CONFIRMED, &[&slot, &lsn])
                .await
                .context(format!("reading slot {slot}"))?
                .get(0);
            if done {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::NotCaughtUp { direction, timeout });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Pin the scanner's session settings on a connection (once per connection).
pub async fn prepare(client: &Client, side: Role) -> Result<(), Error> {
    client
        .batch_execute(&format!("{PIN}; {SCAN_STATEMENT_TIMEOUT}"))
        .await
        .context(format!("{side}: preparing the scanner session"))?;
    Ok(())
}

/// The SQL fragments for one table.
#[derive(Debug, Clone)]
struct Shape {
    table: TableName,
    tbl: String,
    /// `t."a"` or `(t."a", t."b")`.
    key_row: String,
    /// `t."a", t."b"`, for ORDER BY.
    key_order: String,
    /// The key as JSON array text, like the in-stream triggers write it.
    key_json: String,
    /// Key column types (`format_type`).
    key_types: Vec<String>,
    /// The row hash, a bigint.
    hash: String,
    /// Whether `hash` is the binary one.
    binary: bool,
    /// The updated-at column as timestamptz, or NULL.
    updated: String,
    /// The updated-at column and its type, when the policy has one.
    updated_column: Option<(String, String)>,
    key_columns: Vec<String>,
    /// Generated columns (not written, not in logged versions) and identity columns
    /// `GENERATED ALWAYS` (written with `OVERRIDING SYSTEM VALUE`), of either side.
    computed: Computed,
}

impl Shape {
    /// `columns`: (name, `format_type`) of every column, for the binary hash's
    /// complement.
    fn new(
        t: &Target,
        key_types: Vec<String>,
        binary: bool,
        columns: &[(String, String)],
        computed: Computed,
    ) -> Shape {
        let cols: Vec<String> = t
            .key
            .iter()
            .map(|c| format!("t.{}", quote_ident(c)))
            .collect();
        let key_row = if cols.len() == 1 {
            cols[0].clone()
        } else {
            format!("({})", cols.join(", "))
        };
        let hash = if binary {
            // hash_record_extended hashes by equality: numeric 1.0 and 1.00, jsonb numbers
            // likewise, -0 and 0, '1 day' and '24 hours' hash the same. Their text tells
            // them apart.
            let coarse: Vec<String> = columns
                .iter()
                .filter(|(_, ty)| equality_coarser_than_identity(ty))
                .map(|(c, _)| format!("t.{}", quote_ident(c)))
                .collect();
            if coarse.is_empty() {
                "hash_record_extended(t.*, 0)".to_string()
            } else {
                format!(
                    "(hash_record_extended(t.*, 0) # coalesce(hashtextextended(ROW({})::text, 1), 0))",
                    coarse.join(", ")
                )
            }
        } else {
            "('x' || left(md5(to_jsonb(t.*)::text), 16))::bit(64)::bigint".to_string()
        };
        let updated_name = t.policy.as_ref().and_then(|p| p.updated_at.as_ref());
        let updated = match updated_name {
            Some(c) => format!("t.{}::timestamptz", quote_ident(c)),
            None => "NULL::timestamptz".into(),
        };
        let updated_column = updated_name.map(|c| {
            let ty = columns
                .iter()
                .find(|(n, _)| n == c)
                .map(|(_, ty)| ty.clone())
                .unwrap_or_else(|| "timestamp with time zone".into());
            (c.clone(), ty)
        });
        Shape {
            table: t.table.clone(),
            tbl: t.table.quoted(),
            key_row,
            key_order: cols.join(", "),
            key_json: format!("jsonb_build_array({})::text", cols.join(", ")),
            key_types,
            hash,
            binary,
            updated,
            updated_column,
            key_columns: t.key.clone(),
            computed,
        }
    }

    /// A key (jsonb expression holding a JSON array) as a value comparable with `key_row`.
    fn bound(&self, expr: &str) -> String {
        let parts: Vec<String> = self
            .key_types
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("(({expr})->>{i})::{ty}"))
            .collect();
        if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("({})", parts.join(", "))
        }
    }

    /// Rows of the range `r.b` = `[from, to]` (`to` JSON null: open-ended).
    fn in_range(&self, open: bool) -> String {
        let lo = format!("{} >= {}", self.key_row, self.bound("r.b->0"));
        if open {
            lo
        } else {
            format!("{lo} AND {} < {}", self.key_row, self.bound("r.b->1"))
        }
    }

    fn ranges_from(&self) -> &'static str {
        "jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS r(b, ord)"
    }

    fn total_sql(&self) -> String {
        format!(
            "SELECT count(*), coalesce(bit_xor({h}), 0)::int8 FROM {tbl} t",
            h = self.hash,
            tbl = self.tbl
        )
    }

    fn min_key_sql(&self) -> String {
        format!(
            "SELECT {k} FROM {tbl} t ORDER BY {o} LIMIT 1",
            k = self.key_json,
            tbl = self.tbl,
            o = self.key_order
        )
    }

    fn less_sql(&self) -> String {
        format!(
            "SELECT {} < {}",
            self.bound("$1::text::jsonb"),
            self.bound("$2::text::jsonb")
        )
    }

    fn agg_sql(&self, open: bool) -> String {
        format!(
            "SELECT r.ord::int8, a.n, a.x FROM {from}
             CROSS JOIN LATERAL (SELECT count(*) AS n, coalesce(bit_xor({h}), 0)::int8 AS x
                                   FROM {tbl} t WHERE {cond}) a",
            from = self.ranges_from(),
            h = self.hash,
            tbl = self.tbl,
            cond = self.in_range(open)
        )
    }

    /// Every `r.b->>2`-th key of each range, after its first.
    fn split_sql(&self, open: bool) -> String {
        format!(
            "SELECT r.ord::int8, q.k FROM {from}
             CROSS JOIN LATERAL (SELECT s.k, s.rn FROM
                 (SELECT {k} AS k, row_number() OVER (ORDER BY {o}) AS rn
                    FROM {tbl} t WHERE {cond}) s
               WHERE s.rn > 1 AND (s.rn - 1) % ((r.b->>2)::int8) = 0) q
             ORDER BY r.ord, q.rn",
            from = self.ranges_from(),
            k = self.key_json,
            o = self.key_order,
            tbl = self.tbl,
            cond = self.in_range(open)
        )
    }

    /// Each row of the ranges: its range's position, its key (a bigint for a single
    /// integer key: no JSON text built per row), its hash.
    fn rows_sql(&self, open: bool) -> String {
        let k = if self.integer_key() {
            format!("{}::int8", self.key_row)
        } else {
            self.key_json.clone()
        };
        format!(
            "SELECT r.ord::int8, q.k, q.h FROM {from}
             CROSS JOIN LATERAL (SELECT {k} AS k, {h} AS h FROM {tbl} t WHERE {cond}) q",
            from = self.ranges_from(),
            h = self.hash,
            tbl = self.tbl,
            cond = self.in_range(open)
        )
    }

    /// A single integer key: the first level is arithmetic buckets of it.
    fn integer_key(&self) -> bool {
        matches!(
            self.key_types.as_slice(),
            [t] if t == "bigint" || t == "integer" || t == "smallint"
        )
    }

    /// `$1` the quoted table name: the smallest and largest key (two index probes) and
    /// the planner's row estimate (-1: never analysed).
    fn bounds_sql(&self) -> String {
        format!(
            "SELECT min({k})::int8, max({k})::int8,
                    (SELECT reltuples::int8 FROM pg_class WHERE oid = $1::text::regclass)
               FROM {tbl} t",
            k = self.key_row,
            tbl = self.tbl
        )
    }

    /// `$1` segment bounds (int8[], ascending), `$2` each segment's shift (int4[]): each
    /// bucket (segment `width_bucket(key, $1)`, `key >> shift`) with its row count and
    /// `bit_xor` of row hashes, in one pass over the table.
    fn buckets_sql(&self, segmented: bool) -> String {
        if !segmented {
            // One segment, `$1` its shift: no width_bucket per row (a fifth of the cost).
            return format!(
                "SELECT 0::int4, {k}::int8 >> $1::int4, count(*), coalesce(bit_xor({h}), 0)::int8
                   FROM {tbl} t GROUP BY 2",
                k = self.key_row,
                h = self.hash,
                tbl = self.tbl
            );
        }
        let seg = format!("width_bucket({}::int8, $1::int8[])", self.key_row);
        format!(
            "SELECT {seg}, {k}::int8 >> ($2::int4[])[{seg} + 1], count(*),
                    coalesce(bit_xor({h}), 0)::int8
               FROM {tbl} t GROUP BY 1, 2",
            k = self.key_row,
            h = self.hash,
            tbl = self.tbl
        )
    }

    /// `$1`, `$2` keys: the rows below `$1` and from `$2` on, each counted up to 100,000
    /// (an index-only scan of the ends of the key space).
    fn tails_sql(&self) -> String {
        format!(
            "SELECT (SELECT count(*) FROM (SELECT FROM {tbl} t WHERE {k} < $1::int8 LIMIT 100000) a),
                    (SELECT count(*) FROM (SELECT FROM {tbl} t WHERE {k} >= $2::int8 LIMIT 100000) b)",
            k = self.key_row,
            tbl = self.tbl
        )
    }

    /// `$1` schema, `$2` table, `$3` column: the column's histogram bounds as PostgreSQL's
    /// statistics have them (no row: never analysed).
    fn histogram_sql(&self) -> &'static str {
        "SELECT histogram_bounds::text::int8[] FROM pg_stats
          WHERE schemaname = $1 AND tablename = $2 AND attname = $3 AND NOT inherited"
    }

    /// `$1` percent of the table's blocks, `$2` parts, `$3` a key: every n-th sampled key
    /// after `$3` in key order, so that the sample is cut into about `$2` parts.
    fn sample_sql(&self) -> String {
        format!(
            "SELECT s.k FROM (
               SELECT {k} AS k, row_number() OVER (ORDER BY {o}) AS rn, count(*) OVER () AS n
                 FROM {tbl} t TABLESAMPLE SYSTEM ($1::float4)
                WHERE {kr} > {b}) s
              WHERE s.rn % greatest(s.n / $2::int8, 1) = 0
              ORDER BY s.rn",
            k = self.key_json,
            o = self.key_order,
            tbl = self.tbl,
            kr = self.key_row,
            b = self.bound("$3::text::jsonb")
        )
    }

    /// `SELECT true` when the table has a row.
    fn any_row_sql(&self) -> String {
        format!("SELECT EXISTS (SELECT FROM {} t)", self.tbl)
    }

    /// Keys (JSON array text) and row hashes of rows changed at or after `$1` (by `by`),
    /// and keys of rows of rel `$2` deleted since then (tombstones, hash NULL).
    fn changed_sql(&self, by: ChangesBy) -> String {
        let cond = match (by, &self.updated_column) {
            (ChangesBy::UpdatedAt, Some((col, ty))) if !ty.contains("without") => {
                format!("t.{} >= $1", quote_ident(col))
            }
            // A timestamp without time zone holds UTC here, as last_write_wins reads it
            // (sessions are pinned to UTC); the bound is cast, not the column, so the
            // index is used.
            (ChangesBy::UpdatedAt, Some((col, ty))) => format!(
                "t.{} >= ($1::timestamptz AT TIME ZONE 'UTC')::{ty}",
                quote_ident(col)
            ),
            _ => "pg_xact_commit_timestamp(t.xmin) >= $1".to_string(),
        };
        format!(
            "SELECT {k}, {h} FROM {tbl} t WHERE {cond}
             UNION ALL
             SELECT tb.key, NULL::int8 FROM duplex.tombstone tb
              WHERE tb.rel = $2 AND tb.deleted_at >= $1",
            k = self.key_json,
            h = self.hash,
            tbl = self.tbl
        )
    }

    /// `$1` a JSON array of keys: each key (as JSON array text) with its row's hash (NULL:
    /// no row).
    fn keyed_hash_sql(&self) -> String {
        format!(
            "SELECT r.b::text, x.h FROM jsonb_array_elements($1::text::jsonb) AS r(b)
             LEFT JOIN LATERAL (SELECT {h} AS h FROM {tbl} t WHERE {kr} = {b}) x ON true",
            h = self.hash,
            tbl = self.tbl,
            kr = self.key_row,
            b = self.bound("r.b")
        )
    }
}

/// Column types whose equality (and so their extended hash) ignores a difference in the
/// stored value: numeric scale, signed zero, interval units; arrays of them too. Numbers
/// inside jsonb are left to jsonb's own hash (by value): hashing every document's text
/// would double the cost of an identical table for a difference JSON does not make.
fn equality_coarser_than_identity(type_name: &str) -> bool {
    ["numeric", "double precision", "real", "interval"]
        .iter()
        .any(|t| type_name.contains(t))
}

/// A range being narrowed down: `[from, to)` and each side's row count in it.
#[derive(Debug, Clone)]
struct Range {
    from: String,
    to: Option<String>,
    main: i64,
    cloud: i64,
}

/// Column layout (name, type) and the server's major version.
async fn layout(c: &Client, t: &TableName) -> Result<(Vec<(String, String)>, i32), pg::Error> {
    let rows = c
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    current_setting('server_version_num')::int / 10000
               FROM pg_attribute a
              WHERE a.attrelid = format('%I.%I', $1::text, $2::text)::regclass
                AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&t.schema, &t.name],
        )
        .await
        .context(format!("reading the columns of {t}"))?;
    let major = rows.first().map(|r| r.get(2)).unwrap_or(0);
    Ok((rows.iter().map(|r| (r.get(0), r.get(1))).collect(), major))
}

/// Choose the hash and build the table's SQL: binary only when both servers have the same
/// major version and column layout and every column type can be hashed.
async fn shape(main: &Client, cloud: &Client, t: &Target) -> Result<Shape, Error> {
    let ((lm, vm), (lc, vc)) = tokio::try_join!(layout(main, &t.table), layout(cloud, &t.table))?;
    let binary = vm == vc
        && lm == lc
        && catalog::binary_hashable(main, &t.table).await?
        && catalog::binary_hashable(cloud, &t.table).await?;
    let key_types = t
        .key
        .iter()
        .map(|k| {
            lm.iter()
                .find(|(n, _)| n == k)
                .map(|(_, ty)| ty.clone())
                .unwrap_or_else(|| "text".into())
        })
        .collect();
    let (cm, cc) = tokio::try_join!(
        catalog::computed(main, &t.table),
        catalog::computed(cloud, &t.table)
    )?;
    let union = |a: Vec<String>, b: Vec<String>| {
        let mut all = a;
        all.extend(
            b.into_iter()
                .filter(|c| !all.contains(c))
                .collect::<Vec<_>>(),
        );
        all
    };
    let computed = Computed {
        generated: union(cm.generated, cc.generated),
        identity_always: union(cm.identity_always, cc.identity_always),
    };
    Ok(Shape::new(t, key_types, binary, &lm, computed))
}

/// Compare one table, each side in one REPEATABLE READ snapshot. `main`/`cloud` must have
/// been [`prepare`]d and be outside a transaction.
pub async fn compare(
    main: &Client,
    cloud: &Client,
    target: &Target,
    max_differences: usize,
) -> Result<TableDiff, Error> {
    let shape = shape(main, cloud, target).await?;
    compare_shaped(main, cloud, &shape, max_differences).await
}

/// Run `sql` with `params` on both sides at once: (main's rows, cloud's rows). `what`
/// names the work in errors ("main: <what>").
async fn on_both(
    main: &Client,
    cloud: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<(Vec<tokio_postgres::Row>, Vec<tokio_postgres::Row>), pg::Error> {
    let started = Instant::now();
    let rows = on_both_now(main, cloud, sql, params, what).await?;
    pace(started.elapsed()).await;
    Ok(rows)
}

/// After a statement that took `took`, wait as the scan's throttle says (if any).
async fn pace(took: Duration) {
    let pause = PACE
        .try_with(|p| {
            let pause = pause_after(took, p.duty_percent);
            p.paused.set(p.paused.get() + pause);
            pause
        })
        .unwrap_or_default();
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
}

async fn on_both_now(
    main: &Client,
    cloud: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<(Vec<tokio_postgres::Row>, Vec<tokio_postgres::Row>), pg::Error> {
    tokio::try_join!(
        async {
            main.query(sql, params)
                .await
                .context(format!("main: {what}"))
        },
        async {
            cloud
                .query(sql, params)
                .await
                .context(format!("cloud: {what}"))
        }
    )
}

/// Open a read-only snapshot on each side (`BEGIN ... REPEATABLE READ`); the caller ends
/// both with [`end_snapshots`] whatever happens in between.
async fn begin_snapshots(main: &Client, cloud: &Client) -> Result<(), Error> {
    let begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    main.batch_execute(begin)
        .await
        .context("main: starting the scan snapshot")?;
    if let Err(e) = cloud.batch_execute(begin).await {
        let _ = main.batch_execute("ROLLBACK").await;
        return Err(pg::Error::Query {
            context: "cloud: starting the scan snapshot".into(),
            source: e,
        }
        .into());
    }
    Ok(())
}

async fn end_snapshots(main: &Client, cloud: &Client) {
    for c in [main, cloud] {
        let _ = c.batch_execute("COMMIT").await;
    }
}

async fn compare_shaped(
    main: &Client,
    cloud: &Client,
    shape: &Shape,
    max_differences: usize,
) -> Result<TableDiff, Error> {
    begin_snapshots(main, cloud).await?;
    let result = compare_in_snapshot(main, cloud, shape, max_differences).await;
    end_snapshots(main, cloud).await;
    let mut diff = result?;
    diff.method = if shape.binary { "binary" } else { "text" };
    diff.mode = "full";
    Ok(diff)
}

/// Above this many changed keys an incremental pass is no cheaper: compare in full.
const INCREMENTAL_MAX_KEYS: usize = 200_000;

/// How an incremental pass finds the rows changed since the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangesBy {
    /// `updated_at >= since` through an index whose first column is the table's
    /// updated-at column (on both sides): the cost follows the number of changed rows.
    UpdatedAt,
    /// `pg_xact_commit_timestamp(xmin) >= since`: reads every row's commit time (a
    /// sequential scan), so the cost follows the table's size.
    CommitTimestamp,
}

impl ChangesBy {
    /// As shown in reports.
    pub fn describe(self, updated_at: Option<&str>) -> String {
        match (self, updated_at) {
            (ChangesBy::UpdatedAt, Some(c)) => {
                format!("by the index on \"{c}\" (only the changed rows are read)")
            }
            _ => "by commit timestamps (every row's commit time is read)".to_string(),
        }
    }
}

/// What an incremental pass of a table would use and, when that is the slow way, how to
/// get the fast one. Both sides must have an index whose first column is the updated-at
/// column (btree, valid, not partial).
pub async fn changes_by(
    main: &Client,
    cloud: &Client,
    table: &TableName,
    updated_at: Option<&str>,
) -> Result<(ChangesBy, Option<String>), Error> {
    let Some(col) = updated_at else {
        return Ok((ChangesBy::CommitTimestamp, None));
    };
    let mut lacking = Vec::new();
    for (side, c) in [(Role::Main, main), (Role::Cloud, cloud)] {
        if !updated_at_index(c, table, col)
            .await
            .context(format!("{side}: looking for an index on {table} \"{col}\""))?
        {
            lacking.push(side.as_str());
        }
    }
    if lacking.is_empty() {
        return Ok((ChangesBy::UpdatedAt, None));
    }
    Ok((
        ChangesBy::CommitTimestamp,
        Some(format!(
            "for a fast incremental pass create an index on the updated-at column on {}: CREATE INDEX CONCURRENTLY ON {} ({})",
            lacking.join(" and "),
            table.quoted(),
            quote_ident(col)
        )),
    ))
}

/// Whether `table` has a usable btree index whose first column is `column`.
pub async fn updated_at_index(
    c: &Client,
    table: &TableName,
    column: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one(
        "SELECT EXISTS (
           SELECT FROM pg_index i
             JOIN pg_class ic ON ic.oid = i.indexrelid
             JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'btree'
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = format('%I.%I', $1::text, $2::text)::regclass
              AND a.attname = $3 AND i.indisvalid AND i.indisready AND i.indpred IS NULL)",
        &[&table.schema, &table.name, &column],
    )
    .await?
    .get(0))
}

/// Compare only the keys changed (by the updated-at index where both sides have one, else
/// by commit timestamp) or deleted (duplex's tombstones) at or after `since` on either
/// side, in one snapshot per side. `None` when that cannot be trusted or is no cheaper,
/// and the caller compares in full: commit timestamps needed but a server runs without
/// `track_commit_timestamp`, one side empty and the other not (a TRUNCATE leaves no trace
/// in either), or too many changed keys.
async fn compare_incremental(
    main: &Client,
    cloud: &Client,
    s: &Shape,
    table: &TableName,
    since: DateTime<Utc>,
    max_differences: usize,
) -> Result<Option<TableDiff>, Error> {
    let updated_name = s.updated_column.as_ref().map(|(n, _)| n.clone());
    let (by, hint) = changes_by(main, cloud, table, updated_name.as_deref()).await?;
    if by == ChangesBy::CommitTimestamp {
        for (side, c) in [(Role::Main, main), (Role::Cloud, cloud)] {
            let on: bool = c
                .query_one(
                    "SELECT current_setting('track_commit_timestamp') = 'on'",
                    &[],
                )
                .await
                .context(format!("{side}: reading track_commit_timestamp"))?
                .get(0);
            if !on {
                return Ok(None);
            }
        }
    }
    let rel = table.to_string();
    begin_snapshots(main, cloud).await?;
    let result = incremental_in_snapshot(main, cloud, s, &rel, since, by, max_differences).await;
    end_snapshots(main, cloud).await;
    let Some(mut diff) = result? else {
        return Ok(None);
    };
    diff.method = if s.binary { "binary" } else { "text" };
    diff.mode = "incremental";
    diff.changes_by = Some(by.describe(updated_name.as_deref()));
    diff.hint = hint;
    Ok(Some(diff))
}

async fn incremental_in_snapshot(
    main: &Client,
    cloud: &Client,
    s: &Shape,
    rel: &str,
    since: DateTime<Utc>,
    by: ChangesBy,
    max_differences: usize,
) -> Result<Option<TableDiff>, Error> {
    let any = s.any_row_sql();
    let (am, ac) = on_both(main, cloud, &any, &[], "looking for a row").await?;
    let row_in = |rows: &[tokio_postgres::Row]| rows.first().is_some_and(|r| r.get::<_, bool>(0));
    if row_in(&am) != row_in(&ac) {
        return Ok(None);
    }
    let changed = s.changed_sql(by);
    let (cm, cc) = on_both(
        main,
        cloud,
        &changed,
        &[&since, &rel],
        "listing the keys changed since the last pass",
    )
    .await?;
    let mut bytes_read = 4;
    // Each key changed on either side with the hash each side reported (a tombstone
    // reports none). A key both sides changed to the same version needs nothing more.
    let mut seen: HashMap<String, [Option<Option<i64>>; 2]> = HashMap::new();
    for (side, rows) in [(0, cm), (1, cc)] {
        for r in rows {
            let k: String = r.get(0);
            let h: Option<i64> = r.get(1);
            bytes_read += k.len() as u64 + 8;
            let slot = &mut seen.entry(k).or_default()[side];
            // A row and a tombstone of the same key: the row is what the side has now.
            if slot.flatten().is_none() {
                *slot = Some(h);
            }
        }
        if seen.len() > INCREMENTAL_MAX_KEYS {
            return Ok(None);
        }
    }
    let mut diff = TableDiff {
        main_count: -1,
        cloud_count: -1,
        changed_keys: seen.len(),
        ..TableDiff::default()
    };
    let mut unsettled = Vec::new();
    for (key, [m, c]) in seen {
        match (m, c) {
            (Some(Some(m)), Some(Some(c))) if m == c => {}
            (Some(Some(m)), Some(Some(c))) => diff.candidates.push(Candidate {
                key,
                main: Some(m),
                cloud: Some(c),
            }),
            _ => unsettled.push(key),
        }
    }
    // Changed on one side only, or deleted: read both sides' current hash of the key.
    unsettled.sort();
    let hashes = s.keyed_hash_sql();
    for chunk in unsettled.chunks(RANGE_BATCH) {
        let list = format!("[{}]", chunk.join(","));
        let (rm, rc) = on_both(main, cloud, &hashes, &[&list], "hashing the changed rows").await?;
        bytes_read += 8 * (rm.len() + rc.len()) as u64;
        let theirs: HashMap<String, Option<i64>> =
            rc.iter().map(|r| (r.get(0), r.get(1))).collect();
        for r in rm {
            let key: String = r.get(0);
            let m: Option<i64> = r.get(1);
            let c = theirs.get(&key).copied().flatten();
            if m != c {
                diff.candidates.push(Candidate {
                    key,
                    main: m,
                    cloud: c,
                });
            }
        }
    }
    diff.candidates.sort_by(|a, b| a.key.cmp(&b.key));
    if diff.candidates.len() > max_differences {
        diff.candidates.truncate(max_differences);
        diff.more = true;
    }
    diff.bytes_read = bytes_read;
    diff.equal = diff.candidates.is_empty();
    Ok(Some(diff))
}

async fn compare_in_snapshot(
    main: &Client,
    cloud: &Client,
    s: &Shape,
    max_differences: usize,
) -> Result<TableDiff, Error> {
    if s.integer_key() {
        return compare_bucketed(main, cloud, s, max_differences).await;
    }
    let total = s.total_sql();
    let (tm, tc) = on_both(main, cloud, &total, &[], "aggregating").await?;
    let (tm, tc) = (&tm[0], &tc[0]);
    let (nm, xm): (i64, i64) = (tm.get(0), tm.get(1));
    let (nc, xc): (i64, i64) = (tc.get(0), tc.get(1));
    let mut diff = TableDiff {
        main_count: nm,
        cloud_count: nc,
        equal: nm == nc && xm == xc,
        bytes_read: 32,
        ..TableDiff::default()
    };
    if diff.equal {
        return Ok(diff);
    }
    diff.truncated = truncated_side(nm, nc);
    // The first key of either side starts the first range.
    let min = s.min_key_sql();
    let first_m: Option<String> = main
        .query_opt(&min, &[])
        .await
        .context("main: first key")?
        .map(|r| r.get(0));
    let first_c: Option<String> = cloud
        .query_opt(&min, &[])
        .await
        .context("cloud: first key")?
        .map(|r| r.get(0));
    let from = match (first_m, first_c) {
        (Some(m), Some(c)) => {
            let c_first: bool = main
                .query_one(&s.less_sql(), &[&c, &m])
                .await
                .context("main: comparing keys")?
                .get(0);
            if c_first {
                c
            } else {
                m
            }
        }
        (Some(k), None) | (None, Some(k)) => k,
        (None, None) => return Ok(diff),
    };
    // The first level's boundaries from a sample of main's keys rather than from every
    // key in order (a pass over the whole index saved); both sides then measure the same
    // ranges.
    let parts = bucket_count(nm.max(nc));
    let cuts = if parts > 16 {
        sample_cuts(main, s, &from, nm.max(nc), parts, &mut diff.bytes_read).await?
    } else {
        Vec::new()
    };
    let differing = if cuts.is_empty() {
        vec![Range {
            from,
            to: None,
            main: nm,
            cloud: nc,
        }]
    } else {
        let mut ranges = Vec::with_capacity(cuts.len() + 1);
        let mut lo = from;
        for cut in cuts {
            ranges.push(Range {
                from: std::mem::replace(&mut lo, cut.clone()),
                to: Some(cut),
                main: 0,
                cloud: 0,
            });
        }
        ranges.push(Range {
            from: lo,
            to: None,
            main: 0,
            cloud: 0,
        });
        measure(main, cloud, s, ranges, &mut diff.bytes_read).await?
    };
    narrow(main, cloud, s, differing, max_differences, &mut diff).await?;
    Ok(diff)
}

/// About `parts - 1` keys of `c`'s table, evenly spaced in key order, from a block
/// sample of about 16 rows per part; each after `from`.
async fn sample_cuts(
    c: &Client,
    s: &Shape,
    from: &str,
    rows: i64,
    parts: i64,
    bytes: &mut u64,
) -> Result<Vec<String>, Error> {
    let percent = (100.0 * 16.0 * parts as f64 / rows.max(1) as f64).clamp(0.001, 100.0) as f32;
    let keys = c
        .query(&s.sample_sql(), &[&percent, &parts, &from])
        .await
        .context("main: sampling keys")?;
    *bytes += keys
        .iter()
        .map(|r| r.get::<_, String>(0).len() as u64)
        .sum::<u64>();
    Ok(keys.iter().map(|r| r.get(0)).collect())
}

/// Buckets of an integer key: `key >> shift`, so that `[lo, hi]` falls into at most
/// `buckets` of them. Pure.
fn bucket_shift(lo: i64, hi: i64, buckets: i64) -> u32 {
    let buckets = i128::from(buckets.max(1));
    (0..63u32)
        .find(|&s| i128::from(hi >> s) - i128::from(lo >> s) < buckets)
        .unwrap_or(63)
}

/// How many first-level buckets for a table of about `rows` rows (`rows` < 0: unknown,
/// as PostgreSQL says of a table never analysed): about [`LEAF_ROWS`] rows each, at most
/// [`MAX_PARTS`]. Pure.
fn bucket_count(rows: i64) -> i64 {
    if rows < 0 {
        return MAX_PARTS;
    }
    ((rows + LEAF_ROWS - 1) / LEAF_ROWS).clamp(1, MAX_PARTS)
}

/// The first level of an integer key: segments of the key space between `bounds` (as
/// `width_bucket` numbers them: segment 0 below the first bound, segment `i` from bound
/// `i - 1`), each cut into buckets of `1 << shifts[i]` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Buckets {
    lo: i64,
    bounds: Vec<i64>,
    shifts: Vec<i32>,
}

impl Buckets {
    /// The histogram's bounds strictly above `lo` and at most `hi`, ascending, distinct:
    /// the segment bounds of [`Buckets::plan`]. Pure.
    fn bounds(lo: i64, hi: i64, histogram: &[i64]) -> Vec<i64> {
        let mut bounds: Vec<i64> = histogram
            .iter()
            .copied()
            .filter(|&b| b > lo && b <= hi)
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        bounds
    }

    /// About `2 x bucket_count(rows)` buckets of 128 to 256 rows where the keys are
    /// dense. `bounds` from [`Buckets::bounds`] (the histogram's: about as many rows
    /// between two of them), `tails` the rows below the first and from the last (on the
    /// side with more). When one shift suits every histogram interval (keys spread evenly,
    /// a few outliers aside) it is one segment `key >> shift`; otherwise (keys clustered,
    /// for example one sequence range per side) each segment gets its own shift, so that
    /// a dense cluster gets narrow buckets however wide the key space is. Either way there
    /// are at most about `2 x MAX_PARTS` buckets plus two per segment. Pure.
    fn plan(lo: i64, hi: i64, bounds: Vec<i64>, rows: i64, tails: [i64; 2]) -> Buckets {
        Buckets::plan_for(lo, hi, bounds, rows, tails, 2 * bucket_count(rows))
    }

    /// As [`Buckets::plan`], for about `target` buckets. Pure.
    fn plan_for(
        lo: i64,
        hi: i64,
        bounds: Vec<i64>,
        rows: i64,
        tails: [i64; 2],
        target: i64,
    ) -> Buckets {
        let target = target.max(1);
        let naive = |lo: i64| Buckets {
            lo,
            bounds: Vec::new(),
            shifts: vec![bucket_shift(lo, hi, target) as i32],
        };
        if bounds.len() < 2 || rows < 0 {
            return naive(lo);
        }
        let intervals = bounds.len() as i64 - 1;
        let per = (target / intervals).max(1);
        let per_rows = (rows / intervals).max(1);
        // (first key, last key, rows) of each segment.
        let mut segments = vec![(lo, bounds[0] - 1, tails[0])];
        segments.extend(bounds.windows(2).map(|w| (w[0], w[1] - 1, per_rows)));
        segments.push((bounds[bounds.len() - 1], hi, tails[1]));
        let shifts: Vec<i32> = segments
            .iter()
            .map(|&(a, b, _)| bucket_shift(a, b.max(a), per) as i32)
            .collect();
        // The shift most intervals want (their median); the others then hold more or
        // fewer buckets, counted below.
        let mut interior = shifts[1..shifts.len() - 1].to_vec();
        interior.sort_unstable();
        let one = interior[interior.len() / 2];
        let buckets: i64 = segments
            .iter()
            .map(|&(a, b, n)| n.min((b.max(a) >> one) - (a >> one) + 1))
            .sum();
        if buckets <= target + target / 4 {
            return Buckets {
                lo,
                bounds: Vec::new(),
                shifts: vec![one],
            };
        }
        Buckets { lo, bounds, shifts }
    }

    /// The key range of bucket `b` of segment `seg`: `[b << shift, (b + 1) << shift)`
    /// within the segment (open-ended where the end would not fit in a bigint).
    fn range(&self, seg: i32, b: i64, main: i64, cloud: i64) -> Range {
        let seg = usize::try_from(seg).unwrap_or(0).min(self.bounds.len());
        let shift = self.shifts.get(seg).copied().unwrap_or(0).clamp(0, 63) as u32;
        let seg_lo = if seg == 0 {
            self.lo
        } else {
            self.bounds[seg - 1]
        };
        let seg_hi = self.bounds.get(seg).copied();
        let lo = (i128::from(b) << shift).max(i128::from(seg_lo));
        let hi = (i128::from(b) + 1) << shift;
        let hi = match seg_hi {
            Some(h) => Some(hi.min(i128::from(h))),
            None => Some(hi),
        };
        Range {
            from: format!("[{lo}]"),
            to: hi
                .and_then(|h| i64::try_from(h).ok())
                .map(|h| format!("[{h}]")),
            main,
            cloud,
        }
    }
}

/// A table with a single integer key: the first level's ranges are arithmetic buckets of
/// the key (`key >> shift`), aggregated on each side in ONE pass over the table (a
/// grouped sequential scan, in parallel where PostgreSQL can), whose sums are also the
/// whole-table comparison. Only differing buckets are narrowed down further.
async fn compare_bucketed(
    main: &Client,
    cloud: &Client,
    s: &Shape,
    max_differences: usize,
) -> Result<TableDiff, Error> {
    let bounds = s.bounds_sql();
    let (bm, bc) = on_both(main, cloud, &bounds, &[&s.tbl], "reading the key bounds").await?;
    let read = |rows: &[tokio_postgres::Row]| -> (Option<i64>, Option<i64>, i64) {
        rows.first()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .unwrap_or((None, None, -1))
    };
    let ((lo_m, hi_m, est_m), (lo_c, hi_c, est_c)) = (read(&bm), read(&bc));
    let lo = [lo_m, lo_c].into_iter().flatten().min();
    let hi = [hi_m, hi_c].into_iter().flatten().max();
    let mut diff = TableDiff {
        equal: true,
        bytes_read: 48,
        ..TableDiff::default()
    };
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(diff);
    };
    let rows = if est_m < 0 || est_c < 0 {
        -1
    } else {
        est_m.max(est_c)
    };
    let histogram: Option<Vec<i64>> = main
        .query_opt(
            s.histogram_sql(),
            &[&s.table.schema, &s.table.name, &s.key_columns[0]],
        )
        .await
        .context("main: reading the key's statistics")?
        .and_then(|r| r.get(0));
    let bounds = Buckets::bounds(lo, hi, &histogram.unwrap_or_default());
    let mut tails = [0i64; 2];
    if let (Some(first), Some(last)) = (bounds.first(), bounds.last()) {
        let (tm, tc) = on_both(
            main,
            cloud,
            &s.tails_sql(),
            &[first, last],
            "counting keys outside the statistics",
        )
        .await?;
        for r in tm.iter().chain(tc.iter()) {
            tails[0] = tails[0].max(r.get(0));
            tails[1] = tails[1].max(r.get(1));
        }
    }
    let plan = Buckets::plan(lo, hi, bounds.clone(), rows, tails);
    let target = 2 * bucket_count(rows);
    let started = Instant::now();
    let (differing, totals) = bucket_pass(main, cloud, s, &plan, &mut diff.bytes_read).await?;
    tracing::debug!(table = %s.table, differing = differing.len(), took = ?started.elapsed(), "grouped pass");
    diff.main_count = totals[0].0;
    diff.cloud_count = totals[1].0;
    diff.equal = totals[0] == totals[1];
    if diff.equal {
        return Ok(diff);
    }
    diff.truncated = truncated_side(diff.main_count, diff.cloud_count);
    // Differences spread over many buckets (thousands of scattered ones): narrowing each
    // bucket would read most rows three more times by index (cuts, parts, rows). One more
    // grouped pass with buckets of FINE_ROWS to twice that reads them once, and its
    // differing buckets are leaves already.
    let differing = match fine_target(rows, target, differing.len()) {
        Some(fine) => {
            let fine = Buckets::plan_for(lo, hi, bounds, rows, tails, fine);
            let started = Instant::now();
            let differing = bucket_pass(main, cloud, s, &fine, &mut diff.bytes_read)
                .await?
                .0;
            tracing::debug!(table = %s.table, differing = differing.len(), took = ?started.elapsed(), "finer grouped pass");
            differing
        }
        None => differing,
    };
    let started = Instant::now();
    narrow(main, cloud, s, differing, max_differences, &mut diff).await?;
    tracing::debug!(table = %s.table, candidates = diff.candidates.len(), took = ?started.elapsed(), "narrowed to rows");
    Ok(diff)
}

/// How many buckets a second, finer grouped pass over a table of about `rows` rows should
/// have, after `differing` of the first pass's `target` buckets differed: none when few
/// differ (narrowing them is cheaper) or when it would not have at least twice as many
/// buckets (tables up to about two million rows, whose first-level buckets are small
/// already). Pure.
fn fine_target(rows: i64, target: i64, differing: usize) -> Option<i64> {
    let fine = (rows / FINE_ROWS).min(MAX_FINE_BUCKETS);
    (differing as i64 > target / 8 && fine > 2 * target).then_some(fine)
}

/// Rows per bucket of the second, finer grouped pass (at least; up to twice that).
const FINE_ROWS: i64 = 64;
/// Buckets of the finer pass at most (28 bytes each from each server, and held in memory
/// while they are compared).
const MAX_FINE_BUCKETS: i64 = 1 << 18;

/// One grouped pass over the table on both sides with `plan`'s buckets: the differing
/// buckets as ranges, and each side's (row count, `bit_xor` of row hashes).
async fn bucket_pass(
    main: &Client,
    cloud: &Client,
    s: &Shape,
    plan: &Buckets,
    bytes: &mut u64,
) -> Result<(Vec<Range>, [(i64, i64); 2]), Error> {
    let sql = s.buckets_sql(!plan.bounds.is_empty());
    // The planner takes `key >> n` for as many groups as keys, and would sort every row
    // rather than hash the groups in parallel workers: steer it (for this transaction
    // only). A finer pass's groups (up to MAX_FINE_BUCKETS per process) fit in 32 MB.
    let steer = "SET LOCAL enable_sort = off; SET LOCAL parallel_setup_cost = 0;
                 SET LOCAL parallel_tuple_cost = 0; SET LOCAL work_mem = '32MB'";
    for (side, c) in [(Role::Main, main), (Role::Cloud, cloud)] {
        c.batch_execute(steer)
            .await
            .context(format!("{side}: planner settings of the scan"))?;
    }
    // Folded as the rows stream in: 32 bytes a bucket, not a driver row (about 200).
    let fold = |r: &tokio_postgres::Row| -> Bucket { (r.get(0), r.get(1), r.get(2), r.get(3)) };
    let one: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&plan.shifts[0]];
    let segmented: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&plan.bounds, &plan.shifts];
    let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = if plan.bounds.is_empty() {
        &one
    } else {
        &segmented
    };
    let (mut bm, mut bc) =
        fold_on_both(main, cloud, &sql, params, fold, "aggregating key buckets").await?;
    // The statements that narrow ranges down want the planner's own judgement back.
    for (side, c) in [(Role::Main, main), (Role::Cloud, cloud)] {
        c.batch_execute(
            "RESET enable_sort; RESET parallel_setup_cost; RESET parallel_tuple_cost;
             RESET work_mem",
        )
        .await
        .context(format!("{side}: planner settings of the scan"))?;
    }
    *bytes += 28 * (bm.len() + bc.len()) as u64;
    let totals = [&bm, &bc].map(|side| {
        side.iter()
            .fold((0i64, 0i64), |(n, x), b| (n + b.2, x ^ b.3))
    });
    // Both sides sorted by bucket, then walked together.
    bm.sort_unstable_by_key(|b| (b.0, b.1));
    bc.sort_unstable_by_key(|b| (b.0, b.1));
    let mut differing = Vec::new();
    walk_sorted(
        &bm,
        &bc,
        |x| (x.0, x.1),
        |m, c| {
            let (seg, b) = m.or(c).map(|x| (x.0, x.1)).unwrap_or_default();
            let (mn, mx) = m.map(|x| (x.2, x.3)).unwrap_or_default();
            let (cn, cx) = c.map(|x| (x.2, x.3)).unwrap_or_default();
            if (mn, mx) != (cn, cx) {
                differing.push(plan.range(seg, b, mn, cn));
            }
        },
    );
    Ok((differing, totals))
}

/// Walk two lists sorted by `key` together: `f(main's, cloud's)` once per key, with the
/// element of each side that has it.
fn walk_sorted<T, K: Ord>(
    main: &[T],
    cloud: &[T],
    key: impl Fn(&T) -> K,
    mut f: impl FnMut(Option<&T>, Option<&T>),
) {
    use std::cmp::Ordering;
    let (mut i, mut j) = (0, 0);
    loop {
        let (m, c) = match (main.get(i), cloud.get(j)) {
            (None, None) => return,
            (Some(m), Some(c)) => match key(m).cmp(&key(c)) {
                Ordering::Equal => (Some(m), Some(c)),
                Ordering::Less => (Some(m), None),
                Ordering::Greater => (None, Some(c)),
            },
            (m, c) => (m, c),
        };
        i += usize::from(m.is_some());
        j += usize::from(c.is_some());
        f(m, c);
    }
}

/// The ranges grouped by whether they are open-ended (the statements differ): for each
/// group that has any, whether it is open, the ranges' positions and their JSON for the
/// statement (see [`ranges_json`], extra 0).
fn by_openness(ranges: &[Range]) -> Vec<(bool, Vec<usize>, String)> {
    [false, true]
        .into_iter()
        .filter_map(|open| {
            let idx: Vec<usize> = (0..ranges.len())
                .filter(|&i| ranges[i].to.is_none() == open)
                .collect();
            let param = ranges_json(idx.iter().map(|&i| (&ranges[i], 0)));
            (!idx.is_empty()).then_some((open, idx, param))
        })
        .collect()
}

/// A bucket from a grouped pass: segment, bucket, rows, `bit_xor` of row hashes.
type Bucket = (i32, i64, i64, i64);

/// [`fold_rows`] on both sides at once, then the throttle's pause (as [`on_both`]).
async fn fold_on_both<T>(
    main: &Client,
    cloud: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    f: impl Fn(&tokio_postgres::Row) -> T + Copy,
    what: &str,
) -> Result<(Vec<T>, Vec<T>), pg::Error> {
    let started = Instant::now();
    let rows = tokio::try_join!(
        fold_rows(main, sql, params, f, "main", what),
        fold_rows(cloud, sql, params, f, "cloud", what),
    )?;
    pace(started.elapsed()).await;
    Ok(rows)
}

/// Run `sql` on `c` and keep `f` of each row as it streams in (the rows themselves are
/// never all held).
async fn fold_rows<T>(
    c: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    f: impl Fn(&tokio_postgres::Row) -> T,
    side: &str,
    what: &str,
) -> Result<Vec<T>, pg::Error> {
    use futures_util::TryStreamExt;
    let rows = c
        .query_raw(sql, params.iter().copied())
        .await
        .context(format!("{side}: {what}"))?;
    let mut rows = std::pin::pin!(rows);
    let mut out = Vec::new();
    while let Some(r) = rows.try_next().await.context(format!("{side}: {what}"))? {
        out.push(f(&r));
    }
    Ok(out)
}

/// Narrow differing ranges down: fetch the rows of those small enough, split the others
/// and measure their parts, until every difference is found or `max_differences` are.
async fn narrow(
    main: &Client,
    cloud: &Client,
    s: &Shape,
    differing: Vec<Range>,
    max_differences: usize,
    diff: &mut TableDiff,
) -> Result<(), Error> {
    let mut measured = differing;
    loop {
        let mut leaves = Vec::new();
        let mut to_split = Vec::new();
        for r in measured {
            if r.main.max(r.cloud) <= LEAF_ROWS {
                leaves.push(r);
            } else {
                to_split.push(r);
            }
        }
        let batch = if s.integer_key() {
            LEAF_BATCH_INT
        } else {
            LEAF_BATCH
        };
        for chunk in leaves.chunks(batch) {
            if diff.candidates.len() >= max_differences {
                diff.more = true;
                break;
            }
            let found = rows(main, cloud, s, chunk, &mut diff.bytes_read).await?;
            for (r, cands) in chunk.iter().zip(found) {
                if cands.is_empty() {
                    continue;
                }
                if diff.ranges.len() < MAX_REPORTED_RANGES {
                    diff.ranges.push(RangeDiff {
                        from: r.from.clone(),
                        to: r.to.clone(),
                        main_rows: r.main,
                        cloud_rows: r.cloud,
                    });
                }
                for c in cands {
                    if diff.candidates.len() >= max_differences {
                        diff.more = true;
                        break;
                    }
                    diff.candidates.push(c);
                }
            }
        }
        if to_split.is_empty() {
            return Ok(());
        }
        if diff.candidates.len() >= max_differences {
            diff.more = true;
            return Ok(());
        }
        let parts = split(main, cloud, s, &to_split, &mut diff.bytes_read).await?;
        measured = measure(main, cloud, s, parts, &mut diff.bytes_read).await?;
    }
}

/// The JSON array text of ranges for a statement: `[[from, to|null, extra], ...]`.
fn ranges_json<'a>(ranges: impl Iterator<Item = (&'a Range, i64)>) -> String {
    let items: Vec<String> = ranges
        .map(|(r, extra)| format!("[{},{},{extra}]", r.from, r.to.as_deref().unwrap_or("null")))
        .collect();
    format!("[{}]", items.join(","))
}

/// Split each range at every n-th key of the side with more rows in it, so that each
/// part holds about [`LEAF_ROWS`] rows (at most [`MAX_PARTS`] parts).
async fn split(
    main: &Client,
    cloud: &Client,
    s: &Shape,
    ranges: &[Range],
    bytes: &mut u64,
) -> Result<Vec<Range>, Error> {
    let mut out = Vec::new();
    for chunk in ranges.chunks(RANGE_BATCH) {
        let mut points: Vec<Vec<String>> = vec![Vec::new(); chunk.len()];
        for (side, client) in [(Role::Main, main), (Role::Cloud, cloud)] {
            for open in [false, true] {
                let picked: Vec<(usize, &Range)> = chunk
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.to.is_none() == open)
                    .filter(|(_, r)| (r.main >= r.cloud) == (side == Role::Main))
                    .collect();
                if picked.is_empty() {
                    continue;
                }
                let param = ranges_json(picked.iter().map(|(_, r)| {
                    let n = r.main.max(r.cloud);
                    let parts = (n / LEAF_ROWS).clamp(2, MAX_PARTS);
                    (*r, (n + parts - 1) / parts)
                }));
                let rows = client
                    .query(&s.split_sql(open), &[&param])
                    .await
                    .context(format!("{side}: splitting key ranges"))?;
                for row in rows {
                    let ord: i64 = row.get(0);
                    let key: String = row.get(1);
                    *bytes += key.len() as u64 + 8;
                    if let Some((i, _)) = usize::try_from(ord - 1).ok().and_then(|o| picked.get(o))
                    {
                        points[*i].push(key);
                    }
                }
            }
        }
        for (r, cuts) in chunk.iter().zip(points) {
            let mut from = r.from.clone();
            for cut in cuts {
                out.push(Range {
                    from: std::mem::replace(&mut from, cut.clone()),
                    to: Some(cut),
                    main: 0,
                    cloud: 0,
                });
            }
            out.push(Range {
                from,
                to: r.to.clone(),
                main: 0,
                cloud: 0,
            });
        }
    }
    Ok(out)
}

/// Count and hash each range on both sides; keep those that differ.
async fn measure(
    main: &Client,
    cloud: &Client,
    s: &Shape,
    mut ranges: Vec<Range>,
    bytes: &mut u64,
) -> Result<Vec<Range>, Error> {
    let mut differing = Vec::new();
    let mut start = 0;
    while start < ranges.len() {
        let end = (start + RANGE_BATCH).min(ranges.len());
        let chunk = &mut ranges[start..end];
        let mut agg: Vec<[(i64, i64); 2]> = vec![[(0, 0); 2]; chunk.len()];
        for (open, idx, param) in by_openness(chunk) {
            let sql = s.agg_sql(open);
            let (rm, rc) = on_both(main, cloud, &sql, &[&param], "measuring key ranges").await?;
            for (side, rows) in [(0, rm), (1, rc)] {
                *bytes += rows.len() as u64 * 24;
                for row in rows {
                    let ord: i64 = row.get(0);
                    if let Some(&i) = usize::try_from(ord - 1).ok().and_then(|o| idx.get(o)) {
                        agg[i][side] = (row.get(1), row.get(2));
                    }
                }
            }
        }
        for (r, [m, c]) in chunk.iter_mut().zip(agg) {
            if m != c {
                r.main = m.0;
                r.cloud = c.0;
                differing.push(r.clone());
            }
        }
        start = end;
    }
    Ok(differing)
}

/// Fetch keys and row hashes of small ranges on both sides; the differing rows of each.
async fn rows(
    main: &Client,
    cloud: &Client,
    s: &Shape,
    ranges: &[Range],
    bytes: &mut u64,
) -> Result<Vec<Vec<Candidate>>, Error> {
    if s.integer_key() {
        return rows_int(main, cloud, s, ranges, bytes).await;
    }
    let mut per_range: Vec<[HashMap<String, i64>; 2]> =
        (0..ranges.len()).map(|_| Default::default()).collect();
    for (open, idx, param) in by_openness(ranges) {
        let sql = s.rows_sql(open);
        let (rm, rc) = on_both(main, cloud, &sql, &[&param], "reading row hashes").await?;
        for (side, rows) in [(0, rm), (1, rc)] {
            for row in rows {
                let ord: i64 = row.get(0);
                let key: String = row.get(1);
                *bytes += key.len() as u64 + 16;
                if let Some(&i) = usize::try_from(ord - 1).ok().and_then(|o| idx.get(o)) {
                    per_range[i][side].insert(key, row.get(2));
                }
            }
        }
    }
    Ok(per_range
        .into_iter()
        .map(|[m, c]| {
            let mut out: Vec<Candidate> = m
                .iter()
                .filter(|(k, h)| c.get(*k) != Some(h))
                .map(|(k, h)| Candidate {
                    key: k.clone(),
                    main: Some(*h),
                    cloud: c.get(k).copied(),
                })
                .collect();
            out.extend(
                c.iter()
                    .filter(|(k, _)| !m.contains_key(*k))
                    .map(|(k, h)| Candidate {
                        key: k.clone(),
                        main: None,
                        cloud: Some(*h),
                    }),
            );
            out.sort_by(|a, b| a.key.cmp(&b.key));
            out
        })
        .collect())
}

/// [`rows`] for a single integer key: each side's rows stream in as (range, key, hash),
/// 24 bytes each, and the two sorted lists are walked together (no map, no key text but
/// the candidates').
async fn rows_int(
    main: &Client,
    cloud: &Client,
    s: &Shape,
    ranges: &[Range],
    bytes: &mut u64,
) -> Result<Vec<Vec<Candidate>>, Error> {
    let mut out: Vec<Vec<Candidate>> = vec![Vec::new(); ranges.len()];
    for (open, idx, param) in by_openness(ranges) {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&param];
        let sql = s.rows_sql(open);
        let fold = |r: &tokio_postgres::Row| -> (i64, i64, i64) { (r.get(0), r.get(1), r.get(2)) };
        let (mut m, mut c) =
            fold_on_both(main, cloud, &sql, &params, fold, "reading row hashes").await?;
        *bytes += 24 * (m.len() + c.len()) as u64;
        m.sort_unstable();
        c.sort_unstable();
        walk_sorted(
            &m,
            &c,
            |x| (x.0, x.1),
            |a, b| {
                let (ord, key) = a.or(b).map(|x| (x.0, x.1)).unwrap_or_default();
                let (main_hash, cloud_hash) = (a.map(|x| x.2), b.map(|x| x.2));
                if main_hash == cloud_hash {
                    return;
                }
                if let Some(&r) = usize::try_from(ord - 1).ok().and_then(|o| idx.get(o)) {
                    out[r].push(Candidate {
                        // As jsonb_build_array writes the key.
                        key: format!("[{key}]"),
                        main: main_hash,
                        cloud: cloud_hash,
                    });
                }
            },
        );
    }
    for cands in &mut out {
        cands.sort_by(|a, b| a.key.cmp(&b.key));
    }
    Ok(out)
}

/// One side's current version of a row, read outside any snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// The row as jsonb; `None` when absent.
    pub row: Option<Value>,
    /// Its hash.
    pub hash: Option<i64>,
    /// Its updated-at value (last_write_wins tables).
    pub updated_at: Option<DateTime<Utc>>,
    /// Its incarnation (`'0'` unless re-created after a delete).
    pub inc: String,
    /// Incarnations it was created after seeing deleted.
    pub seen: Option<Vec<String>>,
    /// Incarnations of this key deleted on this side.
    pub tombstones: Vec<String>,
}

impl Seen {
    /// Whether this side deleted the incarnation `other` has.
    fn deleted(&self, other: &Seen) -> bool {
        other.row.is_some() && self.tombstones.contains(&other.inc)
    }
}

/// What to do about one difference (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Conflict type, named from main's side: `update_update`, `update_delete`,
    /// `delete_update`, `missing_on_main`, `missing_on_cloud`.
    pub conflict_type: &'static str,
    /// MAIN, CLOUD or DELETED.
    pub winner: &'static str,
    /// The side that is written.
    pub loser: Role,
    /// Delete the loser's row (else copy the winner's version over it).
    pub delete: bool,
}

/// Settle one difference by `policy`, as docs/conflicts.md says: last_write_wins takes the
/// later updated-at value (ties to main); main_authoritative and manual take main's
/// version; a row on one side only loses to a delete of that very incarnation on the
/// other side (except that main's row wins on main_authoritative and manual) and is
/// otherwise copied over.
pub fn decide(policy: Policy, main: &Seen, cloud: &Seen) -> Option<Decision> {
    let copy = |winner, loser, t| Decision {
        conflict_type: t,
        winner,
        loser,
        delete: false,
    };
    match (&main.row, &cloud.row) {
        (Some(_), Some(_)) => {
            let cloud_later = policy == Policy::LastWriteWins
                && cloud
                    .updated_at
                    .map(|t| t.timestamp_micros())
                    .unwrap_or(i64::MIN)
                    > main
                        .updated_at
                        .map(|t| t.timestamp_micros())
                        .unwrap_or(i64::MIN);
            Some(if cloud_later {
                copy("CLOUD", Role::Main, "update_update")
            } else {
                copy("MAIN", Role::Cloud, "update_update")
            })
        }
        (Some(_), None) if cloud.deleted(main) => Some(if policy.main_wins() {
            copy("MAIN", Role::Cloud, "update_delete")
        } else {
            Decision {
                conflict_type: "update_delete",
                winner: "DELETED",
                loser: Role::Main,
                delete: true,
            }
        }),
        (Some(_), None) => Some(copy("MAIN", Role::Cloud, "missing_on_cloud")),
        (None, Some(_)) if main.deleted(cloud) => Some(Decision {
            conflict_type: "delete_update",
            winner: "DELETED",
            loser: Role::Cloud,
            delete: true,
        }),
        (None, Some(_)) => Some(copy("CLOUD", Role::Main, "missing_on_main")),
        (None, None) => None,
    }
}

/// `resolved_by` for a policy; `None` keeps the entry open (manual).
pub fn resolved_by(policy: Policy) -> Option<&'static str> {
    match policy {
        Policy::LastWriteWins => Some("LAST_WRITE_WINS"),
        Policy::MainAuthoritative => Some("MAIN_AUTHORITATIVE"),
        Policy::Manual => None,
    }
}

/// Compare `target` and, with `opts.repair`, settle what differs. `main`/`cloud` must have
/// been [`prepare`]d; the caller waited for replication to catch up before.
pub async fn scan_table(
    main: &Client,
    cloud: &Client,
    target: &Target,
    opts: &Options,
) -> Result<TableReport, Error> {
    let pace = Pace {
        duty_percent: opts.duty_percent,
        paused: Default::default(),
    };
    PACE.scope(pace, async {
        let mut report = scan_table_paced(main, cloud, target, opts).await?;
        report.throttled_seconds = PACE.with(|p| p.paused.get().as_secs_f64());
        Ok(report)
    })
    .await
}

async fn scan_table_paced(
    main: &Client,
    cloud: &Client,
    target: &Target,
    opts: &Options,
) -> Result<TableReport, Error> {
    let started = Instant::now();
    let rel = target.table.to_string();
    let mut report = TableReport {
        table: rel.clone(),
        ..TableReport::default()
    };
    let shape = shape(main, cloud, target).await?;
    let incremental = match opts.since {
        Some(since) => {
            compare_incremental(
                main,
                cloud,
                &shape,
                &target.table,
                since,
                opts.max_differences,
            )
            .await?
        }
        None => None,
    };
    let diff = match incremental {
        Some(d) => d,
        None => compare_shaped(main, cloud, &shape, opts.max_differences).await?,
    };
    let local = match opts.log_side {
        Role::Main => main,
        Role::Cloud => cloud,
    };
    if let Some(emptied) = diff.truncated {
        if opts.repair {
            report.logged += conflict_log::insert_truncate(
                local,
                &rel,
                target.policy.as_ref().map(|p| p.policy.as_str()),
                opts.log_side.as_str(),
                &serde_json::json!({
                    "emptied_side": emptied.as_str(),
                    "main_count": diff.main_count,
                    "cloud_count": diff.cloud_count,
                    "runbook": "runbooks/table-truncated.md",
                }),
            )
            .await?;
        }
        report.diff = diff;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let Some(policy) = target.policy.clone() else {
        report.diff = diff;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    };
    let settling = Instant::now();
    let mut origins = [false, false];
    let settled = settle(
        main,
        cloud,
        &shape,
        &rel,
        policy.policy,
        &diff.candidates,
        opts,
        &mut origins,
        &mut report,
    )
    .await;
    // Whatever happened, the sessions stop writing under duplex's origin: they are used
    // for the next table.
    let mut left = Ok(());
    for (done, (side, c)) in origins
        .iter()
        .zip([(Role::Main, main), (Role::Cloud, cloud)])
    {
        if *done {
            if let Err(e) = super::origin::leave(c, side).await {
                left = Err(e);
            }
        }
    }
    // The settling error first: it is the cause of a failure to leave.
    settled?;
    left?;
    report.settle_seconds = settling.elapsed().as_secs_f64();
    report.diff = diff;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The conflict key of a scanner finding: the same difference found twice is logged once.
pub fn conflict_key(
    t: &str,
    rel: &str,
    key: &str,
    main: Option<i64>,
    cloud: Option<i64>,
) -> String {
    use sha2::{Digest, Sha256};
    let text = format!("scanner|{t}|{rel}|{key}|{main:?}|{cloud:?}");
    Sha256::digest(text.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Candidates re-read per statement, and differences repaired per transaction and
/// statement: a few hundred keys keep one result (full row versions) to a few MB and a
/// repair's row locks short, while 10,000 differences take a few dozen round trips
/// instead of tens of thousands.
const SETTLE_BATCH: usize = 500;
/// Keys per statement of the first re-read (hashes only).
const REREAD_BATCH: usize = 2000;

// The statements that re-check and repair candidates, each over a batch of keys: `$1` is a
// JSON array of keys (each a JSON array, as `Candidate::key`), and rows come back with the
// key's position in it (`ord`, from 1).
impl Shape {
    /// Per key: its row's hash (NULL: no row).
    fn hash_many_sql(&self) -> String {
        format!(
            "SELECT r.ord::int8, x.h {keys}
               LEFT JOIN LATERAL (SELECT {h} AS h FROM {tbl} t WHERE {kr} = {b}) x ON true",
            keys = KEYS_FROM,
            h = self.hash,
            tbl = self.tbl,
            kr = self.key_row,
            b = self.bound("r.b")
        )
    }

    /// `$2` rel. Per key: the row (jsonb), its hash, updated-at, incarnation, the
    /// incarnations seen at its creation, and the key's tombstoned incarnations.
    fn read_many_sql(&self) -> String {
        format!(
            "SELECT r.ord::int8, x.v, x.h, x.u, coalesce(ri.inc, '0'), ri.seen,
                    (SELECT array_agg(tb.inc) FROM duplex.tombstone tb
                      WHERE tb.rel = $2 AND tb.key = r.b::text)
               FROM {keys}
               LEFT JOIN LATERAL (SELECT {v} AS v, {h} AS h, {u} AS u
                                    FROM {tbl} t WHERE {kr} = {b}) x ON true
               LEFT JOIN duplex.row_incarnation ri ON ri.rel = $2 AND ri.key = r.b::text",
            keys = KEYS_FROM.trim_start_matches("FROM "),
            v = self.computed.strip("to_jsonb(t.*)"),
            h = self.hash,
            u = self.updated,
            tbl = self.tbl,
            kr = self.key_row,
            b = self.bound("r.b")
        )
    }

    /// Lock the keys' rows (those that exist) and return their hashes.
    fn lock_many_sql(&self) -> String {
        format!(
            "SELECT r.ord::int8, {h} {keys} JOIN {tbl} t ON {kr} = {b}
              ORDER BY r.ord FOR UPDATE OF t",
            keys = KEYS_FROM,
            h = self.hash,
            tbl = self.tbl,
            kr = self.key_row,
            b = self.bound("r.b")
        )
    }

    /// Delete the keys' rows; returns the positions deleted.
    fn delete_many_sql(&self) -> String {
        format!(
            "DELETE FROM {tbl} t USING jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS r(b, ord)
              WHERE {kr} = {b} RETURNING r.ord::int8",
            tbl = self.tbl,
            kr = self.key_row,
            b = self.bound("r.b")
        )
    }

    /// `$1` a JSON array of rows like `row`: insert them (`update`: or overwrite the row
    /// with the same key); returns the keys written.
    fn write_many_sql(&self, row: &Value, update: bool) -> String {
        format!(
            "{} RETURNING {}",
            super::write_rows_sql(&self.tbl, &self.key_columns, row, update, &self.computed),
            self.key_json
        )
    }
}

/// The keys of a batch statement, with their positions.
const KEYS_FROM: &str = "FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS r(b, ord)";

/// A JSON array of keys (each already a JSON array), for `$1` of a batch statement.
fn key_list<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, k) in keys.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
    }
    out.push(']');
    out
}

/// The 0-based position of a batch statement's `ord` column.
fn position(r: &tokio_postgres::Row, n: usize) -> Option<usize> {
    let ord: i64 = r.get(0);
    usize::try_from(ord - 1).ok().filter(|&i| i < n)
}

/// Each key's current row hash on `c` (`None`: no row), in `keys`' order.
async fn hash_many(
    c: &Client,
    s: &Shape,
    keys: &[&str],
    side: Role,
) -> Result<Vec<Option<i64>>, Error> {
    let rows = c
        .query(&s.hash_many_sql(), &[&key_list(keys.iter().copied())])
        .await
        .context(format!("{side}: re-reading {} row hashes", keys.len()))?;
    let mut out = vec![None; keys.len()];
    for r in rows {
        if let Some(i) = position(&r, keys.len()) {
            out[i] = r.get(1);
        }
    }
    Ok(out)
}

/// Each key's current version on `c`, read outside any snapshot, in `keys`' order
/// (`None`: the server returned nothing for it).
async fn read_many(
    c: &Client,
    s: &Shape,
    rel: &str,
    keys: &[&str],
    side: Role,
) -> Result<Vec<Option<Seen>>, Error> {
    let rows = c
        .query(&s.read_many_sql(), &[&key_list(keys.iter().copied()), &rel])
        .await
        .context(format!("{side}: re-reading {} rows of {rel}", keys.len()))?;
    let mut out = vec![None; keys.len()];
    for r in rows {
        if let Some(i) = position(&r, keys.len()) {
            out[i] = Some(Seen {
                row: r.get(1),
                hash: r.get(2),
                updated_at: r.get(3),
                inc: r.get(4),
                seen: r.get(5),
                tombstones: r.get::<_, Option<Vec<String>>>(6).unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// A confirmed difference and its decision.
struct Settle<'a> {
    key: &'a str,
    d: Decision,
    main: Seen,
    cloud: Seen,
}

impl Settle<'_> {
    /// (winner's version, loser's version).
    fn sides(&self) -> (&Seen, &Seen) {
        match self.d.loser {
            Role::Main => (&self.cloud, &self.main),
            Role::Cloud => (&self.main, &self.cloud),
        }
    }
}

/// What one repair transaction did.
#[derive(Debug, Default)]
struct Outcome {
    repaired: usize,
    logged: u64,
    skipped: usize,
}

/// Re-check `candidates` outside the snapshots and, with `opts.repair`, settle those that
/// stayed put, batch by batch. `origins[i]` tells which side (main, cloud) now writes under
/// duplex's origin; the caller leaves it.
#[allow(clippy::too_many_arguments)]
async fn settle(
    main: &Client,
    cloud: &Client,
    s: &Shape,
    rel: &str,
    policy: Policy,
    candidates: &[Candidate],
    opts: &Options,
    origins: &mut [bool; 2],
    report: &mut TableReport,
) -> Result<(), Error> {
    // First re-read, hashes only: still different outside the snapshots?
    let started = Instant::now();
    let mut first: Vec<(&str, Option<i64>, Option<i64>)> = Vec::new();
    for chunk in candidates.chunks(REREAD_BATCH) {
        let keys: Vec<&str> = chunk.iter().map(|c| c.key.as_str()).collect();
        let (m, c) = tokio::try_join!(
            hash_many(main, s, &keys, Role::Main),
            hash_many(cloud, s, &keys, Role::Cloud)
        )?;
        first.extend(
            keys.into_iter()
                .zip(m.into_iter().zip(c))
                .filter(|(_, (m, c))| m != c)
                .map(|(k, (m, c))| (k, m, c)),
        );
    }
    tracing::debug!(table = %rel, still = first.len(), took = ?started.elapsed(), "re-read hashes");
    if first.is_empty() {
        return Ok(());
    }
    // Anything committed meanwhile is applied before the second read: a difference that
    // survives it unchanged is not in flight.
    wait_caught_up(main, cloud, opts.catch_up_timeout).await?;
    let (mut reading, mut repairing) = (Duration::ZERO, Duration::ZERO);
    let local = match opts.log_side {
        Role::Main => main,
        Role::Cloud => cloud,
    };
    for chunk in first.chunks(SETTLE_BATCH) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _, _)| *k).collect();
        let read = Instant::now();
        let (ms, cs) = tokio::try_join!(
            read_many(main, s, rel, &keys, Role::Main),
            read_many(cloud, s, rel, &keys, Role::Cloud)
        )?;
        reading += read.elapsed();
        let mut lost: [Vec<Settle>; 2] = [Vec::new(), Vec::new()];
        for ((&(key, m1, c1), m), k) in chunk.iter().zip(ms).zip(cs) {
            let (Some(m), Some(k)) = (m, k) else {
                report.skipped += 1;
                continue;
            };
            if m.hash != m1 || k.hash != c1 {
                report.skipped += 1;
                continue;
            }
            let Some(d) = decide(policy, &m, &k) else {
                continue;
            };
            report.confirmed += 1;
            if opts.repair {
                lost[usize::from(d.loser == Role::Cloud)].push(Settle {
                    key,
                    d,
                    main: m,
                    cloud: k,
                });
            }
        }
        for (slot, (side, c)) in [(Role::Main, main), (Role::Cloud, cloud)]
            .into_iter()
            .enumerate()
        {
            let items = std::mem::take(&mut lost[slot]);
            if items.is_empty() {
                continue;
            }
            if !origins[slot] {
                super::origin::enter(c, side).await?;
                origins[slot] = true;
            }
            let repair = Instant::now();
            repair_batch(c, local, s, rel, policy, opts.log_side, &items, report).await?;
            repairing += repair.elapsed();
        }
    }
    tracing::debug!(table = %rel, ?reading, ?repairing, took = ?started.elapsed(), "settled");
    Ok(())
}

/// Repair `items` (all lost by the side `c` talks to) in one transaction; when that
/// fails, one by one, so that one bad row (a constraint, a row locked by the application
/// beyond `lock_timeout`) costs only its own repair, reported in `report.errors`. A broken
/// connection ends the table.
#[allow(clippy::too_many_arguments)]
async fn repair_batch(
    c: &Client,
    local: &Client,
    s: &Shape,
    rel: &str,
    policy: Policy,
    log_side: Role,
    items: &[Settle<'_>],
    report: &mut TableReport,
) -> Result<(), Error> {
    let add = |report: &mut TableReport, o: Outcome| {
        report.repaired += o.repaired;
        report.logged += o.logged;
        report.skipped += o.skipped;
    };
    let err = match repair(c, local, s, rel, policy, log_side, items).await {
        Ok(o) => {
            tracing::debug!(table = %rel, "repaired {} of {} rows", o.repaired, items.len());
            add(report, o);
            return Ok(());
        }
        Err(e) => e,
    };
    if c.is_closed() || local.is_closed() {
        return Err(err);
    }
    if let [one] = items {
        tracing::warn!(table = %rel, key = %one.key, "repair failed: {err:#}");
        report.errors.push(format!("{}: {err}", one.key));
        return Ok(());
    }
    tracing::info!(table = %rel, "a repair of {} rows failed ({err:#}): repairing them one by one", items.len());
    for one in items.chunks(1) {
        match repair(c, local, s, rel, policy, log_side, one).await {
            Ok(o) => add(report, o),
            Err(e) if c.is_closed() || local.is_closed() => return Err(e),
            Err(e) => {
                tracing::warn!(table = %rel, key = %one[0].key, "repair failed: {e:#}");
                report.errors.push(format!("{}: {e}", one[0].key));
            }
        }
    }
    Ok(())
}

/// Write the decisions of `items` on the losing side `c` in one transaction that first
/// locks the rows and keeps only those that still have the compared version (the others
/// are left for the next scan), and log each difference it settled once. The log is
/// written in that transaction when `c` is the log side; otherwise on `local` just before
/// the commit: a crash or a failed commit in between leaves an entry whose repair the
/// next scan makes under the same conflict key (logged once), never a repair without its
/// entry.
async fn repair(
    c: &Client,
    local: &Client,
    s: &Shape,
    rel: &str,
    policy: Policy,
    log_side: Role,
    items: &[Settle<'_>],
) -> Result<Outcome, Error> {
    let Some(side) = items.first().map(|i| i.d.loser) else {
        return Ok(Outcome::default());
    };
    let what = |w: &str| match items {
        [one] => format!("{side}: {w} {rel} {}", one.key),
        _ => format!("{side}: {w} {} rows of {rel}", items.len()),
    };
    c.batch_execute("BEGIN")
        .await
        .context(what("starting a repair of"))?;
    let result = async {
        let mut out = Outcome::default();
        let keys: Vec<&str> = items.iter().map(|i| i.key).collect();
        let mut now: Vec<Option<i64>> = vec![None; items.len()];
        for r in c
            .query(&s.lock_many_sql(), &[&key_list(keys.iter().copied())])
            .await
            .context(what("locking"))?
        {
            if let Some(i) = position(&r, items.len()) {
                now[i] = r.get(1);
            }
        }
        // Still the compared version: (position, delete, update an existing row).
        let mut todo: Vec<usize> = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let (winner, loser) = it.sides();
            if now[i] != loser.hash || (!it.d.delete && winner.row.is_none()) {
                out.skipped += 1;
            } else {
                todo.push(i);
            }
        }
        let mut written = vec![false; items.len()];
        let deletes: Vec<usize> = todo
            .iter()
            .copied()
            .filter(|&i| items[i].d.delete)
            .collect();
        if !deletes.is_empty() {
            let list = key_list(deletes.iter().map(|&i| items[i].key));
            for r in c
                .query(&s.delete_many_sql(), &[&list])
                .await
                .context(what("deleting"))?
            {
                if let Some(j) = position(&r, deletes.len()) {
                    written[deletes[j]] = true;
                }
            }
        }
        let mut revived = Vec::new();
        for update in [true, false] {
            let group: Vec<usize> = todo
                .iter()
                .copied()
                .filter(|&i| !items[i].d.delete && items[i].sides().1.row.is_some() == update)
                .collect();
            let rows: Vec<&Value> = group
                .iter()
                .filter_map(|&i| items[i].sides().0.row.as_ref())
                .collect();
            let Some(first) = rows.first() else {
                continue;
            };
            let sql = s.write_many_sql(first, update);
            let param = serde_json::to_value(&rows).unwrap_or(Value::Null);
            let done = c.query(&sql, &[&param]).await.context(what("writing"))?;
            if done.len() == group.len() {
                group.iter().for_each(|&i| written[i] = true);
            } else {
                // Some keys were taken meanwhile (an insert only copies a missing row).
                let back: std::collections::HashSet<String> =
                    done.iter().map(|r| r.get(0)).collect();
                for &i in &group {
                    written[i] = back.contains(items[i].key);
                    out.skipped += usize::from(!written[i]);
                }
            }
            for &i in &group {
                if written[i] {
                    let w = items[i].sides().0;
                    revived.push(
                        serde_json::json!({"key": items[i].key, "inc": w.inc, "seen": w.seen}),
                    );
                }
            }
        }
        if !revived.is_empty() {
            // The rows are the winners' incarnations now, not new ones.
            crate::store::tombstone::revive_many(c, rel, &Value::Array(revived)).await?;
        }
        let done: Vec<&Settle> = items
            .iter()
            .zip(&written)
            .filter(|(_, w)| **w)
            .map(|(it, _)| it)
            .collect();
        out.repaired = done.len();
        let conflict_keys: Vec<String> = done
            .iter()
            .map(|it| conflict_key(it.d.conflict_type, rel, it.key, it.main.hash, it.cloud.hash))
            .collect();
        let entries: Vec<conflict_log::ScannerEntry> = done
            .iter()
            .zip(&conflict_keys)
            .map(|(it, ck)| conflict_log::ScannerEntry {
                table_name: rel,
                record_id: it.key,
                conflict_type: it.d.conflict_type,
                main_version: it.main.row.as_ref(),
                cloud_version: it.cloud.row.as_ref(),
                policy: policy.as_str(),
                winner: it.d.winner,
                resolved_by: resolved_by(policy),
                detected_on: log_side.as_str(),
                conflict_key: ck,
            })
            .collect();
        let log_on = if side == log_side { c } else { local };
        out.logged = conflict_log::insert_scanner_many(log_on, &entries).await?;
        Ok::<_, Error>(out)
    }
    .await;
    match result {
        Ok(out) => {
            c.batch_execute("COMMIT")
                .await
                .context(what("committing the repair of"))?;
            Ok(out)
        }
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_throttle_keeps_statements_to_their_share_of_the_time() {
        let took = Duration::from_millis(200);
        assert_eq!(super::pause_after(took, 100), Duration::ZERO);
        assert_eq!(super::pause_after(took, 25), Duration::from_millis(600));
        assert_eq!(super::pause_after(took, 50), Duration::from_millis(200));
        assert_eq!(
            super::pause_after(Duration::from_secs(30), 1),
            Duration::from_secs(60)
        );
    }

    use super::*;

    fn seen(row: bool, at: i64, inc: &str, tombstones: &[&str]) -> Seen {
        Seen {
            row: row.then(|| serde_json::json!({"id": 1})),
            hash: row.then_some(at),
            updated_at: DateTime::<Utc>::from_timestamp(at, 0),
            inc: inc.into(),
            seen: None,
            tombstones: tombstones.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn walking_two_sorted_lists_visits_every_key_once_with_both_sides() {
        let m = [(1, 'a'), (3, 'b'), (4, 'c')];
        let c = [(0, 'x'), (3, 'y'), (5, 'z')];
        let mut seen = Vec::new();
        walk_sorted(
            &m,
            &c,
            |x| x.0,
            |a, b| {
                seen.push((a.or(b).unwrap().0, a.map(|x| x.1), b.map(|x| x.1)));
            },
        );
        assert_eq!(
            seen,
            vec![
                (0, None, Some('x')),
                (1, Some('a'), None),
                (3, Some('b'), Some('y')),
                (4, Some('c'), None),
                (5, None, Some('z')),
            ]
        );
        walk_sorted(&m[..0], &c[..0], |x| x.0, |_, _| panic!("nothing to visit"));
    }

    #[test]
    fn last_write_wins_takes_the_later_version_and_main_on_a_tie() {
        let p = Policy::LastWriteWins;
        let d = decide(p, &seen(true, 10, "0", &[]), &seen(true, 20, "0", &[])).unwrap();
        assert_eq!((d.winner, d.loser, d.delete), ("CLOUD", Role::Main, false));
        let d = decide(p, &seen(true, 20, "0", &[]), &seen(true, 20, "0", &[])).unwrap();
        assert_eq!((d.winner, d.loser), ("MAIN", Role::Cloud));
        let d = decide(
            Policy::MainAuthoritative,
            &seen(true, 1, "0", &[]),
            &seen(true, 9, "0", &[]),
        )
        .unwrap();
        assert_eq!((d.winner, d.loser), ("MAIN", Role::Cloud));
    }

    #[test]
    fn a_row_on_one_side_loses_to_a_delete_of_its_incarnation_else_is_copied() {
        let lww = Policy::LastWriteWins;
        let gone = seen(false, 0, "0", &["0"]);
        let d = decide(lww, &gone, &seen(true, 99, "0", &[])).unwrap();
        assert_eq!(
            (d.conflict_type, d.winner, d.loser, d.delete),
            ("delete_update", "DELETED", Role::Cloud, true)
        );
        let d = decide(lww, &seen(true, 99, "0", &[]), &gone).unwrap();
        assert_eq!(
            (d.conflict_type, d.loser, d.delete),
            ("update_delete", Role::Main, true)
        );
        // main_authoritative: main's row comes back on cloud.
        let d = decide(Policy::MainAuthoritative, &seen(true, 1, "0", &[]), &gone).unwrap();
        assert_eq!((d.winner, d.loser, d.delete), ("MAIN", Role::Cloud, false));
        // A re-created incarnation was not deleted: copied.
        let d = decide(lww, &gone, &seen(true, 1, "abc", &[])).unwrap();
        assert_eq!(
            (d.conflict_type, d.loser, d.delete),
            ("missing_on_main", Role::Main, false)
        );
        let never = seen(false, 0, "0", &[]);
        let d = decide(lww, &seen(true, 1, "0", &[]), &never).unwrap();
        assert_eq!(
            (d.conflict_type, d.loser),
            ("missing_on_cloud", Role::Cloud)
        );
        assert_eq!(decide(lww, &never, &never), None);
    }

    #[test]
    fn a_table_counts_as_truncated_when_most_rows_are_gone_on_one_side() {
        assert_eq!(truncated_side(0, 1000), Some(Role::Main));
        assert_eq!(truncated_side(400, 1000), Some(Role::Main));
        assert_eq!(truncated_side(1000, 10), Some(Role::Cloud));
        assert_eq!(truncated_side(600, 1000), None);
        assert_eq!(truncated_side(0, 99), None);
    }

    #[test]
    fn integer_key_buckets_cover_the_key_space_exactly_and_stay_few_however_keys_cluster() {
        // Dense keys, no statistics: about 256 rows a bucket, at most 4096 buckets.
        assert_eq!(bucket_count(1_000_000), 3907);
        assert_eq!(bucket_count(10_000_000), MAX_PARTS);
        assert_eq!(bucket_count(-1), MAX_PARTS);
        assert_eq!(bucket_count(0), 1);
        // Without statistics: [min, max] cut evenly into 128-256-row buckets.
        let plain = Buckets::plan(1, 1_000_000, Vec::new(), 1_000_000, [0, 0]);
        assert_eq!((plain.bounds.len(), plain.shifts.as_slice()), (0, &[7][..]));
        let r = plain.range(0, 5, 1, 2);
        assert_eq!((r.from.as_str(), r.to.as_deref()), ("[640]", Some("[768]")));
        // Bucket 0 starts at the smallest key.
        assert_eq!(plain.range(0, 0, 0, 0).from, "[1]");

        // Dense keys up to a million, and 20 outliers near ten million (rows inserted on
        // one side since the statistics were taken): one shift still suits.
        let hist: Vec<i64> = (0..=100).map(|i| 1 + i * 10_000).collect();
        let bounds = Buckets::bounds(1, 10_999_999, &hist);
        assert_eq!(bounds.len(), 100);
        let plan = Buckets::plan(1, 10_999_999, bounds, 1_000_000, [0, 20]);
        assert_eq!((plan.bounds.len(), plan.shifts.as_slice()), (0, &[8][..]));

        // Two clusters, one sequence range per side: a single shift wide enough for the
        // whole key space would put the clusters in a few huge buckets; each segment of
        // the histogram gets its own.
        let mut hist: Vec<i64> = (0..=50).map(|i| 1 + i * 10_000).collect();
        hist.extend((0..=50).map(|i| 1_000_000_000_000 + i * 10_000));
        let (lo, hi) = (1, 1_000_000_500_000);
        let plan = Buckets::plan(lo, hi, Buckets::bounds(lo, hi, &hist), 1_000_000, [0, 0]);
        assert_eq!(plan.bounds.len(), 101);
        assert!(plan.shifts[1] <= 8, "{:?}", plan.shifts);
        assert!(plan.shifts[60] <= 8, "{:?}", plan.shifts);
        // Every key falls in exactly one bucket's range.
        for k in [
            1i64,
            2,
            10_000,
            10_001,
            500_001,
            600_000,
            999_999_999_999,
            1_000_000_000_000,
            1_000_000_123_456,
            hi,
        ] {
            let seg = plan.bounds.iter().filter(|&&b| b <= k).count();
            let shift = plan.shifts[seg];
            let r = plan.range(seg as i32, k >> shift, 0, 0);
            let from: i64 = r
                .from
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .unwrap();
            let to: i64 =
                r.to.unwrap()
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse()
                    .unwrap();
            assert!(from <= k && k < to, "{k} not in [{from}, {to})");
        }
        // However the keys spread, the number of buckets stays bounded.
        let most: i64 = plan
            .shifts
            .iter()
            .enumerate()
            .map(|(i, &sh)| {
                let a = if i == 0 { lo } else { plan.bounds[i - 1] };
                let b = plan.bounds.get(i).map(|b| b - 1).unwrap_or(hi);
                (b >> sh) - (a >> sh) + 1
            })
            .sum();
        assert!(most <= 2 * MAX_PARTS + 2 * 102, "{most}");
        // Negative keys and the ends of bigint.
        let wide = Buckets::plan(i64::MIN, i64::MAX, Vec::new(), -1, [0, 0]);
        let top = wide.range(0, i64::MAX >> wide.shifts[0], 0, 0);
        assert_eq!(top.to, None);
        assert_eq!(
            wide.range(0, i64::MIN >> wide.shifts[0], 0, 0).from,
            format!("[{}]", i64::MIN)
        );
    }

    #[test]
    fn a_second_finer_pass_only_when_differences_are_spread_over_big_buckets() {
        // 10M rows: 8192 first-level buckets of about 1,200 rows.
        let target = 2 * bucket_count(10_000_000);
        assert_eq!(target, 8192);
        assert_eq!(
            fine_target(10_000_000, target, 100),
            None,
            "100 differences"
        );
        assert_eq!(fine_target(10_000_000, target, 1024), None);
        assert_eq!(fine_target(10_000_000, target, 1025), Some(156_250));
        assert_eq!(fine_target(5_000_000, target, 1025), Some(78_125));
        assert_eq!(
            fine_target(100_000_000, target, 8000),
            Some(MAX_FINE_BUCKETS)
        );
        // Up to about two million rows the first level's buckets (128-256 rows) are small
        // enough already.
        let t = 2 * bucket_count(1_000_000);
        assert_eq!(fine_target(1_000_000, t, 7000), None);
        assert_eq!(
            fine_target(-1, 2 * bucket_count(-1), 8000),
            None,
            "never analysed"
        );
        // The finer plan: buckets of 64 to 128 keys over the same key space (128 here).
        let fine = Buckets::plan_for(1, 10_000_000, Vec::new(), 10_000_000, [0, 0], 156_250);
        assert_eq!(fine.shifts, [7]);
        let r = fine.range(0, 1, 0, 0);
        assert_eq!((r.from.as_str(), r.to.as_deref()), ("[128]", Some("[256]")));
    }

    #[test]
    fn composite_keys_compare_as_row_constructors() {
        let t = Target {
            table: TableName {
                schema: "public".into(),
                name: "GroupMember".into(),
            },
            key: vec!["groupId".into(), "userId".into()],
            policy: None,
        };
        let s = Shape::new(
            &t,
            vec!["text".into(), "text".into()],
            true,
            &[],
            Computed::default(),
        );
        assert_eq!(s.key_row, r#"(t."groupId", t."userId")"#);
        assert!(
            s.in_range(false).contains(
                r#"(t."groupId", t."userId") < (((r.b->1)->>0)::text, ((r.b->1)->>1)::text)"#
            ),
            "{}",
            s.in_range(false)
        );
        let single = Shape::new(
            &Target {
                key: vec!["id".into()],
                ..t.clone()
            },
            vec!["bigint".into()],
            false,
            &[],
            Computed::default(),
        );
        let cols = [
            ("j".to_string(), "jsonb".to_string()),
            ("n".to_string(), "numeric(10,2)".to_string()),
        ];
        let scaled = Shape::new(
            &t,
            vec!["text".into(), "text".into()],
            true,
            &cols,
            Computed::default(),
        );
        assert!(
            scaled
                .hash
                .contains(r#"hashtextextended(ROW(t."n")::text, 1)"#),
            "{}",
            scaled.hash
        );
        assert_eq!(single.in_range(true), r#"t."id" >= ((r.b->0)->>0)::bigint"#);
        assert!(single.hash.contains("md5(to_jsonb(t.*)::text)"));
    }
}
