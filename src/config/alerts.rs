//! `[alerts]`: thresholds; each alert logs once when it starts and once when it clears.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::keys::{as_secs, Key, Problems, Section, DAY, MAX_COUNT};

const LAG_WARNING: Key = Key::file("alerts.lag_warning_secs");
const DISCONNECTED_CRITICAL: Key = Key::file("alerts.disconnected_critical_secs");
const RETAINED_WAL_WARNING: Key = Key::file("alerts.retained_wal_warning_bytes");
pub(super) const DISK_PATH: Key = Key::env("alerts.disk_path", "DUPLEX_DISK_PATH");
const DISK_FREE_MIN: Key = Key::file("alerts.disk_free_min_percent");
const DISK_QUEUE_MIN: Key = Key::file("alerts.disk_queue_min");
const QUEUE_WARNING: Key = Key::file("alerts.queue_warning");
const NOT_STREAMING_CRITICAL: Key = Key::file("alerts.not_streaming_critical_secs");
const KEYS: &[Key] = &[
    NOT_STREAMING_CRITICAL,
    LAG_WARNING,
    DISCONNECTED_CRITICAL,
    RETAINED_WAL_WARNING,
    DISK_PATH,
    DISK_FREE_MIN,
    DISK_QUEUE_MIN,
    QUEUE_WARNING,
];

/// `[alerts]`: thresholds; each alert logs once when it starts and once when it clears.
#[derive(Debug, Clone, Serialize)]
pub struct AlertSettings {
    /// `lag_warning_secs`: replication lag that raises a WARNING. Default 3600 s.
    #[serde(rename = "lag_warning_secs", serialize_with = "as_secs")]
    pub lag_warning: Duration,
    /// `disconnected_critical_secs`: time disconnected that raises a CRITICAL. Default
    /// 86400 s.
    #[serde(rename = "disconnected_critical_secs", serialize_with = "as_secs")]
    pub disconnected_critical: Duration,
    /// WAL retained by a slot that raises a WARNING (`5GB`). Default 5 GB.
    pub retained_wal_warning_bytes: u64,
    /// Filesystem path whose free space is watched (`DUPLEX_DISK_PATH`). Default: unset.
    pub disk_path: Option<PathBuf>,
    /// Free space below this percentage (with a storage queue over `disk_queue_min`) warns.
    /// Default 20.
    pub disk_free_min_percent: u64,
    /// Storage queue size that makes low disk space worth a warning. Default 100.
    pub disk_queue_min: u64,
    /// Storage queue size that raises a WARNING on its own. Default 500.
    pub queue_warning: u64,
    /// `not_streaming_critical_secs`: how long a direction may not stream (no walsender
    /// for its slot, no apply worker, or no progress with WAL to send) while the peer
    /// answers before a CRITICAL. Default 300 s.
    #[serde(rename = "not_streaming_critical_secs", serialize_with = "as_secs")]
    pub not_streaming_critical: Duration,
}

impl AlertSettings {
    pub(super) fn parse(top: &config::Map<String, config::Value>, problems: &mut Problems) -> Self {
        let mut a = Section::table(top, "alerts", KEYS, problems);
        let disk_free_min_percent = a.positive(&DISK_FREE_MIN, 20, 100);
        AlertSettings {
            lag_warning: a.secs(&LAG_WARNING, 3600, 30 * DAY),
            disconnected_critical: a.secs(&DISCONNECTED_CRITICAL, DAY, 30 * DAY),
            retained_wal_warning_bytes: a.bytes(&RETAINED_WAL_WARNING, 5_000_000_000),
            disk_path: a
                .string(&DISK_PATH)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            disk_free_min_percent,
            disk_queue_min: a.positive(&DISK_QUEUE_MIN, 100, MAX_COUNT),
            queue_warning: a.positive(&QUEUE_WARNING, 500, MAX_COUNT),
            not_streaming_critical: a.secs(&NOT_STREAMING_CRITICAL, 300, DAY),
        }
    }
}
