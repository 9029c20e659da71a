//! `duplex.sync_log`: what duplex did and what went wrong, newest last.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::model::Severity;
use crate::pg::{Context, Error};

const INSERT: &str =
    "INSERT INTO duplex.sync_log (sync_type, status, records_synced, error_message, details)
     VALUES ($1, $2, $3, $4, $5) RETURNING id";

const RECENT: &str =
    "SELECT id, sync_type, status, records_synced, error_message, details, created_at
       FROM duplex.sync_log
      WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR sync_type = $2)
      ORDER BY created_at DESC, id DESC LIMIT $3";

/// The latest `SUCCESS` entry. [`PRUNE`] keeps it: change the two together.
const LAST_SUCCESS: &str =
    "SELECT sync_type, created_at FROM duplex.sync_log WHERE status = 'SUCCESS'
      ORDER BY created_at DESC, id DESC LIMIT 1";

/// The latest entry of every alert kind (raised while its status is not RESOLVED).
/// [`PRUNE`] keeps these: change the two together.
const LATEST_ALERTS: &str = "SELECT DISTINCT ON (details->>'kind')
        details->>'kind', status, coalesce(error_message, ''), details, created_at
   FROM duplex.sync_log WHERE sync_type = 'alert' AND details ? 'kind'
  ORDER BY details->>'kind', id DESC";

/// The first DISCONNECTED transition after the latest CONNECTED or DEGRADED one.
/// [`PRUNE`] keeps both of those: change the two together.
const OPEN_DISCONNECTION: &str = "SELECT created_at FROM duplex.sync_log
  WHERE sync_type = 'connection' AND details->>'to' = 'DISCONNECTED'
    AND id > coalesce((SELECT max(id) FROM duplex.sync_log
                        WHERE sync_type = 'connection'
                          AND details->>'to' IN ('CONNECTED', 'DEGRADED')), 0)
  ORDER BY id LIMIT 1";

/// Delete up to `$2` entries older than `$1` days, oldest first, except those the
/// queries above read back after a restart (so pruning never changes what they return):
/// the latest entry of every alert kind ([`LATEST_ALERTS`]), the latest `SUCCESS` of every
/// `sync_type` ([`LAST_SUCCESS`] is the newest of them), the latest `connection` entry, the
/// latest CONNECTED or DEGRADED transition and the first DISCONNECTED one after it
/// ([`OPEN_DISCONNECTION`]). Entries newer than the cutoff are never candidates, so one
/// logged while this runs cannot be lost.
const PRUNE: &str = "WITH keep(id) AS (
    (SELECT DISTINCT ON (details->>'kind') id FROM duplex.sync_log
      WHERE sync_type = 'alert' AND details ? 'kind'
      ORDER BY details->>'kind', id DESC)
    UNION ALL
    (SELECT DISTINCT ON (sync_type) id FROM duplex.sync_log
      WHERE status = 'SUCCESS'
      ORDER BY sync_type, created_at DESC, id DESC)
    UNION ALL
    (SELECT max(id) FROM duplex.sync_log WHERE sync_type = 'connection')
    UNION ALL
    (SELECT max(id) FROM duplex.sync_log
      WHERE sync_type = 'connection' AND details->>'to' IN ('CONNECTED', 'DEGRADED'))
    UNION ALL
    (SELECT id FROM duplex.sync_log
      WHERE sync_type = 'connection' AND details->>'to' = 'DISCONNECTED'
        AND id > coalesce((SELECT max(id) FROM duplex.sync_log
                            WHERE sync_type = 'connection'
                              AND details->>'to' IN ('CONNECTED', 'DEGRADED')), 0)
      ORDER BY id LIMIT 1))
DELETE FROM duplex.sync_log
 WHERE id IN (SELECT l.id FROM duplex.sync_log l
               WHERE l.created_at < now() - make_interval(days => $1)
                 AND NOT EXISTS (SELECT 1 FROM keep k WHERE k.id = l.id)
               ORDER BY l.id LIMIT $2)";

/// `sync_log.sync_type`: what kind of work an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncType {
    /// `duplex setup` provisioned replication.
    Setup,
    /// A connection state transition or signal.
    Connection,
    /// An alert started or cleared.
    Alert,
    /// An operator paused or resumed sync.
    Control,
    /// A scanner pass compared and settled the tables.
    Scan,
    /// An integrity check (counts, checksums) for a cutover.
    Integrity,
    /// One file mirrored (or failed) into main's store.
    StorageToMain,
    /// One file mirrored (or failed) into cloud's store.
    StorageToCloud,
    /// One storage mirror cycle: scan and transfers, summed up.
    Storage,
}

