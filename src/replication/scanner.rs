//! The verifying scanner and the integrity check as duplex runs them: which tables and
//! policies ([`targets`]), `duplex scan` / `POST /api/sync/scan` ([`scan`]),
//! `duplex integrity` / `POST /api/sync/integrity-check` ([`integrity`]), and the scanner
//! worker of `duplex run` ([`Scanner`]). The comparison itself is
//! [`crate::conflict::scan`].
//!
//! Exactly one controller repairs: the one whose role is `[conflicts] scanner_role`
//! (main by default). The other side's worker does nothing, and its `duplex scan` only
//! reports (`--dry-run`).
//!
//! The worker runs a pass every `SYNC_INTERVAL_MINUTES` and on the monitor's
//! immediate-sync signal (after a reconnection or `duplex trigger`), skips it while sync
//! is paused, publishes its latest [`ScanReport`] through a `watch` channel, and stops
//! when its cancellation token is cancelled, between passes only.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio::time::MissedTickBehavior;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::conflict::scan::{self, Options, RangeDiff, TableReport, Target};
use crate::model::{Role, Severity, TableName};
use crate::pg::{self, Context};
use crate::store::sync_log::{self, Status, SyncType};
use crate::store::{scan_state, sync_state};

/// The worker's name in the registry and in logs.
pub const NAME: &str = "scanner";
/// Longest a pass waits for replication to catch up before comparing.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Errors of a scan or an integrity check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A database failed.
    #[error(transparent)]
    Pg(#[from] pg::Error),
    /// The comparison failed.
    #[error(transparent)]
    Scan(#[from] scan::Error),
    /// This controller is not the one that repairs.
    #[error("this is the {role} controller, but [conflicts] scanner_role is {scanner}: repairs run only there (two controllers must never repair the same rows). Run `duplex scan` on {scanner}, or add --dry-run to only report")]
    NotScanner {
        /// This side.
        role: Role,
        /// The configured repairing side.
        scanner: Role,
    },
    /// `--table` names no replicated table.
    #[error("`{0}` is not a replicated table (use schema.table or the table's name as `duplex check` lists them)")]
    UnknownTable(String),
}

/// What to scan.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Only this table (`schema.table` or its name).
    pub table: Option<String>,
    /// Report only; change nothing and log nothing.
    pub dry_run: bool,
    /// Compare every row, even where an incremental pass would do.
    pub full: bool,
    /// Stop before the next table once sync is paused (the worker's passes; a pass
    /// asked for by a person runs to the end).
    pub stop_when_paused: bool,
}

/// How far before the last pass's start an incremental pass looks. The start is the
/// earlier of the two servers' clocks and a replicated row carries its origin's commit
/// time, so only the offset between the servers matters (the conflict worker raises
/// `clock_offset` above 500 ms): a minute covers it many times over.
const INCREMENTAL_MARGIN: Duration = Duration::from_secs(60);

/// One pass over the tables.
#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Seconds taken, catch-up wait included.
    pub seconds: f64,
    /// Per table, sorted by name.
    pub tables: Vec<TableReport>,
    /// Tables not compared, with why.
    pub skipped_tables: Vec<String>,
    /// Differences confirmed across all tables.
    pub differences: usize,
    /// Repairs written.
    pub repaired: usize,
    /// New conflict-log entries.
    pub logged: u64,
}

/// What a scan or an integrity check compares.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// The replicated tables with a primary key, their keys and effective policies.
    pub targets: Vec<Target>,
    /// Replicated tables that cannot be compared, each `schema.table: why`.
    pub skipped: Vec<String>,
    /// Configured tables that main's publication does not carry, each `schema.table:
    /// why`: never compared, counted or repaired.
    pub not_replicated: Vec<String>,
}

