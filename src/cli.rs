//! Command-line interface: parse, load configuration, dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{self, Settings};
use crate::pg;
use crate::replication::{check, setup, status};

/// Exit code for invalid configuration (and, from clap, for usage errors).
pub const EXIT_CONFIG: u8 = 2;

/// What `duplex --help` says after the commands: the environment and the exit codes.
const AFTER_HELP: &str = "\
Environment (or the same keys in the --config file; docs/configuration.md lists every key):
  INSTANCE_ROLE     main (on-site) or cloud; required by setup, check, status, run, config, conflicts, storage
  LOCAL_DB_URL      postgres:// URL of the instance duplex runs beside (or DATABASE_URL); required
  REMOTE_DB_URL     postgres:// URL of the peer instance; required
  DUPLEX_REPLICATION_PASSWORD   password of the replication role that setup creates
  LOCAL_STORAGE_URL, REMOTE_STORAGE_URL   object stores of the storage mirror (http://host:port/bucket,
                    s3://bucket, file:///dir), keys in LOCAL_/REMOTE_STORAGE_ACCESS_KEY_ID and _SECRET_ACCESS_KEY
  DUPLEX_HTTP_ADDR, DUPLEX_ADMIN_TOKEN   the daemon's API; all that pause, resume and trigger need
  DUPLEX_LOG        log filter, e.g. debug or info,duplex=debug (default info)

Exit codes: 0 success (status: healthy), 1 failure, refusal or unhealthy,
2 invalid configuration or command line.";

/// Bidirectional PostgreSQL logical replication between an on-site instance (main) and a
/// cloud instance: setup, checks, status and the controller.
#[derive(Debug, Parser)]
#[command(name = "duplex", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Provision replication into this side (idempotent).
    Setup {
        /// Print the SQL that would run and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Remove the in-stream conflict resolution from this side instead (replication
        /// itself stays; `duplex setup` installs it again).
        #[arg(long)]
        remove_resolution: bool,
    },
    /// Preflight: config, connections, server settings, replication objects.
    Check {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show both replication directions; exit 1 unless both replicate.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the controller: monitor, alerts, HTTP API (until SIGINT/SIGTERM).
    Run,
    /// Pause the workers that move data (on the running daemon; survives restarts).
    Pause,
    /// Resume them.
    Resume,
    /// Run a monitor cycle now on the running daemon.
    Trigger,
    /// Configuration helpers.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Compare both sides and settle every difference by the tables' policies (the
    /// verifying scanner, once, now).
    Scan {
        /// Only this table (`schema.table` or the table's name).
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
        /// Compare every row. Without it a table compared completely since its last full
        /// pass (within `full_scan_interval_hours`) is compared incrementally: only the
        /// rows committed or deleted since the last pass.
        #[arg(long)]
        full: bool,
        /// Report the differences; change and log nothing.
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Compare row counts (and with --checksum contents) of every replicated table on
    /// both sides; exits 1 on any mismatch (a cutover gate).
    Integrity {
        /// Compare contents too, and name the key ranges that differ.
        #[arg(long)]
        checksum: bool,
        /// Only this table (`schema.table` or the table's name).
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
        /// Machine-readable output (stable: sorted keys and tables).
        #[arg(long)]
        json: bool,
    },
    /// The object-storage mirror: scan, sync, status.
    Storage {
        /// What to do.
        #[command(subcommand)]
        action: StorageAction,
    },
    /// Conflicts: list, show, resolve by hand.
    Conflicts {
        /// What to do with the conflict log.
        #[command(subcommand)]
        action: ConflictsAction,
    },
}

/// `duplex storage ...`
#[derive(Debug, Subcommand)]
pub enum StorageAction {
    /// Compare the files local rows reference with this side's store and update the
    /// queue (what is missing); transfer nothing.
    Scan {
        /// Report only: change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One mirror cycle now: scan, then copy what is missing from the peer's store,
    /// verified. Exit 1 when a file failed.
    Sync {
        /// Scan and list what would be copied; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The queue: files waiting, failures, rows that cannot be mirrored.
    Status {
        /// Also list up to this many entries.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `duplex config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the effective configuration, secrets redacted.
    Show,
}

/// Run the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    // Commands that only talk to a running daemon need no database settings.
    let action = match &cli.command {
        Command::Pause => Some("pause"),
        Command::Resume => Some("resume"),
        Command::Trigger => Some("trigger"),
        _ => None,
    };
    if let Some(action) = action {
        return match config::load_api(cli.config.as_deref()) {
            Ok(api) => finish(control(&api, action).await),
            Err(e) => {
                eprintln!("duplex: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    if matches!(
        cli.command,
        Command::Config {
            action: ConfigAction::Show
        }
    ) {
        return config_show(cli.config.as_deref());
    }
    let settings = match config::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("duplex: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if matches!(cli.command, Command::Run) {
        let problems = settings.daemon.serve_problems();
        if !problems.is_empty() {
            eprintln!("duplex: {}", config::ConfigError { problems });
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    if !settings.sync_enabled {
        tracing::warn!("SYNC_ENABLED=false: workers that move data will stay paused");
    }
    let result = match cli.command {
        Command::Setup {
            dry_run,
            remove_resolution: true,
        } => run_remove_resolution(&settings, dry_run).await,
        Command::Setup { dry_run, .. } => run_setup(&settings, dry_run).await,
        Command::Check { json } => run_check(&settings, json).await,
        Command::Status { json } => run_status(&settings, json).await,
        Command::Run => {
            crate::app::run(settings.clone(), tokio_util::sync::CancellationToken::new())
                .await
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
        Command::Conflicts { action } => run_conflicts(&settings, action).await,
        Command::Storage { action } => run_storage(&settings, action).await,
        Command::Scan {
            table,
            full,
            dry_run,
            json,
        } => run_scan(&settings, table, full, dry_run, json).await,
        Command::Integrity {
            checksum,
            table,
            json,
        } => run_integrity(&settings, table, checksum, json).await,
        Command::Pause | Command::Resume | Command::Trigger | Command::Config { .. } => {
            unreachable!("handled above")
        }
    };
    finish(result)
}

/// The exit code of a command's result; an error is printed once, each cause once.
fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("duplex: {}", crate::text::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `duplex config show`: the effective configuration; when it is invalid, what could be
/// read (secrets redacted) on stdout, the problems on stderr, exit 2.
fn config_show(path: Option<&std::path::Path>) -> ExitCode {
    match config::view(path) {
        Ok(v) => {
            if v["sync_enabled"] == false {
                tracing::warn!("SYNC_ENABLED=false: workers that move data will stay paused");
            }
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err((raw, e)) => {
            if !raw.is_null() {
                println!("{}", serde_json::to_string_pretty(&raw).unwrap_or_default());
            }
            eprintln!("duplex: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `duplex setup --remove-resolution`: drop the in-stream conflict resolution from this
/// side; replication itself stays.
async fn run_remove_resolution(settings: &Settings, dry_run: bool) -> anyhow::Result<ExitCode> {
    let local = pg::connect(&settings.local_db_url, "local", "setup").await?;
    let role = settings.instance_role;
    let plan = setup::removal_plan(&local, role).await?;
    if plan.steps.is_empty() {
        println!("-- nothing to do: no in-stream conflict resolution is installed on {role}");
        return Ok(ExitCode::SUCCESS);
    }
    if dry_run {
        println!(
            "-- duplex setup --remove-resolution --dry-run ({role}): {} statement(s) would run; nothing was changed",
            plan.steps.len()
        );
        print!("{}", plan.render());
        return Ok(ExitCode::SUCCESS);
    }
    for step in &plan.steps {
        local
            .batch_execute(step.sql())
            .await
            .with_context(|| format!("on {role}: {}", step.what))?;
        println!("{role}: {}", step.what);
    }
    println!(
        "removed in-stream conflict resolution from {} table(s) on {role}: replication goes on without it; `duplex setup` installs it again",
        plan.steps.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_setup(settings: &Settings, dry_run: bool) -> anyhow::Result<ExitCode> {
    let mut local = pg::connect(&settings.local_db_url, "local", "setup").await?;
    let mut remote = pg::connect(&settings.remote_db_url, "remote", "setup").await?;
    let plan = setup::plan(settings, &local, &remote).await?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let role = settings.instance_role;
    if dry_run {
        if plan.is_empty() {
            println!("-- nothing to do: replication into {role} is already set up");
        } else {
            println!(
                "-- duplex setup --dry-run ({role}): {} statement(s) would run; nothing was changed",
                plan.steps.len()
            );
            print!("{}", plan.render());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = setup::apply(settings, &mut local, &mut remote, &plan, &mut |line| {
        println!("{line}")
    })
    .await?;
    if report.done.is_empty() {
        println!("nothing to do: replication into {role} is already set up");
    } else {
        println!(
            "setup complete for {role}: {} step(s); slot {} exists on {}",
            report.done.len(),
            settings.replication.slot_name,
            role.peer()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_check(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let local = pg::connect(settings.local_monitor(), "local", "check")
        .await
        .map_err(|e| e.to_string());
    let remote = pg::connect(settings.remote_monitor(), "remote", "check")
        .await
        .map_err(|e| e.to_string());
    let report = check::run(
        settings,
        local.as_ref().map_err(Clone::clone),
        remote.as_ref().map_err(Clone::clone),
    )
    .await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the running daemon said to `GET /api/sync/status`.
enum ControllerView {
    /// Its status.
    Status(serde_json::Value),
    /// No token is configured here.
    NoToken,
    /// It answered 401: the configured token is not its token.
    TokenRefused,
    /// Nothing answered at the address (or it answered something unexpected).
    Absent(String),
}

/// The running daemon's status, when one answers with the configured token.
async fn controller_view(settings: &Settings) -> ControllerView {
    let Some(token) = settings.daemon.admin_token.as_ref() else {
        return ControllerView::NoToken;
    };
    match api_call_with(
        settings.daemon.http_addr,
        settings.daemon.client_tls().as_deref(),
        "GET",
        "/api/sync/status",
        token.expose(),
    )
    .await
    {
        Ok((200, body)) => match serde_json::from_str(&body) {
            Ok(v) => ControllerView::Status(v),
            Err(_) => {
                ControllerView::Absent("it answered something that is not duplex's status".into())
            }
        },
        Ok((401, _)) => ControllerView::TokenRefused,
        Ok((code, _)) => ControllerView::Absent(format!("it answered HTTP {code}")),
        Err(e) => ControllerView::Absent(e.to_string()),
    }
}

/// Call the running daemon's API: `POST /api/sync/<action>`.
async fn control(api: &config::ApiSettings, action: &str) -> anyhow::Result<ExitCode> {
    let addr = api.http_addr;
    let Some(token) = api.admin_token.as_ref() else {
        anyhow::bail!("DUPLEX_ADMIN_TOKEN is not set: set it to the running daemon's admin token (the daemon at {addr} refuses admin calls without it)");
    };
    let (code, body) = match api_call_with(
        addr,
        api.tls_ca.as_deref(),
        "POST",
        &format!("/api/sync/{action}"),
        token.expose(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused) => {
            anyhow::bail!("no duplex daemon is running at {addr}: start it with `duplex run` (or set DUPLEX_HTTP_ADDR to where it listens)")
        }
        Err(e) => anyhow::bail!("cannot reach the duplex daemon at {addr}: {e}"),
    };
    if code == 200 {
        println!("{action}: ok {body}");
        Ok(ExitCode::SUCCESS)
    } else if code == 401 {
        anyhow::bail!("the daemon at {addr} refused the admin token: set DUPLEX_ADMIN_TOKEN to the daemon's token")
    } else {
        anyhow::bail!("the daemon at {addr} answered {code}: {body}")
    }
}

/// A minimal HTTP/1.1 request to the local daemon; returns status code and body.
pub async fn api_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> std::io::Result<(u16, String)> {
    api_call_with(addr, None, method, path, token).await
}

/// [`api_call`] over HTTPS when `tls_ca` is given: the API's certificate must be signed by
/// that CA and name the address's IP.
pub async fn api_call_with(
    addr: std::net::SocketAddr,
    tls_ca: Option<&std::path::Path>,
    method: &str,
    path: &str,
    token: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        request: &str,
    ) -> std::io::Result<Vec<u8>> {
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok(raw)
    }
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let io = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        match tls_ca {
            None => exchange(stream, &request).await,
            Some(ca) => {
                let connector = crate::http::tls::connector(ca).map_err(std::io::Error::other)?;
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let tls = connector.connect(name, stream).await.map_err(|e| {
                    std::io::Error::other(format!(
                        "TLS with the API failed ({e}): its certificate must be signed by the CA in DUPLEX_TLS_CA and name {}",
                        addr.ip()
                    ))
                })?;
                exchange(tls, &request).await
            }
        }
    };
    let raw = tokio::time::timeout(std::time::Duration::from_secs(40), io)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 40 s")
        })??;
    let text = String::from_utf8_lossy(&raw);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    Ok((code, body))
}

async fn run_status(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let role = settings.instance_role;
    let local = pg::connect(settings.local_monitor(), "local", "status").await;
    let remote = pg::connect(settings.remote_monitor(), "remote", "status").await;
    let mut unreachable = Vec::new();
    if let Err(e) = &local {
        unreachable.push(status::unreachable(
            role,
            settings.local_monitor_var(),
            settings.local_monitor(),
            e,
        ));
    }
    if let Err(e) = &remote {
        unreachable.push(status::unreachable(
            role.peer(),
            settings.remote_monitor_var(),
            settings.remote_monitor(),
            e,
        ));
    }
    let st = status::collect(role, local.as_ref().ok(), remote.as_ref().ok()).await;
    let verdict = status::verdict(&st, unreachable);
    let controller = controller_view(settings).await;
    // Paused: as the daemon reports it, else as persisted in this side's sync_state.
    let paused = match &controller {
        ControllerView::Status(c) => c["sync_enabled"].as_bool().map(|e| !e),
        _ => None,
    };
    let paused = match (paused, local.as_ref()) {
        (Some(p), _) => Some(p),
        (None, Ok(c)) => match crate::store::sync_state::exists(c).await {
            Ok(true) => crate::store::sync_state::read(c)
                .await
                .ok()
                .map(|r| !r.sync_enabled),
            _ => None,
        },
        (None, Err(_)) => None,
    };
    // Measured here as the daemon does: last_write_wins trusts the servers' clocks.
    let clock = match (local.as_ref(), remote.as_ref()) {
        (Ok(l), Ok(r)) => tokio::time::timeout(
            std::time::Duration::from_secs(5),
            crate::conflict::worker::measure_clock(l, r),
        )
        .await
        .ok()
        .and_then(Result::ok),
        _ => None,
    };
    // Each table's conflict policy as installed on this side by `duplex setup`.
    let policies = match local.as_ref() {
        Ok(c) => crate::store::resolution::installed(c)
            .await
            .map(|m| m.into_values().collect::<Vec<_>>())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    // The configured tables against what was set up (read on this side only).
    let selection = match local.as_ref() {
        Ok(c) => crate::replication::selection::compare(settings, c)
            .await
            .ok(),
        Err(_) => None,
    };
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["healthy"] = verdict.healthy.into();
        v["problems"] = serde_json::to_value(&verdict.problems)?;
        v["paused"] = serde_json::to_value(paused)?;
        v["controller"] = match controller {
            ControllerView::Status(c) => c,
            _ => serde_json::Value::Null,
        };
        v["clock"] = serde_json::to_value(clock)?;
        v["conflict_policies"] = serde_json::to_value(&policies)?;
        v["selection"] = serde_json::to_value(&selection)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", status::render(&st));
        match paused {
            Some(true) => println!(
                "\nsync: PAUSED: the workers that move data wait (PostgreSQL's replication keeps running); `duplex resume` resumes them"
            ),
            Some(false) => println!("\nsync: enabled"),
            None => {}
        }
        if let Some(c) = clock {
            println!(
                "\nclock offset: peer {:+.1} ms (round trip {:.1} ms; WARNING above {} ms)",
                c.offset_ms, c.round_trip_ms, settings.conflicts.clock_offset_warning_ms
            );
        }
        if !policies.is_empty() {
            println!("\nconflict policies on {}:", settings.instance_role);
            for p in &policies {
                println!(
                    "  {}: {}{}",
                    p.rel,
                    p.policy,
                    p.updated_at_column
                        .as_deref()
                        .map(|c| format!(" by \"{c}\""))
                        .unwrap_or_default()
                );
            }
        }
        if let Some(sel) = &selection {
            print!("{}", render_selection(sel, &settings.tables));
        }
        let addr = settings.daemon.http_addr;
        match controller {
            ControllerView::Status(c) => {
                println!(
                    "\ncontroller at {addr}: {} ({})",
                    c["connection_state"].as_str().unwrap_or("?"),
                    c["state_reason"].as_str().unwrap_or("")
                );
                for a in c["active_alerts"].as_array().into_iter().flatten() {
                    println!(
                        "  {} {}: {}{}",
                        a["level"].as_str().unwrap_or(""),
                        a["kind"].as_str().unwrap_or(""),
                        a["title"].as_str().unwrap_or(""),
                        a["runbook"]
                            .as_str()
                            .map(|r| format!(" (follow {r})"))
                            .unwrap_or_default()
                    );
                }
            }
            ControllerView::TokenRefused => println!(
                "\ncontroller at {addr}: refused the admin token: set DUPLEX_ADMIN_TOKEN to the daemon's token to see its state"
            ),
            ControllerView::NoToken => println!(
                "\ncontroller: not asked (set DUPLEX_ADMIN_TOKEN to the daemon's token to see its state at {addr})"
            ),
            ControllerView::Absent(why) => println!(
                "\ncontroller: none answering at {addr} ({why}): start `duplex run`, or set DUPLEX_HTTP_ADDR to where it listens"
            ),
        }
        print!("{}", status::render_verdict(&verdict));
    }
    Ok(if verdict.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The selection part of `duplex status`: one line when the configuration and what was
/// set up agree, else each difference with what `duplex setup` would do about it.
fn render_selection(
    sel: &crate::replication::selection::Comparison,
    tables: &config::TableSelection,
) -> String {
    let (Some(set_up), Some(source)) = (&sel.set_up, &sel.source) else {
        return format!(
            "\ntables: {} configured, none set up on this side yet\n",
            sel.configured.len()
        );
    };
    if !sel.differs() {
        return format!(
            "\ntables: {} replicated, as configured (compared with {})\n",
            set_up.len(),
            source.describe()
        );
    }
    let mut out = String::from(
        "\ntables: the configuration differs from what is set up (`duplex check` reports it as an error):\n",
    );
    for s in sel.sentences(tables) {
        out.push_str(&format!("  {}\n    -> {}\n", s.message, s.hint));
    }
    out
}

async fn run_scan(
    settings: &Settings,
    table: Option<String>,
    full: bool,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::replication::scanner;
    let req = scanner::Request {
        table,
        dry_run,
        full,
        stop_when_paused: false,
    };
    let report = scanner::scan(settings, &req).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::to_value(&report)?)?
        );
    } else {
        for t in &report.tables {
            let state = if let Some(side) = t.diff.truncated {
                format!(
                    "looks TRUNCATED on {side}: not repaired, logged as an open conflict (see runbooks/table-truncated.md)"
                )
            } else if t.diff.equal {
                "equal".to_string()
            } else {
                format!(
                    "{} difference(s), {} repaired, {} logged, {} skipped (changed meanwhile){}",
                    t.confirmed,
                    t.repaired,
                    t.logged,
                    t.skipped,
                    if t.diff.more {
                        "; more left for the next pass"
                    } else {
                        ""
                    }
                )
            };
            if t.diff.mode == "incremental" {
                println!(
                    "{}: incremental, {} key(s) changed since the last pass{}: {state} ({:.2} s)",
                    t.table,
                    t.diff.changed_keys,
                    t.diff
                        .changes_by
                        .as_deref()
                        .map(|b| format!(" (found {b})"))
                        .unwrap_or_default(),
                    t.seconds
                );
                if let Some(h) = &t.diff.hint {
                    println!("  hint: {h}");
                }
            } else {
                println!(
                    "{}: main {} cloud {} rows: {state} ({:.2} s)",
                    t.table, t.diff.main_count, t.diff.cloud_count, t.seconds
                );
            }
            for e in &t.errors {
                println!("  error: {e}");
            }
        }
        for s in &report.skipped_tables {
            println!("skipped {s}");
        }
        println!(
            "{}scan done in {:.2} s: {} difference(s), {} repaired, {} new conflict log entries",
            if report.dry_run { "dry run: " } else { "" },
            report.seconds,
            report.differences,
            report.repaired,
            report.logged
        );
    }
    let failed = report.tables.iter().any(|t| !t.errors.is_empty());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_integrity(
    settings: &Settings,
    table: Option<String>,
    checksum: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let report =
        crate::replication::scanner::integrity(settings, table.as_deref(), checksum).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::to_value(&report)?)?
        );
    } else {
        print!("{}", report.render());
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `duplex conflicts ...`
#[derive(Debug, Subcommand)]
pub enum ConflictsAction {
    /// List conflicts, newest first.
    List {
        /// Only conflicts waiting for a person.
        #[arg(long, conflicts_with = "resolved")]
        open: bool,
        /// Only resolved conflicts.
        #[arg(long)]
        resolved: bool,
        /// Only this table (`schema.table` or the table's name).
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show one conflict with both versions and the fields that differ.
    Show {
        /// Conflict id (from `duplex conflicts list`).
        id: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Resolve an open conflict: keep main's version or write cloud's to both sides.
    Resolve {
        /// Conflict id (from `duplex conflicts list`).
        id: i64,
        /// The version to keep.
        #[arg(long = "use", value_name = "main|cloud", value_parser = ["main", "cloud"])]
        choice: String,
    },
}

async fn run_conflicts(settings: &Settings, action: ConflictsAction) -> anyhow::Result<ExitCode> {
    use crate::conflict::{diff, resolve};
    use crate::store::conflict_log;
    match action {
        ConflictsAction::List {
            open,
            resolved,
            table,
            limit,
            json,
        } => {
            let local = pg::connect(settings.local_monitor(), "local", "conflicts").await?;
            let filter = conflict_log::Filter {
                open: (open || resolved).then_some(open),
                table,
                limit,
            };
            let entries = conflict_log::list(&local, &filter).await?;
            if json {
                let v: Vec<_> = entries.iter().map(diff::entry_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if entries.is_empty() {
                println!("no conflicts match");
            } else {
                print!("{}", conflict_table(&entries));
            }
        }
        ConflictsAction::Show { id, json } => {
            let local = pg::connect(settings.local_monitor(), "local", "conflicts").await?;
            let c = conflict_log::get(&local, id)
                .await?
                .ok_or(resolve::Error::NotFound(id))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&diff::entry_json(&c))?);
            } else {
                let state = match (&c.resolved_by, &c.resolution) {
                    (None, _) => {
                        "OPEN (resolve with `duplex conflicts resolve ID --use main|cloud`)"
                            .to_string()
                    }
                    (Some(by), Some(choice)) => format!("resolved by {by} ({choice})"),
                    (Some(by), None) => format!("resolved by {by}"),
                };
                let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                let version = |v: &Option<serde_json::Value>| {
                    v.as_ref()
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "(deleted)".into())
                };
                println!(
                    "conflict {}: {} on {} key {}",
                    c.id, c.conflict_type, c.table_name, c.record_id
                );
                println!(
                    "  logged:  {} on {} ({})",
                    c.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    opt(&c.detected_on),
                    c.detected_by
                );
                println!("  policy:  {}, winner {}", opt(&c.policy), opt(&c.winner));
                println!("  state:   {state}");
                println!("  main:    {}", version(&c.main_version));
                println!("  cloud:   {}", version(&c.cloud_version));
                let fields = diff::diff(c.main_version.as_ref(), c.cloud_version.as_ref());
                if fields.is_empty() {
                    println!("fields that differ: none");
                } else {
                    println!("fields that differ:");
                    print!("{}", diff::render(&fields));
                }
            }
        }
        ConflictsAction::Resolve { id, choice } => {
            let choice = resolve::Choice::parse(&choice)
                .with_context(|| format!("--use {choice}: use main or cloud"))?;
            let done = resolve::resolve(settings, id, choice).await?;
            let wrote = if done.written.is_empty() {
                "no row needed writing".to_string()
            } else {
                let sides: Vec<_> = done.written.iter().map(|r| r.as_str()).collect();
                format!(
                    "wrote {}'s version on {}",
                    choice.as_db().to_lowercase(),
                    sides.join(" and ")
                )
            };
            println!("conflict {id} resolved: {} ({wrote})", choice.as_db());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The compact table of `duplex conflicts list`.
fn conflict_table(entries: &[crate::store::conflict_log::Conflict]) -> String {
    let head = [
        "ID",
        "WHEN (UTC)",
        "TABLE",
        "KEY",
        "TYPE",
        "POLICY",
        "WINNER",
        "STATE",
    ];
    let rows: Vec<[String; 8]> = entries
        .iter()
        .map(|c| {
            [
                c.id.to_string(),
                c.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                c.table_name.clone(),
                c.record_id.clone(),
                c.conflict_type.clone(),
                c.policy.clone().unwrap_or_else(|| "-".into()),
                c.winner.clone().unwrap_or_else(|| "-".into()),
                if c.is_open() { "open" } else { "resolved" }.to_string(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    let mut out = line(&head.map(String::from));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// `duplex storage scan|sync|status`.
async fn run_storage(settings: &Settings, action: StorageAction) -> anyhow::Result<ExitCode> {
    use crate::mirror::cycle::{self, Request};
    use crate::mirror::throttle::Throttle;
    let (req, json) = match action {
        StorageAction::Status { limit, json } => {
            return storage_status(settings, limit, json).await
        }
        StorageAction::Scan { dry_run, json } => (
            Request {
                dry_run,
                scan_only: true,
            },
            json,
        ),
        StorageAction::Sync { dry_run, json } => (
            Request {
                dry_run,
                scan_only: false,
            },
            json,
        ),
    };
    let throttle = Throttle::new(settings.max_transfer_rate_bytes);
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    });
    let report = cycle::run(settings, req, &throttle, false, &cancel, &mut |_| {}).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let s = &report.scan;
        println!(
            "scan: {} file(s) referenced, {} present, {} missing ({} with the wrong size), {} invalid row(s), {:.1} s",
            s.referenced, s.present, s.missing, s.wrong_size, s.invalid, s.seconds
        );
        for i in &report.invalid {
            println!(
                "invalid: {} row {} (key {:?}): {}",
                i.file.table, i.file.row_ref, i.file.object_key, i.reason
            );
        }
        if report.dry_run {
            for m in &report.would_transfer {
                println!(
                    "would copy: {} ({} bytes, {} row {})",
                    m.object_key, m.size, m.table, m.row_ref
                );
            }
            println!("dry run: nothing was changed");
        } else {
            if let Some(why) = &report.skipped {
                println!("transfers skipped: {why}");
            } else {
                println!(
                    "copied {} file(s), {} bytes, {:.0} B/s; {} failed",
                    report.transferred, report.bytes, report.rate_bytes_per_sec, report.failed
                );
            }
            for f in &report.failures {
                println!(
                    "FAILED: {} ({} row {}): {}",
                    f.file.object_key, f.file.table, f.file.row_ref, f.error
                );
            }
            println!(
                "queue: {} file(s) waiting, {} invalid row(s)",
                report.queue.queued, report.queue.invalid
            );
        }
    }
    Ok(if report.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `duplex storage status`: the queue as the database holds it.
async fn storage_status(settings: &Settings, limit: i64, json: bool) -> anyhow::Result<ExitCode> {
    use crate::store::storage_queue;
    let mut local = pg::connect(&settings.local_db_url, "local", "storage").await?;
    crate::mirror::cycle::prepare(&mut local, settings).await?;
    let summary = storage_queue::summary(&local).await?;
    let entries = storage_queue::list(&local, limit.clamp(0, 10_000)).await?;
    let configured = crate::mirror::cycle::stores(settings)
        .err()
        .map(|e| e.to_string());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "configured": configured.is_none(),
                "not_configured": configured,
                "queue": summary,
                "entries": entries,
            }))?
        );
    } else {
        if let Some(why) = &configured {
            println!("{why}");
        }
        println!(
            "queue: {} file(s) waiting ({} bytes), {} of them failed last time; {} invalid row(s)",
            summary.queued, summary.queued_bytes, summary.failed, summary.invalid
        );
        if let (Some(k), Some(at)) = (&summary.oldest_key, summary.oldest_priority) {
            println!("oldest waiting: {k} ({at})");
        }
        for e in &entries {
            println!(
                "{:<8} {} ({} row {}, {} bytes, {} attempt(s)){}",
                e.state,
                e.file.object_key,
                e.file.table,
                e.file.row_ref,
                e.file.size,
                e.attempts,
                e.last_error
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
