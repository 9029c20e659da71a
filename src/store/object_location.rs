//! `duplex.object_location`: where a verified copy of each object lives in this side's
//! store. Replicated rows keep location-independent keys; the application resolves a key
//! to its local URL here (docs/storage.md), so mirroring never writes a replicated row.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::{Context, Error};

const RECORD: &str = "INSERT INTO duplex.object_location (object_key, local_url, sha256, size)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (object_key) DO UPDATE SET local_url = excluded.local_url,
        sha256 = excluded.sha256, size = excluded.size, verified_at = now()";

const RESOLVE: &str = "SELECT object_key, local_url, sha256, size, verified_at
   FROM duplex.object_location WHERE object_key = $1";

/// One verified copy.
#[derive(Debug, Clone, Serialize)]
pub struct Location {
    /// The object key.
    pub object_key: String,
    /// Its URL in this side's store (`http://host:port/bucket/prefix/key`, `file:///...`).
    pub local_url: String,
    /// Verified SHA-256.
    pub sha256: String,
    /// Verified size.
    pub size: i64,
    /// When it was verified.
    pub verified_at: DateTime<Utc>,
}

/// Record a verified copy of `key` at `local_url`.
pub async fn record(
    client: &Client,
    key: &str,
    local_url: &str,
    sha256: &str,
    size: i64,
) -> Result<(), Error> {
    client
        .execute(RECORD, &[&key, &local_url, &sha256, &size])
        .await
        .context("writing duplex.object_location")?;
    Ok(())
}

/// Where `key` lives locally, if a verified copy was recorded.
pub async fn resolve(client: &Client, key: &str) -> Result<Option<Location>, Error> {
    Ok(client
        .query_opt(RESOLVE, &[&key])
        .await
        .context("reading duplex.object_location")?
        .map(|r| Location {
            object_key: r.get(0),
            local_url: r.get(1),
            sha256: r.get(2),
            size: r.get(3),
            verified_at: r.get(4),
        }))
}
