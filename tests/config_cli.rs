//! Configuration errors and redaction, through the binary.

use std::process::Command;

fn duplex(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duplex"));
    for (var, _) in duplex::config::ENV_KEYS {
        cmd.env_remove(var);
    }
    cmd.env_remove("DATABASE_URL");
    cmd.envs(env.iter().copied()).args(args);
    let out = cmd.output().expect("running duplex");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_2_naming_every_problem() {
    let (code, _, stderr) = duplex(
        &[
            ("INSTANCE_ROLE", "edge"),
            ("LOCAL_DB_URL", "postgres//missing-colon"),
            (
                "REMOTE_DB_URL",
                "http://user:topsecret@cloud.example.com/app",
            ),
            ("SYNC_INTERVAL_MINUTES", "0"),
            ("REPLICATION_SLOT_NAME", "My-Slot"),
        ],
        &["check"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    for expected in [
        "INSTANCE_ROLE is `edge`: allowed values are `main` and `cloud`",
        "LOCAL_DB_URL is malformed",
        "REMOTE_DB_URL is malformed",
        "SYNC_INTERVAL_MINUTES must be a positive whole number up to 1440 (1 day), got 0",
        "REPLICATION_SLOT_NAME `My-Slot` must start with `duplex_`",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("topsecret"), "password leaked:\n{stderr}");
}

#[test]
fn missing_role_and_urls_are_named() {
    let (code, _, stderr) = duplex(&[], &["status"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("INSTANCE_ROLE is not set"), "{stderr}");
    assert!(
        stderr.contains("LOCAL_DB_URL (or DATABASE_URL) is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("REMOTE_DB_URL is not set"), "{stderr}");
}

#[test]
fn unknown_keys_in_the_config_file_are_named() {
    let path = std::env::temp_dir().join(format!("duplex-cfg-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "instance_role = \"main\"\nsync_intervall_minutes = 3\n[tables]\nincluded = [\"User\"]\n",
    )
    .unwrap();
    let (code, _, stderr) = duplex(
        &[
            ("LOCAL_DB_URL", "postgres://a@h/db"),
            ("REMOTE_DB_URL", "postgres://a@h2/db"),
        ],
        &["--config", path.to_str().unwrap(), "check"],
    );
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown key `sync_intervall_minutes`"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown key `tables.included`"), "{stderr}");
}

#[test]
fn config_show_redacts_passwords_and_sync_disabled_only_warns() {
    let (code, stdout, stderr) = duplex(
        &[
            ("INSTANCE_ROLE", "cloud"),
            ("DATABASE_URL", "postgres://app:localpw@127.0.0.1:5432/app"),
            ("REMOTE_DB_URL", "postgres://app:remotepw@10.1.1.1:5432/app"),
            ("DUPLEX_REPLICATION_PASSWORD", "replpw"),
            ("SYNC_ENABLED", "false"),
        ],
        &["config", "show"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    for secret in ["localpw", "remotepw", "replpw"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }
    let shown: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["instance_role"], "cloud");
    assert_eq!(
        shown["local_db_url"],
        "postgres://app:********@127.0.0.1:5432/app"
    );
    assert_eq!(shown["sync_enabled"], false);
    assert!(stderr.contains("SYNC_ENABLED=false"), "{stderr}");
}
