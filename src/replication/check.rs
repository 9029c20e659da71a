//! `duplex check`: a preflight of configuration, both connections, server settings and
//! replication objects. Each finding says what to do.

use serde::Serialize;
use tokio_postgres::Client;

use super::capacity::{self, Capacity};
use super::catalog::{self, ServerInfo};
use super::resolution;
use super::selection::{self, Comparison};
use super::status::{self, Status};
use super::{incoming, outgoing};
use crate::config::Settings;
use crate::conflict::triggers::HashMode;
use crate::model::Role;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// As it should be.
    Ok,
    /// Works, but worth fixing.
    Warning,
    /// Replication does not (or will not) work.
    Error,
}

/// One result of the preflight.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Ok, warning or error.
    pub severity: Severity,
    /// What was checked, e.g. `main: wal_level`.
    pub subject: String,
    /// What was found.
    pub message: String,
    /// What to do, when something is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// All findings.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// In check order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when no finding is an error.
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.severity != Severity::Error)
    }

    fn push(
        &mut self,
        severity: Severity,
        subject: impl Into<String>,
        message: impl Into<String>,
        hint: Option<&str>,
    ) {
        self.findings.push(Finding {
            severity,
            subject: subject.into(),
            message: message.into(),
            hint: hint.map(str::to_string),
        });
    }

    /// Render for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let tag = match f.severity {
                Severity::Ok => "ok   ",
                Severity::Warning => "WARN ",
                Severity::Error => "ERROR",
            };
            out.push_str(&format!("{tag} {}: {}\n", f.subject, f.message));
            if let Some(h) = &f.hint {
                out.push_str(&format!("      -> {h}\n"));
            }
        }
        let errors = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        let warnings = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count();
        out.push_str(&format!(
            "\n{} error(s), {} warning(s): {}\n",
            errors,
            warnings,
            if errors == 0 {
                "replication is ready"
            } else {
                "fix the errors above"
            }
        ));
        out
    }
}