impl SyncType {
    /// Every type, as the API's `type` filter accepts them.
    pub const ALL: [SyncType; 9] = [
        SyncType::Setup,
        SyncType::Connection,
        SyncType::Alert,
        SyncType::Control,
        SyncType::Scan,
        SyncType::Integrity,
        SyncType::Storage,
        SyncType::StorageToMain,
        SyncType::StorageToCloud,
    ];

    /// The type named `s` (any case).
    pub fn parse(s: &str) -> Option<SyncType> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncType::Setup => "setup",
            SyncType::Connection => "connection",
            SyncType::Alert => "alert",
            SyncType::Control => "control",
            SyncType::Scan => "scan",
            SyncType::Integrity => "integrity",
            SyncType::StorageToMain => "STORAGE_TO_MAIN",
            SyncType::StorageToCloud => "STORAGE_TO_CLOUD",
            SyncType::Storage => "storage",
        }
    }
}

/// `sync_log.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Work done.
    Success,
    /// Worth knowing.
    Info,
    /// An alert of that level started, or a transition to a worse state.
    Level(Severity),
    /// An alert cleared.
    Resolved,
}

impl Status {
    /// Every status, as the API's `status` filter accepts them.
    pub const ALL: [Status; 6] = [
        Status::Success,
        Status::Info,
        Status::Level(Severity::Warning),
        Status::Level(Severity::Failed),
        Status::Level(Severity::Critical),
        Status::Resolved,
    ];

    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "SUCCESS",
            Status::Info => "INFO",
            Status::Level(s) => s.as_str(),
            Status::Resolved => "RESOLVED",
        }
    }

    /// The status named `s` (any case).
    pub fn parse(s: &str) -> Option<Status> {
        let upper = s.to_uppercase();
        Self::ALL.into_iter().find(|st| st.as_str() == upper)
    }
}

/// One entry to record.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// What kind of work.
    pub sync_type: SyncType,
    /// How it went.
    pub status: Status,
    /// Rows or objects handled.
    pub records_synced: i64,
    /// A sentence for a person, with what to do.
    pub error_message: Option<&'a str>,
    /// Structured facts.
    pub details: serde_json::Value,
}

/// One recorded entry, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Its id.
    pub id: i64,
    /// `sync_type`.
    pub sync_type: String,
    /// `status`.
    pub status: String,
    /// `records_synced`.
    pub records_synced: i64,
    /// `error_message`.
    pub message: Option<String>,
    /// `details`.
    pub details: serde_json::Value,
    /// `created_at`.
    pub created_at: DateTime<Utc>,
}

/// The latest entry of one alert kind.
#[derive(Debug, Clone)]
pub struct AlertRow {
    /// `details.kind`.
    pub kind: String,
    /// `status`: the level, or `RESOLVED`.
    pub status: String,
    /// `error_message`, empty when none.
    pub message: String,
    /// `details`.
    pub details: serde_json::Value,
    /// `created_at`.
    pub created_at: DateTime<Utc>,
}

/// Append `entry`; returns its id.
pub async fn insert(client: &Client, entry: &Entry<'_>) -> Result<i64, Error> {
    Ok(client
        .query_one(
            INSERT,
            &[
                &entry.sync_type.as_str(),
                &entry.status.as_str(),
                &entry.records_synced,
                &entry.error_message,
                &entry.details,
            ],
        )
        .await
        .context("writing duplex.sync_log")?
        .get(0))
}

/// Entries newest first, optionally filtered by `status` and `sync_type`.
pub async fn recent(
    client: &Client,
    status: Option<&str>,
    sync_type: Option<&str>,
    limit: i64,
) -> Result<Vec<Row>, Error> {
    Ok(client
        .query(RECENT, &[&status, &sync_type, &limit])
        .await
        .context("reading duplex.sync_log")?
        .iter()
        .map(|r| Row {
            id: r.get(0),
            sync_type: r.get(1),
            status: r.get(2),
            records_synced: r.get(3),
            message: r.get(4),
            details: r.get(5),
            created_at: r.get(6),
        })
        .collect())
}