/// The configured tables that replicate (see [`Targets`]), or only `only`.
pub async fn targets(
    settings: &Settings,
    main: &Client,
    only: Option<&str>,
) -> Result<Targets, Error> {
    let mut tables = super::resolve_tables(main, settings).await?;
    if let Some(name) = only {
        tables.retain(|t| t.to_string() == name || t.name == name);
        if tables.is_empty() {
            return Err(Error::UnknownTable(name.to_string()));
        }
    }
    // Only what replicates: a table the configuration selects (the default selection is
    // every table of schema public) that main's publication does not carry stays local,
    // and repairing it would copy its rows to the other side, widening replication by
    // accident. Before any setup there is no publication: the configuration alone decides.
    let mut not_replicated = Vec::new();
    let publication = super::outgoing(Role::Main);
    if let Some(published) = super::catalog::publication_tables(main, &publication).await? {
        tables.retain(|t| {
            let replicates = published.contains(t);
            if !replicates {
                not_replicated.push(format!(
                    "{t}: configured but not replicated (publication {publication} does not carry it): not compared; `duplex check` says more"
                ));
            }
            replicates
        });
    }
    // Only the effective policies are used here; the hash mode shapes generated SQL alone.
    let mode = crate::conflict::triggers::HashMode::Binary;
    let inspected = super::resolution::inspect(settings, main, Role::Main, &tables, mode).await?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for r in inspected {
        let keys = crate::pg::catalog::keys(main, &r.table).await?;
        if keys.key.is_empty() {
            skipped.push(format!("{}: no primary key", r.table));
            continue;
        }
        out.push(Target {
            table: r.table.clone(),
            key: keys.key,
            policy: r.effective.ok(),
        });
    }
    for t in &tables {
        if !out.iter().any(|o| &o.table == t)
            && !skipped.iter().any(|s| s.starts_with(&format!("{t}:")))
        {
            skipped.push(format!("{t}: missing on main"));
        }
    }
    out.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(Targets {
        targets: out,
        skipped,
        not_replicated,
    })
}

/// Connections for a pass: (main, cloud), each with the scanner's session settings.
async fn connect(settings: &Settings) -> Result<(Client, Client), Error> {
    let local = pg::connect(settings.local_monitor(), "local", NAME).await?;
    let remote = pg::connect(settings.remote_monitor(), "remote", NAME).await?;
    let (main, cloud) = match settings.instance_role {
        Role::Main => (local, remote),
        Role::Cloud => (remote, local),
    };
    scan::prepare(&main, Role::Main).await?;
    scan::prepare(&cloud, Role::Cloud).await?;
    Ok((main, cloud))
}

