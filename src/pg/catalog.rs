//! Generic catalog queries that domain modules above `pg` share (a table's keys, its
//! computed columns).

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::{quote_literal, Context, Error};
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

/// Columns a copy of a row cannot write as they are: generated columns (stored or
/// virtual: the server computes them) and identity columns `GENERATED ALWAYS` (an insert
/// needs `OVERRIDING SYSTEM VALUE`; an update may not set them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Computed {
    /// Generated columns, in column order.
    pub generated: Vec<String>,
    /// Identity columns `GENERATED ALWAYS`, in column order.
    pub identity_always: Vec<String>,
}

impl Computed {
    /// Whether `column` may be written by an insert (with `OVERRIDING SYSTEM VALUE`).
    pub fn insertable(&self, column: &str) -> bool {
        !self.generated.iter().any(|c| c == column)
    }

    /// Whether `column` may be set by an update.
    pub fn updatable(&self, column: &str) -> bool {
        self.insertable(column) && !self.identity_always.iter().any(|c| c == column)
    }

    /// Whether writing the table needs anything but `INSERT ... SELECT *`.
    pub fn any(&self) -> bool {
        !self.generated.is_empty() || !self.identity_always.is_empty()
    }

    /// `OVERRIDING SYSTEM VALUE ` when an insert writes an identity `GENERATED ALWAYS`.
    pub fn overriding(&self) -> &'static str {
        if self.identity_always.is_empty() {
            ""
        } else {
            "OVERRIDING SYSTEM VALUE "
        }
    }

    /// `jsonb` expression `json` without the generated columns (which a row copied from
    /// the other side does not decide), for versions that are logged and compared.
    pub fn strip(&self, json: &str) -> String {
        if self.generated.is_empty() {
            return json.to_string();
        }
        let names: Vec<String> = self.generated.iter().map(|c| quote_literal(c)).collect();
        format!("({json} - ARRAY[{}]::text[])", names.join(", "))
    }
}

/// Read [`Computed`] of `table` (which must exist).
pub async fn computed(client: &Client, table: &TableName) -> Result<Computed, Error> {
    let rows = client
        .query(
            "SELECT attname::text, attgenerated <> '', attidentity = 'a'
               FROM pg_attribute
              WHERE attrelid = format('%I.%I', $1::text, $2::text)::regclass
                AND attnum > 0 AND NOT attisdropped
                AND (attgenerated <> '' OR attidentity = 'a')
              ORDER BY attnum",
            &[&table.schema, &table.name],
        )
        .await
        .context(format!("reading the generated columns of {table}"))?;
    let mut out = Computed::default();
    for r in rows {
        let name: String = r.get(0);
        if r.get::<_, bool>(1) {
            out.generated.push(name);
        } else if r.get::<_, bool>(2) {
            out.identity_always.push(name);
        }
    }
    Ok(out)
}

/// Whether `hash_record_extended` can hash rows of `table`: false when a column's type
/// has no extended hash function (`json`, `xml`, `point`, arrays of them, ...), whose rows
/// must be fingerprinted by their text. Probed with a row of NULLs of the columns' base
/// types, so it answers for an empty table too, and the same on both sides.
pub async fn binary_hashable(client: &Client, table: &TableName) -> Result<bool, Error> {
    let types: Vec<String> = client
        .query(
            "WITH RECURSIVE base(attnum, typ) AS (
               SELECT a.attnum, a.atttypid FROM pg_attribute a
                WHERE a.attrelid = format('%I.%I', $1::text, $2::text)::regclass
                  AND a.attnum > 0 AND NOT a.attisdropped
               UNION ALL
               SELECT b.attnum, t.typbasetype FROM base b JOIN pg_type t ON t.oid = b.typ
                WHERE t.typtype = 'd')
             SELECT format_type(b.typ, NULL) FROM base b JOIN pg_type t ON t.oid = b.typ
              WHERE t.typtype <> 'd' ORDER BY b.attnum",
            &[&table.schema, &table.name],
        )
        .await
        .context(format!("reading the column types of {table}"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if types.is_empty() {
        return Ok(true);
    }
    let nulls: Vec<String> = types.iter().map(|t| format!("NULL::{t}")).collect();
    let probe = format!("SELECT hash_record_extended(ROW({}), 0)", nulls.join(", "));
    match client.query(&probe, &[]).await {
        Ok(_) => Ok(true),
        Err(e)
            if e.code() == Some(&SqlState::UNDEFINED_FUNCTION)
                || e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) =>
        {
            Ok(false)
        }
        // Anything else (a lock timeout, a broken connection) is no answer: both sides
        // must decide alike.
        Err(e) => Err(e).context(format!("probing the binary row hash of {table}")),
    }
}

/// Columns of `table` whose values PostgreSQL may store out of line (TOAST: variable
/// length, storage not `plain`), in column order; and whether the server has
/// `pg_column_toast_chunk_id` (PostgreSQL 17 and later).
pub async fn toastable(client: &Client, table: &TableName) -> Result<(Vec<String>, bool), Error> {
    let rows = client
        .query(
            "SELECT attname::text, current_setting('server_version_num')::int >= 170000
               FROM pg_attribute
              WHERE attrelid = format('%I.%I', $1::text, $2::text)::regclass
                AND attnum > 0 AND NOT attisdropped AND attlen = -1 AND attstorage <> 'p'
              ORDER BY attnum",
            &[&table.schema, &table.name],
        )
        .await
        .context(format!("reading the large columns of {table}"))?;
    let chunk_id = match rows.first() {
        Some(r) => r.get(1),
        None => true,
    };
    Ok((rows.iter().map(|r| r.get(0)).collect(), chunk_id))
}
