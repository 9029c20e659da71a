//! Generic catalog queries that domain modules above `pg` share (a table's keys).

use tokio_postgres::Client;

use super::{Context, Error};
use crate::model::TableName;

/// Key and unique indexes of a table, for the generated conflict resolution.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// Primary-key columns in key order, else the replica-identity index's; empty when
    /// the table has neither.
    pub key: Vec<String>,
    /// Other unique indexes on plain columns (not partial, no expressions): name, columns.
    pub unique: Vec<(String, Vec<String>)>,
}

/// Read [`Keys`] of `table` (which must exist).
pub async fn keys(client: &Client, table: &TableName) -> Result<Keys, Error> {
    let rows = client
        .query(
            "SELECT ic.relname::text, i.indisprimary, i.indisreplident,
                    array_agg(a.attname::text ORDER BY k.ord)
               FROM pg_index i
               JOIN pg_class ic ON ic.oid = i.indexrelid
               CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = format('%I.%I', $1::text, $2::text)::regclass
                AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                AND i.indisvalid
              GROUP BY ic.relname, i.indisprimary, i.indisreplident
              ORDER BY ic.relname",
            &[&table.schema, &table.name],
        )
        .await
        .context(format!("reading the keys of {table}"))?;
    let mut keys = Keys::default();
    let mut identity = Vec::new();
    for r in rows {
        let (name, primary, replident, cols): (String, bool, bool, Vec<String>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if primary {
            keys.key = cols;
        } else {
            if replident {
                identity = cols.clone();
            }
            keys.unique.push((name, cols));
        }
    }
    if keys.key.is_empty() && !identity.is_empty() {
        keys.unique.retain(|(_, c)| *c != identity);
        keys.key = identity;
    }
    Ok(keys)
}
