//! Embedded, numbered migrations for schema `duplex`.
//!
//! Files under `sql/migrations/` are never edited once landed: a change is a new file.
//! All pending migrations apply in one transaction under an advisory lock, so two
//! duplex processes starting at once against the same instance are safe.

use tokio_postgres::Client;

use super::schema_migrations;
use crate::pg::{Context, Error};

/// One migration: its number, name and SQL.
pub struct Migration {
    /// Applied in ascending order.
    pub version: i32,
    /// File name, for the record.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("../../sql/migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_conflicts.sql",
        sql: include_str!("../../sql/migrations/0002_conflicts.sql"),
    },
    Migration {
        version: 3,
        name: "0003_controller_and_selection.sql",
        sql: include_str!("../../sql/migrations/0003_controller_and_selection.sql"),
    },
    Migration {
        version: 4,
        name: "0004_scan_state.sql",
        sql: include_str!("../../sql/migrations/0004_scan_state.sql"),
    },
    Migration {
        version: 5,
        name: "0005_storage.sql",
        sql: include_str!("../../sql/migrations/0005_storage.sql"),
    },
    Migration {
        version: 6,
        name: "0006_tombstone_cause.sql",
        sql: include_str!("../../sql/migrations/0006_tombstone_cause.sql"),
    },
    Migration {
        version: 7,
        name: "0007_displaced.sql",
        sql: include_str!("../../sql/migrations/0007_displaced.sql"),
    },
];

/// Advisory lock key serialising migrations ("duplex" in ASCII).
const LOCK_KEY: i64 = 0x6475_706c_6578;

/// Apply pending migrations; returns the versions applied now.
///
/// When nothing is pending nothing is created or locked, so the low-privilege monitoring
/// login (which may not create schemas) runs the daemon on a schema `duplex setup` made.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, Error> {
    let done = schema_migrations::applied_if_any(client).await?;
    if MIGRATIONS.iter().all(|m| done.contains(&m.version)) {
        return Ok(Vec::new());
    }
    let tx = client
        .transaction()
        .await
        .context("starting migration transaction")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .context("taking the migration lock")?;
    tx.batch_execute(schema_migrations::CREATE)
        .await
        .context("creating or migrating schema duplex (a login that may create it is needed: run `duplex setup`, which uses LOCAL_DB_URL, before `duplex run` with a monitoring login)")?;
    let applied = schema_migrations::applied(&tx).await?;
    let mut now = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tx.batch_execute(m.sql)
            .await
            .context(format!("applying migration {}", m.name))?;
        schema_migrations::record(&tx, m.version, m.name).await?;
        now.push(m.version);
    }
    tx.commit().await.context("committing migrations")?;
    Ok(now)
}
