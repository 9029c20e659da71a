//! duplex's own replication origins: a repair or a manual resolution is written under one of
//! them, so with `origin = none` the peer's subscription does not send it back.
//!
//! PostgreSQL lets one session at a time use an origin, and several repairs can run at once
//! (the scanner in `duplex run`, a `duplex scan` from the CLI, a manual resolution from the
//! other side's controller). So there is a small pool: `duplex_repair`, `duplex_repair_2`, ...
//! A session takes the first free one. The pool stays small because on PostgreSQL 18 every
//! origin that has been used holds one of `max_active_replication_origins` (default 10)
//! until it is dropped, and the subscriptions need theirs.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::model::Role;
use crate::pg::{self, Context};

/// The first origin of the pool; the others are `duplex_repair_2` .. `duplex_repair_4`.
pub const REPAIR_ORIGIN: &str = "duplex_repair";
/// How many repairs can write at the same moment on one cluster.
const POOL: usize = 4;
/// How long to wait for a free origin when all of them are busy.
const WAIT: Duration = Duration::from_secs(30);

const CREATE: &str = "SELECT pg_replication_origin_create($1)
  WHERE pg_replication_origin_oid($1) IS NULL";
const SETUP: &str = "SELECT pg_replication_origin_session_setup($1)";
const RESET: &str = "SELECT pg_replication_origin_session_reset()";

/// The names of the pool, in the order they are tried.
pub fn names() -> impl Iterator<Item = String> {
    (1..=POOL).map(|i| match i {
        1 => REPAIR_ORIGIN.to_string(),
        n => format!("{REPAIR_ORIGIN}_{n}"),
    })
}

/// Make `c`'s session write under a free origin of the pool (outside a transaction), and
/// return its name. Waits up to 30 s while every origin is in use by another session.
pub async fn enter(c: &Client, side: Role) -> Result<String, pg::Error> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut pause = Duration::from_millis(50);
    loop {
        let mut last = None;
        for name in names() {
            c.query(CREATE, &[&name])
                .await
                .context(format!("{side}: creating replication origin {name}"))?;
            match c.query(SETUP, &[&name]).await {
                Ok(_) => return Ok(name),
                Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => last = Some((name, e)),
                Err(e) => {
                    return Err(e).context(format!("{side}: using replication origin {name}"))
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let (name, e) = last.expect("the pool is not empty");
            return Err(e).context(format!(
                "{side}: every duplex repair origin ({REPAIR_ORIGIN} .. {name}) stayed in use \
                 by other sessions for {} s; wait for running repairs to finish and retry",
                WAIT.as_secs()
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Stop writing under the origin taken by [`enter`].
pub async fn leave(c: &Client, side: Role) -> Result<(), pg::Error> {
    c.query(RESET, &[])
        .await
        .context(format!("{side}: leaving duplex's replication origin"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pool_starts_with_the_documented_name_and_stays_small() {
        let names: Vec<_> = super::names().collect();
        assert_eq!(
            names,
            [
                "duplex_repair",
                "duplex_repair_2",
                "duplex_repair_3",
                "duplex_repair_4"
            ]
        );
    }
}
