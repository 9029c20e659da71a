//! `duplex.controller`: the one `duplex run` beside this database. The daemon holds a
//! session-level advisory lock on a connection it keeps for its whole life (PostgreSQL
//! releases it when that session ends, also on a crash) and records who it is here.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::pg::{Context, Error};

/// Advisory lock key of the controller ("duplexrun" folded into 63 bits); distinct from
/// the migration lock.
pub const LOCK_KEY: i64 = 0x6475_706c_6578_7275;

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1)";
const RECORD: &str = "INSERT INTO duplex.controller (pid, host, http_addr, started_at)
     VALUES ($1, $2, $3, now())
     ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, host = excluded.host,
         http_addr = excluded.http_addr, started_at = excluded.started_at";
const READ: &str = "SELECT pid, host, http_addr, started_at FROM duplex.controller";

/// Who holds the lock.
#[derive(Debug, Clone)]
pub struct Holder {
    /// Process id of that `duplex run`.
    pub pid: i32,
    /// Host it runs on.
    pub host: String,
    /// Its API address.
    pub http_addr: String,
    /// When it took the lock.
    pub started_at: DateTime<Utc>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on host {}, API at {}, running since {}",
            self.pid,
            self.host,
            self.http_addr,
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// Take the controller lock on `client`'s session without waiting; false when another
/// session holds it.
pub async fn try_lock(client: &Client) -> Result<bool, Error> {
    Ok(client
        .query_one(TRY_LOCK, &[&LOCK_KEY])
        .await
        .context("taking the controller lock")?
        .get(0))
}

/// Record this process as the holder.
pub async fn record(client: &Client, pid: i32, host: &str, http_addr: &str) -> Result<(), Error> {
    client
        .execute(RECORD, &[&pid, &host, &http_addr])
        .await
        .context("recording the controller in duplex.controller")
        .map(|_| ())
}

/// The recorded holder, if any.
pub async fn holder(client: &Client) -> Result<Option<Holder>, Error> {
    Ok(client
        .query_opt(READ, &[])
        .await
        .context("reading duplex.controller")?
        .map(|r| Holder {
            pid: r.get(0),
            host: r.get(1),
            http_addr: r.get(2),
            started_at: r.get(3),
        }))
}
