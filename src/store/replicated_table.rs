//! `duplex.replicated_table`: the tables `duplex setup` set up to replicate, so later
//! commands compare the configuration with what was set up. `duplex setup` writes it on
//! both instances (it sets both publications); the psql scripts keep it in step when
//! duplex's schema exists (`sql/include/ensure-publication.sql`).

use tokio_postgres::Client;

use crate::model::TableName;
use crate::pg::{Context, Error};

const EXISTS: &str = "SELECT to_regclass('duplex.replicated_table') IS NOT NULL";
const LIST: &str =
    "SELECT schema_name, table_name FROM duplex.replicated_table ORDER BY schema_name, table_name";
// Two setups at once (one per side) both replace the rows: the second waits for the
// first to commit, then replaces its rows, instead of failing on the primary key.
const LOCK: &str = "LOCK TABLE duplex.replicated_table IN EXCLUSIVE MODE";
const CLEAR: &str = "DELETE FROM duplex.replicated_table";
const INSERT: &str =
    "INSERT INTO duplex.replicated_table (schema_name, table_name) VALUES ($1, $2)";

/// The recorded selection; `None` before setup recorded one (or before migration 0003).
pub async fn recorded(client: &Client) -> Result<Option<Vec<TableName>>, Error> {
    let exists: bool = client
        .query_one(EXISTS, &[])
        .await
        .context("looking for duplex.replicated_table")?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query(LIST, &[])
        .await
        .context("reading duplex.replicated_table")?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut tables: Vec<TableName> = rows
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect();
    // In Rust's order, as every other table list is compared (the database's collation
    // may order names differently).
    tables.sort();
    Ok(Some(tables))
}

/// Replace the recorded selection with `tables`, in one transaction.
pub async fn replace(client: &mut Client, tables: &[TableName]) -> Result<(), Error> {
    let tx = client
        .transaction()
        .await
        .context("recording the replicated tables")?;
    tx.execute(LOCK, &[])
        .await
        .context("locking duplex.replicated_table")?;
    tx.execute(CLEAR, &[])
        .await
        .context("clearing duplex.replicated_table")?;
    for t in tables {
        tx.execute(INSERT, &[&t.schema, &t.name])
            .await
            .context("recording a replicated table")?;
    }
    tx.commit()
        .await
        .context("committing duplex.replicated_table")
}
