//! `[conflicts]`: per-table policies and the housekeeping of conflict resolution.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::keys::{as_secs, Key, Problems, Section, DAY};
use super::replication::parse_table;
use crate::conflict::policy::{Configured, Policy};
use crate::model::TableName;

const TABLES: Key = Key::file("conflicts.tables");
const TOMBSTONE_RETENTION: Key = Key::file("conflicts.tombstone_retention_secs");
const LOG_RETENTION_DAYS: Key = Key::file("conflicts.log_retention_days");
const CLOCK_OFFSET_WARNING: Key = Key::file("conflicts.clock_offset_warning_ms");
const SCANNER_ROLE: Key = Key::file("conflicts.scanner_role");
const FULL_SCAN_INTERVAL: Key = Key::file("conflicts.full_scan_interval_hours");
const SCAN_DUTY: Key = Key::file("conflicts.scan_duty_percent");
const KEYS: &[Key] = &[
    TABLES,
    TOMBSTONE_RETENTION,
    LOG_RETENTION_DAYS,
    CLOCK_OFFSET_WARNING,
    SCANNER_ROLE,
    FULL_SCAN_INTERVAL,
    SCAN_DUTY,
];
const TABLE_KEYS: &[&str] = &["policy", "updated_at"];

/// `[conflicts]`: how conflicts are settled and how long their traces are kept.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictSettings {
    /// `[conflicts.tables."Name"]`: `policy` (`last_write_wins`, `main_authoritative`,
    /// `manual`) and `updated_at` per table. Default: none; each table gets
    /// last_write_wins when it has an `"updatedAt"`/`updated_at` timestamp column, else
    /// main_authoritative.
    pub tables: BTreeMap<String, Configured>,
    /// `tombstone_retention_secs`: how long a deleted row's tombstone is kept at least (and
    /// until both directions caught up past it). Default 604800 s (7 days).
    #[serde(rename = "tombstone_retention_secs", serialize_with = "as_secs")]
    pub tombstone_retention: Duration,
    /// `log_retention_days`: resolved entries of `duplex.conflict_log` older than this are
    /// pruned (open ones never). Default 90.
    pub log_retention_days: u64,
    /// `clock_offset_warning_ms`: offset between the two servers' clocks that raises a
    /// WARNING (last_write_wins trusts them). Default 500.
    pub clock_offset_warning_ms: u64,
    /// `scanner_role`: the one side whose controller runs the verifying scanner and
    /// repairs (`main` or `cloud`); the other side's scanner does nothing. Default main.
    pub scanner_role: crate::model::Role,
    /// `full_scan_interval_hours`: a table is compared in full again when its last full
    /// pass is this old; passes in between look only at rows committed since the last pass.
    /// Default 24.
    #[serde(rename = "full_scan_interval_hours", serialize_with = "as_hours")]
    pub full_scan_interval: Duration,
    /// `scan_duty_percent`: the share of wall time the scanner's comparison statements may
    /// take; after each one it waits so that, for example, 25 leaves the servers alone
    /// three quarters of the time. Default 100 (no waiting).
    pub scan_duty_percent: u64,
}

fn as_hours<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs() / 3600)
}

impl ConflictSettings {
    /// The configured choice for `table` (empty when none).
    pub fn configured(&self, table: &TableName) -> Configured {
        self.tables
            .get(&table.to_string())
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn parse(top: &config::Map<String, config::Value>, problems: &mut Problems) -> Self {
        let mut s = Section::table(top, "conflicts", KEYS, problems);
        let mut tables = BTreeMap::new();
        if let Some(raw) = s.raw(&TABLES).cloned() {
            match raw.into_table() {
                Err(_) => s.problems.push(
                    "conflicts.tables must be a table of tables: [conflicts.tables.\"Device\"] policy = \"main_authoritative\"",
                ),
                Ok(map) => {
                    for (name, value) in map {
                        let Some(table) = parse_table(&name, "public") else {
                            s.problems.push(format!("conflicts.tables: `{name}` is not a table name: write \"Table\" or \"schema.Table\", unquoted"));
                            continue;
                        };
                        let Ok(entry) = value.into_table() else {
                            s.problems.push(format!("conflicts.tables.\"{name}\" must be a table with policy and/or updated_at"));
                            continue;
                        };
                        let mut configured = Configured::default();
                        for (key, v) in entry {
                            match key.as_str() {
                                "policy" => match v.clone().into_string().ok().and_then(|p| Policy::parse(&p)) {
                                    Some(p) => configured.policy = Some(p),
                                    None => s.problems.push(format!("conflicts.tables.\"{name}\".policy is `{v}`: use last_write_wins, main_authoritative or manual")),
                                },
                                "updated_at" => match v.into_string() {
                                    Ok(c) if !c.trim().is_empty() => configured.updated_at = Some(c),
                                    _ => s.problems.push(format!("conflicts.tables.\"{name}\".updated_at must be a column name")),
                                },
                                other => s.problems.push(format!("unknown key `conflicts.tables.\"{name}\".{other}`: remove it or fix its spelling (known keys: {})", TABLE_KEYS.join(", "))),
                            }
                        }
                        tables.insert(table.to_string(), configured);
                    }
                }
            }
        }
        ConflictSettings {
            tables,
            tombstone_retention: s.secs(&TOMBSTONE_RETENTION, 7 * DAY, 365 * DAY),
            log_retention_days: s.positive(&LOG_RETENTION_DAYS, 90, 3650),
            clock_offset_warning_ms: s.positive(&CLOCK_OFFSET_WARNING, 500, 3_600_000),
            full_scan_interval: Duration::from_secs(
                s.positive(&FULL_SCAN_INTERVAL, 24, 24 * 365) * 3600,
            ),
            scan_duty_percent: s.positive(&SCAN_DUTY, 100, 100),
            scanner_role: match s.string(&SCANNER_ROLE).as_deref() {
                None | Some("main") => crate::model::Role::Main,
                Some("cloud") => crate::model::Role::Cloud,
                Some(other) => {
                    s.problems.push(format!(
                        "conflicts.scanner_role is `{other}`: use main or cloud"
                    ));
                    crate::model::Role::Main
                }
            },
        }
    }
}
