//! `duplex.schema_migrations`: which numbered migrations are applied.

use tokio_postgres::{Client, GenericClient};

use crate::pg::{Context, Error};

/// Creates the schema and this table; every other table comes from a migration.
pub const CREATE: &str = "CREATE SCHEMA IF NOT EXISTS duplex;
 CREATE TABLE IF NOT EXISTS duplex.schema_migrations (
     version    integer     PRIMARY KEY,
     name       text        NOT NULL,
     applied_at timestamptz NOT NULL DEFAULT now()
 );";
const APPLIED: &str = "SELECT version FROM duplex.schema_migrations";
const RECORD: &str = "INSERT INTO duplex.schema_migrations (version, name) VALUES ($1, $2)";
const EXISTS: &str = "SELECT to_regclass('duplex.schema_migrations') IS NOT NULL";

/// Applied versions.
pub async fn applied(client: &impl GenericClient) -> Result<Vec<i32>, Error> {
    Ok(client
        .query(APPLIED, &[])
        .await
        .context("reading duplex.schema_migrations")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Applied versions, without creating anything: empty before duplex first ran here.
pub async fn applied_if_any(client: &Client) -> Result<Vec<i32>, Error> {
    let exists: bool = client
        .query_one(EXISTS, &[])
        .await
        .context("looking for schema duplex")?
        .get(0);
    if exists {
        applied(client).await
    } else {
        Ok(Vec::new())
    }
}

/// Record that `version` (`name`) was applied.
pub async fn record(client: &impl GenericClient, version: i32, name: &str) -> Result<(), Error> {
    client
        .execute(RECORD, &[&version, &name])
        .await
        .context("recording migration")
        .map(|_| ())
}
