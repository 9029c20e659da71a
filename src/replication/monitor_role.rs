//! The monitoring role `duplex setup` creates on both sides when `DUPLEX_MONITOR_PASSWORD`
//! is set: the login of `duplex run`, `status`, `check`, `scan` and the conflict commands
//! (`LOCAL_MONITOR_URL` / `REMOTE_MONITOR_URL`), so that only setup holds a superuser
//! session. Exactly what those commands need, and nothing else:
//!
//! - `pg_monitor`: the statistics and replication views, in full;
//! - `CONNECT` on the database;
//! - schema `duplex`: `USAGE`, read and write on its tables and sequences (the log, state,
//!   conflict log, carrier, tombstones);
//! - the replicated tables: read (the scanner compares them) and write (its repairs and
//!   manual resolution write the winning row on the losing side);
//! - `EXECUTE` on the replication origin functions those writes run under
//!   (`pg_replication_origin_oid`, `_create`, `_session_setup`, `_session_reset`), so a repair is
//!   not sent back to the peer.
//!
//! Not a superuser, no `REPLICATION`, no `CREATE` anywhere: it cannot change the schema,
//! the publications or the subscriptions, read other tables, or open a replication
//! connection.

use tokio_postgres::Client;

use super::catalog;
use crate::model::TableName;
use crate::pg::{quote_ident, quote_literal, Context, Error};

/// One statement to run on a side.
pub struct Step {
    /// What it does, for a person.
    pub what: String,
    /// The statement.
    pub sql: String,
    /// The statement as shown (no secret).
    pub shown: String,
}

const ORIGIN_FUNCTIONS: &str = "pg_replication_origin_oid(text), \
    pg_replication_origin_create(text), pg_replication_origin_session_setup(text), \
    pg_replication_origin_session_reset()";

/// What `user` lacks on the connected database: (pg_monitor, connect, duplex schema
/// usage, duplex tables and sequences, origin functions). The role must exist.
const HELD: &str = "SELECT pg_has_role($1, 'pg_monitor', 'MEMBER'),
    has_database_privilege($1, current_database(), 'CONNECT'),
    to_regnamespace('duplex') IS NOT NULL
      AND has_schema_privilege($1, 'duplex', 'USAGE')
      AND NOT EXISTS (SELECT FROM pg_class c
            WHERE c.relnamespace = to_regnamespace('duplex')
              -- CASE: the privilege functions must only see relations of their kind.
              AND CASE WHEN c.relkind IN ('r', 'p') THEN
                         NOT (has_table_privilege($1, c.oid, 'SELECT')
                              AND has_table_privilege($1, c.oid, 'INSERT')
                              AND has_table_privilege($1, c.oid, 'UPDATE')
                              AND has_table_privilege($1, c.oid, 'DELETE'))
                       WHEN c.relkind = 'S' THEN NOT has_sequence_privilege($1, c.oid, 'USAGE')
                       ELSE false END),
    has_function_privilege($1, 'pg_replication_origin_oid(text)', 'EXECUTE')
      AND has_function_privilege($1, 'pg_replication_origin_create(text)', 'EXECUTE')
      AND has_function_privilege($1, 'pg_replication_origin_session_setup(text)', 'EXECUTE')
      AND has_function_privilege($1, 'pg_replication_origin_session_reset()', 'EXECUTE')";

/// Whether `user` may read and write table `t` (and use its schema).
const TABLE_HELD: &str = "SELECT has_schema_privilege($1, $2, 'USAGE')
    AND has_table_privilege($1, format('%I.%I', $2::text, $3::text), 'SELECT')
    AND has_table_privilege($1, format('%I.%I', $2::text, $3::text), 'INSERT')
    AND has_table_privilege($1, format('%I.%I', $2::text, $3::text), 'UPDATE')
    AND has_table_privilege($1, format('%I.%I', $2::text, $3::text), 'DELETE')";

