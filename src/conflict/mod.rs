//! Conflicts: both sides take writes and always converge.
//!
//! - [`diff`]: field-level diff of a conflict's two versions (pure).
//! - [`origin`]: duplex's replication origins, under which repairs are written (not sent back).
//! - [`policy`]: the policies and how a table's effective policy is chosen (pure).
//! - [`triggers`]: the in-stream resolution installed on every replicated table, generated
//!   from the catalog (pure).
//! - [`scan`]: the verifying scanner's engine: compare both sides by key-range hashes,
//!   settle each difference by policy, repair the losing side only.
//! - [`resolve`]: manual resolution of an open conflict (`duplex conflicts resolve`).
//! - [`worker`]: housekeeping in `duplex run`: merge the peer's conflict log, empty the
//!   carrier, collect tombstones, prune the log, measure the clock offset.

pub mod diff;
pub mod origin;
pub mod policy;
pub mod resolve;
pub mod scan;
pub mod triggers;
pub mod worker;

use crate::pg::catalog::Computed;

/// `INSERT` of the row given as jsonb in `$1` into `tbl` (quoted); on a key already there, update
/// its other columns (`update`) or leave it (a row that is only to be copied when missing).
/// Generated columns are left to the server and identity columns `GENERATED ALWAYS` keep
/// the row's value (`computed`). Shared by manual resolution and the scanner's repairs.
pub fn write_row_sql(
    tbl: &str,
    key_columns: &[String],
    row: &serde_json::Value,
    update: bool,
    computed: &Computed,
) -> String {
    upsert_sql(
        key_columns,
        row,
        update,
        computed,
        tbl,
        &format!("jsonb_populate_record(NULL::{tbl}, $1::jsonb)"),
    )
}

/// The same for many rows at once (the scanner's batched repairs): `$1` a JSON array of
/// rows that all have `row`'s columns. The table is aliased `t`, for a `RETURNING` clause.
pub fn write_rows_sql(
    tbl: &str,
    key_columns: &[String],
    row: &serde_json::Value,
    update: bool,
    computed: &Computed,
) -> String {
    upsert_sql(
        key_columns,
        row,
        update,
        computed,
        &format!("{tbl} AS t"),
        &format!("jsonb_populate_recordset(NULL::{tbl}, $1::jsonb)"),
    )
}

fn upsert_sql(
    key_columns: &[String],
    row: &serde_json::Value,
    update: bool,
    computed: &Computed,
    into: &str,
    source: &str,
) -> String {
    use crate::model::quote_ident;
    let keys = key_columns
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ");
    let columns: Vec<&String> = row
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    let set = columns
        .iter()
        .filter(|c| !key_columns.contains(c) && computed.updatable(c))
        .map(|c| format!("{q} = EXCLUDED.{q}", q = quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let action = if !update || set.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {set}")
    };
    let insert = if computed.any() {
        let list = columns
            .iter()
            .filter(|c| computed.insertable(c))
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{into} ({list}) {}SELECT {list} FROM {source}",
            computed.overriding()
        )
    } else {
        format!("{into} SELECT * FROM {source}")
    };
    format!("INSERT INTO {insert} ON CONFLICT ({keys}) DO {action}")
}
