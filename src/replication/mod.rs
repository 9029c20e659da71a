//! Replication between main and cloud: provisioning (`setup`), catalog queries,
//! preflight checks, the table selection compared with what was set up, and status.

pub mod capacity;
pub mod catalog;
pub mod check;
pub mod health;
pub mod monitor;
pub mod monitor_role;
pub mod resolution;
pub mod rules;
pub mod scanner;
pub mod selection;
pub mod setup;
pub mod state;
pub mod status;

use crate::config::{Settings, TableSelection};
use crate::model::{Role, TableName};
use tokio_postgres::Client;

/// Errors of the replication domain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A database call failed (connection or query).
    #[error(transparent)]
    Pg(#[from] crate::pg::Error),
    /// Setup found conditions it will not work under; nothing was changed.
    #[error("setup refused, nothing was changed:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Refused(Vec<String>),
    /// The state row belongs to the other role.
    #[error(transparent)]
    State(#[from] crate::store::sync_state::Error),
    /// Cloud's initial copy did not finish in time.
    #[error("cloud's initial copy did not finish within {secs} s; tables still copying: {tables}. It goes on in the background: watch `duplex status`, then run setup for main")]
    InitialCopyTimeout {
        /// The timeout.
        secs: u64,
        /// Tables not yet ready.
        tables: String,
    },
    /// After setup the peer holds no slot for this side's subscription.
    #[error("the subscription was created but slot {slot} does not exist on the {peer} instance: see runbooks/replication-slot-dropped.md")]
    SlotMissing {
        /// Slot name.
        slot: String,
        /// Where it should be.
        peer: Role,
    },
}

/// The name shared by the publication, subscription and (by default) slot of one direction.
pub fn direction_name(from: Role, to: Role) -> String {
    format!("duplex_{from}_to_{to}")
}

/// Objects of the direction that flows into `role` (peer -> role): its subscription lives on
/// `role`, its publication and slot on the peer.
pub fn incoming(role: Role) -> String {
    direction_name(role.peer(), role)
}

/// The insert-only publication that carries `duplex.change_meta` alongside a direction's
/// publication (`duplex_main_to_cloud_meta`).
pub fn meta_publication(direction: &str) -> String {
    format!("{direction}_meta")
}

/// Objects of the direction that flows out of `role`.
pub fn outgoing(role: Role) -> String {
    direction_name(role, role.peer())
}

/// Resolve the configured table selection against `client` (the publisher side).
pub async fn resolve_tables(
    client: &Client,
    settings: &Settings,
) -> Result<Vec<TableName>, crate::pg::Error> {
    let mut tables = match &settings.tables {
        TableSelection::Include { tables } => tables.clone(),
        TableSelection::Schema { schema, exclude } => catalog::schema_tables(client, schema)
            .await?
            .into_iter()
            .filter(|t| !exclude.contains(t))
            .map(|name| TableName {
                schema: schema.clone(),
                name,
            })
            .collect(),
    };
    tables.sort();
    tables.dedup();
    Ok(tables)
}
