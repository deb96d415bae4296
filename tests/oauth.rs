//! OAuth through the real binary: PKCE login in all three flows, imports, refresh on expiry and on 401,
//! single-flight under concurrency, refusals, and no token ever left in plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Env, Fake, contains, error_type, files_under, message_body};

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

async fn accounts_json(env: &Env) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["accounts", "list", "--json"]).await.stdout).unwrap()
}

fn assert_no_secret_in(haystack: &[u8], secrets: &[String], place: &str) {
    for secret in secrets {
        assert!(!contains(haystack, secret), "{place} contains the secret {secret}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paste_flow_logs_in_with_pkce() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let mut login = env.start_interactive(&["auth", "login", "--no-browser", "--account", "alice"], &[]).await;
    assert!(login.url.as_str().starts_with(&format!("{}/oauth/authorize?", fake.url())));
    assert_eq!(login.param("code_challenge_method"), "S256");
    assert_eq!(login.param("client_id"), support::fake::CLIENT_ID);
    assert_eq!(login.param("redirect_uri"), format!("{}/oauth/code/callback", fake.url()));
    assert!(login.param("scope").contains("user:inference"));
    let state = login.param("state");
    let code = fake.authorize(&login.param("code_challenge"), &login.param("redirect_uri"));
    login.send_line(&format!("{code}#{state}")).await;
    let out = login.finish().await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("user@example.com"), "{}", out.stdout);

    let accounts = accounts_json(&env).await;
    assert_eq!(accounts[0]["name"], "alice");
    assert_eq!(accounts[0]["kind"], "oauth");
    assert_eq!(accounts[0]["status"], "active");
    assert_eq!(accounts[0]["email"], "user@example.com");
    assert_eq!(accounts[0]["organization"], "Fake Org");

    // The saved tokens work, without a refresh. Logs at their most verbose must still hold no secret.
    let mut env = env;
    env.set("SWITCHYARD_LOG_LEVEL", "trace");
    let gw = env.serve().await;
    let send = |stream: bool| gw.post("/v1/messages").json(&message_body(stream)).send();
    assert_eq!(send(false).await.unwrap().status(), 200);
    let streamed = send(true).await.unwrap().text().await.unwrap();
    assert!(streamed.contains("message_stop"));
    assert_eq!(fake.refresh_calls(), 0);
    // Force a refresh so a token-endpoint round trip is logged too.
    fake.lock().valid_access.clear();
    assert_eq!(send(false).await.unwrap().status(), 200);
    assert_eq!(fake.refresh_calls(), 1);

    // Nothing secret anywhere: data directory, logs, CLI output.
    let status = env.ok(&["auth", "status", "--json"]).await;
    let issued = fake.lock().issued.clone();
    assert!(!issued.is_empty());
    for (path, bytes) in files_under(env.home()) {
        assert_no_secret_in(&bytes, &issued, &path.display().to_string());
    }
    assert_no_secret_in(status.stdout.as_bytes(), &issued, "auth status");
    let logs = gw.logs();
    assert!(logs.contains("refreshed OAuth token") && logs.contains("TRACE"), "trace logs were written: {logs}");
    assert_no_secret_in(logs.as_bytes(), &issued, "serve log");
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_login_is_finished_later_with_code() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let login = env.start_interactive(&["auth", "login", "--no-browser"], &[]).await;
    let (state, challenge, redirect) =
        (login.param("state"), login.param("code_challenge"), login.param("redirect_uri"));
    let out = login.finish().await; // stdin ends without a code
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("auth login --code"), "{}", out.stdout);
    assert_eq!(accounts_json(&env).await, serde_json::json!([]));

    let code = fake.authorize(&challenge, &redirect);
    let pasted = format!("{code}#{state}");
    // The token endpoint cannot be reached: the login stays pending for another try.
    let dead = format!("{}/v1/oauth/token", support::closed_port_url());
    let mut cut = env.command(&["auth", "login", "--code", &pasted]);
    cut.env("SWITCHYARD_OAUTH_TOKEN_URL", &dead).stdin(std::process::Stdio::null());
    let failed = cut.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach the authorization server") && stderr.contains("still pending"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    assert_eq!(errors[0].matches("cannot reach").count(), 1, "the cause once: {}", errors[0]);
    let out = env.ok(&["auth", "login", "--code", &pasted]).await;
    assert!(out.stdout.contains("user@example.com"));
    assert_eq!(accounts_json(&env).await[0]["name"], "user@example.com");

    // A pending login is used once.
    let again = env.run(&["auth", "login", "--code", &pasted], "").await;
    assert_eq!(again.code, Some(1));
    assert!(again.stderr.contains("no pending login"), "{}", again.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_codes_print_one_line_and_save_nothing() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);

    // Wrong state.
    let mut login = env.start_interactive(&["auth", "login", "--no-browser"], &[]).await;
    let code = fake.authorize(&login.param("code_challenge"), &login.param("redirect_uri"));
    login.send_line(&format!("{code}#not-the-state")).await;
    let out = login.finish().await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("state mismatch"), "{}", out.stderr);
    assert_eq!(out.stderr.matches("error: ").count(), 1, "one line of reason: {}", out.stderr);

    // Right state, code the server does not know (expired / used): invalid_grant.
    let mut login = env.start_interactive(&["auth", "login", "--no-browser"], &[]).await;
    let state = login.param("state");
    login.send_line(&format!("expired-code#{state}")).await;
    let out = login.finish().await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("invalid_grant"), "{}", out.stderr);
    assert_eq!(out.stderr.matches("refused the grant").count(), 1, "the cause once: {}", out.stderr);

    // Unknown state for --code, and garbage.
    let out = env.run(&["auth", "login", "--code", "abc#unknown"], "").await;
    assert_eq!(out.code, Some(1));
    let out = env.run(&["auth", "login", "--code", "no-hash-here"], "").await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("CODE#STATE"), "{}", out.stderr);

    assert_eq!(accounts_json(&env).await, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_flow_finishes_on_the_loopback_callback() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    // The "browser" records what it was given: the URL, and an environment without our settings.
    let dir = tempfile::tempdir().unwrap();
    let browser = dir.path().join("browser");
    std::fs::write(&browser, "#!/bin/sh\nenv > \"$0.env\"\necho \"$1\" > \"$0.url\"\n").unwrap();
    std::fs::set_permissions(&browser, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let extra = [
        ("DISPLAY", ":99"),
        ("BROWSER", browser.to_str().unwrap()),
        ("SWITCHYARD_ADMIN_PASSWORD", "an admin password here"),
    ];
    let login = env.start_interactive(&["auth", "login", "--account", "bob"], &extra).await;
    let seen = support::eventually("the browser ran", Duration::from_secs(10), async || {
        std::fs::read_to_string(dir.path().join("browser.url")).ok().filter(|u| u.ends_with('\n'))
    })
    .await;
    assert_eq!(seen.trim(), login.url.as_str());
    let environment = std::fs::read_to_string(dir.path().join("browser.env")).unwrap();
    assert!(environment.contains("DISPLAY=:99"), "{environment}");
    for secret in ["SWITCHYARD_", "an admin password here"] {
        assert!(!environment.contains(secret), "{secret} reached the browser: {environment}");
    }
    let redirect = login.param("redirect_uri");
    assert!(redirect.starts_with("http://localhost:") && redirect.ends_with("/callback"), "{redirect}");
    let code = fake.authorize(&login.param("code_challenge"), &redirect);
    let port = url::Url::parse(&redirect).unwrap().port().unwrap();
    let client = reqwest::Client::new();
    // The wrong state is refused and does not end the login.
    let bad = client.get(format!("http://127.0.0.1:{port}/callback?code={code}&state=evil")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let mut callback = url::Url::parse(&format!("http://127.0.0.1:{port}/callback")).unwrap();
    callback.query_pairs_mut().append_pair("code", &code).append_pair("state", &login.param("state"));
    let page = client.get(callback).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("login complete"));
    let out = login.finish().await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(accounts_json(&env).await[0]["name"], "bob");
}

#[tokio::test(flavor = "multi_thread")]
async fn console_login_stores_the_created_api_key() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let mut login =
        env.start_interactive(&["auth", "login", "--console", "--no-browser", "--account", "team"], &[]).await;
    assert!(login.url.as_str().starts_with(&format!("{}/console/oauth/authorize?", fake.url())));
    let code = fake.authorize(&login.param("code_challenge"), &login.param("redirect_uri"));
    login.send_line(&format!("{code}#{}", login.param("state"))).await;
    let out = login.finish().await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let accounts = accounts_json(&env).await;
    assert_eq!((accounts[0]["name"].as_str(), accounts[0]["kind"].as_str()), (Some("team"), Some("api_key")));
    let gw = env.serve().await;
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    assert!(fake.last_request().header("x-api-key").unwrap().starts_with("sk-ant-api03-console-"));
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_credentials_are_imported() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let (rt, at) = (fake.issue_refresh_token(), fake.issue_access_token());
    std::fs::create_dir_all(env.home().join(".claude")).unwrap();
    let creds = serde_json::json!({"claudeAiOauth": {"accessToken": at, "refreshToken": rt, "expiresAt": now_ms() + 3_600_000, "scopes": ["user:inference"], "subscriptionType": "max"}});
    std::fs::write(env.home().join(".claude/.credentials.json"), creds.to_string()).unwrap();
    let out = env.ok(&["accounts", "import", "cc", "--from-claude-code"]).await;
    assert!(out.stderr.contains("rotates Claude Code's own token"), "{}", out.stderr);
    let gw = env.serve().await;
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    assert_eq!(fake.last_request().header("authorization"), Some(format!("Bearer {at}")));
    assert_eq!(fake.refresh_calls(), 0);

    let missing = env.run(&["accounts", "import", "x", "--from-claude-code", "/nonexistent/creds.json"], "").await;
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("cannot read"), "{}", missing.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_requests_on_an_expired_token_refresh_once() {
    let fake = Fake::start().await;
    fake.lock().token_delay = Duration::from_millis(300);
    let env = Env::new(&fake);
    let rt = fake.issue_refresh_token();
    // An access token that expired a minute ago.
    let at = fake.issue_access_token();
    let expired = (now_ms() - 60_000).to_string();
    env.import_oauth("max", &rt, &at, &expired).await;
    let gw = env.serve().await;
    let requests = (0..20).map(|_| gw.post("/v1/messages").json(&message_body(false)).send());
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(fake.refresh_calls(), 1, "exactly one refresh for 20 concurrent requests");
    let used: std::collections::HashSet<_> =
        fake.requests().iter().map(|r| r.header("authorization").unwrap()).collect();
    assert_eq!(used.len(), 1, "every request used the one new token");
    assert!(!used.contains(&format!("Bearer {at}")));

    // The rotated pair was committed: after a restart the new access token is used without refreshing,
    // and the new refresh token (the old one is spent) still works on the next 401.
    drop(gw);
    let gw = env.serve().await;
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    assert_eq!(fake.refresh_calls(), 1);
    fake.lock().valid_access.clear();
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    assert_eq!(fake.refresh_calls(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_near_expiry_is_refreshed_before_use() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let (rt, at) = (fake.issue_refresh_token(), fake.issue_access_token());
    // Valid for two more minutes: inside the default five-minute margin.
    let soon = (now_ms() + 120_000).to_string();
    env.import_oauth("max", &rt, &at, &soon).await;
    let gw = env.serve().await;
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    assert_eq!(fake.refresh_calls(), 1);
    assert_ne!(fake.last_request().header("authorization"), Some(format!("Bearer {at}")));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_401_refreshes_once_and_retries() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let rt = fake.issue_refresh_token();
    let far = (now_ms() + 3_600_000).to_string();
    // An access token the upstream has revoked although it has not expired.
    env.import_oauth("max", &rt, "sk-ant-oat01-revoked", &far).await;
    let gw = env.serve().await;
    let response = gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(fake.refresh_calls(), 1);
    let seen = fake.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("authorization").as_deref(), Some("Bearer sk-ant-oat01-revoked"));
    assert_ne!(seen[1].header("authorization"), seen[0].header("authorization"));
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_refresh_token_marks_the_account_needs_login() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    env.ok(&["accounts", "import", "max", "--refresh-token", "sk-ant-ort01-already-used"]).await;
    let gw = env.serve().await;
    let (_, message) = error_type(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap(), 503).await;
    assert!(message.contains("needs a new login"), "{message}");
    assert!(!message.contains("sk-ant-"), "{message}");
    assert_eq!(fake.refresh_calls(), 1);
    // Never retried in a loop.
    let (_, message) = error_type(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap(), 503).await;
    assert!(message.contains("max needs a new login"), "{message}");
    assert_eq!(fake.refresh_calls(), 1);
    assert_eq!(accounts_json(&env).await[0]["status"], "needs-login");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_token_endpoint_cools_refreshing_down() {
    let fake = Fake::start().await;
    fake.lock().token_script.push_back((429, serde_json::json!({"error": "rate_limited"})));
    let env = Env::new(&fake);
    let rt = fake.issue_refresh_token();
    env.ok(&["accounts", "import", "max", "--refresh-token", &rt]).await;
    let gw = env.serve().await;
    let send = || gw.post("/v1/messages").json(&message_body(false)).send();
    // The first refresh (by this request, or by the background refresher at start) meets the 429.
    let first = send().await.unwrap();
    assert!(matches!(first.status().as_u16(), 429 | 503), "{}", first.status());
    // Then the account waits out the token endpoint's retry-after (120 s): the client hears when.
    let second = send().await.unwrap();
    let retry_after: u64 = second.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((100..=125).contains(&retry_after), "{retry_after}");
    let (kind, message) = error_type(second, 429).await;
    assert_eq!(kind, "rate_limit_error");
    assert!(message.contains("max is rate-limited until"), "{message}");
    assert_eq!(fake.refresh_calls(), 1);
    assert_eq!(accounts_json(&env).await[0]["status"], "active", "a rate-limited refresh is not a lost login");
}