/// Run every check. `local`/`remote` are `Err(message)` when the connection failed.
pub async fn run(
    settings: &Settings,
    local: Result<&Client, String>,
    remote: Result<&Client, String>,
) -> Report {
    let role = settings.instance_role;
    let peer = role.peer();
    let mut report = Report {
        findings: Vec::new(),
    };
    report.push(
        Severity::Ok,
        "config",
        format!("valid, INSTANCE_ROLE={role}"),
        None,
    );
    if !settings.sync_enabled {
        report.push(
            Severity::Warning,
            "config",
            "SYNC_ENABLED=false: data-moving workers are paused",
            Some("set SYNC_ENABLED=true when sync should run"),
        );
    }
    let mut clients = Vec::new();
    for (side, url, conn) in [
        (role, settings.local_monitor(), &local),
        (peer, settings.remote_monitor(), &remote),
    ] {
        match conn {
            Ok(c) => {
                report.push(Severity::Ok, format!("{side}: connection"), format!("connected to {url}"), None);
                clients.push((side, *c));
            }
            Err(e) => report.push(
                Severity::Error,
                format!("{side}: connection"),
                e.clone(),
                Some("check that the instance is running and reachable, and the URL, user and password are right"),
            ),
        }
    }
    for (side, client) in &clients {
        match catalog::server_info(client).await {
            Ok(info) => server_findings(&mut report, *side, &info),
            Err(e) => report.push(
                Severity::Error,
                format!("{side}: settings"),
                e.to_string(),
                None,
            ),
        }
        match capacity::read(client).await {
            Ok(c) => capacity_finding(&mut report, *side, &c),
            Err(e) => report.push(
                Severity::Error,
                format!("{side}: capacity"),
                e.to_string(),
                None,
            ),
        }
        let migrated = crate::store::sync_state::exists(client)
            .await
            .unwrap_or(false);
        if migrated {
            report.push(
                Severity::Ok,
                format!("{side}: schema duplex"),
                "present",
                None,
            );
        } else {
            report.push(
                Severity::Warning,
                format!("{side}: schema duplex"),
                "missing",
                Some(&format!(
                    "run `duplex setup` (or `duplex run`) with INSTANCE_ROLE={side}"
                )),
            );
        }
    }

    let local_client = local.as_ref().ok().copied();
    let remote_client = remote.as_ref().ok().copied();
    // What setup would refuse on, in setup's own words (shared code, so they cannot drift).
    if let (Some(l), Some(r)) = (local_client, remote_client) {
        match super::setup::preflight(settings, l, r).await {
            Ok(pre) => {
                for p in &pre.problems {
                    if !report.findings.iter().any(|f| &f.message == p) {
                        report.push(Severity::Error, "setup would refuse", p.clone(), None);
                    }
                }
                if pre.role_mismatch {
                    // Every finding about the replication objects would be read for the
                    // wrong role and advise setup for it: the mismatch is the finding.
                    return report;
                }
            }
            Err(e) => report.push(Severity::Error, "setup would refuse", e.to_string(), None),
        }
    }
    if let Some(client) = local_client {
        match selection::compare(settings, client).await {
            Ok(sel) => {
                selection_findings(&mut report, settings, &sel);
                // What each publication should hold: what was set up (recorded, else this
                // side's publication); before any setup, the configured tables.
                let (expected, basis) = match (&sel.set_up, &sel.source) {
                    (Some(t), Some(s)) => (t.clone(), s.describe()),
                    _ => (sel.configured.clone(), "the configured tables".to_string()),
                };
                for (side, c, publication) in [
                    (role, local_client, outgoing(role)),
                    (peer, remote_client, incoming(role)),
                ] {
                    let Some(c) = c else { continue };
                    let subject = format!("{side}: publication {publication}");
                    match catalog::publication_tables(c, &publication).await {
                        Ok(None) => report.push(
                            Severity::Error,
                            subject,
                            "missing",
                            Some(&format!(
                                "run `duplex setup` with INSTANCE_ROLE={role} to replicate the {} configured table(s)",
                                sel.configured.len()
                            )),
                        ),
                        Ok(Some(t)) if t == expected => report.push(
                            Severity::Ok,
                            subject,
                            format!("{} table(s)", t.len()),
                            None,
                        ),
                        Ok(Some(t)) => {
                            let hint = if expected == sel.configured {
                                format!("it was changed outside `duplex setup`, or a setup did not finish: run `duplex setup` with INSTANCE_ROLE={role} to set it to the configured tables again")
                            } else {
                                "it was changed outside `duplex setup`, or a setup did not finish; `duplex setup` would set it to the configured tables (the `tables` finding above says what that changes)".to_string()
                            };
                            report.push(
                                Severity::Error,
                                subject,
                                publication_drift(&t, &expected, &basis),
                                Some(&hint),
                            );
                        }
                        Err(e) => report.push(Severity::Error, subject, e.to_string(), None),
                    }
                }
                // The hash mode follows both servers' major versions (one alone: assume alike).
                let mut versions = Vec::new();
                for c in [local_client, remote_client].into_iter().flatten() {
                    if let Ok(info) = catalog::server_info(c).await {
                        versions.push(info.version_num);
                    }
                }
                let mode = match versions.as_slice() {
                    [a, b] => HashMode::for_versions(*a, *b),
                    _ => HashMode::Binary,
                };
                // Only tables that are configured and replicate: a table configured but
                // not set up needs no resolution until setup replicates it (the `tables`
                // finding names it), and advising setup for it would widen replication.
                let tables = sel.in_both();
                for (side, c) in [(role, local_client), (peer, remote_client)] {
                    let Some(c) = c else { continue };
                    resolution_findings(&mut report, settings, side, c, &tables, mode).await;
                }
            }
            Err(e) => report.push(Severity::Error, "tables", e.to_string(), None),
        }
    }

    let status: Status = status::collect(role, local_client, remote_client).await;
    for d in &status.directions {
        let subject = format!("{} -> {}", d.from, d.to);
        match &d.subscription {
            None if d.unknown.iter().any(|u| u.starts_with(d.to.as_str())) => {}
            None => report.push(Severity::Error, format!("{subject}: subscription"), format!("missing on {}", d.to), Some(&format!("run `duplex setup` with INSTANCE_ROLE={}", d.to))),
            Some(s) if !s.enabled => report.push(Severity::Error, format!("{subject}: subscription"), "disabled (usually by an apply error)", Some("follow runbooks/subscription-disabled.md")),
            Some(s) if !s.running => report.push(Severity::Error, format!("{subject}: subscription"), "enabled but no apply worker runs", Some(&format!("check the {} server log for apply errors; see runbooks/subscription-disabled.md", d.to))),
            Some(s) if s.tables_ready < s.tables_total => report.push(Severity::Warning, format!("{subject}: subscription"), format!("initial copy in progress ({}/{} tables ready)", s.tables_ready, s.tables_total), Some("wait, then check again")),
            Some(_) => report.push(Severity::Ok, format!("{subject}: subscription"), "enabled and running", None),
        }
        match &d.slot {
            None if d.unknown.iter().any(|u| u.starts_with(d.from.as_str())) => {}
            None if d.subscription.is_none() => {}
            None => report.push(
                Severity::Error,
                format!("{subject}: slot"),
                format!("missing on {}", d.from),
                Some("follow runbooks/replication-slot-dropped.md"),
            ),
            Some(s) if matches!(s.wal_status.as_deref(), Some("lost") | Some("unreserved")) => {
                report.push(
                    Severity::Error,
                    format!("{subject}: slot {}", s.name),
                    format!(
                        "wal_status is {}: the WAL it needs is gone or about to be",
                        s.wal_status.as_deref().unwrap_or("")
                    ),
                    Some("follow runbooks/replication-slot-dropped.md"),
                )
            }
            Some(s) if !s.active => report.push(
                Severity::Warning,
                format!("{subject}: slot {}", s.name),
                "inactive: no subscriber is streaming from it",
                Some(&format!(
                    "check that the {} instance is up and its subscription enabled",
                    d.to
                )),
            ),
            Some(s) => report.push(
                Severity::Ok,
                format!("{subject}: slot {}", s.name),
                format!("active, lag {} bytes", d.lag_bytes.unwrap_or(0)),
                None,
            ),
        }
        let publisher = if d.from == role {
            local_client
        } else {
            remote_client
        };
        if let (Some(slot), Some(c)) = (d.slot.as_ref().filter(|s| s.active), publisher) {
            stream_tls_finding(&mut report, &subject, c, &slot.name).await;
        }
    }
    for (side, c, var) in [
        (role, local_client, settings.local_monitor_var()),
        (peer, remote_client, settings.remote_monitor_var()),
    ] {
        let Some(c) = c else { continue };
        password_readers_finding(&mut report, side, c).await;
        login_finding(&mut report, side, c, var).await;
        hba_finding(&mut report, side, c, &settings.replication.user).await;
    }
    report
}

