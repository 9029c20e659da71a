//! The `duplex` binary: parse arguments, set up logging, hand over to [`duplex::cli`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    fixed_mmap_threshold();
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

/// Keep glibc from raising its mmap threshold: the storage mirror's part buffers (8 MiB)
/// then always come straight from the kernel and go back to it when freed, instead of
/// staying in malloc's per-thread arenas once a first buffer was freed (measured: peak
/// RSS 112 MB instead of under 100 MB for three transfers of 256 MiB files).
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a malloc tuning parameter; setting it explicitly
    // also turns off glibc's dynamic adjustment of it.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
