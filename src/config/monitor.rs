//! `[monitor]`: the low-privilege login `duplex run`, `status`, `check` and the conflict
//! commands use, so only `duplex setup` needs a superuser (docs/security.md).

use serde::Serialize;

use super::keys::{Key, Problems, Section};
use crate::secret::Secret;

const USER: Key = Key::file("monitor.user");
pub(super) const PASSWORD: Key = Key::env("monitor.password", "DUPLEX_MONITOR_PASSWORD");
const KEYS: &[Key] = &[USER, PASSWORD];

/// The monitoring role `duplex setup` creates when it is given a password.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorSettings {
    /// Role name. Default `duplex_monitor`.
    pub user: String,
    /// Its password (`DUPLEX_MONITOR_PASSWORD`). Unset: setup creates no monitoring role.
    pub password: Option<Secret>,
}

impl MonitorSettings {
    pub(super) fn parse(top: &config::Map<String, config::Value>, problems: &mut Problems) -> Self {
        let mut m = Section::table(top, "monitor", KEYS, problems);
        let user = m.string(&USER).unwrap_or_else(|| "duplex_monitor".into());
        if !super::replication::valid_slot_name(&user) {
            m.problems.push(format!(
                "monitor.user `{user}` must be 1-63 lower-case letters, digits or underscores"
            ));
        }
        let password = m.secret(&PASSWORD);
        MonitorSettings { user, password }
    }
}
