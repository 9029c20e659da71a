//! Manual resolution of a conflict on a `manual` table: confirm main's version (applied
//! provisionally by the in-stream triggers) or write cloud's to both sides.
//!
//! Every write is made under one of duplex's own replication origins ([`super::origin`]), so with
//! `origin = none` it is not sent to the peer: each side gets its own write. Before writing,
//! each side's row must still be the version that was applied when the conflict was logged;
//! if someone changed it since, nothing is written and the caller is told so.

use serde_json::{Map, Value};
use tokio_postgres::Client;

use crate::config::Settings;
use crate::model::{quote_ident, Role, TableName};
use crate::pg;
use crate::pg::catalog::Computed;
use crate::store::conflict_log::{self, Conflict};

/// The settings the in-stream triggers pin, so a row's jsonb text here matches the logged one.
const PIN: &str = "SET LOCAL \"TimeZone\" = 'UTC'; SET LOCAL \"DateStyle\" = 'ISO, YMD';
  SET LOCAL \"IntervalStyle\" = 'postgres'; SET LOCAL extra_float_digits = 1;
  SET LOCAL bytea_output = 'hex'";

/// Which version a person chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Choice {
    /// Keep main's version (already on both sides for a manual table).
    Main,
    /// Write cloud's version to both sides.
    Cloud,
}

impl Choice {
    /// As stored in `conflict_log.resolution`: MAIN or CLOUD.
    pub fn as_db(self) -> &'static str {
        match self {
            Choice::Main => "MAIN",
            Choice::Cloud => "CLOUD",
        }
    }

    /// `main`/`MAIN` or `cloud`/`CLOUD`.
    pub fn parse(raw: &str) -> Option<Choice> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "main" => Some(Choice::Main),
            "cloud" => Some(Choice::Cloud),
            _ => None,
        }
    }
}

/// Why a resolution did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No entry with this id on this side.
    #[error("conflict {0} does not exist")]
    NotFound(i64),
    /// Resolved already (by a policy or by a person); nothing was changed.
    #[error("conflict {id} is already resolved ({by}{choice} at {at})")]
    AlreadyResolved {
        /// Entry id.
        id: i64,
        /// `resolved_by`.
        by: String,
        /// `, chose MAIN` for a manual resolution.
        choice: String,
        /// `resolved_at`.
        at: String,
    },
    /// The row changed since the conflict was logged; a person has to look at it.
    #[error("conflict {id}: the row {key} of {table} on {side} changed since the conflict was logged; nothing was written. Look at the row (`duplex conflicts show {id}`) and change it by hand if needed")]
    Changed {
        /// Entry id.
        id: i64,
        /// `schema.table`.
        table: String,
        /// The key as logged.
        key: String,
        /// main or cloud.
        side: Role,
    },
    /// This entry cannot be resolved by duplex; the reason says what to do instead.
    #[error("conflict {id} cannot be resolved by duplex: {reason}")]
    Unsupported {
        /// Entry id.
        id: i64,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A database failed; nothing was committed on a side whose step failed.
    #[error(transparent)]
    Database(#[from] pg::Error),
}

/// What a resolution did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Resolved {
    /// Entry id on this side.
    pub id: i64,
    /// The chosen version.
    pub choice: Choice,
    /// Sides whose row was written (empty when both already held the chosen version).
    pub written: Vec<Role>,
}

/// Resolve conflict `id` (an entry of this side's log) with `choice`, on both sides.
pub async fn resolve(settings: &Settings, id: i64, choice: Choice) -> Result<Resolved, Error> {
    let local = pg::connect(settings.local_monitor(), "local", "conflicts").await?;
    let entry = conflict_log::get(&local, id)
        .await?
        .ok_or(Error::NotFound(id))?;
    if let Some(at) = entry.resolved_at {
        return Err(Error::AlreadyResolved {
            id,
            by: entry.resolved_by.clone().unwrap_or_default(),
            choice: entry
                .resolution
                .as_deref()
                .map(|c| format!(", chose {c}"))
                .unwrap_or_default(),
            at: at.to_rfc3339(),
        });
    }
    let remote = pg::connect(settings.remote_monitor(), "remote", "conflicts").await?;
    let me = settings.instance_role;
    // Commit order: the peer first, this side last, so a failure in between leaves this
    // side's entry open and a second attempt finishes the job.
    let sides = [(me.peer(), &remote), (me, &local)];
    let plan = Plan::new(&local, &entry, choice).await?;
    let result = apply(&plan, &entry, choice, &sides).await;
    for (side, c) in sides {
        // A failed attempt is rolled back; the session is ours alone anyway.
        if result.is_err() {
            let _ = c.batch_execute("ROLLBACK").await;
        }
        if plan.target_differs {
            let _ = super::origin::leave(c, side).await;
        }
    }
    result
}