/// One scanner pass (`duplex scan`, the API, the worker).
pub async fn scan(settings: &Settings, req: &Request) -> Result<ScanReport, Error> {
    let role = settings.instance_role;
    let scanner = settings.conflicts.scanner_role;
    if !req.dry_run && role != scanner {
        return Err(Error::NotScanner { role, scanner });
    }
    // One pass at a time in this process (worker and API): both would use the one
    // repair origin.
    let _running = RUNNING.lock().await;
    let started = Instant::now();
    let started_at = Utc::now();
    let (main, cloud) = connect(settings).await?;
    let Targets {
        targets,
        mut skipped,
        not_replicated,
    } = targets(settings, &main, req.table.as_deref()).await?;
    skipped.extend(not_replicated);
    let skipped_tables = skipped;
    // The pass starts now by the servers' clocks (the earlier one), before the catch-up
    // wait: what is committed from here on is left to the next incremental pass.
    let mut pass_at = started_at;
    for c in [&main, &cloud] {
        let now: DateTime<Utc> = c
            .query_one("SELECT now()", &[])
            .await
            .context("reading the server's clock")?
            .get(0);
        pass_at = pass_at.min(now);
    }
    scan::wait_caught_up(&main, &cloud, CATCH_UP_TIMEOUT).await?;
    let local = match role {
        Role::Main => &main,
        Role::Cloud => &cloud,
    };
    let mut tables = Vec::new();
    let mut skipped_tables = skipped_tables;
    for (i, t) in targets.iter().enumerate() {
        if req.stop_when_paused && !sync_state::read(local).await?.sync_enabled {
            tracing::info!(worker = NAME, "sync was paused: the pass stops here");
            skipped_tables.extend(
                targets[i..]
                    .iter()
                    .map(|t| format!("{}: not compared, sync was paused during the pass", t.table)),
            );
            break;
        }
        let rel = t.table.to_string();
        // Incremental after a complete pass, unless a full one is asked for or due.
        let since = match (req.full, scan_state::get(local, &rel).await?) {
            (false, Some(st))
                if st.last_full_at.is_some_and(|f| {
                    (pass_at - f).to_std().unwrap_or_default()
                        < settings.conflicts.full_scan_interval
                }) =>
            {
                Some(st.last_pass_at - INCREMENTAL_MARGIN)
            }
            _ => None,
        };
        let opts = Options {
            repair: !req.dry_run,
            catch_up_timeout: CATCH_UP_TIMEOUT,
            log_side: role,
            since,
            duty_percent: settings.conflicts.scan_duty_percent,
            ..Options::default()
        };
        match scan::scan_table(&main, &cloud, t, &opts).await {
            Ok(r) => {
                // A pass that saw everything: the next one may start from here.
                let complete = r.errors.is_empty()
                    && !r.diff.more
                    && r.diff.truncated.is_none()
                    && r.skipped == 0;
                if complete && !req.dry_run {
                    scan_state::record(local, &rel, pass_at, r.diff.mode == "full").await?;
                }
                tables.push(r)
            }
            Err(e) => {
                tracing::warn!(worker = NAME, table = %t.table, "scan failed: {e:#}");
                tables.push(TableReport {
                    table: t.table.to_string(),
                    errors: vec![e.to_string()],
                    ..TableReport::default()
                });
            }
        }
    }
    let report = ScanReport {
        dry_run: req.dry_run,
        started_at,
        seconds: started.elapsed().as_secs_f64(),
        differences: tables.iter().map(|t| t.confirmed).sum(),
        repaired: tables.iter().map(|t| t.repaired).sum(),
        logged: tables.iter().map(|t| t.logged).sum(),
        tables,
        skipped_tables,
    };
    if !req.dry_run {
        let failed: Vec<&TableReport> = report
            .tables
            .iter()
            .filter(|t| !t.errors.is_empty() || t.diff.truncated.is_some())
            .collect();
        let message = failed
            .iter()
            .map(|t| match t.diff.truncated {
                Some(side) => format!(
                    "{} looks truncated on {side} (main {} rows, cloud {}): not repaired, see runbooks/table-truncated.md",
                    t.table, t.diff.main_count, t.diff.cloud_count
                ),
                None => format!("{}: {}", t.table, t.errors.join("; ")),
            })
            .collect::<Vec<_>>()
            .join("\n");
        sync_log::insert(
            local,
            &sync_log::Entry {
                sync_type: SyncType::Scan,
                status: if failed.is_empty() {
                    Status::Success
                } else {
                    Status::Level(Severity::Warning)
                },
                records_synced: report.repaired as i64,
                error_message: (!failed.is_empty()).then_some(message.as_str()),
                details: serde_json::json!({
                    "differences": report.differences,
                    "repaired": report.repaired,
                    "logged": report.logged,
                    "seconds": report.seconds,
                    "tables": report.tables.iter().map(|t| serde_json::json!({
                        "table": t.table, "main_count": t.diff.main_count,
                        "cloud_count": t.diff.cloud_count, "confirmed": t.confirmed,
                        "repaired": t.repaired, "truncated": t.diff.truncated,
                    })).collect::<Vec<_>>(),
                }),
            },
        )
        .await?;
    }
    Ok(report)
}

