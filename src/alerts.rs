//! The alert engine, free of any domain: a [`Condition`] holds or not each cycle, and the
//! [`Book`] turns that into raises and clears, once per incident. The rules that produce
//! conditions live with their domain (`replication::rules`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::Severity;

/// A condition that holds now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    /// Stable key, e.g. `slot_missing:duplex_cloud_to_main`; one alert per key.
    pub kind: String,
    /// Severity.
    pub level: Severity,
    /// One line.
    pub title: String,
    /// What happened and what to do.
    pub message: String,
    /// The runbook to follow, if a person must act.
    pub runbook: Option<&'static str>,
    /// Facts for `sync_log.details`.
    pub details: serde_json::Value,
}

/// An alert that is currently raised.
#[derive(Debug, Clone, Serialize)]
pub struct Active {
    /// The condition as it was when raised.
    #[serde(flatten)]
    pub condition: Condition,
    /// When it was raised.
    pub since: DateTime<Utc>,
}

/// The raised alerts of this process.
#[derive(Debug, Default)]
pub struct Book {
    active: BTreeMap<String, Active>,
}

impl Book {
    /// Compare the conditions of this cycle with the raised alerts: returns those that
    /// start now and those that cleared.
    pub fn update(
        &mut self,
        now: Vec<Condition>,
        at: DateTime<Utc>,
        unknown: &dyn Fn(&str) -> bool,
    ) -> (Vec<Condition>, Vec<Active>) {
        let mut started = Vec::new();
        let current: BTreeMap<String, Condition> =
            now.into_iter().map(|c| (c.kind.clone(), c)).collect();
        let cleared_keys: Vec<String> = self
            .active
            .keys()
            .filter(|k| !current.contains_key(*k) && !unknown(k))
            .cloned()
            .collect();
        let cleared = cleared_keys
            .iter()
            .filter_map(|k| self.active.remove(k))
            .collect();
        for (kind, c) in current {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.active.entry(kind) {
                started.push(c.clone());
                slot.insert(Active {
                    condition: c,
                    since: at,
                });
            }
        }
        (started, cleared)
    }

    /// Alerts raised before a restart, read back from `sync_log`.
    pub fn restore(&mut self, alerts: Vec<Active>) {
        for a in alerts {
            self.active.insert(a.condition.kind.clone(), a);
        }
    }

    /// Raised alerts, most severe first.
    pub fn active(&self) -> Vec<Active> {
        let mut v: Vec<Active> = self.active.values().cloned().collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.condition.level));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_starts_once_and_clears_once() {
        let mut book = Book::default();
        let c = Condition {
            kind: "replication_lag".into(),
            level: Severity::Warning,
            title: "t".into(),
            message: "m".into(),
            runbook: None,
            details: serde_json::Value::Null,
        };
        let now = Utc::now();
        let known = |_: &str| false;
        assert_eq!(book.update(vec![c.clone()], now, &known).0.len(), 1);
        let (started, cleared) = book.update(vec![c.clone()], now, &known);
        assert!(started.is_empty() && cleared.is_empty());
        // While its input is unknown, the alert stays raised.
        let (_, cleared) = book.update(vec![], now, &|k: &str| k == "replication_lag");
        assert!(cleared.is_empty());
        let (started, cleared) = book.update(vec![], now, &known);
        assert!(started.is_empty());
        assert_eq!(cleared.len(), 1);
        assert!(book.active().is_empty());
    }
}
