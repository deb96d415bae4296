//! Account management through the real binary: add, list, remove, logout, status, and the data
//! directory's protection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{Env, Fake};

#[tokio::test(flavor = "multi_thread")]
async fn accounts_are_added_listed_and_removed() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let out = env.ok(&["accounts", "add", "k1", "--api-key", "sk-ant-api03-secret-value-1234"]).await;
    assert!(out.stderr.contains("created a new encryption key"), "{}", out.stderr);
    env.run(&["accounts", "add", "k2", "--api-key", "-"], "sk-ant-api03-from-stdin-5678\n").await;
    let dup = env.run(&["accounts", "add", "k1", "--api-key", "x", "--force"], "").await;
    assert_eq!(dup.code, Some(1));
    assert!(dup.stderr.contains("already exists"), "{}", dup.stderr);

    let list = env.ok(&["accounts", "list"]).await.stdout;
    assert!(list.contains("k1") && list.contains("k2") && list.contains("…1234") && list.contains("…5678"), "{list}");
    assert!(!list.contains("secret-value"));
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["accounts", "list", "--json"]).await.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[1]["credential"], "…5678");

    let status = env.ok(&["auth", "status"]).await.stdout;
    assert!(status.contains("encryption key: key file"), "{status}");
    assert!(!status.contains("secret-value"));

    // Two accounts: logout needs a name.
    let ambiguous = env.run(&["auth", "logout"], "").await;
    assert_eq!(ambiguous.code, Some(1));
    env.ok(&["auth", "logout", "--account", "k2"]).await;
    env.ok(&["accounts", "remove", "k1"]).await;
    let gone = env.run(&["accounts", "remove", "k1"], "").await;
    assert_eq!(gone.code, Some(1));
    assert!(gone.stderr.contains("no account named"), "{}", gone.stderr);
    assert!(env.ok(&["accounts", "list"]).await.stdout.contains("no accounts"));

    for (path, bytes) in [("switchyard.db", "secret-value"), ("switchyard.db-wal", "from-stdin")] {
        let data = std::fs::read(env.home().join(path)).unwrap_or_default();
        assert!(!data.windows(bytes.len()).any(|w| w == bytes.as_bytes()), "{path} holds a plaintext key");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["switchyard.db", "secret.key"] {
            let mode = std::fs::metadata(env.home().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_encryption_key_is_a_clear_error() {
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    env.set("SWITCHYARD_ENCRYPTION_KEY", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=");
    env.ok(&["accounts", "add", "k1", "--api-key", "sk-ant-api03-abcdefgh"]).await;
    assert!(!env.home().join("secret.key").exists(), "an env key needs no key file");
    env.set("SWITCHYARD_ENCRYPTION_KEY", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=");
    let out = env.run(&["accounts", "list"], "").await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("encryption key differs"), "{}", out.stderr);
    let mut cmd = env.command(&["serve", "--port", "0"]);
    let serve = cmd.output().await.unwrap();
    assert_eq!(serve.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("encryption key differs"));
    env.set("SWITCHYARD_ENCRYPTION_KEY", "short");
    let out = env.run(&["accounts", "list"], "").await;
    assert!(out.stderr.contains("32 bytes"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_picks_up_accounts_added_while_running() {
    let fake = Fake::start().await;
    fake.add_api_key("sk-ant-api03-late");
    let env = Env::new(&fake);
    let gw = env.serve().await;
    let body = support::message_body(false);
    assert_eq!(gw.post("/v1/messages").json(&body).send().await.unwrap().status(), 503);
    env.ok(&["accounts", "add", "late", "--api-key", "sk-ant-api03-late"]).await;
    support::eventually("the running gateway to see the new account", std::time::Duration::from_secs(10), async || {
        (gw.post("/v1/messages").json(&body).send().await.ok()?.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_is_named() {
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    env.set("SWITCHYARD_PORT", "eighty");
    let out = env.run(&["serve"], "").await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("SWITCHYARD_PORT"), "{}", out.stderr);
    let file = env.home().join("bad.toml");
    std::fs::write(&file, "[server]\nhots = \"x\"\n").unwrap();
    env.set("SWITCHYARD_PORT", "0");
    let out = env.run(&["--config", file.to_str().unwrap(), "serve"], "").await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("hots"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "a TOML error is one line: {}", out.stderr);

    // Each error names its real source once: the file and key, the variable, or the flag.
    let one_error = |out: &support::Output| {
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "one error line: {}", out.stderr);
        errors[0].to_owned()
    };
    std::fs::write(&file, "[routing]\nstrategy = \"nope\"\n").unwrap();
    let config = file.to_str().unwrap();
    let err = one_error(&env.run(&["--config", config, "accounts", "list"], "").await);
    assert!(err.contains("bad.toml: routing.strategy") && !err.contains("SWITCHYARD_LB_STRATEGY"), "{err}");
    env.set("SWITCHYARD_LB_STRATEGY", "sideways");
    let err = one_error(&env.run(&["--config", config, "accounts", "list"], "").await);
    assert!(err.contains("SWITCHYARD_LB_STRATEGY") && err.contains("sideways"), "{err}");
    env.set("SWITCHYARD_LB_STRATEGY", "");
    let missing = env.home().join("missing.toml");
    let err = one_error(&env.run(&["--config", missing.to_str().unwrap(), "accounts", "list"], "").await);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    for (args, flag) in [
        (&["requests", "--since", "abc"][..], "--since"),
        (&["stats", "--since", "abc"], "--since"),
        (&["audit", "--since", "abc"], "--since"),
        (&["cleanup", "--older-than", "abc"], "--older-than"),
    ] {
        let err = one_error(&env.run(args, "").await);
        assert!(err.contains(flag) && err.contains("like 30m") && !err.contains("expected number"), "{err}");
    }
    env.ok(&["keys", "create", "ci"]).await;
    let err = one_error(&env.run(&["keys", "create", "ci"], "").await);
    assert!(err.contains("a client key named \"ci\" already exists"), "{err}");
}

/// The unprotected key file is mentioned where it helps (serve, storage status), not before every command.
#[tokio::test(flavor = "multi_thread")]
async fn the_key_file_note_is_said_where_it_helps() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    env.ok(&["accounts", "add", "k", "--api-key", "sk-ant-api03-note"]).await;
    for args in [&["accounts", "list"][..], &["keys", "list"], &["auth", "status"]] {
        let out = env.ok(args).await;
        assert!(!out.stderr.contains("passphrase") && !out.stderr.contains("WARN"), "{args:?}: {}", out.stderr);
    }
    let status = env.ok(&["auth", "storage", "status"]).await.stdout;
    assert!(status.contains("not protected by a passphrase"), "{status}");
    let gw = env.serve().await;
    let logs = gw.logs();
    assert_eq!(logs.matches("the key file is not protected by a passphrase").count(), 1, "{logs}");
    assert!(!logs.lines().any(|l| l.contains("WARN") && l.contains("passphrase")), "{logs}");
}

/// SIGTERM stops accepting, lets a running stream finish, then exits 0: whether connections are served
/// by the main runtime (`SWITCHYARD_WORKERS=1`) or by several connection threads.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_running_streams_and_stops_cleanly() {
    for workers in ["1", "3"] {
        let fake = Fake::start().await;
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        fake.lock().sse_gate = Some(gate.clone());
        let mut env = Env::new(&fake);
        env.set("SWITCHYARD_WORKERS", workers);
        env.ok(&["accounts", "add", "k", "--api-key", "sk-ant-api03-k"]).await;
        fake.add_api_key("sk-ant-api03-k");
        let mut gw = env.serve().await;
        assert_eq!(gw.get("/health").send().await.unwrap().status(), 200);
        let mut stream = gw.post("/v1/messages").json(&support::message_body(true)).send().await.unwrap();
        assert_eq!(stream.status(), 200, "workers={workers}");
        let first = stream.chunk().await.unwrap().unwrap();
        assert!(first.starts_with(b"event: message_start"), "workers={workers}");
        let pid = gw.child.id().unwrap().to_string();
        let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(gw.child.try_wait().unwrap().is_none(), "workers={workers}: exited with a stream still open");
        gate.add_permits(100);
        let mut rest = Vec::new();
        while let Some(chunk) = stream.chunk().await.unwrap() {
            rest.extend_from_slice(&chunk);
        }
        assert!(support::contains(&rest, "event: message_stop"), "workers={workers}: stream was cut");
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), gw.child.wait())
            .await
            .expect("gateway did not stop on SIGTERM")
            .unwrap();
        assert_eq!(status.code(), Some(0), "workers={workers}");
        assert!(gw.logs().contains("shutting down"), "workers={workers}");
    }
}

/// Secrets typed at a terminal are asked for with a prompt and never echoed; new passwords and
/// passphrases are asked twice.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_typed_at_a_terminal_are_not_echoed() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let key = "sk-ant-api03-typed-at-the-terminal-9876";
    let mut term = env.terminal(&["accounts", "add", "work", "--api-key", "-"]);
    term.expect("API key (input hidden): ", 1).await;
    term.type_secret(key).await;
    let (code, screen) = term.finish().await;
    assert_eq!(code, Some(0), "{screen}");
    assert!(!screen.contains("typed-at-the-terminal"), "the key was echoed:\n{screen}");
    assert!(env.ok(&["accounts", "list"]).await.stdout.contains("…9876"));

    let password = "correct horse battery staple";
    let mut term = env.terminal(&["admin", "set-password"]);
    term.expect("new administrator password", 1).await;
    term.type_secret(password).await;
    term.expect("repeat the administrator password", 1).await;
    term.type_secret(password).await;
    let (code, screen) = term.finish().await;
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("administrator password set"), "{screen}");
    assert!(!screen.contains("horse"), "the password was echoed:\n{screen}");

    // Two different entries change nothing.
    let mut term = env.terminal(&["auth", "storage", "backup"]);
    term.expect("new backup passphrase", 1).await;
    term.type_secret("first passphrase").await;
    term.expect("repeat the backup passphrase", 1).await;
    term.type_secret("second passphrase").await;
    let (code, screen) = term.finish().await;
    assert_eq!(code, Some(1), "{screen}");
    assert!(screen.contains("the two entries differ"), "{screen}");
    assert!(!screen.contains("passphrase\r\n") && !screen.contains("first passphrase"), "{screen}");
    assert!(
        !env.home().join("backups").exists() || std::fs::read_dir(env.home().join("backups")).unwrap().next().is_none()
    );
}

/// Every cargo command the README gives builds from `Cargo.lock`, and the README states the minimum Rust
/// version that Cargo.toml declares.
#[test]
fn readme_builds_are_locked_and_state_the_rust_version() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    for verb in ["cargo install", "cargo run", "cargo build"] {
        for (at, _) in readme.match_indices(verb) {
            let line = readme[at..].lines().next().unwrap();
            assert!(line.contains("--locked"), "README: `{line}` lacks --locked");
        }
    }
    assert!(manifest.contains("rust-version = \"1.95\""));
    assert!(readme.contains("Rust 1.95"), "the README does not state the minimum Rust version");
    // A user's path first, the reference after it, maintainers' material last.
    let at = |heading: &str| readme.find(&format!("\n## {heading}")).unwrap_or_else(|| panic!("no section {heading}"));
    let order = [
        "Install",
        "Quick start",
        "Point your tools at it",
        "Dashboard",
        "Running as a service",
        "Commands (reference)",
        "Configuration",
        "Development",
        "Benchmark",
    ];
    for pair in order.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "README: {} should come before {}", pair[0], pair[1]);
    }
}