/// One table's integrity.
#[derive(Debug, Clone, Serialize)]
pub struct TableIntegrity {
    /// `schema.table`.
    pub table: String,
    /// Rows on main.
    pub main_count: i64,
    /// Rows on cloud.
    pub cloud_count: i64,
    /// `cloud_count - main_count`.
    pub delta: i64,
    /// With `--checksum`: `match` or `differ`; `null` without.
    pub checksum: Option<&'static str>,
    /// With `--checksum`: the smallest key ranges that differ (at most 100).
    pub differing_ranges: Vec<RangeDiff>,
    /// The side that looks truncated (empty or nearly), if one does.
    pub truncated: Option<Role>,
    /// Why the table could not be checked fully.
    pub note: Option<String>,
    /// Bytes of hashes, keys and counts received from both servers (approximate).
    pub bytes_read: u64,
}

/// `duplex integrity`: counts (and checksums) of every replicated table on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrityReport {
    /// Every table matches.
    pub ok: bool,
    /// Contents were compared, not only counts.
    pub checksum: bool,
    /// Replication had applied everything committed before the check.
    pub caught_up: bool,
    /// Per table, sorted by name.
    pub tables: Vec<TableIntegrity>,
    /// Configured tables that do not replicate, each `schema.table: why`: not compared
    /// (they are expected to differ).
    pub not_replicated: Vec<String>,
}

impl IntegrityReport {
    /// The tables that failed, for messages.
    pub fn failing(&self) -> Vec<&TableIntegrity> {
        self.tables
            .iter()
            .filter(|t| t.delta != 0 || t.checksum == Some("differ"))
            .collect()
    }