/// The statements that give `user` exactly the privileges above on the connected database;
/// none when it has them. `verifier` is its password's SCRAM verifier; `wrong_password`
/// says an existing role's password no longer logs in. `schema_pending`: setup is about to
/// create or migrate schema `duplex`, so its tables' grants cannot be checked yet.
pub async fn steps(
    client: &Client,
    user: &str,
    verifier: &str,
    wrong_password: bool,
    tables: &[TableName],
    schema_pending: bool,
) -> Result<Vec<Step>, Error> {
    let q = quote_ident(user);
    let mut out = Vec::new();
    let mut add = |what: String, sql: String, shown: Option<String>| {
        out.push(Step {
            what,
            shown: shown.unwrap_or_else(|| sql.clone()),
            sql,
        })
    };
    let existing = catalog::role(client, user).await?;
    let exists = existing.is_some();
    match &existing {
        None => {
            let create = |pw: &str| {
                format!(
                    "DO $duplex$ BEGIN CREATE ROLE {q} WITH LOGIN NOSUPERUSER NOREPLICATION NOCREATEDB NOCREATEROLE PASSWORD {pw}; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $duplex$"
                )
            };
            add(
                format!(
                    "create monitoring role {user} (LOGIN only: not superuser, no REPLICATION)"
                ),
                create(&quote_literal(verifier)),
                Some(create("'********'")),
            );
        }
        Some(_) if wrong_password => add(
            format!(
                "set the password of {user} to DUPLEX_MONITOR_PASSWORD (sent as a SCRAM verifier)"
            ),
            format!("ALTER ROLE {q} WITH PASSWORD {}", quote_literal(verifier)),
            Some(format!("ALTER ROLE {q} WITH PASSWORD '********'")),
        ),
        Some(_) => {}
    }
    let held = match exists {
        true => {
            let r = client
                .query_one(HELD, &[&user])
                .await
                .context("checking the monitoring role's privileges")?;
            [
                r.get(0),
                r.get(1),
                r.get::<_, bool>(2) && !schema_pending,
                r.get(3),
            ]
        }
        false => [false; 4],
    };
    let [monitor, connect, schema, origins] = held;
    if !monitor {
        add(
            format!("let {user} read the statistics and replication views (pg_monitor)"),
            format!("GRANT pg_monitor TO {q}"),
            None,
        );
    }
    if !connect {
        add(
            format!("let {user} connect to this database"),
            format!("DO $duplex$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO {q}', current_database()); END $duplex$"),
            None,
        );
    }
    if !schema {
        add(
            format!("let {user} read and write duplex's own tables"),
            format!(
                "GRANT USAGE ON SCHEMA duplex TO {q}; \
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA duplex TO {q}; \
                 GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA duplex TO {q}"
            ),
            None,
        );
    }
    let mut missing = Vec::new();
    for t in tables {
        let ok = match exists {
            true => client
                .query_one(TABLE_HELD, &[&user, &t.schema, &t.name])
                .await
                .context("checking the monitoring role's table privileges")?
                .get(0),
            false => false,
        };
        if !ok {
            missing.push(t);
        }
    }
    if !missing.is_empty() {
        let mut schemas: Vec<&str> = missing.iter().map(|t| t.schema.as_str()).collect();
        schemas.sort();
        schemas.dedup();
        let schemas = schemas
            .iter()
            .map(|s| quote_ident(s))
            .collect::<Vec<_>>()
            .join(", ");
        let list = missing
            .iter()
            .map(|t| t.quoted())
            .collect::<Vec<_>>()
            .join(", ");
        add(
            format!(
                "let {user} read the {} replicated table(s) and write repairs to them",
                missing.len()
            ),
            format!(
                "GRANT USAGE ON SCHEMA {schemas} TO {q}; \
                 GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {list} TO {q}"
            ),
            None,
        );
    }
    if !origins {
        add(
            format!("let {user} write repairs under duplex's replication origins"),
            format!("GRANT EXECUTE ON FUNCTION {ORIGIN_FUNCTIONS} TO {q}"),
            None,
        );
    }
    Ok(out)
}
