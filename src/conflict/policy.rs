//! Conflict policies and how a table's effective policy is chosen. Pure: no database.

use std::fmt;

use serde::Serialize;

/// How a conflict on a table is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The version with the later updated-at value wins; ties go to main.
    LastWriteWins,
    /// Main's version wins a conflict; ordinary cloud edits still flow.
    MainAuthoritative,
    /// Main's version is applied provisionally and the conflict stays open for a person.
    Manual,
}

impl Policy {
    /// Every policy, for metrics.
    pub const ALL: [Policy; 3] = [
        Policy::LastWriteWins,
        Policy::MainAuthoritative,
        Policy::Manual,
    ];

    /// As written in configuration and in `conflict_log.policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::LastWriteWins => "last_write_wins",
            Policy::MainAuthoritative => "main_authoritative",
            Policy::Manual => "manual",
        }
    }

    /// Parse a configured name.
    pub fn parse(raw: &str) -> Option<Policy> {
        match raw.trim() {
            "last_write_wins" => Some(Policy::LastWriteWins),
            "main_authoritative" => Some(Policy::MainAuthoritative),
            "manual" => Some(Policy::Manual),
            _ => None,
        }
    }

    /// Whether main's version wins every conflict (main_authoritative and manual).
    pub fn main_wins(self) -> bool {
        !matches!(self, Policy::LastWriteWins)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A table's configured choice (`[conflicts.tables."Name"]`), before the catalog is known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Configured {
    /// The policy, when configured.
    pub policy: Option<Policy>,
    /// The updated-at column for last_write_wins, when configured.
    pub updated_at: Option<String>,
}

/// The policy a table actually gets, with the column last_write_wins compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Effective {
    /// The policy.
    pub policy: Policy,
    /// The updated-at column (last_write_wins only).
    pub updated_at: Option<String>,
    /// Whether the policy came from the configuration (else it was chosen by detection).
    pub configured: bool,
}

/// Column names detected as a table's updated-at column, in order of preference: Prisma's
/// `@updatedAt` convention, then the snake_case one.
pub const UPDATED_AT_NAMES: &[&str] = &["updatedAt", "updated_at"];

/// Whether a column of type `type_name` (`format_type` output) can order versions.
pub fn is_timestamp(type_name: &str) -> bool {
    type_name.starts_with("timestamp")
}

/// Choose a table's effective policy from its configuration and its columns
/// (`(name, format_type)` pairs). Err says what is wrong and what to do.
pub fn effective(
    table: &str,
    configured: &Configured,
    columns: &[(String, String)],
) -> Result<Effective, String> {
    let column_type = |name: &str| {
        columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    };
    let detected = || {
        UPDATED_AT_NAMES
            .iter()
            .find(|n| column_type(n).is_some_and(is_timestamp))
            .map(|n| n.to_string())
    };
    match (configured.policy, &configured.updated_at) {
        (Some(p @ (Policy::MainAuthoritative | Policy::Manual)), Some(col)) => Err(format!(
            "table {table}: updated_at = \"{col}\" only applies to last_write_wins, but the policy is {p}: remove updated_at or change the policy"
        )),
        (Some(Policy::LastWriteWins) | None, Some(col)) => match column_type(col) {
            Some(t) if is_timestamp(t) => Ok(Effective {
                policy: Policy::LastWriteWins,
                updated_at: Some(col.clone()),
                configured: true,
            }),
            Some(t) => Err(format!(
                "table {table}: updated-at column \"{col}\" is {t}, not a timestamp: name a timestamp or timestamptz column"
            )),
            None => Err(format!(
                "table {table} has no column \"{col}\": fix [conflicts.tables] updated_at (column names are case-sensitive)"
            )),
        },
        (Some(Policy::LastWriteWins), None) => match detected() {
            Some(col) => Ok(Effective {
                policy: Policy::LastWriteWins,
                updated_at: Some(col),
                configured: true,
            }),
            None => Err(format!(
                "table {table} uses last_write_wins but has no \"updatedAt\" or updated_at timestamp column: name one with updated_at, or choose main_authoritative"
            )),
        },
        (Some(p), None) => Ok(Effective {
            policy: p,
            updated_at: None,
            configured: true,
        }),
        (None, None) => Ok(match detected() {
            Some(col) => Effective {
                policy: Policy::LastWriteWins,
                updated_at: Some(col),
                configured: false,
            },
            None => Effective {
                policy: Policy::MainAuthoritative,
                updated_at: None,
                configured: false,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn detection_prefers_prisma_updated_at_and_falls_back_to_main_authoritative() {
        let prisma = cols(&[
            ("id", "text"),
            ("updatedAt", "timestamp(3) without time zone"),
        ]);
        let e = effective("User", &Configured::default(), &prisma).unwrap();
        assert_eq!(e.policy, Policy::LastWriteWins);
        assert_eq!(e.updated_at.as_deref(), Some("updatedAt"));
        assert!(!e.configured);
        let snake = cols(&[("id", "bigint"), ("updated_at", "timestamp with time zone")]);
        let e = effective("t", &Configured::default(), &snake).unwrap();
        assert_eq!(e.updated_at.as_deref(), Some("updated_at"));
        let none = cols(&[
            ("groupId", "text"),
            ("joinedAt", "timestamp with time zone"),
        ]);
        let e = effective("GroupMember", &Configured::default(), &none).unwrap();
        assert_eq!(e.policy, Policy::MainAuthoritative);
        assert_eq!(e.updated_at, None);
        // A text column with the right name is not a clock.
        let text = cols(&[("updatedAt", "text")]);
        let e = effective("t", &Configured::default(), &text).unwrap();
        assert_eq!(e.policy, Policy::MainAuthoritative);
    }

    #[test]
    fn configuration_wins_and_bad_configuration_says_what_to_do() {
        let c = cols(&[("id", "text"), ("modified", "timestamp with time zone")]);
        let lww = Configured {
            policy: Some(Policy::LastWriteWins),
            updated_at: Some("modified".into()),
        };
        assert_eq!(
            effective("t", &lww, &c).unwrap().updated_at.as_deref(),
            Some("modified")
        );
        let missing = Configured {
            policy: Some(Policy::LastWriteWins),
            updated_at: None,
        };
        assert!(effective("t", &missing, &c)
            .unwrap_err()
            .contains("choose main_authoritative"));
        let typo = Configured {
            policy: None,
            updated_at: Some("Modified".into()),
        };
        assert!(effective("t", &typo, &c)
            .unwrap_err()
            .contains("case-sensitive"));
        let mixed = Configured {
            policy: Some(Policy::Manual),
            updated_at: Some("modified".into()),
        };
        assert!(effective("t", &mixed, &c)
            .unwrap_err()
            .contains("only applies to last_write_wins"));
        let manual = Configured {
            policy: Some(Policy::Manual),
            updated_at: None,
        };
        assert_eq!(effective("t", &manual, &c).unwrap().policy, Policy::Manual);
    }
}