    /// For people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for t in &self.tables {
            let sum = match t.checksum {
                Some(c) => format!(", checksum {c}"),
                None => String::new(),
            };
            out.push_str(&format!(
                "{}: main {} cloud {} delta {:+}{sum}{}\n",
                t.table,
                t.main_count,
                t.cloud_count,
                t.delta,
                t.truncated
                    .map(|s| format!(" (looks TRUNCATED on {s}: see runbooks/table-truncated.md)"))
                    .unwrap_or_default()
            ));
            for r in &t.differing_ranges {
                out.push_str(&format!(
                    "  differs in keys {} .. {} (main {} rows, cloud {})\n",
                    r.from,
                    r.to.as_deref().unwrap_or("(last)"),
                    r.main_rows,
                    r.cloud_rows
                ));
            }
            if let Some(n) = &t.note {
                out.push_str(&format!("  note: {n}\n"));
            }
        }
        for n in &self.not_replicated {
            out.push_str(&format!("skipped {n}\n"));
        }
        if !self.caught_up {
            out.push_str(
                "warning: replication had not caught up; rows in flight may show as differences\n",
            );
        }
        let failing = self.failing();
        if failing.is_empty() {
            out.push_str(&format!(
                "integrity OK: {} table(s) match\n",
                self.tables.len()
            ));
        } else {
            out.push_str(&format!(
                "integrity FAILED: {}\n",
                failing
                    .iter()
                    .map(|t| t.table.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out
    }
}

/// Compare counts (and with `checksum` contents) of every replicated table, or `table`;
/// a mismatch is logged in `sync_log` as FAILED with the details.
pub async fn integrity(
    settings: &Settings,
    table: Option<&str>,
    checksum: bool,
) -> Result<IntegrityReport, Error> {
    let (main, cloud) = connect(settings).await?;
    let Targets {
        targets,
        skipped,
        not_replicated,
    } = targets(settings, &main, table).await?;
    let caught_up = scan::wait_caught_up(&main, &cloud, CATCH_UP_TIMEOUT)
        .await
        .is_ok();
    let mut tables = Vec::new();
    for t in &targets {
        let (main_count, cloud_count, sum, ranges, truncated, bytes_read) = if checksum {
            let d = scan::compare(&main, &cloud, t, 1000).await?;
            let sum = if d.equal { "match" } else { "differ" };
            (
                d.main_count,
                d.cloud_count,
                Some(sum),
                d.ranges,
                d.truncated,
                d.bytes_read,
            )
        } else {
            let (m, c) = tokio::try_join!(count(&main, &t.table), count(&cloud, &t.table))?;
            (m, c, None, Vec::new(), scan::truncated_side(m, c), 16)
        };
        tables.push(TableIntegrity {
            table: t.table.to_string(),
            main_count,
            cloud_count,
            delta: cloud_count - main_count,
            checksum: sum,
            differing_ranges: ranges,
            truncated,
            note: None,
            bytes_read,
        });
    }
    for s in skipped {
        let (name, why) = s.split_once(": ").unwrap_or((&s, ""));
        let Some((schema, n)) = name.split_once('.') else {
            continue;
        };
        let tn = TableName {
            schema: schema.into(),
            name: n.into(),
        };
        let (m, c) = tokio::try_join!(count(&main, &tn), count(&cloud, &tn))?;
        tables.push(TableIntegrity {
            table: name.to_string(),
            main_count: m,
            cloud_count: c,
            delta: c - m,
            checksum: None,
            differing_ranges: Vec::new(),
            truncated: scan::truncated_side(m, c),
            note: Some(format!("{why}: counts only")),
            bytes_read: 16,
        });
    }
    tables.sort_by(|a, b| a.table.cmp(&b.table));
    let mut report = IntegrityReport {
        ok: true,
        checksum,
        caught_up,
        tables,
        not_replicated,
    };
    report.ok = report.failing().is_empty();
    let local = match settings.instance_role {
        Role::Main => &main,
        Role::Cloud => &cloud,
    };
    let failing: Vec<String> = report.failing().iter().map(|t| t.table.clone()).collect();
    let message = format!(
        "integrity check FAILED: {} differ between main and cloud (run `duplex integrity --checksum` for the key ranges)",
        failing.join(", ")
    );
    sync_log::insert(
        local,
        &sync_log::Entry {
            sync_type: SyncType::Integrity,
            status: if report.ok {
                Status::Success
            } else {
                Status::Level(Severity::Failed)
            },
            records_synced: 0,
            error_message: (!report.ok).then_some(message.as_str()),
            details: serde_json::to_value(&report).unwrap_or_default(),
        },
    )
    .await?;
    Ok(report)
}

async fn count(c: &Client, t: &TableName) -> Result<i64, pg::Error> {
    Ok(
        c.query_one(&format!("SELECT count(*) FROM {}", t.quoted()), &[])
            .await
            .context(format!("counting {t}"))?
            .get(0),
    )
}

/// What the scanner worker of `duplex run` has done, for `/api/sync/status` and
/// `/metrics`: whether it repairs here, how many passes ran and failed, the latest pass
/// and the latest failure.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerReport {
    /// This controller is the repairing one (`[conflicts] scanner_role`); the other
    /// side's worker never scans.
    pub runs_here: bool,
    /// Passes completed (skipped ones while paused not counted).
    pub passes: u64,
    /// Passes that failed.
    pub failures: u64,
    /// Passes skipped because sync was paused.
    pub skipped_paused: u64,
    /// The latest completed pass.
    pub last_pass: Option<PassSummary>,
    /// The latest failure, with when.
    pub last_failure: Option<Failure>,
}

/// A completed pass, without the per-row detail.
#[derive(Debug, Clone, Serialize)]
pub struct PassSummary {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// Seconds taken, catch-up wait included.
    pub seconds: f64,
    /// Tables compared.
    pub tables: usize,
    /// Tables compared incrementally (the rest in full).
    pub incremental_tables: usize,
    /// Differences confirmed.
    pub differences: usize,
    /// Repairs written.
    pub repaired: usize,
    /// New conflict-log entries.
    pub logged: u64,
    /// Tables whose comparison or repairs reported an error, each `schema.table: error`.
    pub table_errors: Vec<String>,
    /// Tables not compared, with why.
    pub skipped_tables: Vec<String>,
}

impl PassSummary {
    fn of(r: &ScanReport) -> Self {
        PassSummary {
            started_at: r.started_at,
            finished_at: Utc::now(),
            seconds: r.seconds,
            tables: r.tables.len(),
            incremental_tables: r
                .tables
                .iter()
                .filter(|t| t.diff.mode == "incremental")
                .count(),
            differences: r.differences,
            repaired: r.repaired,
            logged: r.logged,
            table_errors: r
                .tables
                .iter()
                .flat_map(|t| t.errors.iter().map(move |e| format!("{}: {e}", t.table)))
                .collect(),
            skipped_tables: r.skipped_tables.clone(),
        }
    }
}

/// A failed pass.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// When it failed.
    pub at: DateTime<Utc>,
    /// Why (the error, without secrets: connection strings are never part of it).
    pub error: String,
}

