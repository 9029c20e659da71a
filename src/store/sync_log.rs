//! `duplex.sync_log`: what duplex did and what went wrong, newest last.

use tokio_postgres::Client;

use crate::pg::{Context, Error};

/// One entry to record.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// What kind of work: `setup`, `replication`, `connection`, `alert`, ...
    pub sync_type: &'a str,
    /// `SUCCESS`, `WARNING`, `FAILED`, `CRITICAL`, `INFO`.
    pub status: &'a str,
    /// Rows or objects handled.
    pub records_synced: i64,
    /// A sentence for a person, with what to do.
    pub error_message: Option<&'a str>,
    /// Structured facts.
    pub details: serde_json::Value,
}

/// Append `entry`; returns its id.
pub async fn insert(client: &Client, entry: &Entry<'_>) -> Result<i64, Error> {
    Ok(client
        .query_one(
            "INSERT INTO duplex.sync_log (sync_type, status, records_synced, error_message, details)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[
                &entry.sync_type,
                &entry.status,
                &entry.records_synced,
                &entry.error_message,
                &entry.details,
            ],
        )
        .await
        .context("writing duplex.sync_log")?
        .get(0))
}
