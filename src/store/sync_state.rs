//! `duplex.sync_state`: the instance's single state row.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::model::Role;
use crate::pg::{Context, Error as PgError};

const SEED: &str = "INSERT INTO duplex.sync_state (instance_role, sync_enabled) VALUES ($1, $2)
     ON CONFLICT (id) DO NOTHING";
const ROLE: &str = "SELECT instance_role FROM duplex.sync_state";
const READ: &str = "SELECT instance_role, last_heartbeat, replication_lag_ms, storage_queue_size,
        is_connected, sync_enabled FROM duplex.sync_state";
const SET_ENABLED: &str = "UPDATE duplex.sync_state SET sync_enabled = $1, updated_at = now()";
const HEARTBEAT: &str = "UPDATE duplex.sync_state
    SET last_heartbeat = now(), replication_lag_ms = $1, is_connected = $2,
        updated_at = now()
  RETURNING sync_enabled, storage_queue_size";
const SET_QUEUE_SIZE: &str =
    "UPDATE duplex.sync_state SET storage_queue_size = $1, updated_at = now()";
const EXISTS: &str = "SELECT to_regclass('duplex.sync_state') IS NOT NULL";

/// The row, as `GET /api/sync/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `MAIN` or `CLOUD`.
    pub instance_role: String,
    /// End of the latest monitor cycle that reached the table.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Worst lag of that cycle.
    pub replication_lag_ms: Option<i64>,
    /// Files waiting for the storage mirror.
    pub storage_queue_size: i64,
    /// CONNECTED or DEGRADED at that cycle.
    pub is_connected: bool,
    /// Data-moving workers run (pause/resume).
    pub sync_enabled: bool,
}

/// What a heartbeat reads back.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// `sync_enabled`.
    pub sync_enabled: bool,
    /// `storage_queue_size`.
    pub storage_queue_size: i64,
}

/// Errors seeding or reading the state row.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database was set up for the other role: running would mix up directions.
    #[error("this database is recorded as the {recorded} instance but INSTANCE_ROLE is {configured}: point LOCAL_DB_URL at the {configured} database or fix INSTANCE_ROLE (see runbooks/role-mismatch.md)")]
    RoleMismatch {
        /// Role in `duplex.sync_state`.
        recorded: String,
        /// Role from the configuration.
        configured: Role,
    },
    /// A query failed.
    #[error(transparent)]
    Pg(#[from] PgError),
}

/// Seed the row with `role` on first start; refuse when it holds the other role.
pub async fn ensure_role(client: &Client, role: Role, sync_enabled: bool) -> Result<(), Error> {
    client
        .execute(SEED, &[&role.as_db(), &sync_enabled])
        .await
        .context("seeding duplex.sync_state")?;
    let recorded: String = client
        .query_one(ROLE, &[])
        .await
        .context("reading duplex.sync_state")?
        .get(0);
    if recorded != role.as_db() {
        return Err(Error::RoleMismatch {
            recorded: recorded.to_lowercase(),
            configured: role,
        });
    }
    Ok(())
}

/// Whether the table exists (duplex ran or was set up here).
pub async fn exists(client: &Client) -> Result<bool, PgError> {
    Ok(client
        .query_one(EXISTS, &[])
        .await
        .context("looking for schema duplex")?
        .get(0))
}

/// The recorded role, without creating anything: `None` before duplex first ran here.
pub async fn recorded_role(client: &Client) -> Result<Option<String>, PgError> {
    if !exists(client).await? {
        return Ok(None);
    }
    Ok(client
        .query_opt(ROLE, &[])
        .await
        .context("reading duplex.sync_state")?
        .map(|r| r.get(0)))
}

/// The row.
pub async fn read(client: &Client) -> Result<Row, PgError> {
    let r = client
        .query_one(READ, &[])
        .await
        .context("reading duplex.sync_state")?;
    Ok(Row {
        instance_role: r.get(0),
        last_heartbeat: r.get(1),
        replication_lag_ms: r.get(2),
        storage_queue_size: r.get(3),
        is_connected: r.get(4),
        sync_enabled: r.get(5),
    })
}

/// Pause (`false`) or resume (`true`) the workers that move data; persisted.
pub async fn set_enabled(client: &Client, enabled: bool) -> Result<(), PgError> {
    client
        .execute(SET_ENABLED, &[&enabled])
        .await
        .context("updating duplex.sync_state")
        .map(|_| ())
}

/// Record one monitor cycle: heartbeat, lag and connection; read back the pause flag and
/// the storage queue.
pub async fn heartbeat(
    client: &Client,
    lag_ms: Option<i64>,
    is_connected: bool,
) -> Result<Heartbeat, PgError> {
    let r = client
        .query_one(HEARTBEAT, &[&lag_ms, &is_connected])
        .await
        .context("updating duplex.sync_state")?;
    Ok(Heartbeat {
        sync_enabled: r.get(0),
        storage_queue_size: r.get(1),
    })
}

/// Record the storage mirror's queue size (files waiting), which the monitor's alert rules
/// read with every heartbeat.
pub async fn set_storage_queue_size(client: &Client, size: i64) -> Result<(), PgError> {
    client
        .execute(SET_QUEUE_SIZE, &[&size])
        .await
        .context("updating duplex.sync_state")
        .map(|_| ())
}