/// The scanner worker of `duplex run`.
pub struct Scanner {
    settings: std::sync::Arc<Settings>,
    period: Duration,
    signal: broadcast::Receiver<&'static str>,
    report: watch::Sender<WorkerReport>,
}

impl Scanner {
    /// A worker that runs a pass every `sync_interval` and on every `signal`.
    pub fn new(
        settings: std::sync::Arc<Settings>,
        signal: broadcast::Receiver<&'static str>,
    ) -> Self {
        Scanner {
            period: settings.sync_interval,
            report: watch::Sender::new(WorkerReport {
                runs_here: settings.instance_role == settings.conflicts.scanner_role,
                ..WorkerReport::default()
            }),
            settings,
            signal,
        }
    }

    /// What the worker has done so far.
    pub fn report(&self) -> watch::Receiver<WorkerReport> {
        self.report.subscribe()
    }

    /// Run until `cancel`; a pass in progress finishes first.
    pub async fn run(mut self, cancel: CancellationToken) {
        let me = self.settings.instance_role;
        let scanner = self.settings.conflicts.scanner_role;
        if me != scanner {
            tracing::info!(
                worker = NAME,
                "the scanner runs on {scanner} ([conflicts] scanner_role): nothing to do on {me}"
            );
            cancel.cancelled().await;
            return;
        }
        let mut every = tokio::time::interval(self.period);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let Some(why) =
                crate::shutdown::next_cycle(&mut every, &mut self.signal, &cancel).await
            else {
                break;
            };
            let started = Instant::now();
            match self.tick().await {
                Ok(Some(r)) => tracing::info!(
                    worker = NAME,
                    why,
                    "pass done: {} difference(s), {} repaired, {} logged in {:.1} s",
                    r.differences,
                    r.repaired,
                    r.logged,
                    r.seconds
                ),
                Ok(None) => {
                    self.report.send_modify(|w| w.skipped_paused += 1);
                    tracing::info!(worker = NAME, why, "sync is paused: pass skipped")
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    tracing::warn!(worker = NAME, why, "pass failed: {error}");
                    self.report.send_modify(|w| {
                        w.failures += 1;
                        w.last_failure = Some(Failure {
                            at: Utc::now(),
                            error,
                        });
                    });
                }
            }
            if started.elapsed() > self.period {
                tracing::warn!(
                    worker = NAME,
                    "pass took {:?}, longer than its period {:?}",
                    started.elapsed(),
                    self.period
                );
            }
        }
        tracing::info!(worker = NAME, "stopped");
    }

    /// One pass, unless sync is paused (`Ok(None)`).
    pub async fn tick(&mut self) -> Result<Option<ScanReport>, Error> {
        let local = pg::connect(self.settings.local_monitor(), "local", NAME).await?;
        if !sync_state::read(&local).await?.sync_enabled {
            return Ok(None);
        }
        drop(local);
        let req = Request {
            stop_when_paused: true,
            ..Request::default()
        };
        let r = scan(&self.settings, &req).await?;
        self.report.send_modify(|w| {
            w.passes += 1;
            w.last_pass = Some(PassSummary::of(&r));
        });
        Ok(Some(r))
    }
}