/// Whether the replication stream of `slot` is encrypted: the walsender's `pg_stat_ssl`
/// on the publisher. Unencrypted is a warning: the rows and the login travel in clear.
async fn stream_tls_finding(report: &mut Report, subject: &str, publisher: &Client, slot: &str) {
    let subject = format!("{subject}: stream");
    match catalog::stream_tls(publisher, slot).await {
        Ok(Some((true, version))) => report.push(
            Severity::Ok,
            subject,
            format!("encrypted ({})", version.unwrap_or_default()),
            None,
        ),
        Ok(Some((false, _))) => report.push(
            Severity::Warning,
            subject,
            "not encrypted: rows and the replication login cross the network in clear",
            Some("turn ssl on at the publisher and give the subscriber sslmode=verify-full with sslrootcert in REMOTE_DB_URL, then run `duplex setup` (docs/security.md)"),
        ),
        Ok(None) => {}
        Err(e) => report.push(Severity::Warning, subject, e.to_string(), None),
    }
}

/// Whether `pg_hba.conf` lets the replication role in further than the application
/// database: with REPLICATION, a `replication` line gives it a base backup of the whole
/// cluster (password hashes included), an `all` line logical decoding of every database.
async fn hba_finding(report: &mut Report, side: Role, client: &Client, user: &str) {
    let subject = format!("{side}: pg_hba.conf for {user}");
    match catalog::broad_hba_lines(client, user).await {
        Ok(Some(lines)) if lines.is_empty() => report.push(
            Severity::Ok,
            subject,
            "no line lets it in for physical replication or into every database",
            None,
        ),
        Ok(Some(lines)) => {
            let described = lines
                .iter()
                .map(|(n, ty, db, users, addr)| format!("line {n}: {ty} {db} {users} {addr}"))
                .collect::<Vec<_>>()
                .join("; ");
            report.push(
                Severity::Warning,
                subject,
                format!("lets it in further than the application database ({described}); with REPLICATION it could take a base backup of the whole cluster or decode every database"),
                Some(&format!("allow it only `hostssl <database> {user} <peer address>/32 scram-sha-256`, above any broader line (docs/security.md)")),
            )
        }
        // Only a superuser may read pg_hba_file_rules.
        Ok(None) => {}
        Err(e) => report.push(Severity::Warning, subject, e.to_string(), None),
    }
}

