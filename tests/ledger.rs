//! The request log through the real binary: rows match what clients saw (JSON, SSE, failover, errors),
//! the writer never blocks the proxy, stats and cleanup, and Prometheus metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::{Env, Fake, Script, message_body};

async fn rows(env: &Env, expected: usize) -> Vec<serde_json::Value> {
    support::eventually(&format!("{expected} rows in the request log"), Duration::from_secs(5), async || {
        let out = env.ok(&["requests", "--since", "1h", "--json"]).await;
        let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
        (list.len() >= expected).then_some(list)
    })
    .await
}

async fn two_accounts(fake: &Fake) -> Env {
    let mut env = Env::new(fake);
    for name in ["a", "b"] {
        let key = format!("sk-ant-api03-ledger-{name}");
        fake.add_api_key(&key);
        env.ok(&["accounts", "add", name, "--api-key", &key]).await;
    }
    env.set("SWITCHYARD_RETRY_DELAY_MS", "10");
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_matches_what_clients_saw() {
    let fake = Fake::start().await;
    let env = two_accounts(&fake).await;
    let gw = env.serve().await;
    let mut opus = message_body(false);
    opus["model"] = "claude-opus-4-1".into();
    assert_eq!(gw.post("/v1/messages").json(&opus).send().await.unwrap().status(), 200);
    let streamed = gw.post("/v1/messages").json(&message_body(true)).send().await.unwrap().text().await.unwrap();
    assert!(streamed.contains("message_stop"));
    fake.push_for(
        "sk-ant-api03-ledger-a",
        Script::Status {
            status: 529,
            body: serde_json::json!({"type":"error","error":{"type":"overloaded_error","message":"x"}}),
            headers: vec![],
        },
    );
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    let bad = gw.post("/v1/messages").header("content-type", "application/json").body("{oops").send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let list = rows(&env, 4).await;
    // Newest first.
    let (invalid, failover, stream, json) = (&list[0], &list[1], &list[2], &list[3]);
    assert_eq!(
        (json["status"].as_i64(), json["stream"].as_bool(), json["model"].as_str()),
        (Some(200), Some(false), Some("claude-opus-4-1"))
    );
    assert_eq!((json["input_tokens"].as_i64(), json["output_tokens"].as_i64()), (Some(12), Some(5)));
    assert!((json["cost_usd"].as_f64().unwrap() - (12.0 * 15.0 + 5.0 * 75.0) / 1e6).abs() < 1e-12, "{json}");
    assert_eq!(json["account"], "a");
    assert!(json["error_type"].is_null(), "a fully sent JSON answer is not a disconnect: {json}");
    assert!(json["ttfb_ms"].as_i64().unwrap() <= json["duration_ms"].as_i64().unwrap());
    assert_eq!(json["ratelimit_status"], "allowed");
    assert_eq!(
        (stream["stream"].as_bool(), stream["input_tokens"].as_i64(), stream["output_tokens"].as_i64()),
        (Some(true), Some(12), Some(5))
    );
    assert!(stream["error_type"].is_null(), "{stream}");
    assert_eq!(
        (failover["attempts"].as_i64(), failover["accounts_tried"].as_str(), failover["account"].as_str()),
        (Some(2), Some("a,b"), Some("b"))
    );
    assert_eq!(
        (invalid["status"].as_i64(), invalid["error_type"].as_str()),
        (Some(400), Some("invalid_request_error"))
    );

    let text = env.ok(&["requests", "--status", "400"]).await.stdout;
    assert!(text.contains("[invalid_request_error]") && !text.contains(" 200 "), "{text}");
    let stats: serde_json::Value =
        serde_json::from_str(&env.ok(&["stats", "--by", "account", "--json"]).await.stdout).unwrap();
    assert_eq!(stats["a"]["requests"], 2);
    assert_eq!(stats["b"]["requests"], 1);
    assert_eq!(stats["-"]["errors"], 1);
    assert_eq!(stats["a"]["output_tokens"], 10);
    let by_model = env.ok(&["stats", "--by", "model"]).await.stdout;
    assert!(by_model.contains("claude-opus-4-1") && by_model.contains("p95"), "{by_model}");

    // Cleanup: dry run counts, then removes and compacts.
    let dry = env.ok(&["cleanup", "--older-than", "0s", "--dry-run"]).await.stdout;
    assert!(dry.contains("would remove 4 request(s) and 0 payload(s)"), "{dry}");
    let done = env.ok(&["cleanup", "--older-than", "0s"]).await.stdout;
    assert!(done.contains("removed 4 request(s) and 0 payload(s)"), "{done}");
    assert!(env.ok(&["requests"]).await.stdout.contains("no requests"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_writer_never_blocks_requests_and_drops_are_counted() {
    let fake = Fake::start().await;
    let mut env = two_accounts(&fake).await;
    env.set("SWITCHYARD_LOG_QUEUE", "2");
    let mut gw = env.serve().await;
    // Its start-up writes (the login link) are done once it has said how to log in.
    while !gw.next_line().await.starts_with("dashboard login") {}
    // Hold the database's write lock, as a slow disk or a long cleanup would.
    let db = env.home().join("switchyard.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
    let mut lock = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut lock).await.unwrap();
    // One request gets the writer stuck on the lock; the rest find its queue full.
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    let started = Instant::now();
    let requests = (0..40).map(|_| gw.post("/v1/messages").json(&message_body(false)).send());
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "requests waited on the log: {:?}", started.elapsed());
    let metrics = gw.get("/metrics").send().await.unwrap().text().await.unwrap();
    let dropped: f64 = metrics
        .lines()
        .find(|l| l.starts_with("switchyard_request_log_dropped_total"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .parse()
        .unwrap();
    assert!(dropped >= 30.0, "drops counted: {dropped}");
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);
    // What was queued before the queue filled is written once the lock is gone.
    let list = rows(&env, 1).await;
    assert!(list.len() <= 10, "{}", list.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_metrics_are_exposed_and_protected() {
    let fake = Fake::start().await;
    let env = two_accounts(&fake).await;
    let gw = env.serve().await;
    // The first answer is held back by the upstream: that wait is not Switchyard's own time.
    fake.push(Script::Delay(Duration::from_millis(400)));
    for stream in [false, true] {
        let r = gw.post("/v1/messages").json(&message_body(stream)).send().await.unwrap();
        let _ = r.text().await.unwrap();
    }
    // A stream's metrics are counted when it ends, just after its last byte reached the client.
    let text = support::eventually("both requests counted", Duration::from_secs(10), async || {
        let text = gw.get("/metrics").send().await.ok()?.text().await.ok()?;
        text.contains(
            r#"switchyard_requests_total{account="a",model="claude-fake",status="200",dialect="anthropic"} 2"#,
        )
        .then_some(text)
    })
    .await;
    assert!(text.contains(r#"switchyard_tokens_total{account="a",model="claude-fake",kind="output"} 10"#), "{text}");
    assert!(text.contains("switchyard_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("switchyard_upstream_ttfb_seconds"), "{text}");
    assert!(text.contains("switchyard_open_streams 0"), "{text}");
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing: {text}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert_eq!(value("switchyard_overhead_seconds_count "), 2.0, "{text}");
    let own = value("switchyard_overhead_seconds_sum ");
    assert!(own > 0.0 && own < 0.4, "the upstream's 400 ms are not counted as overhead: {own}");
    assert!(text.contains(r#"switchyard_overhead_seconds_bucket{le="+Inf"} 2"#), "{text}");
    assert!(!text.contains("sk-ant-"), "no secrets in labels");
    drop(gw);

    // Once keys exist, metrics need dashboard.view.
    let viewer = env.ok(&["keys", "create", "grafana", "--role", "viewer"]).await.stdout.trim().to_owned();
    let user = env.ok(&["keys", "create", "app"]).await.stdout.trim().to_owned();
    let gw = env.serve().await;
    assert_eq!(gw.get("/metrics").send().await.unwrap().status(), 401);
    assert_eq!(gw.get("/metrics").header("x-api-key", &user).send().await.unwrap().status(), 401);
    assert_eq!(gw.get("/metrics").bearer_auth(&viewer).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_are_enforced_visible_and_survive_a_restart() {
    let fake = Fake::start().await;
    let env = two_accounts(&fake).await;
    let tokens = env.ok(&["keys", "create", "small", "--budget-tokens-day", "20"]).await.stdout.trim().to_owned();
    let dollars = env.ok(&["keys", "create", "cheap", "--budget-usd-day", "0.0005"]).await.stdout.trim().to_owned();
    let gw = env.serve().await;
    let send = |key: &str, model: &str| {
        let mut body = message_body(false);
        body["model"] = model.into();
        gw.post("/v1/messages").header("x-api-key", key).json(&body).send()
    };
    // 17 tokens per reply: two fit under 20 (checked before each request), the third is refused.
    assert_eq!(send(&tokens, "claude-fake").await.unwrap().status(), 200);
    assert_eq!(send(&tokens, "claude-fake").await.unwrap().status(), 200);
    let refused = send(&tokens, "claude-fake").await.unwrap();
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait), "{wait}");
    let (kind, message) = support::error_type(refused, 429).await;
    assert_eq!(kind, "rate_limit_error");
    assert!(message.contains("daily token budget of 20"), "{message}");
    // Opus replies cost $0.000555 each: the second is refused.
    assert_eq!(send(&dollars, "claude-opus-4-1").await.unwrap().status(), 200);
    let (_, message) = support::error_type(send(&dollars, "claude-opus-4-1").await.unwrap(), 429).await;
    assert!(message.contains("daily spend budget of $0.00"), "{message}");

    rows(&env, 5).await; // written by the background writer
    let keys: serde_json::Value = serde_json::from_str(&env.ok(&["keys", "list", "--json"]).await.stdout).unwrap();
    let small = keys.as_array().unwrap().iter().find(|k| k["name"] == "small").unwrap();
    assert_eq!(small["tokens_today"], 34);
    let cheap = keys.as_array().unwrap().iter().find(|k| k["name"] == "cheap").unwrap();
    assert!(cheap["spend_usd_today"].as_f64().unwrap() > 0.0005);
    let by_key: serde_json::Value =
        serde_json::from_str(&env.ok(&["stats", "--by", "key", "--json"]).await.stdout).unwrap();
    assert_eq!(by_key["small"]["requests"], 3);

    // Spend is remembered across a restart; raising the budget lets the key through again.
    drop(gw);
    let gw = env.serve().await;
    let again = gw.post("/v1/messages").header("x-api-key", &tokens).json(&message_body(false)).send().await.unwrap();
    assert_eq!(again.status(), 429);
    env.ok(&["keys", "set", "small", "--budget-tokens-day", "1000"]).await;
    gw.settle().await;
    let raised = gw.post("/v1/messages").header("x-api-key", &tokens).json(&message_body(false)).send().await.unwrap();
    assert_eq!(raised.status(), 200);
}

fn file_contains(env: &Env, needle: &str) -> bool {
    ["switchyard.db", "switchyard.db-wal"]
        .iter()
        .any(|f| support::contains(&std::fs::read(env.home().join(f)).unwrap_or_default(), needle))
}

#[tokio::test(flavor = "multi_thread")]
async fn payloads_are_kept_by_policy_redacted_and_encrypted() {
    let fake = Fake::start().await;
    let mut env = two_accounts(&fake).await;
    env.set("SWITCHYARD_PAYLOADS", "errors");
    env.set("SWITCHYARD_REDACT", "customer-[0-9]+");
    let gw = env.serve().await;
    let mut ok_body = message_body(false);
    ok_body["messages"][0]["content"] = "plain question customer-42".into();
    assert_eq!(gw.post("/v1/messages").json(&ok_body).send().await.unwrap().status(), 200);
    let bad = "{\"note\": \"broken sk-ant-api03-leakme customer-77 oopsmarker";
    let r = gw.post("/v1/messages").header("content-type", "application/json").body(bad).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let list = rows(&env, 2).await;
    let (failed, fine) = (&list[0], &list[1]);
    let shown: serde_json::Value =
        serde_json::from_str(&env.ok(&["requests", "--id", failed["id"].as_str().unwrap()]).await.stdout).unwrap();
    let request = shown["payload"]["request"].as_str().unwrap();
    assert!(request.contains("oopsmarker") && request.contains("[REDACTED]"), "{request}");
    assert!(!request.contains("leakme") && !request.contains("customer-77"), "{request}");
    assert!(shown["payload"]["response"].as_str().unwrap().contains("invalid_request_error"));
    let fine_shown: serde_json::Value =
        serde_json::from_str(&env.ok(&["requests", "--id", fine["id"].as_str().unwrap()]).await.stdout).unwrap();
    assert!(fine_shown["payload"].is_null(), "successes are not kept under `errors`");
    // Encrypted at rest: neither the body nor the secret is in the database files.
    assert!(!file_contains(&env, "oopsmarker") && !file_contains(&env, "leakme"));
    drop(gw);

    env.set("SWITCHYARD_PAYLOADS", "full");
    let gw = env.serve().await;
    assert!(!gw.post("/v1/messages").json(&message_body(true)).send().await.unwrap().text().await.unwrap().is_empty());
    let list = rows(&env, 3).await;
    let streamed: serde_json::Value =
        serde_json::from_str(&env.ok(&["requests", "--id", list[0]["id"].as_str().unwrap()]).await.stdout).unwrap();
    assert!(streamed["payload"]["response"].as_str().unwrap().contains("message_stop"), "{streamed}");
    assert!(!file_contains(&env, "message_stop"), "stored sealed");
    // A key split over several stream deltas, and token fields in a request's nested JSON string: the
    // client gets the stream as it was, the kept payload has neither.
    fake.push(Script::Text(vec!["the key is sk-an".into(), "t-api03-SPLITSECRET".into(), "TAIL and more".into()]));
    let mut body = message_body(true);
    body["messages"][0]["content"] = r#"{"accessToken": "NESTEDSECRET", "auth": "Basic dXNlcjpodW50ZXIy"}"#.into();
    let answer = gw.post("/v1/messages").json(&body).send().await.unwrap().text().await.unwrap();
    assert!(answer.contains("SPLITSECRET"), "the client's stream is untouched");
    let list = rows(&env, 4).await;
    let kept: serde_json::Value =
        serde_json::from_str(&env.ok(&["requests", "--id", list[0]["id"].as_str().unwrap()]).await.stdout).unwrap();
    let (request, response) =
        (kept["payload"]["request"].as_str().unwrap(), kept["payload"]["response"].as_str().unwrap());
    assert!(response.contains("the key is [REDACTED]") && response.contains(" and more"), "{response}");
    for gone in ["SPLITSECRET", "TAIL", "t-api03"] {
        assert!(!response.contains(gone), "{gone} kept: {response}");
    }
    assert!(!request.contains("NESTEDSECRET") && !request.contains("dXNlcjpodW50ZXIy"), "{request}");
    let out = env.ok(&["cleanup", "--older-than", "0s", "--type", "payloads"]).await.stdout;
    assert!(out.contains("removed 0 request(s) and 3 payload(s)"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_reach_the_webhook_without_blocking_requests() {
    let (hook, received) = support::webhook().await;

    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    env.ok(&["accounts", "import", "max", "--refresh-token", "sk-ant-ort01-spent"]).await;
    fake.add_api_key("sk-ant-api03-alerts");
    env.ok(&["accounts", "add", "k", "--api-key", "sk-ant-api03-alerts"]).await;
    env.set("SWITCHYARD_ALERT_WEBHOOK_URL", &hook);
    env.set("SWITCHYARD_ALERT_UTILIZATION", "0.2");
    let gw = env.serve().await;
    // max's refresh token is refused (needs login); k serves and reports 25% / 30% utilization (over 20%).
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    fake.push_for("sk-ant-api03-alerts", Script::limited(support::fake::now_secs() + 600));
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 429);
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 429);
    let kinds = support::eventually("the three kinds of alert", Duration::from_secs(10), async || {
        let kinds: Vec<String> =
            received.lock().unwrap().iter().map(|v| v["kind"].as_str().unwrap().to_owned()).collect();
        let wanted = ["account_needs_login", "utilization", "all_accounts_limited"];
        wanted.iter().all(|k| kinds.iter().any(|x| x == k)).then_some(kinds)
    })
    .await;
    // Each window alerts on its own: 25% of the 5-hour limit and 30% of the 7-day one are both over 20%.
    support::eventually("an alert per window", Duration::from_secs(10), async || {
        (received.lock().unwrap().iter().filter(|v| v["kind"] == "utilization").count() >= 2).then_some(())
    })
    .await;
    let mut windows: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "utilization")
        .map(|v| format!("{} {}", v["window"].as_str().unwrap(), v["message"].as_str().unwrap()))
        .collect();
    windows.sort();
    assert_eq!(windows, ["5h account k is at 25% of its 5-hour limit", "7d account k is at 30% of its 7-day limit"]);
    let needs_login = received.lock().unwrap().iter().find(|v| v["kind"] == "account_needs_login").cloned().unwrap();
    assert_eq!(needs_login["subject"], "max");
    assert_eq!(kinds.iter().filter(|k| *k == "all_accounts_limited").count(), 1, "not repeated within 15 minutes");
    assert!(!format!("{:?}", received.lock().unwrap()).contains("sk-ant-"), "no secrets in alerts");
}

/// Requests and attempts are counted apart, and agree with the log: three requests that fail over four
/// times each are three failed requests (at the last account tried) and twelve failed attempts; answers
/// no route takes (404, 405) are logged too, and the text form shows each path.
#[tokio::test(flavor = "multi_thread")]
async fn requests_and_attempts_are_counted_apart_and_match_the_log() {
    let fake = Fake::start().await;
    let env = two_accounts(&fake).await;
    let gw = env.serve().await;
    let overloaded = || Script::Status {
        status: 529,
        body: serde_json::json!({"type":"error","error":{"type":"overloaded_error","message":"busy"}}),
        headers: vec![],
    };
    for _ in 0..12 {
        fake.push(overloaded());
    }
    for _ in 0..3 {
        let r = gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap();
        assert_eq!(r.status(), 529);
    }
    assert_eq!(gw.get("/v2/nothing").send().await.unwrap().status(), 404);
    assert_eq!(gw.client.put(format!("{}/v1/messages", gw.url)).send().await.unwrap().status(), 405);
    let log = rows(&env, 5).await;
    let failed: Vec<&serde_json::Value> =
        log.iter().filter(|r| r["path"] == "/v1/messages" && r["status"] == 529).collect();
    assert_eq!(failed.len(), 3, "{log:?}");
    for row in &failed {
        assert_eq!(row["attempts"], 4);
        let last = row["accounts_tried"].as_str().unwrap().rsplit(',').next().unwrap();
        assert_eq!(row["account"].as_str(), Some(last), "{row}");
    }
    assert!(log.iter().any(|r| r["path"] == "/v2/nothing" && r["status"] == 404));
    assert!(log.iter().any(|r| r["method"] == "PUT" && r["status"] == 405));

    let accounts = support::eventually("counters written", Duration::from_secs(5), async || {
        let out = env.ok(&["accounts", "list", "--json"]).await.stdout;
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        let sum = |f: &str| list.iter().map(|a| a[f].as_u64().unwrap()).sum::<u64>();
        (sum("failed_attempts") == 12).then(|| (sum("requests"), sum("failures"), sum("attempts")))
    })
    .await;
    assert_eq!(accounts, (3, 3, 12));
    let by_account: serde_json::Value =
        serde_json::from_str(&env.ok(&["stats", "--by", "account", "--json"]).await.stdout).unwrap();
    let proxied: i64 = ["a", "b"].iter().map(|a| by_account[a]["requests"].as_i64().unwrap_or(0)).sum();
    assert_eq!(proxied, 3, "{by_account}");
    let text = env.ok(&["requests"]).await.stdout;
    assert!(text.contains("/v1/messages") && text.contains("/v2/nothing"), "{text}");
}

/// Client strings cannot grow memory without bound: distinct model names fold into a bounded set of metric
/// labels (`other` beyond it), and huge session identities are kept as digests.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn client_strings_do_not_grow_metrics_or_memory() {
    let fake = Fake::start().await;
    let env = two_accounts(&fake).await;
    let gw = env.serve().await;
    let rss = || support::rss_mib(gw.child.id().unwrap());
    let before = rss();
    let session = "s".repeat(100_000);
    for i in 0..300 {
        let mut body = message_body(false);
        body["model"] = format!("claude-{i}-{}", "m".repeat(2_000)).into();
        body["metadata"] = serde_json::json!({ "user_id": format!("{session}{i}") });
        assert_eq!(gw.post("/v1/messages").json(&body).send().await.unwrap().status(), 200);
    }
    for i in 0..100 {
        let mut body = message_body(false);
        body["model"] = format!("claude-short-{i}").into();
        assert_eq!(gw.post("/v1/messages").json(&body).send().await.unwrap().status(), 200);
    }
    let metrics = gw.get("/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.len() < 200_000, "/metrics is {} bytes", metrics.len());
    assert!(metrics.contains("model=\"other\""), "long or surplus models fold into other");
    assert!(!metrics.contains("mmmmmmmmmm"), "a long model name became a label");
    let grown = rss().saturating_sub(before);
    assert!(grown < 64, "300 requests with 100 KB session ids grew the server by {grown} MiB");
}

/// Prompt-cache tokens are counted per account, key and model, priced at the cache prices, and the
/// cache hit ratio is in `stats` and on `/metrics` (as token counts by kind).
#[tokio::test(flavor = "multi_thread")]
async fn prompt_cache_tokens_are_counted_priced_and_rated() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    fake.add_api_key("sk-ant-api03-cache");
    env.ok(&["accounts", "add", "c", "--api-key", "sk-ant-api03-cache"]).await;
    let key = env.ok(&["keys", "create", "cached", "--role", "admin"]).await.stdout.trim().to_owned();
    fake.push_for(
        "sk-ant-api03-cache",
        Script::Status {
            status: 200,
            body: serde_json::json!({"id":"msg_c","type":"message","role":"assistant","model":"claude-sonnet-4-5",
                "content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn",
                "usage":{"input_tokens":100,"output_tokens":10,"cache_read_input_tokens":300,"cache_creation_input_tokens":100}}),
            headers: vec![],
        },
    );
    let gw = env.serve().await;
    let mut body = message_body(false);
    body["model"] = "claude-sonnet-4-5".into();
    let r = gw.post("/v1/messages").header("x-api-key", &key).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let expected = (100.0 * 3.0 + 10.0 * 15.0 + 300.0 * 0.3 + 100.0 * 3.75) / 1e6;
    for by in ["account", "key", "model"] {
        let stats = support::eventually("the request in the stats", std::time::Duration::from_secs(5), async || {
            let stats: serde_json::Value =
                serde_json::from_str(&env.ok(&["stats", "--by", by, "--json"]).await.stdout).ok()?;
            let group = stats.as_object()?.values().next()?.clone();
            (group["requests"] == 1).then_some(group)
        })
        .await;
        assert_eq!(
            (stats["cache_read_tokens"].as_i64(), stats["cache_creation_tokens"].as_i64()),
            (Some(300), Some(100))
        );
        assert!((stats["cache_hit_ratio"].as_f64().unwrap() - 0.6).abs() < 1e-9, "{by}: {stats}");
        assert!((stats["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12, "{by}: {stats}");
    }
    assert!(env.ok(&["stats"]).await.stdout.contains("(cache hit 60%)"));
    let metrics = gw.get("/metrics").header("x-api-key", &key).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_tokens_total{")
            && l.contains("kind=\"cache_read\"")
            && l.ends_with(" 300")),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with("switchyard_key_tokens_total{")
            && l.contains("key=\"cached\"")
            && l.contains("kind=\"cache_creation\"")
            && l.ends_with(" 100")),
        "{metrics}"
    );
}
