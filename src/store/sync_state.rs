//! `duplex.sync_state`: the instance's single state row.

use tokio_postgres::Client;

use crate::config::Role;
use crate::pg::{Context, Error as PgError};

/// Errors seeding or reading the state row.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database was set up for the other role: running would mix up directions.
    #[error("this database is recorded as the {recorded} instance but INSTANCE_ROLE is {configured}: point LOCAL_DB_URL at the {configured} database or fix INSTANCE_ROLE (see runbooks/role-mismatch.md)")]
    RoleMismatch {
        /// Role in `duplex.sync_state`.
        recorded: String,
        /// Role from the configuration.
        configured: Role,
    },
    /// A query failed.
    #[error(transparent)]
    Pg(#[from] PgError),
}

/// Seed the row with `role` on first start; refuse when it holds the other role.
pub async fn ensure_role(client: &Client, role: Role, sync_enabled: bool) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO duplex.sync_state (instance_role, sync_enabled) VALUES ($1, $2)
             ON CONFLICT (id) DO NOTHING",
            &[&role.as_db(), &sync_enabled],
        )
        .await
        .context("seeding duplex.sync_state")?;
    let recorded: String = client
        .query_one("SELECT instance_role FROM duplex.sync_state", &[])
        .await
        .context("reading duplex.sync_state")?
        .get(0);
    if recorded != role.as_db() {
        return Err(Error::RoleMismatch {
            recorded: recorded.to_lowercase(),
            configured: role,
        });
    }
    Ok(())
}