/// Whether the login `duplex run`, `status` and `check` use on `side` is a superuser:
/// only `duplex setup` needs one (docs/security.md).
async fn login_finding(report: &mut Report, side: Role, client: &Client, var: &str) {
    let subject = format!("{side}: login");
    match catalog::current_login(client).await {
        Ok((user, false)) => report.push(
            Severity::Ok,
            subject,
            format!("{user} (not a superuser)"),
            None,
        ),
        Ok((user, true)) => report.push(
            Severity::Warning,
            subject,
            format!("{user} is a superuser, and `duplex run` would hold its session ({var})"),
            Some(&format!(
                "point {} at a monitoring role (setup creates one on both sides when DUPLEX_MONITOR_PASSWORD is set; docs/security.md)",
                var.replace("_DB_", "_MONITOR_")
            )),
        ),
        Err(e) => report.push(Severity::Warning, subject, e.to_string(), None),
    }
}

/// Who can read the replication password that side's subscription keeps in its
/// connection string (`pg_subscription.subconninfo`): superusers, and members of
/// `pg_read_all_data`. The latter are worth a warning.
async fn password_readers_finding(report: &mut Report, side: Role, client: &Client) {
    let name = incoming(side);
    let subject = format!("{side}: subscription {name} password");
    let conninfo = match catalog::subscription_conninfo(client, &name).await {
        Ok(Some(c)) => c,
        // No subscription (reported above) or not readable by this login: nothing to say.
        Ok(None) => return,
        Err(e) => {
            report.push(Severity::Warning, subject, e.to_string(), None);
            return;
        }
    };
    let has_password = crate::pg::conninfo::parse(&conninfo)
        .is_none_or(|p| crate::pg::conninfo::get(&p, "password").is_some());
    if !has_password {
        report.push(
            Severity::Ok,
            subject,
            "none in the connection string (password file or certificate)",
            None,
        );
        return;
    }
    match catalog::conninfo_readers(client).await {
        Ok((supers, readers)) if readers.is_empty() => report.push(
            Severity::Ok,
            subject,
            format!("kept in the connection string, readable by superusers only ({supers})"),
            None,
        ),
        Ok((supers, readers)) => report.push(
            Severity::Warning,
            subject,
            format!(
                "kept in the connection string, readable by superusers ({supers}) and by members of pg_read_all_data ({readers})"
            ),
            Some("revoke pg_read_all_data from those roles, or keep the password out of the catalog (docs/security.md)"),
        ),
        Err(e) => report.push(Severity::Warning, subject, e.to_string(), None),
    }
}

