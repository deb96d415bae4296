//! Who may use the gateway, through the real binary: client keys (create, use, revoke, rotate, expire),
//! roles, per-key limits, account restriction, the failed-attempt brake, the non-loopback refusal, the
//! audit log, and random credentials that must never get through.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Env, Fake, Gateway, error_type, message_body};

async fn env_with_accounts(fake: &Fake, names: &[&str]) -> Env {
    let env = Env::new(fake);
    for name in names {
        let key = format!("sk-ant-api03-upstream-{name}");
        fake.add_api_key(&key);
        env.ok(&["accounts", "add", name, "--api-key", &key]).await;
    }
    env
}

async fn create_key(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["keys", "create"];
    all.extend_from_slice(args);
    let out = env.ok(&all).await;
    let key = out.stdout.trim().to_owned();
    assert!(key.starts_with("sy-") && key.len() == 46, "{key}");
    key
}

fn send(gw: &Gateway, key: Option<&str>) -> reqwest::RequestBuilder {
    let r = gw.post("/v1/messages").json(&message_body(false));
    match key {
        Some(k) => r.header("x-api-key", k),
        None => r,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_gate_the_proxy_once_one_exists() {
    let fake = Fake::start().await;
    let env = env_with_accounts(&fake, &["a"]).await;
    let gw = env.serve().await;
    // No keys, loopback: open for single-user use.
    assert_eq!(send(&gw, None).send().await.unwrap().status(), 200);

    let key = create_key(&env, &["alice"]).await;
    // A new key works on its first request: not yet in memory, it is looked up before it is refused.
    assert_eq!(send(&gw, Some(&key)).send().await.unwrap().status(), 200);
    gw.settle().await;
    let (kind, message) = error_type(send(&gw, None).send().await.unwrap(), 401).await;
    assert_eq!(kind, "authentication_error");
    assert!(message.contains("x-api-key or Authorization: Bearer"), "{message}");
    let (_, message) = error_type(send(&gw, Some("sy-wrong")).send().await.unwrap(), 401).await;
    assert_eq!(message, "invalid API key");
    let before = fake.requests().len();
    assert_eq!(send(&gw, Some(&key)).send().await.unwrap().status(), 200);
    let bearer = gw.post("/v1/messages").bearer_auth(&key).json(&message_body(false)).send().await.unwrap();
    assert_eq!(bearer.status(), 200, "the Python SDK sends the key as a bearer token");
    assert_eq!(fake.requests().len(), before + 2, "refused requests never reached the upstream");
    let seen = fake.last_request();
    assert_eq!(seen.header("x-api-key").as_deref(), Some("sk-ant-api03-upstream-a"));
    assert_eq!(seen.header("authorization"), None);
    // /health stays open.
    assert_eq!(gw.get("/health").send().await.unwrap().status(), 200);

    // Only a hash is stored; listing shows no secret.
    for (path, bytes) in [("switchyard.db", "db"), ("switchyard.db-wal", "wal")] {
        let data = std::fs::read(env.home().join(path)).unwrap_or_default();
        assert!(!data.windows(key.len()).any(|w| w == key.as_bytes()), "{bytes} holds the key");
    }
    let list = env.ok(&["keys", "list", "--json"]).await.stdout;
    assert!(!list.contains(&key[3..]), "{list}");
    let listed: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        (listed[0]["name"].as_str(), listed[0]["role"].as_str(), listed[0]["status"].as_str()),
        (Some("alice"), Some("user"), Some("active"))
    );
    let text = env.ok(&["keys", "list"]).await.stdout;
    let fingerprint = listed[0]["fingerprint"].as_str().unwrap();
    assert!(text.starts_with("alice") && text.contains("user    active"), "{text}");
    assert!(text.contains(&format!("fingerprint {fingerprint} spend today $0.0000")), "{text}");
    assert!(!text.contains(&key[3..]), "{text}");

    // Rotate: old key dies, new one works. Revoke: refused.
    let rotated = env.ok(&["keys", "rotate", "alice"]).await.stdout.trim().to_owned();
    gw.settle().await;
    assert_eq!(send(&gw, Some(&key)).send().await.unwrap().status(), 401);
    assert_eq!(send(&gw, Some(&rotated)).send().await.unwrap().status(), 200);
    env.ok(&["keys", "revoke", "alice"]).await;
    gw.settle().await;
    let (_, message) = error_type(send(&gw, Some(&rotated)).send().await.unwrap(), 401).await;
    assert!(message.contains("revoked"), "{message}");
    assert_eq!(env.run(&["keys", "revoke", "alice"], "").await.code, Some(1));

    // Expiry.
    let short = create_key(&env, &["brief", "--expires", "1s"]).await;
    let created = std::time::Instant::now();
    gw.settle().await;
    let response = support::eventually("the key to expire", Duration::from_secs(5), async || {
        let r = send(&gw, Some(&short)).send().await.ok()?;
        (r.status() == 401).then_some(r)
    })
    .await;
    assert!(created.elapsed() >= Duration::from_millis(900), "expired early");
    let (_, message) = error_type(response, 401).await;
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_and_account_restrictions() {
    let fake = Fake::start().await;
    let env = env_with_accounts(&fake, &["a", "b"]).await;
    let viewer = create_key(&env, &["watcher", "--role", "viewer"]).await;
    let only_b = create_key(&env, &["team-b", "--accounts", "b"]).await;
    let admin = create_key(&env, &["root", "--role", "admin"]).await;
    let gw = env.serve().await;
    let (kind, _) = error_type(send(&gw, Some(&viewer)).send().await.unwrap(), 403).await;
    assert_eq!(kind, "permission_error");
    for _ in 0..3 {
        assert_eq!(send(&gw, Some(&only_b)).send().await.unwrap().status(), 200);
        assert_eq!(fake.last_request().header("x-api-key").as_deref(), Some("sk-ant-api03-upstream-b"));
    }
    let pinned = send(&gw, Some(&only_b)).header("x-switchyard-account", "a").send().await.unwrap();
    let (kind, message) = error_type(pinned, 403).await;
    assert_eq!(kind, "permission_error");
    assert!(message.contains("may not use account \"a\""), "{message}");
    let pinned = send(&gw, Some(&admin)).header("x-switchyard-account", "a").send().await.unwrap();
    assert_eq!(pinned.status(), 200);
}

/// Account names (often e-mail addresses) stay out of errors a `user` key sees: it hears what happened
/// and whether waiting helps; a key that may read the logs, and the log itself, get the names.
#[tokio::test(flavor = "multi_thread")]
async fn user_keys_get_errors_without_account_names() {
    let fake = Fake::start().await;
    let env = env_with_accounts(&fake, &["alice-at-work", "bob-at-home"]).await;
    let user = create_key(&env, &["app"]).await;
    let admin = create_key(&env, &["root", "--role", "admin"]).await;
    env.ok(&["accounts", "pause", "alice-at-work"]).await;
    env.ok(&["accounts", "pause", "bob-at-home"]).await;
    let gw = env.serve().await;
    let (kind, message) = error_type(send(&gw, Some(&user)).send().await.unwrap(), 503).await;
    assert!(!message.contains("alice") && !message.contains("bob"), "{message}");
    assert!(message.contains("no account can serve"), "{kind}: {message}");
    let (_, detailed) = error_type(send(&gw, Some(&admin)).send().await.unwrap(), 503).await;
    assert!(detailed.contains("alice-at-work is paused") && detailed.contains("bob-at-home"), "{detailed}");
    assert!(gw.logs().contains("alice-at-work is paused"), "the operator's log has the story");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_key_limits_answer_429_with_retry_after() {
    let fake = Fake::start().await;
    let env = env_with_accounts(&fake, &["a"]).await;
    let slow = create_key(&env, &["slow", "--rpm", "2"]).await;
    let narrow = create_key(&env, &["narrow", "--concurrency", "1"]).await;
    let small = create_key(&env, &["small", "--tpm", "100"]).await;
    let gw = env.serve().await;

    assert_eq!(send(&gw, Some(&slow)).send().await.unwrap().status(), 200);
    assert_eq!(send(&gw, Some(&slow)).send().await.unwrap().status(), 200);
    let third = send(&gw, Some(&slow)).send().await.unwrap();
    let retry_after: u64 = third.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    // The minute is a window, not an average: the third waits until the first has left it (a token bucket
    // would let it in after 30 s).
    assert!((58..=61).contains(&retry_after), "{retry_after}");
    let (kind, message) = error_type(third, 429).await;
    assert_eq!(kind, "rate_limit_error");
    assert!(message.contains("requests-per-minute"), "{message}");

    // Concurrency: a stream held open occupies the only slot until its last byte.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    fake.lock().sse_gate = Some(gate.clone());
    let mut stream =
        gw.post("/v1/messages").header("x-api-key", &narrow).json(&message_body(true)).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let _first = stream.chunk().await.unwrap();
    let (_, message) = error_type(send(&gw, Some(&narrow)).send().await.unwrap(), 429).await;
    assert!(message.contains("concurrent"), "{message}");
    gate.add_permits(100);
    while stream.chunk().await.unwrap().is_some() {}
    drop(stream);
    fake.lock().sse_gate = None;
    // The slot is given back when the stream ends, just after its last byte.
    support::eventually("the concurrency slot to come back", Duration::from_secs(5), async || {
        (send(&gw, Some(&narrow)).send().await.ok()?.status() == 200).then_some(())
    })
    .await;

    // Input tokens per minute, estimated from the body.
    let mut big = message_body(false);
    big["messages"][0]["content"] = "x".repeat(2000).into();
    let r = gw.post("/v1/messages").header("x-api-key", &small).json(&big).send().await.unwrap();
    let (_, message) = error_type(r, 429).await;
    assert!(message.contains("input-tokens-per-minute"), "{message}");
    assert_eq!(send(&gw, Some(&small)).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failures_from_one_address_are_braked() {
    let fake = Fake::start().await;
    let mut env = env_with_accounts(&fake, &["a"]).await;
    env.set("SWITCHYARD_AUTH_FAILURES_PER_MINUTE", "3");
    create_key(&env, &["k"]).await;
    let gw = env.serve().await;
    for _ in 0..3 {
        assert_eq!(send(&gw, Some("sy-guess")).send().await.unwrap().status(), 401);
    }
    let r = send(&gw, Some("sy-guess")).send().await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    let (_, message) = error_type(r, 429).await;
    assert!(message.contains("too many failed attempts"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn non_loopback_without_keys_is_refused() {
    let fake = Fake::start().await;
    let env = env_with_accounts(&fake, &["a"]).await;
    let out = env.command(&["serve", "--host", "0.0.0.0", "--port", "0"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0") && stderr.contains("--allow-unauthenticated"), "{stderr}");

    // With the override it starts, loudly.
    let mut child = env
        .command(&["serve", "--host", "0.0.0.0", "--port", "0", "--allow-unauthenticated"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(line.starts_with("switchyard listening on http://0.0.0.0:"), "{line}");
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("WITHOUT CLIENT KEYS"));

    // With a key it starts without the override.
    create_key(&env, &["k"]).await;
    let mut child = env
        .command(&["serve", "--host", "0.0.0.0", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(line.starts_with("switchyard listening on"), "{line}");
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn administrative_actions_are_audited() {
    let fake = Fake::start().await;
    let env = env_with_accounts(&fake, &["a"]).await;
    create_key(&env, &["k", "--role", "admin"]).await;
    env.ok(&["keys", "revoke", "k"]).await;
    env.ok(&["accounts", "pause", "a"]).await;
    env.ok(&["accounts", "remove", "a"]).await;
    let entries: serde_json::Value = serde_json::from_str(&env.ok(&["audit", "--json"]).await.stdout).unwrap();
    let actions: Vec<&str> = entries.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    // Newest first, like every other listing.
    assert_eq!(actions, ["accounts.remove", "accounts.pause", "keys.revoke", "keys.create", "accounts.add"]);
    let first = &entries[3];
    assert_eq!(
        (first["target"].as_str(), first["outcome"].as_str(), first["source"].as_str()),
        (Some("k"), Some("ok"), Some("cli"))
    );
    assert!(first["actor"].as_str().unwrap().starts_with("cli:"));
    let text = env.ok(&["audit", "--since", "1h"]).await.stdout;
    assert!(text.contains("keys.revoke"), "{text}");
    assert!(env.run(&["audit", "--since", "soon"], "").await.stderr.contains("--since \"soon\" is not a duration"));
}

/// Random credentials in every place a key can travel: only the exact key ever passes, and the server
/// never fails or panics on what it is sent.
#[tokio::test(flavor = "multi_thread")]
async fn random_credentials_never_get_through() {
    let fake = Fake::start().await;
    let mut env = env_with_accounts(&fake, &["a"]).await;
    env.set("SWITCHYARD_AUTH_FAILURES_PER_MINUTE", "100000");
    env.set("SWITCHYARD_LOG_LEVEL", "warn");
    let key = create_key(&env, &["k"]).await;
    let gw = env.serve().await;
    let mut seed: u64 = 0x853C_49E6_748F_EA9B;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet: Vec<char> = "sy-ABCxyz019_=+/ \t.\u{e9}".chars().collect();
    for i in 0..300 {
        let r = next();
        let candidate: String = match r % 6 {
            0 => key[..(r as usize % key.len())].to_owned(),
            1 => format!("{key}{}", alphabet[(r >> 8) as usize % alphabet.len()]),
            2 => {
                let mut k: Vec<char> = key.chars().collect();
                let at = (r >> 8) as usize % k.len();
                k[at] = if k[at] == 'A' { 'B' } else { 'A' };
                k.into_iter().collect()
            }
            3 => key.to_uppercase(),
            _ => (0..(r % 60)).map(|j| alphabet[((r >> (j % 50)) as usize + j as usize) % alphabet.len()]).collect(),
        };
        let mut request = gw.post("/v1/messages");
        request = match (r >> 20) % 3 {
            0 => match reqwest::header::HeaderValue::from_str(&candidate) {
                Ok(v) => request.header("x-api-key", v),
                Err(_) => continue,
            },
            1 => match reqwest::header::HeaderValue::from_str(&format!("Bearer {candidate}")) {
                Ok(v) => request.header("authorization", v),
                Err(_) => continue,
            },
            _ => request.header("authorization", format!("Basic {candidate}").as_bytes().to_vec()),
        };
        let body: Vec<u8> = (0..(r % 200)).map(|j| (r >> (j % 56)) as u8).collect();
        let status = request.body(body).send().await.unwrap().status().as_u16();
        assert!(
            status == 401 || (candidate.trim() == key && matches!(status, 200 | 400)),
            "round {i}: {candidate:?} got {status}"
        );
    }
    assert_eq!(send(&gw, Some(&key)).send().await.unwrap().status(), 200, "the server survived");
}
