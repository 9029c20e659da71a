//! `duplex.scan_state`: the verifying scanner's progress per table (when the last complete
//! pass started, and the last full one), so later passes can be incremental.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::pg::{Context, Error};

const GET: &str = "SELECT last_pass_at, last_full_at FROM duplex.scan_state WHERE rel = $1";
const RECORD: &str = "INSERT INTO duplex.scan_state (rel, last_pass_at, last_full_at)
  VALUES ($1, $2::timestamptz, CASE WHEN $3::bool THEN $2::timestamptz END)
  ON CONFLICT (rel) DO UPDATE SET last_pass_at = EXCLUDED.last_pass_at,
    last_full_at = CASE WHEN $3::bool THEN EXCLUDED.last_pass_at
                        ELSE duplex.scan_state.last_full_at END,
    updated_at = now()";

/// A table's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Start of the last pass that compared the table completely.
    pub last_pass_at: DateTime<Utc>,
    /// Start of the last complete full pass.
    pub last_full_at: Option<DateTime<Utc>>,
}

/// The progress of `rel` (`schema.table`); `None` before its first complete pass.
pub async fn get(client: &Client, rel: &str) -> Result<Option<State>, Error> {
    Ok(client
        .query_opt(GET, &[&rel])
        .await
        .context("reading duplex.scan_state")?
        .map(|r| State {
            last_pass_at: r.get(0),
            last_full_at: r.get(1),
        }))
}

/// Record a complete pass of `rel` that started at `at` (`full`: a full one).
pub async fn record(
    client: &Client,
    rel: &str,
    at: DateTime<Utc>,
    full: bool,
) -> Result<(), Error> {
    client
        .execute(RECORD, &[&rel, &at, &full])
        .await
        .context("writing duplex.scan_state")?;
    Ok(())
}