/// The configured tables against what was set up: one finding per direction of
/// difference, naming the tables and what `duplex setup` would do; nothing before setup
/// (the missing publications and subscriptions say that).
fn selection_findings(report: &mut Report, settings: &Settings, sel: &Comparison) {
    let Some(set_up) = &sel.set_up else { return };
    let sentences = sel.sentences(&settings.tables);
    if sentences.is_empty() {
        report.push(
            Severity::Ok,
            "tables",
            format!(
                "{} table(s) configured, the same as {}",
                set_up.len(),
                sel.source
                    .as_ref()
                    .map(|s| s.describe())
                    .unwrap_or_default()
            ),
            None,
        );
    }
    for s in sentences {
        report.push(Severity::Error, "tables", s.message, Some(&s.hint));
    }
}

/// How a publication's tables differ from `expected` (read from `basis`), naming them.
fn publication_drift(
    published: &[crate::model::TableName],
    expected: &[crate::model::TableName],
    basis: &str,
) -> String {
    let extra: Vec<_> = published
        .iter()
        .filter(|t| !expected.contains(t))
        .cloned()
        .collect();
    let lacking: Vec<_> = expected
        .iter()
        .filter(|t| !published.contains(t))
        .cloned()
        .collect();
    let mut parts = Vec::new();
    if !extra.is_empty() {
        parts.push(format!("publishes also {}", selection::list(&extra)));
    }
    if !lacking.is_empty() {
        parts.push(format!("does not publish {}", selection::list(&lacking)));
    }
    format!("differs from {basis}: {}", parts.join("; "))
}

/// Each table's effective conflict policy on `side`, and whether its in-stream resolution
/// is installed, enabled as it should be and generated from the current definition.
async fn resolution_findings(
    report: &mut Report,
    settings: &Settings,
    side: Role,
    client: &Client,
    tables: &[crate::model::TableName],
    mode: HashMode,
) {
    let setup_hint = format!("run `duplex setup` with INSTANCE_ROLE={side}");
    let found = match resolution::inspect(settings, client, side, tables, mode).await {
        Ok(found) => found,
        Err(e) => {
            report.push(
                Severity::Error,
                format!("{side}: conflict resolution"),
                e.to_string(),
                None,
            );
            return;
        }
    };
    for t in found {
        let subject = format!("{side}: conflicts on {}", t.table);
        let policy = t.describe();
        if let Ok(e) = &t.effective {
            incremental_finding(report, side, client, &t.table, e.updated_at.as_deref()).await;
        }
        if t.effective.is_err() {
            report.push(
                Severity::Error,
                subject,
                policy,
                Some("fix [conflicts.tables] in the configuration"),
            );
        } else if t.generated.is_none() {
            report.push(
                Severity::Warning,
                subject,
                format!("{policy}, but the table has no primary key: conflicts are not resolved in the stream"),
                Some("add a primary key, then run `duplex setup` again"),
            );
        } else if t.current() {
            report.push(
                Severity::Ok,
                subject,
                format!("{policy}; triggers installed and current"),
                None,
            );
        } else if t.installed.is_none() || t.triggers.0.is_none() || t.triggers.1.is_none() {
            report.push(
                Severity::Error,
                subject,
                format!("{policy}; in-stream resolution is not installed: a conflict would stop replication"),
                Some(&setup_hint),
            );
        } else if t.triggers.0.as_deref() != Some("O") || t.triggers.1.as_deref() != Some("R") {
            report.push(
                Severity::Error,
                subject,
                format!(
                    "{policy}; triggers are not enabled as duplex needs (duplex_capture {}, duplex_resolve {}; want O and R)",
                    t.triggers.0.as_deref().unwrap_or("missing"),
                    t.triggers.1.as_deref().unwrap_or("missing")
                ),
                Some(&setup_hint),
            );
        } else {
            report.push(
                Severity::Warning,
                subject,
                format!("{policy}; installed triggers were generated from another table definition or policy"),
                Some(&format!("{setup_hint} to regenerate them (for example after a schema change)")),
            );
        }
    }
}