/// What to compare and what to write.
struct Plan {
    table: TableName,
    key_columns: Vec<String>,
    /// Generated and identity columns (not written; generated ones not compared).
    computed: Computed,
    /// The key as a JSON object (column -> value), for `jsonb_populate_record`.
    key: Value,
    /// The version both sides should hold now (the logged winner; `None`: no row).
    applied: Option<Value>,
    /// The chosen version.
    target: Option<Value>,
    /// Whether the chosen version differs from the applied one (something to write).
    target_differs: bool,
}

impl Plan {
    async fn new(local: &Client, c: &Conflict, choice: Choice) -> Result<Plan, Error> {
        let unsupported = |reason: String| Error::Unsupported { id: c.id, reason };
        let applied = match c.winner.as_deref() {
            Some("CLOUD") => c.cloud_version.clone(),
            _ => c.main_version.clone(),
        };
        let target = match choice {
            Choice::Main => c.main_version.clone(),
            Choice::Cloud => c.cloud_version.clone(),
        };
        let target_differs = applied != target;
        if c.conflict_type == "unique_key" && target_differs {
            return Err(unsupported(
                "a unique_key conflict is between two rows with different keys: change the rows by hand, then `--use main` to close it".into(),
            ));
        }
        let Some((schema, name)) = c.table_name.split_once('.') else {
            return Err(unsupported(format!(
                "table name `{}` is not schema.table",
                c.table_name
            )));
        };
        let table = TableName {
            schema: schema.to_string(),
            name: name.to_string(),
        };
        let keys = crate::pg::catalog::keys(local, &table).await?;
        let computed = crate::pg::catalog::computed(local, &table).await?;
        let values: Vec<Value> = serde_json::from_str(&c.record_id).unwrap_or_default();
        if keys.key.is_empty() || keys.key.len() != values.len() {
            return Err(unsupported(format!(
                "the key {} no longer matches the primary key of {table}",
                c.record_id
            )));
        }
        let key = Value::Object(
            keys.key
                .iter()
                .cloned()
                .zip(values)
                .collect::<Map<String, Value>>(),
        );
        Ok(Plan {
            table,
            key_columns: keys.key,
            computed,
            key,
            applied,
            target,
            target_differs,
        })
    }

