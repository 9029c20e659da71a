//! Command-line interface: parse, load configuration, dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{self, Settings};
use crate::pg;
use crate::replication::{check, setup, status};

/// Exit code for invalid configuration.
pub const EXIT_CONFIG: u8 = 2;

/// duplex: bidirectional PostgreSQL replication between main (on-site) and cloud.
#[derive(Debug, Parser)]
#[command(name = "duplex", version, about)]
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
    },
    /// Preflight: config, connections, server settings, replication objects.
    Check {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show both replication directions.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Configuration helpers.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        action: ConfigAction,
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
    let settings = match config::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("duplex: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if !settings.sync_enabled {
        tracing::warn!("SYNC_ENABLED=false: workers that move data will stay paused");
    }
    let result = match cli.command {
        Command::Setup { dry_run } => run_setup(&settings, dry_run).await,
        Command::Check { json } => run_check(&settings, json).await,
        Command::Status { json } => run_status(&settings, json).await,
        Command::Config {
            action: ConfigAction::Show,
        } => serde_json::to_string_pretty(&settings)
            .map(|s| {
                println!("{s}");
                ExitCode::SUCCESS
            })
            .context("rendering configuration"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("duplex: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_setup(settings: &Settings, dry_run: bool) -> anyhow::Result<ExitCode> {
    let mut local = pg::connect(&settings.local_db_url, "local", "setup").await?;
    let remote = pg::connect(&settings.remote_db_url, "remote", "setup").await?;
    let plan = setup::plan(settings, &local, &remote).await?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let role = settings.instance_role;
    if dry_run {
        if plan.steps.is_empty() {
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
    let report = setup::apply(settings, &mut local, &remote, &plan, &mut |line| {
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
    let local = pg::connect(&settings.local_db_url, "local", "check")
        .await
        .map_err(|e| e.to_string());
    let remote = pg::connect(&settings.remote_db_url, "remote", "check")
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

async fn run_status(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let local = pg::connect(&settings.local_db_url, "local", "status").await;
    let remote = pg::connect(&settings.remote_db_url, "remote", "status").await;
    for e in [local.as_ref().err(), remote.as_ref().err()]
        .into_iter()
        .flatten()
    {
        eprintln!("warning: {e}");
    }
    let st = status::collect(settings, local.as_ref().ok(), remote.as_ref().ok()).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", status::render(&st));
    }
    Ok(ExitCode::SUCCESS)
}