/// Input that would silently do the wrong thing is refused with a clear line, and nothing is saved.
#[tokio::test(flavor = "multi_thread")]
async fn doubtful_input_is_refused_with_a_reason() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let refused = |out: support::Output, what: &str| {
        assert_eq!(out.code, Some(1), "{what}: {}", out.stderr);
        let line = out.stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default().to_owned();
        assert!(line.contains(what), "{line}");
    };
    refused(
        env.run(&["accounts", "add", "work", "--api-key", "hello"], "").await,
        "does not look like an Anthropic API key",
    );
    refused(env.run(&["accounts", "add", " ", "--api-key", "sk-ant-api03-blank-name"], "").await, "name is empty");
    env.ok(&["accounts", "add", "work", "--api-key", "hello", "--force"]).await;
    refused(env.run(&["keys", "create", ""], "").await, "key name is empty");
    refused(env.run(&["keys", "create", "ci", "--expires", "0s"], "").await, "before it is used");
    refused(env.run(&["keys", "create", "ci", "--accounts", "work,nope"], "").await, "no account named nope");
    let keys = env.ok(&["keys", "list", "--json"]).await.stdout;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&keys).unwrap(), serde_json::json!([]), "nothing saved");
    env.ok(&["keys", "create", "ci", "--accounts", "work", "--expires", "1h"]).await;
}
