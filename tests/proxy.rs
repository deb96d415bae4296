//! End-to-end proxying through the real binary: JSON and SSE round trips, identity injection, header
//! handling, and every client-facing error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Env, Fake, Script, error_type, message_body};

/// A gateway with one API-key account.
async fn api_key_gateway(fake: &Fake) -> (Env, support::Gateway) {
    fake.add_api_key("sk-ant-api03-upstream-key");
    let env = Env::new(fake);
    env.ok(&["accounts", "add", "work", "--api-key", "sk-ant-api03-upstream-key"]).await;
    let gw = env.serve().await;
    (env, gw)
}

/// A gateway with one OAuth account holding a valid access token.
async fn oauth_gateway(fake: &Fake) -> (Env, support::Gateway) {
    let env = Env::new(fake);
    let (rt, at) = (fake.issue_refresh_token(), fake.issue_access_token());
    let expires = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 3_600_000)
        .to_string();
    env.import_oauth("max", &rt, &at, &expires).await;
    let gw = env.serve().await;
    (env, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn json_round_trip_with_api_key_account() {
    let fake = Fake::start().await;
    let (_env, gw) = api_key_gateway(&fake).await;
    let response = gw
        .post("/v1/messages")
        .header("x-api-key", "client-key-must-not-travel")
        .header("authorization", "Bearer client-bearer")
        .header("cookie", "session=abc")
        .header("x-forwarded-for", "10.1.2.3")
        .header("anthropic-beta", "tools-2024-04-04")
        .header("user-agent", "my-sdk/1.0")
        .json(&message_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["request-id"], "req_fake_1");
    assert_eq!(response.headers()["anthropic-ratelimit-unified-status"], "allowed");
    assert_eq!(response.headers()["anthropic-ratelimit-unified-5h-utilization"], "0.25");
    assert!(response.headers().get("set-cookie").is_none(), "upstream cookies belong to the account");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], "Hello");

    let seen = fake.last_request();
    assert_eq!(seen.header("x-api-key").as_deref(), Some("sk-ant-api03-upstream-key"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("cookie"), None);
    assert_eq!(seen.header("x-forwarded-for"), None);
    assert_eq!(seen.header("anthropic-beta").as_deref(), Some("tools-2024-04-04"), "no OAuth beta for API keys");
    assert_eq!(seen.header("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(seen.header("user-agent").as_deref(), Some("my-sdk/1.0"));
    // API-key accounts get the client's body byte for byte, no identity.
    assert_eq!(seen.body, serde_json::to_vec(&message_body(false)).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth_account_gets_bearer_beta_and_identity() {
    let fake = Fake::start().await;
    let (_env, gw) = oauth_gateway(&fake).await;
    let mut body = message_body(false);
    body["system"] = "Answer in French.".into();
    let response = gw
        .post("/v1/messages?beta=true")
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .header("anthropic-version", "2026-10-21")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", gw.logs());
    let seen = fake.last_request();
    assert_eq!(seen.path_and_query, "/v1/messages?beta=true");
    assert!(seen.header("authorization").unwrap().starts_with("Bearer sk-ant-oat01-fake-"));
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("anthropic-beta").as_deref(), Some("prompt-caching-2024-07-31,oauth-2025-04-20"));
    assert_eq!(seen.header("anthropic-version").as_deref(), Some("2026-10-21"), "client's version passes unchanged");
    assert_eq!(
        seen.json()["system"],
        serde_json::json!([
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", "text": "Answer in French."}
        ])
    );

    // Block-list system: identity prepended, the client's blocks kept after it.
    body["system"] = serde_json::json!([{"type":"text","text":"Be terse.","cache_control":{"type":"ephemeral"}}]);
    gw.post("/v1/messages").json(&body).send().await.unwrap();
    let system = fake.last_request().json()["system"].clone();
    assert_eq!(system.as_array().unwrap().len(), 2);
    assert_eq!(system[0]["text"], "You are Claude Code, Anthropic's official CLI for Claude.");
    assert_eq!(system[1], serde_json::json!({"type":"text","text":"Be terse.","cache_control":{"type":"ephemeral"}}));

    // count_tokens gets the same treatment; models gets the credential.
    let r = gw.post("/v1/messages/count_tokens").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        fake.last_request().json()["system"][0]["text"],
        "You are Claude Code, Anthropic's official CLI for Claude."
    );
    let r = gw.get("/v1/models").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["data"][0]["id"], "claude-fake");
}

/// A `system` nested deeper than the JSON parser reads is not replaced by the identity line: it goes
/// upstream as the client wrote it.
#[tokio::test(flavor = "multi_thread")]
async fn a_system_too_deep_to_read_reaches_the_upstream_unchanged() {
    let fake = Fake::start().await;
    let (_env, gw) = oauth_gateway(&fake).await;
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    let raw = format!(
        r#"{{"model":"claude-fake","max_tokens":8,"system":[{{"type":"text","text":"my own rules","x":{deep}}}],"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let r = gw.post("/v1/messages").header("content-type", "application/json").body(raw.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(std::str::from_utf8(&fake.last_request().body).unwrap(), raw);
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_requests_keep_their_system_exactly() {
    let fake = Fake::start().await;
    let (_env, gw) = oauth_gateway(&fake).await;
    let raw = r#"{"model":"claude-fake","max_tokens":64,"system":[{"type":"text","text":"x-anthropic-billing-header: cc_version=2.1.330"},{"type":"text","text":"You are a Claude agent, built on Anthropic's Claude Agent SDK."}],"messages":[{"role":"user","content":"hi"}],"metadata":{"user_id":"{\"session_id\":\"s1\"}"}}"#;
    let r = gw
        .post("/v1/messages?beta=true")
        .header("content-type", "application/json")
        .header("x-app", "cli")
        .header("x-claude-code-session-id", "s1")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = fake.last_request();
    assert_eq!(std::str::from_utf8(&seen.body).unwrap(), raw, "body must reach upstream byte for byte");
    assert_eq!(seen.header("x-app").as_deref(), Some("cli"));
    assert_eq!(seen.header("x-claude-code-session-id").as_deref(), Some("s1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_pass_through_mode_leaves_system_alone() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let rt = fake.issue_refresh_token();
    env.ok(&["accounts", "import", "max", "--refresh-token", &rt]).await;
    let mut env = env;
    env.set("SWITCHYARD_IDENTITY", "pass-through");
    let gw = env.serve().await;
    let mut body = message_body(false);
    body["system"] = "Plain.".into();
    assert_eq!(gw.post("/v1/messages").json(&body).send().await.unwrap().status(), 200);
    assert_eq!(fake.last_request().json()["system"], "Plain.");
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_events_arrive_one_by_one_before_upstream_finishes() {
    let fake = Fake::start().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    fake.lock().sse_gate = Some(gate.clone());
    let (_env, gw) = oauth_gateway(&fake).await;
    let mut response = gw.post("/v1/messages").json(&message_body(true)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(response.headers()["anthropic-ratelimit-unified-status"], "allowed");
    let mut received = String::new();
    for (i, event) in support::fake::SSE_EVENTS.iter().enumerate() {
        // The upstream holds event i+1 until we have read event i: a buffering gateway would hang here.
        while received.len() < support::fake::SSE_EVENTS[..=i].concat().len() {
            let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
                .await
                .unwrap_or_else(|_| panic!("event {i} was held back by the gateway"))
                .unwrap()
                .expect("stream ended early");
            received.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(received.ends_with(event), "event {i} arrived out of shape: {received}");
        gate.add_permits(1);
    }
    assert!(response.chunk().await.unwrap().is_none());
    assert_eq!(received, support::fake::SSE_EVENTS.concat(), "stream must be byte-faithful");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_cancels_the_upstream_stream() {
    let fake = Fake::start().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    fake.lock().sse_gate = Some(gate.clone());
    let (_env, gw) = api_key_gateway(&fake).await;
    let mut response = gw.post("/v1/messages").json(&message_body(true)).send().await.unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().starts_with("event: message_start"));
    drop(response);
    gate.add_permits(1);
    support::eventually("the upstream stream to be cancelled", Duration::from_secs(5), async || {
        (fake.lock().streams_cancelled == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_upstream_stream_ends_with_an_sse_error_event() {
    let fake = Fake::start().await;
    let (_env, gw) = api_key_gateway(&fake).await;
    fake.push(Script::BreakStream);
    let text = gw.post("/v1/messages").json(&message_body(true)).send().await.unwrap().text().await.unwrap();
    assert!(text.starts_with(support::fake::SSE_EVENTS[0]));
    assert!(text.contains("event: error\ndata: {\"type\":\"error\""), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_upstream_is_cut_after_the_idle_limit() {
    let fake = Fake::start().await;
    // The upstream sends its first event, then nothing, ever.
    fake.lock().sse_gate = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    fake.add_api_key("sk-ant-api03-upstream-key");
    let mut env = Env::new(&fake);
    env.set("SWITCHYARD_IDLE_TIMEOUT_SECS", "1");
    env.ok(&["accounts", "add", "work", "--api-key", "sk-ant-api03-upstream-key"]).await;
    let gw = env.serve().await;
    let started = std::time::Instant::now();
    let response = gw.post("/v1/messages").json(&message_body(true)).send().await.unwrap();
    let text = tokio::time::timeout(Duration::from_secs(10), response.text()).await.expect("never cut").unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900), "cut too early: {:?}", started.elapsed());
    assert!(text.starts_with(support::fake::SSE_EVENTS[0]), "{text}");
    assert!(text.contains("event: error\ndata: {\"type\":\"error\""), "{text}");
    // The log says what happened.
    let rows = support::eventually("the broken stream's row", Duration::from_secs(10), async || {
        let out = env.ok(&["requests", "--since", "1h", "--json"]).await;
        let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        rows.as_array().is_some_and(|r| !r.is_empty()).then_some(rows)
    })
    .await;
    assert_eq!(rows[0]["error_type"], "stream_broken", "{rows}");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_errors_pass_through_with_status_and_headers() {
    let fake = Fake::start().await;
    let (_env, gw) = api_key_gateway(&fake).await;
    fake.push(Script::Status {
        status: 429,
        body: serde_json::json!({"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}),
        headers: vec![
            ("retry-after".into(), "17".into()),
            ("anthropic-ratelimit-unified-status".into(), "rejected".into()),
        ],
    });
    let r = gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "17");
    assert_eq!(r.headers()["anthropic-ratelimit-unified-status"], "rejected");
    assert_eq!(error_type(r, 429).await.0, "rate_limit_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_client_input_gets_anthropic_errors() {
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    env.set("SWITCHYARD_BODY_LIMIT", "1000");
    fake.add_api_key("k");
    env.ok(&["accounts", "add", "a", "--api-key", "k", "--force"]).await;
    let gw = env.serve().await;
    let cases = [
        (
            gw.post("/v1/messages").header("content-type", "application/json").body("{not json"),
            400,
            "invalid_request_error",
        ),
        (gw.post("/v1/messages").header("content-type", "application/json").body("[1]"), 400, "invalid_request_error"),
        (gw.post("/v1/messages"), 400, "invalid_request_error"),
        (gw.get("/v1/messages"), 405, "invalid_request_error"),
        (gw.post("/v1/nothing").body("{}"), 404, "not_found_error"),
        (gw.get("/"), 404, "not_found_error"),
        (
            gw.post("/v1/messages").header("content-type", "application/json").body(vec![b' '; 5000]),
            413,
            "request_too_large",
        ),
    ];
    for (request, status, kind) in cases {
        let (t, _) = error_type(request.send().await.unwrap(), status).await;
        assert_eq!(t, kind);
    }
    assert!(fake.requests().is_empty(), "bad input must never reach the upstream");
    let health: serde_json::Value = gw.get("/health").send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_account_is_a_clear_503() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let gw = env.serve().await;
    let (t, message) = error_type(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap(), 503).await;
    assert_eq!(t, "api_error");
    assert!(message.contains("no accounts configured"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_and_slow_upstreams_are_502_and_504() {
    // A port with nothing listening.
    let dead = support::closed_port_url();
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    env.ok(&["accounts", "add", "a", "--api-key", "k", "--force"]).await;
    env.set("SWITCHYARD_UPSTREAM_URL", &dead);
    // No retries: this is about how a single failure is reported.
    env.set("SWITCHYARD_RETRY_ATTEMPTS", "0");
    let gw = env.serve().await;
    let (t, _) = error_type(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap(), 502).await;
    assert_eq!(t, "api_error");
    drop(gw);

    fake.add_api_key("k");
    env.set("SWITCHYARD_UPSTREAM_URL", &fake.url());
    env.set("SWITCHYARD_FIRST_BYTE_TIMEOUT_SECS", "1");
    let gw = env.serve().await;
    fake.push(Script::Delay(Duration::from_secs(3)));
    let (t, message) = error_type(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap(), 504).await;
    assert_eq!(t, "api_error");
    assert!(message.contains("did not answer"), "{message}");
}

/// The first-byte timeout is one budget for the whole request: a silent upstream costs one timeout, not one
/// per attempt, and an upstream that refuses connections fails over at once, without pauses or retries on
/// the same account.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_or_unreachable_upstream_costs_one_budget() {
    let fake = Fake::start().await;
    fake.add_api_key("k1");
    fake.add_api_key("k2");
    let mut env = Env::new(&fake);
    env.ok(&["accounts", "add", "a", "--api-key", "k1", "--force"]).await;
    env.ok(&["accounts", "add", "b", "--api-key", "k2", "--force"]).await;
    env.set("SWITCHYARD_FIRST_BYTE_TIMEOUT_SECS", "2");
    env.set("SWITCHYARD_RETRY_ATTEMPTS", "3");
    env.set("SWITCHYARD_RETRY_DELAY_MS", "500");
    let gw = env.serve().await;
    for _ in 0..4 {
        fake.push(Script::Delay(Duration::from_secs(30)));
    }
    let started = std::time::Instant::now();
    let response = gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap();
    let waited = started.elapsed();
    let (_, message) = error_type(response, 504).await;
    assert!(message.contains("within 2s"), "{message}");
    // Four attempts of 2 s each plus pauses took over 9 s before; one budget is 2 s.
    assert!(waited < Duration::from_secs(4), "the client waited {waited:?}");
    assert_eq!(fake.requests().len(), 1, "attempts after the budget was spent");
    drop(gw);

    let dead = support::closed_port_url();
    env.set("SWITCHYARD_UPSTREAM_URL", &dead);
    env.set("SWITCHYARD_RETRY_DELAY_MS", "1000");
    let gw = env.serve().await;
    let started = std::time::Instant::now();
    let response = gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap();
    let waited = started.elapsed();
    let (_, message) = error_type(response, 502).await;
    assert!(message.contains("the upstream is unreachable"), "{message}");
    // Pauses of 1 s, 2 s and 4 s before; now each account is tried once, at once.
    assert!(waited < Duration::from_secs(1), "the client waited {waited:?}");
    let logs = gw.logs();
    assert_eq!(logs.matches("upstream unreachable").count(), 2, "{logs}");
}

/// Pinning an account that does not exist is the client's mistake: 404 naming it, not a 503.
#[tokio::test(flavor = "multi_thread")]
async fn pinning_an_unknown_account_is_a_404() {
    let fake = Fake::start().await;
    fake.add_api_key("sk-ant-api03-pin");
    let env = Env::new(&fake);
    env.ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-pin"]).await;
    let gw = env.serve().await;
    let r = gw.post("/v1/messages").header("x-switchyard-account", "ghost").json(&message_body(false)).send().await;
    let (kind, message) = error_type(r.unwrap(), 404).await;
    assert_eq!(kind, "not_found_error");
    assert!(message.contains("no account named \"ghost\"") && message.contains("x-switchyard-account"), "{message}");
    assert!(fake.requests().is_empty());
}

/// What today's clients send passes through untouched: a `system` turn inside `messages`, server tools,
/// `context_management`, `thinking`, unknown fields and blocks. For an OAuth account the one edit is the
/// identity spliced in front of the client's own system blocks; every other byte is the client's.
#[tokio::test(flavor = "multi_thread")]
async fn oauth_bodies_change_by_the_identity_alone() {
    let fake = Fake::start().await;
    let (_env, gw) = oauth_gateway(&fake).await;
    let raw = concat!(
        "{\"model\":\"claude-fake\", \"max_tokens\": 64,\n",
        "\"system\": [{\"text\":\"Be terse.\",\"type\":\"text\",\"cache_control\":{\"type\":\"ephemeral\"}}],\n",
        "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"system\",\"content\":\"mid-conversation note\"},",
        "{\"role\":\"user\",\"content\":[{\"type\":\"future_block_2027\",\"payload\":{\"x\":1.50}}]}],",
        "\"tools\":[{\"type\":\"web_search_20250305\",\"name\":\"web_search\"},{\"type\":\"web_fetch_20250910\",\"name\":\"web_fetch\"}],",
        "\"context_management\":{\"edits\":[{\"type\":\"clear_tool_uses_20250919\"}]},",
        "\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":1024},\"unknown_field\":[1,2,{\"deep\":true}]}"
    );
    let r = gw
        .post("/v1/messages")
        .header("content-type", "application/json")
        .header(
            "anthropic-beta",
            "mid-conversation-system-2026-04-07, context-management-2025-06-27,mid-conversation-system-2026-04-07",
        )
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = fake.last_request();
    let identity =
        serde_json::json!({"type":"text","text":"You are Claude Code, Anthropic's official CLI for Claude."});
    let expected = raw.replace("\"system\": [{\"text\"", &format!("\"system\": [{identity},{{\"text\""));
    assert_eq!(std::str::from_utf8(&seen.body).unwrap(), expected, "only the identity may be new");
    // The client's betas in their order, each once, the OAuth beta added once at the end.
    assert_eq!(
        seen.header("anthropic-beta").as_deref(),
        Some("mid-conversation-system-2026-04-07,context-management-2025-06-27,oauth-2025-04-20")
    );
}

/// An API-key account never receives the OAuth beta, even when the client (logged in to Claude Code)
/// sends it; the other betas keep their order.
#[tokio::test(flavor = "multi_thread")]
async fn the_oauth_beta_never_goes_with_an_api_key() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    fake.add_api_key("sk-ant-api03-beta");
    env.ok(&["accounts", "add", "k", "--api-key", "sk-ant-api03-beta"]).await;
    let gw = env.serve().await;
    let r = gw
        .post("/v1/messages")
        .header("anthropic-beta", "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14")
        .json(&message_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        fake.last_request().header("anthropic-beta").as_deref(),
        Some("claude-code-20250219,interleaved-thinking-2025-05-14")
    );
}

/// `[models.aliases]` and the `[1m]` suffix are resolved before routing: the body's `model` is replaced
/// where it stands (every other byte kept), the suffix becomes the long-context beta, unknown models pass
/// through, and `/v1/models` lists the aliases beside the upstream's models.
#[tokio::test(flavor = "multi_thread")]
async fn model_aliases_and_the_long_context_suffix() {
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    fake.add_api_key("sk-ant-api03-alias");
    env.ok(&["accounts", "add", "k", "--api-key", "sk-ant-api03-alias"]).await;
    let config = env.home().join("aliases.toml");
    std::fs::write(&config, "[models.aliases]\nopus = \"claude-opus-4-5\"\nbig = \"claude-sonnet-4-5[1m]\"\n").unwrap();
    env.set("SWITCHYARD_CONFIG", config.to_str().unwrap());
    let gw = env.serve().await;
    let send = async |model: &str| {
        let raw = format!(r#"{{"model": "{model}" ,"max_tokens":8,"messages":[{{"role":"user","content":"hi"}}]}}"#);
        let r = gw.post("/v1/messages").header("anthropic-beta", "b1").header("content-type", "application/json");
        let r = r.body(raw.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{model}: {}", r.text().await.unwrap_or_default());
        let seen = fake.last_request();
        (raw, std::str::from_utf8(&seen.body).unwrap().to_owned(), seen.header("anthropic-beta").unwrap_or_default())
    };
    let (raw, seen, beta) = send("opus").await;
    assert_eq!((seen, beta.as_str()), (raw.replace("\"opus\"", "\"claude-opus-4-5\""), "b1"));
    let (raw, seen, beta) = send("big").await;
    assert_eq!((seen, beta.as_str()), (raw.replace("\"big\"", "\"claude-sonnet-4-5\""), "b1,context-1m-2025-08-07"));
    let (raw, seen, beta) = send("claude-haiku-4-5[1m]").await;
    assert_eq!((seen, beta.as_str()), (raw.replace("[1m]", ""), "b1,context-1m-2025-08-07"));
    let (raw, seen, beta) = send("claude-unknown-9").await;
    assert_eq!((seen, beta.as_str()), (raw, "b1"), "unknown models pass through untouched");

    let list: serde_json::Value = gw.get("/v1/models").send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["claude-fake", "big", "opus"], "{list}");
    assert_eq!(gw.get("/v1/models/opus").send().await.unwrap().status(), 200);
    assert_eq!(fake.last_request().path_and_query, "/v1/models/claude-opus-4-5");
    // The log keeps the name the upstream answered for.
    let rows = support::eventually("the aliased request in the log", std::time::Duration::from_secs(5), async || {
        let rows: serde_json::Value = serde_json::from_str(&env.ok(&["requests", "--json"]).await.stdout).ok()?;
        let models: Vec<String> =
            rows.as_array()?.iter().filter_map(|r| r["model"].as_str().map(str::to_owned)).collect();
        (models.len() >= 4).then_some(models)
    })
    .await;
    assert!(rows.contains(&"claude-opus-4-5".to_owned()) && !rows.contains(&"opus".to_owned()), "{rows:?}");
}

/// An OpenAI-dialect request on an OAuth account gets the identity and the OAuth beta exactly as a
/// native one does; the answer comes back in OpenAI's shape.
#[tokio::test(flavor = "multi_thread")]
async fn openai_requests_on_oauth_accounts_carry_the_identity() {
    let fake = Fake::start().await;
    let (_env, gw) = oauth_gateway(&fake).await;
    let body = serde_json::json!({"model": "claude-fake", "messages": [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hi"}]});
    let r = gw.post("/v1/chat/completions").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello");
    let seen = fake.last_request();
    assert_eq!(seen.path_and_query, "/v1/messages");
    assert!(seen.header("anthropic-beta").unwrap().contains("oauth-2025-04-20"));
    let system = seen.json()["system"].clone();
    assert_eq!(system[0]["text"], "You are Claude Code, Anthropic's official CLI for Claude.", "{system}");
    assert_eq!(system[1]["text"], "Answer in French.");
}