    fn key_match(&self) -> String {
        self.key_columns
            .iter()
            .map(|k| format!("t.{c} = r.{c}", c = quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// `$1` key object, `$2` applied, `$3` target: (row exists, equals applied, equals target).
    fn current_sql(&self) -> String {
        let tbl = self.table.quoted();
        format!(
            "SELECT {v} IS NOT DISTINCT FROM $2::jsonb, {v} IS NOT DISTINCT FROM $3::jsonb
               FROM {tbl} t, jsonb_populate_record(NULL::{tbl}, $1) r
              WHERE {m} FOR UPDATE OF t",
            m = self.key_match(),
            v = self.computed.strip("to_jsonb(t)"),
        )
    }

    fn upsert_sql(&self, row: &Value) -> String {
        super::write_row_sql(
            &self.table.quoted(),
            &self.key_columns,
            row,
            true,
            &self.computed,
        )
    }

    fn delete_sql(&self) -> String {
        let tbl = self.table.quoted();
        format!(
            "DELETE FROM {tbl} t USING jsonb_populate_record(NULL::{tbl}, $1) r WHERE {m}",
            m = self.key_match()
        )
    }
}

async fn apply(
    plan: &Plan,
    entry: &Conflict,
    choice: Choice,
    sides: &[(Role, &Client); 2],
) -> Result<Resolved, Error> {
    let ctx = |side: Role, what: &str| format!("{side}: {what} for conflict {}", entry.id);
    let mut to_write = Vec::new();
    for &(side, c) in sides {
        if plan.target_differs {
            super::origin::enter(c, side).await?;
        }
        c.batch_execute(&format!("BEGIN; {PIN}"))
            .await
            .map_err(|e| pg::Error::Query {
                context: ctx(side, "starting a transaction"),
                source: e,
            })?;
        if !plan.target_differs {
            // Confirming the applied version writes nothing, so a later edit is no obstacle.
            continue;
        }
        let row = c
            .query_opt(
                &plan.current_sql(),
                &[&plan.key, &plan.applied, &plan.target],
            )
            .await
            .map_err(|e| pg::Error::Query {
                context: ctx(side, "reading the row"),
                source: e,
            })?;
        // No row: it is the applied version when that is a delete, likewise the target.
        let (is_applied, is_target) = match row {
            Some(r) => (r.get::<_, bool>(0), r.get::<_, bool>(1)),
            None => (plan.applied.is_none(), plan.target.is_none()),
        };
        if !is_applied && !is_target {
            return Err(Error::Changed {
                id: entry.id,
                table: entry.table_name.clone(),
                key: entry.record_id.clone(),
                side,
            });
        }
        if !is_target {
            to_write.push((side, c));
        }
    }
    let mut written = Vec::new();
    for (side, c) in to_write {
        let result = match &plan.target {
            Some(row) => c.execute(&plan.upsert_sql(row), &[row]).await,
            None => c.execute(&plan.delete_sql(), &[&plan.key]).await,
        };
        result.map_err(|e| pg::Error::Query {
            context: ctx(side, "writing the chosen version"),
            source: e,
        })?;
        written.push(side);
    }
    for &(side, c) in sides {
        conflict_log::mark_resolved(c, entry, choice.as_db()).await?;
        c.batch_execute("COMMIT")
            .await
            .map_err(|e| pg::Error::Query {
                context: ctx(side, "committing"),
                source: e,
            })?;
    }
    Ok(Resolved {
        id: entry.id,
        choice,
        written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan() -> Plan {
        Plan {
            table: TableName {
                schema: "public".into(),
                name: "User".into(),
            },
            key_columns: vec!["id".into()],
            computed: Computed::default(),
            key: json!({"id": "u1"}),
            applied: None,
            target: None,
            target_differs: false,
        }
    }

    #[test]
    fn choices_parse_in_either_case() {
        assert_eq!(Choice::parse("MAIN"), Some(Choice::Main));
        assert_eq!(Choice::parse("cloud"), Some(Choice::Cloud));
        assert_eq!(Choice::parse("both"), None);
        assert_eq!(Choice::Cloud.as_db(), "CLOUD");
    }

    #[test]
    fn the_upsert_sets_every_non_key_column_by_quoted_name() {
        let sql = plan().upsert_sql(&json!({"id": "u1", "na\"me": "x"}));
        assert!(sql.contains(r#"jsonb_populate_record(NULL::"public"."User", $1::jsonb)"#));
        assert!(sql.contains(r#"ON CONFLICT ("id") DO UPDATE SET "na""me" = EXCLUDED."na""me""#));
        let only_key = plan().upsert_sql(&json!({"id": "u1"}));
        assert!(only_key.ends_with("DO NOTHING"), "{only_key}");
    }

    #[test]
    fn generated_columns_are_left_to_the_server_and_identity_always_overridden() {
        let mut p = plan();
        p.computed = Computed {
            generated: vec!["total".into()],
            identity_always: vec!["seq".into()],
        };
        let sql = p.upsert_sql(&json!({"id": "u1", "seq": 4, "total": 9, "qty": 3}));
        assert!(
            sql.contains(
                r#"("id", "qty", "seq") OVERRIDING SYSTEM VALUE SELECT "id", "qty", "seq" FROM"#
            ),
            "{sql}"
        );
        assert!(
            sql.ends_with(r#"DO UPDATE SET "qty" = EXCLUDED."qty""#),
            "{sql}"
        );
        assert!(p
            .current_sql()
            .contains(r#"(to_jsonb(t) - ARRAY['total']::text[])"#));
    }

    #[test]
    fn the_row_is_found_by_every_key_column() {
        let mut p = plan();
        p.key_columns = vec!["a".into(), "b".into()];
        assert!(p
            .delete_sql()
            .ends_with(r#"t."a" = r."a" AND t."b" = r."b""#));
        assert!(p.current_sql().contains("FOR UPDATE OF t"));
    }
}