/// How the scanner's incremental passes find changed rows of `table` on `side`: by an
/// index on the updated-at column (fast) or by commit timestamps (reads every row).
async fn incremental_finding(
    report: &mut Report,
    side: Role,
    client: &Client,
    table: &crate::model::TableName,
    updated_at: Option<&str>,
) {
    use crate::conflict::scan;
    let subject = format!("{side}: incremental scan of {table}");
    let Some(col) = updated_at else {
        report.push(
            Severity::Ok,
            subject,
            format!(
                "{} (no updated-at column)",
                scan::ChangesBy::CommitTimestamp.describe(None)
            ),
            None,
        );
        return;
    };
    match scan::updated_at_index(client, table, col).await {
        Ok(true) => report.push(
            Severity::Ok,
            subject,
            scan::ChangesBy::UpdatedAt.describe(Some(col)),
            None,
        ),
        Ok(false) => report.push(
            Severity::Ok,
            subject,
            format!(
                "{}: no index on \"{col}\"",
                scan::ChangesBy::CommitTimestamp.describe(None)
            ),
            Some(&format!(
                "for a fast incremental pass (cost by changed rows, not table size) create one on both sides: CREATE INDEX CONCURRENTLY ON {} ({})",
                table.quoted(),
                crate::model::quote_ident(col)
            )),
        ),
        Err(e) => report.push(
            Severity::Warning,
            subject,
            format!("could not read the table's indexes: {e}"),
            None,
        ),
    }
}

fn server_findings(report: &mut Report, side: Role, info: &ServerInfo) {
    let problems = super::setup::server_problems(side, info);
    let version_problem = problems.iter().find(|p| p.contains("PostgreSQL"));
    let wal_problem = problems.iter().find(|p| p.starts_with("wal_level"));
    match version_problem {
        None => report.push(
            Severity::Ok,
            format!("{side}: version"),
            format!("PostgreSQL {}", info.version),
            None,
        ),
        Some(p) => report.push(Severity::Error, format!("{side}: version"), p.clone(), None),
    }
    match wal_problem {
        None => report.push(Severity::Ok, format!("{side}: wal_level"), "logical", None),
        Some(p) => report.push(
            Severity::Error,
            format!("{side}: wal_level"),
            p.clone(),
            None,
        ),
    }
    if info.track_commit_timestamp == "on" {
        report.push(
            Severity::Ok,
            format!("{side}: track_commit_timestamp"),
            "on",
            None,
        );
    } else {
        report.push(
            Severity::Warning,
            format!("{side}: track_commit_timestamp"),
            "off: conflicts cannot be resolved by last write",
            Some("ALTER SYSTEM SET track_commit_timestamp = on; then restart the server"),
        );
    }
}

/// What the cluster has in use against each replication limit. A warning when there is
/// no room for one more copy (a re-setup after a dropped slot, new tables); setup itself
/// refuses when what it is about to add does not fit.
fn capacity_finding(report: &mut Report, side: Role, capacity: &Capacity) {
    let subject = format!("{side}: capacity");
    let short = capacity.no_spare(side);
    if short.is_empty() {
        report.push(Severity::Ok, subject, capacity.headroom(), None);
    } else {
        report.push(
            Severity::Warning,
            subject,
            format!("{}; no room for another initial copy", capacity.headroom()),
            Some(&short.join("; ")),
        );
    }
}