/// The latest `SUCCESS` entry: its type and time.
pub async fn last_success(client: &Client) -> Result<Option<(String, DateTime<Utc>)>, Error> {
    Ok(client
        .query_opt(LAST_SUCCESS, &[])
        .await
        .context("reading duplex.sync_log")?
        .map(|r| (r.get(0), r.get(1))))
}

/// The latest entry of every alert kind ever logged.
pub async fn latest_alerts(client: &Client) -> Result<Vec<AlertRow>, Error> {
    Ok(client
        .query(LATEST_ALERTS, &[])
        .await
        .context("reading raised alerts")?
        .iter()
        .map(|r| AlertRow {
            kind: r.get(0),
            status: r.get(1),
            message: r.get(2),
            details: r.get(3),
            created_at: r.get(4),
        })
        .collect())
}

/// When the peer became unreachable, if no CONNECTED or DEGRADED transition followed.
pub async fn open_disconnection(client: &Client) -> Result<Option<DateTime<Utc>>, Error> {
    Ok(client
        .query_opt(OPEN_DISCONNECTION, &[])
        .await
        .context("reading the last disconnection")?
        .map(|r| r.get(0)))
}

/// Delete up to `batch` entries older than `days`, keeping what a restart reads back (see
/// [`PRUNE`]); returns how many went. Callers repeat it until a batch comes back short.
pub async fn prune_older_than(client: &Client, days: i32, batch: i64) -> Result<u64, Error> {
    client
        .execute(PRUNE, &[&days, &batch])
        .await
        .context("pruning old entries of duplex.sync_log")
}

/// Record that alert `c` was raised (or `cleared`) by `worker`: one `alert` entry, logged
/// once; `raised_alerts` reads them back after a restart.
pub async fn record_alert(
    client: &Client,
    worker: &'static str,
    c: &crate::alerts::Condition,
    cleared: bool,
) -> Result<(), Error> {
    let message = if cleared {
        format!("cleared: {}", c.title)
    } else {
        c.message.clone()
    };
    if cleared {
        tracing::info!(worker, kind = %c.kind, "{message}");
    } else {
        tracing::warn!(worker, kind = %c.kind, level = c.level.as_str(), "{message}");
    }
    insert(
        client,
        &Entry {
            sync_type: SyncType::Alert,
            status: if cleared {
                Status::Resolved
            } else {
                Status::Level(c.level)
            },
            records_synced: 0,
            error_message: Some(&message),
            details: serde_json::json!({
                "kind": c.kind,
                "title": c.title,
                "level": c.level.as_str(),
                "runbook": c.runbook,
                "facts": c.details,
            }),
        },
    )
    .await
    .map(|_| ())
}

/// Alerts still raised before a restart (their latest entry is not RESOLVED) whose kind
/// `owns` accepts; `runbook` maps a stored runbook path back to the known one.
pub async fn raised_alerts(
    client: &Client,
    owns: impl Fn(&str) -> bool,
    runbook: impl Fn(&str) -> Option<&'static str>,
) -> Result<Vec<crate::alerts::Active>, Error> {
    let mut restored = Vec::new();
    for r in latest_alerts(client).await? {
        let Some(level) = Severity::alert_level(&r.status) else {
            continue;
        };
        if !owns(&r.kind) {
            continue;
        }
        restored.push(crate::alerts::Active {
            condition: crate::alerts::Condition {
                kind: r.kind,
                level,
                title: r.details["title"].as_str().unwrap_or_default().to_string(),
                message: r.message,
                runbook: r.details["runbook"].as_str().and_then(&runbook),
                details: r.details["facts"].clone(),
            },
            since: r.created_at,
        });
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::SyncType;

    #[test]
    fn every_sync_type_is_listed_for_the_api_filter() {
        // A new variant fails to compile here until it is matched, and then this test
        // until it is in `ALL` too.
        let check = |t: SyncType| match t {
            SyncType::Setup
            | SyncType::Connection
            | SyncType::Alert
            | SyncType::Control
            | SyncType::Scan
            | SyncType::Integrity
            | SyncType::Storage
            | SyncType::StorageToMain
            | SyncType::StorageToCloud => SyncType::ALL.contains(&t),
        };
        for t in SyncType::ALL {
            assert!(check(t));
            assert_eq!(SyncType::parse(&t.as_str().to_uppercase()), Some(t));
        }
        assert!(check(SyncType::Integrity) && SyncType::parse("bogus").is_none());
    }
}
