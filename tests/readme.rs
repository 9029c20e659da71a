//! Every command line in README.md's examples runs as written against a lab pair, so the
//! README cannot drift from the program.
//!
//! The shell blocks that hold a `duplex` command run as one bash script each (`set -e`),
//! with the lab's variables (`MAIN_DB_URL`, `CLOUD_DB_URL`, ...) pointing at this test's
//! own databases. The lines that bring up the lab and build the binary
//! (`scripts/lab.sh ...`, `eval "$(scripts/lab.sh env)"`, `cargo ...`) are what the test
//! harness already did, so they are skipped. Two things differ from a person at a
//! terminal, neither in the README's lines: `duplex` on PATH is a wrapper that gives each
//! role this test's slot name (slot names are cluster-wide and the lab's `app` database
//! may use the default ones), and after a line that starts `duplex run ... &` the script
//! waits until the daemon's API answers, as a person would before typing the next line.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{text, url, Pair, REPLICATION_PASSWORD};

/// The ```sh blocks of `markdown` that contain a `duplex` command line.
fn duplex_blocks(markdown: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed.starts_with("```sh") => current = Some(Vec::new()),
            Some(_) if trimmed.starts_with("```") => {
                let block = current.take().unwrap_or_default();
                if block.iter().any(|l| is_duplex_line(l)) {
                    blocks.push(block);
                }
            }
            Some(block) => block.push(line.to_string()),
            None => {}
        }
    }
    blocks
}

/// A command line that runs `duplex`, possibly after `VAR=value` assignments.
fn is_duplex_line(line: &str) -> bool {
    line.split_whitespace()
        .find(|w| !w.contains('='))
        .is_some_and(|w| w == "duplex")
}

/// Lines the harness already did: the lab is up, its variables are set, the binary built.
fn done_by_the_harness(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with("scripts/lab.sh")
        || l.starts_with("eval \"$(scripts/lab.sh")
        || l.starts_with("cargo ")
}

#[tokio::test]
async fn every_command_line_in_the_readme_examples_runs_as_written() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("reading README.md");
    let blocks = duplex_blocks(&readme);
    assert!(
        !blocks.is_empty(),
        "README.md shows no duplex command in a ```sh block"
    );

    for (n, block) in blocks.iter().enumerate() {
        let pair = Pair::new().await;
        let bin = tempdir(&format!("readme-{}-{n}", pair.id));
        let shim = bin.join("duplex");
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\ncase \"$INSTANCE_ROLE\" in\n  [Cc][Ll][Oo][Uu][Dd]) REPLICATION_SLOT_NAME={cloud} ;;\n  *) REPLICATION_SLOT_NAME={main} ;;\nesac\nexport REPLICATION_SLOT_NAME\nexec {real} \"$@\"\n",
                cloud = pair.slot("cloud"),
                main = pair.slot("main"),
                real = env!("CARGO_BIN_EXE_duplex"),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        let api = common::free_addr();

        let mut script = String::from(
            "set -euo pipefail\ntrap 'for p in $(jobs -p); do kill \"$p\" 2>/dev/null || true; done; wait' EXIT\n",
        );
        let mut ran = 0;
        for line in block {
            if line.trim().is_empty() || done_by_the_harness(line) {
                continue;
            }
            script.push_str(&format!("echo '+ {}'\n", line.replace('\'', "'\\''")));
            script.push_str(line);
            script.push('\n');
            if is_duplex_line(line) {
                ran += 1;
            }
            if is_duplex_line(line)
                && line.split_whitespace().any(|w| w == "run")
                && line.trim_end().ends_with('&')
            {
                script.push_str(&format!(
                    "for _ in $(seq 1 200); do (exec 3<>/dev/tcp/{}/{}) 2>/dev/null && break; sleep 0.1; done\n",
                    api.ip(),
                    api.port()
                ));
            }
        }
        let mut cmd = tokio::process::Command::new("bash");
        for (var, _) in duplex::config::ENV_KEYS {
            cmd.env_remove(var);
        }
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = cmd
            .env_remove("DATABASE_URL")
            .env_remove("DUPLEX_LOG")
            .env("PATH", path)
            .env("MAIN_DB_URL", url(pair.main_port, &pair.db))
            .env("CLOUD_DB_URL", url(pair.cloud_port, &pair.db))
            .env("DUPLEX_REPLICATION_PASSWORD", REPLICATION_PASSWORD)
            .env("DUPLEX_HTTP_ADDR", api.to_string())
            .current_dir(root)
            .arg("-c")
            .arg(&script)
            .kill_on_drop(true)
            .output()
            .await
            .expect("running bash");
        let _ = std::fs::remove_dir_all(&bin);
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "README block {n} failed at the last `+` line:\n{stdout}\n{stderr}"
        );
        assert_eq!(
            stdout.matches("\n+ ").count() + usize::from(stdout.starts_with("+ ")),
            block
                .iter()
                .filter(|l| !l.trim().is_empty() && !done_by_the_harness(l))
                .count(),
            "not every line ran:\n{stdout}"
        );
        assert!(ran > 0);
    }
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("duplex-{name}"));
    std::fs::create_dir_all(&dir).expect("creating a temporary directory");
    dir
}
