//! Domain words shared by every module: which side ([`Role`]) and which table
//! ([`TableName`]).

use std::fmt;

use serde::Serialize;

/// Which instance this duplex process runs beside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The on-site instance: the source of the initial data.
    Main,
    /// The cloud instance: copies the initial data from main.
    Cloud,
}

impl Role {
    /// The other side.
    pub fn peer(self) -> Role {
        match self {
            Role::Main => Role::Cloud,
            Role::Cloud => Role::Main,
        }
    }

    /// Lower-case name, as in `INSTANCE_ROLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Main => "main",
            Role::Cloud => "cloud",
        }
    }

    /// Upper-case name, as stored in `duplex.sync_state.instance_role`.
    pub fn as_db(self) -> &'static str {
        match self {
            Role::Main => "MAIN",
            Role::Cloud => "CLOUD",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Quote an SQL identifier: always double-quoted, inner quotes doubled. The one quoting
/// helper for identifiers (also as `pg::quote_ident`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table name as the user wrote it: exact identifiers, not SQL-quoted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TableName {
    /// Schema, e.g. `public`.
    pub schema: String,
    /// Table, e.g. `JumpLog`.
    pub name: String,
}

impl TableName {
    /// `schema.table` with both parts quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// How bad something is: an alert's level, a notification's severity and the
/// `sync_log.status` of an alert's start entry. Ordered: `Info < Warning < Failed < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    /// Something worth knowing; notified only as the clearing of a raise that was sent.
    Info,
    /// Worth a look; degraded but working.
    Warning,
    /// Something stopped and needs a person.
    Failed,
    /// Data is at risk; needs a person now.
    Critical,
}

impl Severity {
    /// The upper-case name: `"INFO"`, `"WARNING"`, `"FAILED"`, `"CRITICAL"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Failed => "FAILED",
            Severity::Critical => "CRITICAL",
        }
    }

    /// The levels an alert can have, mildest first.
    pub const ALERT_LEVELS: [Severity; 3] =
        [Severity::Warning, Severity::Failed, Severity::Critical];

    /// The alert level named `s`, if it is one.
    pub fn alert_level(s: &str) -> Option<Severity> {
        Self::ALERT_LEVELS.into_iter().find(|l| l.as_str() == s)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
