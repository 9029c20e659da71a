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

/// Fix glibc's malloc thresholds instead of letting it adjust them. Buffers of 4 MiB or
/// more (the storage mirror's 8 MiB part buffers) always come straight from the kernel
/// and go back to it when freed, instead of staying in malloc's per-thread arenas once a
/// first one was freed (measured: peak RSS 112 MB instead of under 100 MB for three
/// transfers of 256 MiB files). Smaller ones (a small file's whole body) are reused from
/// the arenas, which keep up to 8 MiB free each, instead of being mapped, zeroed and
/// unmapped by the kernel once per file (measured: about a tenth of the mirror's CPU for
/// 1 MiB files when the threshold was 1 MiB).
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc tuning parameters; setting them explicitly
    // also turns off glibc's dynamic adjustment of them.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}
