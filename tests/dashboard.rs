//! The dashboard end to end: Playwright (`e2e/dashboard.mjs`) drives Debian's Chromium, headless, against
//! the real binary and the fake upstream. This test sets the stage (accounts, keys, logged requests),
//! runs the browser script, and checks its verdict; screenshots of every page land in
//! `e2e-screenshots/` under Cargo's target directory (`target/tmp/`, or under `CARGO_TARGET_DIR`). `./scripts/test` installs Chromium and playwright-core when they are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::fake::Script;
use support::{Env, Fake, message_body};

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_end_to_end_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("SWITCHYARD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && root.join("e2e/node_modules/playwright-core").exists(),
        "the dashboard test needs Chromium ({chromium}) and e2e/node_modules: run ./scripts/test, which installs them"
    );
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    env.set("SWITCHYARD_PAYLOADS", "full");
    env.set("SWITCHYARD_LB_STRATEGY", "round-robin");
    let accounts = [
        ("alpha", "sk-ant-api03-alpha-secret"),
        ("beta", "sk-ant-api03-beta-secret"),
        ("delta", "sk-ant-api03-delta-secret"),
    ];
    for (name, key) in accounts {
        fake.add_api_key(key);
        env.ok(&["accounts", "add", name, "--api-key", key]).await;
    }
    let admin_key = env.ok(&["keys", "create", "root", "--role", "admin"]).await.stdout.trim().to_owned();
    let user_key = env.ok(&["keys", "create", "app", "--role", "user"]).await.stdout.trim().to_owned();
    let viewer_key = env.ok(&["keys", "create", "eyes", "--role", "viewer"]).await.stdout.trim().to_owned();
    // delta's first answer is a 429 that benches it for an hour: the pages show it rate-limited with a
    // countdown, and the requests it failed over from show two accounts tried.
    fake.push_for("sk-ant-api03-delta-secret", Script::limited(support::fake::now_secs() + 3600));
    // alpha's first answer reports a model-scoped week past its limit (1.04 is 104 %) and a fallback.
    fake.push_for(
        "sk-ant-api03-alpha-secret",
        Script::Status {
            status: 200,
            body: serde_json::json!({"id":"msg_w","type":"message","role":"assistant","model":"claude-fake",
                "content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn",
                "usage":{"input_tokens":3,"output_tokens":1}}),
            headers: vec![
                ("anthropic-ratelimit-unified-status".into(), "allowed".into()),
                ("anthropic-ratelimit-unified-7d_oi-utilization".into(), "1.04".into()),
                ("anthropic-ratelimit-unified-fallback-percentage".into(), "0.5".into()),
            ],
        },
    );
    // zeta's refresh token was already spent: its first turn marks it needs-login ("Log in again").
    env.ok(&["accounts", "import", "zeta", "--refresh-token", "sk-ant-ort01-spent"]).await;
    let gw = env.serve().await;
    let zeta_needs_login = || async {
        let list = env.ok(&["accounts", "list", "--json"]).await.stdout;
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        list.as_array().unwrap().iter().any(|a| a["name"] == "zeta" && a["status"] == "needs-login")
    };
    for (sent, stream) in [false, true, false, true, false, true, false, true, false, true].into_iter().enumerate() {
        let r =
            gw.post("/v1/messages").header("x-api-key", &user_key).json(&message_body(stream)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        if sent >= 3 && fake.served_by("sk-ant-api03-delta-secret") == 1 && zeta_needs_login().await {
            break;
        }
    }
    assert!(zeta_needs_login().await, "zeta's spent refresh token was tried");
    // Cargo's own scratch directory for integration tests: follows CARGO_TARGET_DIR.
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(root.join("e2e/dashboard.mjs"))
        .current_dir(root.join("e2e"))
        .env("SY_URL", &gw.url)
        .env("SY_ADMIN_KEY", &admin_key)
        .env("SY_USER_KEY", &user_key)
        .env("SY_VIEWER_KEY", &viewer_key)
        .env("SY_SHOTS", &shots)
        .env("SY_CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(240), out)
        .await
        .expect("the browser test did not finish in 4 minutes")
        .expect("node could not be started (install Node.js)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert_eq!(fake.served_by("sk-ant-api03-delta-secret"), 1, "delta stayed benched after its 429");
    assert!(out.status.success(), "browser test failed:\n{stdout}\n{stderr}\ngateway log:\n{}", gw.logs());
    assert!(stdout.contains("dashboard e2e: all checks passed"), "{stdout}");
    for page in
        ["login", "overview", "overview-dark", "accounts", "requests", "request-details", "keys", "audit", "phone"]
    {
        assert!(shots.join(format!("{page}.png")).exists(), "no screenshot of {page}");
    }
    // Nothing secret reached the browser's pages or the gateway's log.
    let log = gw.logs();
    for secret in accounts.iter().map(|(_, key)| *key).chain([
        admin_key.as_str(),
        user_key.as_str(),
        viewer_key.as_str(),
        "sk-ant-ort01-spent",
    ]) {
        assert!(!log.contains(secret), "a secret is in the log");
        assert!(!stdout.contains(secret), "a secret reached the page text");
    }
}
