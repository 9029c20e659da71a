//! The `duplex` binary: parse arguments, set up logging, hand over to [`duplex::cli`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = duplex::cli::Cli::parse();
    if !matches!(cli.command, duplex::cli::Command::Run) {
        restore_sigpipe();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DUPLEX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    duplex::cli::run(cli).await
}

/// Let a closed pipe end a one-shot command quietly (`duplex check | head -1`), as other
/// command-line tools do: Rust ignores SIGPIPE, which turns the write into a panic in
/// `println!`. The daemon keeps ignoring it: a closed log pipe must not kill it.
fn restore_sigpipe() {
    // SAFETY: called once at start-up, before any other thread writes to a pipe;
    // installing the default disposition has no other effect on the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
