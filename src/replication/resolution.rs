//! What in-stream conflict resolution each replicated table should have on one side, and
//! what is installed there: shared by `duplex setup` (what to install) and `duplex check`
//! (what is wrong).

use tokio_postgres::Client;

use super::catalog;
use crate::config::Settings;
use crate::conflict::policy::{self, Effective};
use crate::conflict::triggers::{
    self, Generated, HashMode, TableShape, CAPTURE_TRIGGER, RESOLVE_TRIGGER,
};
use crate::model::{Role, TableName};
use crate::pg::Error;
use crate::store::resolution::{self, Installed};

/// One table's resolution on one side.
#[derive(Debug, Clone)]
pub struct TableResolution {
    /// The table.
    pub table: TableName,
    /// Its effective policy, or why the configuration is unusable.
    pub effective: Result<Effective, String>,
    /// The SQL it should have (`None` without a primary key or with a bad policy).
    pub generated: Option<Generated>,
    /// What `duplex setup` recorded there.
    pub installed: Option<Installed>,
    /// `pg_trigger.tgenabled` of the capture and resolve triggers (`O`, `R`, ...).
    pub triggers: (Option<String>, Option<String>),
}

impl TableResolution {
    /// Installed, enabled the right way, and generated from the current definition and policy.
    pub fn current(&self) -> bool {
        match (&self.generated, &self.installed) {
            (Some(g), Some(i)) => {
                i.fingerprint == g.fingerprint
                    && self.triggers.0.as_deref() == Some("O")
                    && self.triggers.1.as_deref() == Some("R")
            }
            _ => false,
        }
    }

    /// `last_write_wins by "updatedAt"`, for people.
    pub fn describe(&self) -> String {
        match &self.effective {
            Ok(e) => format!(
                "{}{}",
                e.policy,
                e.updated_at
                    .as_deref()
                    .map(|c| format!(" by \"{c}\""))
                    .unwrap_or_default()
            ),
            Err(e) => e.clone(),
        }
    }
}

/// The resolution of every table in `tables` on `client`, which is the `role` side;
/// `mode` follows the two servers' major versions ([`HashMode::for_versions`]); a table
/// whose rows have no binary hash gets [`HashMode::Text`].
pub async fn inspect(
    settings: &Settings,
    client: &Client,
    role: Role,
    tables: &[TableName],
    mode: HashMode,
) -> Result<Vec<TableResolution>, Error> {
    let installed = resolution::installed(client).await?;
    let mut out = Vec::new();
    for table in tables {
        let Some(info) = catalog::table_info(client, table).await? else {
            continue;
        };
        let keys = crate::pg::catalog::keys(client, table).await?;
        let computed = crate::pg::catalog::computed(client, table).await?;
        let (toastable, toast_chunk_id) = crate::pg::catalog::toastable(client, table).await?;
        // A column type without a binary hash (json, xml, ...): this table's rows are
        // fingerprinted by their text, on both sides alike (their columns are the same).
        let mode = if mode == HashMode::Binary
            && !crate::pg::catalog::binary_hashable(client, table).await?
        {
            HashMode::Text
        } else {
            mode
        };
        let columns: Vec<(String, String)> = info
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.type_name.clone()))
            .collect();
        let effective = policy::effective(
            &table.to_string(),
            &settings.conflicts.configured(table),
            &columns,
        );
        let generated = match (&effective, keys.key.is_empty()) {
            (Ok(eff), false) => Some(triggers::generate(
                &TableShape {
                    table: table.clone(),
                    columns,
                    key: keys.key,
                    unique: keys.unique,
                    computed,
                    toastable,
                    toast_chunk_id,
                },
                eff,
                role,
                mode,
            )),
            _ => None,
        };
        out.push(TableResolution {
            table: table.clone(),
            effective,
            generated,
            installed: installed.get(&table.to_string()).cloned(),
            triggers: (
                catalog::trigger_state(client, table, CAPTURE_TRIGGER).await?,
                catalog::trigger_state(client, table, RESOLVE_TRIGGER).await?,
            ),
        });
    }
    Ok(out)
}

/// Tables with installed resolution that are no longer in `tables`.
pub async fn stale_installs(
    client: &Client,
    tables: &[TableName],
) -> Result<Vec<TableName>, Error> {
    Ok(resolution::installed(client)
        .await?
        .keys()
        .filter(|rel| !tables.iter().any(|t| &t.to_string() == *rel))
        .filter_map(|rel| {
            rel.split_once('.').map(|(s, n)| TableName {
                schema: s.into(),
                name: n.into(),
            })
        })
        .collect())
}
