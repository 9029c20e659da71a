//! `duplex.resolution`: what `duplex setup` installed on each replicated table.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::pg::{Context, Error};

const EXISTS: &str = "SELECT to_regclass('duplex.resolution') IS NOT NULL";
const ALL: &str = "SELECT rel, policy, updated_at_column, role, fingerprint, installed_at
                     FROM duplex.resolution ORDER BY rel";

/// One table's installed resolution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Installed {
    /// `schema.table`.
    pub rel: String,
    /// Policy it was generated for.
    pub policy: String,
    /// The updated-at column last_write_wins compares.
    pub updated_at_column: Option<String>,
    /// The side it was generated for.
    pub role: String,
    /// sha256 of the generated SQL.
    pub fingerprint: String,
    /// When.
    pub installed_at: chrono::DateTime<chrono::Utc>,
}

/// Every installed table, by `schema.table`; empty before the migration that adds it.
pub async fn installed(client: &Client) -> Result<BTreeMap<String, Installed>, Error> {
    let exists: bool = client
        .query_one(EXISTS, &[])
        .await
        .context("looking for duplex.resolution")?
        .get(0);
    if !exists {
        return Ok(BTreeMap::new());
    }
    Ok(client
        .query(ALL, &[])
        .await
        .context("reading duplex.resolution")?
        .iter()
        .map(|r| {
            let i = Installed {
                rel: r.get(0),
                policy: r.get(1),
                updated_at_column: r.get(2),
                role: r.get(3),
                fingerprint: r.get(4),
                installed_at: r.get(5),
            };
            (i.rel.clone(), i)
        })
        .collect())
}

/// The statement that records an install (part of the install step, so a dry run shows it).
pub fn record_sql(
    rel_literal: &str,
    policy_literal: &str,
    updated_at_literal: &str,
    role_literal: &str,
    fingerprint_literal: &str,
    uod_literal: &str,
) -> String {
    format!(
        "INSERT INTO duplex.resolution (rel, policy, updated_at_column, role, fingerprint, update_of_deleted)
VALUES ({rel_literal}, {policy_literal}, {updated_at_literal}, {role_literal}, {fingerprint_literal}, {uod_literal})
ON CONFLICT (rel) DO UPDATE SET policy = EXCLUDED.policy, updated_at_column = EXCLUDED.updated_at_column,
  role = EXCLUDED.role, fingerprint = EXCLUDED.fingerprint, update_of_deleted = EXCLUDED.update_of_deleted, installed_at = now();
"
    )
}
