//! Many accounts behind one endpoint, through the real binary: strategies, affinity, priorities, rate
//! limits, failover before the first byte, and routing state that survives a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::fake::now_secs;
use support::{Env, Fake, Gateway, Script, message_body};

/// A gateway over API-key accounts `(name, key)`, with extra settings; retries pause only 10 ms.
async fn gateway(fake: &Fake, accounts: &[(&str, &str)], vars: &[(&str, &str)]) -> (Env, Gateway) {
    let mut env = Env::new(fake);
    for (name, key) in accounts {
        fake.add_api_key(key);
        env.ok(&["accounts", "add", name, "--api-key", key, "--force"]).await;
    }
    env.set("SWITCHYARD_RETRY_DELAY_MS", "10");
    for (k, v) in vars {
        env.set(k, v);
    }
    let gw = env.serve().await;
    (env, gw)
}

const ABC: [(&str, &str); 3] = [("a", "key-a"), ("b", "key-b"), ("c", "key-c")];

/// A subscription 429: the whole account is limited until `reset` (unix seconds).
fn status_only(status: u16, kind: &str) -> Script {
    Script::Status {
        status,
        body: serde_json::json!({"type":"error","error":{"type":kind,"message":"scripted"}}),
        headers: vec![],
    }
}

async fn send(gw: &Gateway, body: &serde_json::Value) -> reqwest::Response {
    gw.post("/v1/messages").json(body).send().await.unwrap()
}

async fn ok(gw: &Gateway, body: &serde_json::Value) {
    let r = send(gw, body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

async fn accounts(env: &Env) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["accounts", "list", "--json"]).await.stdout).unwrap()
}

/// Poll `accounts list --json` until `check` holds for the account `name` (state is flushed each second).
async fn eventually(env: &Env, name: &str, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    support::eventually(&format!("account {name} to reach the expected state"), Duration::from_secs(5), async || {
        let all = accounts(env).await;
        let one = all.as_array().unwrap().iter().find(|a| a["name"] == name).unwrap().clone();
        check(&one).then_some(one)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn limited_account_is_skipped_until_reset_then_used_again() {
    let fake = Fake::start().await;
    let (env, gw) = gateway(&fake, &ABC, &[]).await;
    // a is preferred; it comes back after its reset.
    env.ok(&["accounts", "set", "b", "--priority", "1"]).await;
    env.ok(&["accounts", "set", "c", "--priority", "1"]).await;
    gw.settle().await;
    let reset = now_secs() + 2;
    fake.push_for("key-a", Script::limited(reset));
    for _ in 0..6 {
        ok(&gw, &message_body(false)).await;
    }
    assert_eq!(fake.served_by("key-a"), 1, "a was tried once, then skipped");
    assert_eq!(fake.served_by("key-b") + fake.served_by("key-c"), 6);
    let a = eventually(&env, "a", |a| a["status"] == "rate-limited").await;
    let until = a["limited_until_ms"].as_u64().unwrap();
    assert!(until >= reset * 1000 && until <= reset * 1000 + 2_000, "{a}");
    let list = env.ok(&["accounts", "list"]).await.stdout;
    assert!(list.contains("rate-limited until"), "{list}");

    // After the reset (plus jitter) a serves again.
    let back = Duration::from_millis(until - now_secs() * 1000 + 5_000);
    support::eventually("a to serve again after its reset", back, async || {
        ok(&gw, &message_body(false)).await;
        (fake.served_by("key-a") == 2).then_some(())
    })
    .await;
    assert!(now_secs() * 1000 >= until - 1000, "a served before its reset");
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_and_server_errors_are_retried_transparently() {
    let fake = Fake::start().await;
    let (env, gw) = gateway(&fake, &ABC, &[]).await;
    fake.push_for("key-a", status_only(529, "overloaded_error"));
    fake.push_for("key-b", status_only(500, "api_error"));
    let r = send(&gw, &message_body(false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["content"][0]["text"], "Hello");
    assert_eq!((fake.served_by("key-a"), fake.served_by("key-b"), fake.served_by("key-c")), (1, 1, 1));
    // Neither 529 nor 500 benches an account.
    for name in ["a", "b"] {
        let one = eventually(&env, name, |a| a["failed_attempts"] == 1).await;
        assert_eq!((one["requests"].as_u64(), one["failures"].as_u64()), (Some(0), Some(0)), "{one}");
        assert_eq!(one["status"], "active");
    }
    // One account, overloaded twice: retried on the same account.
    let fake = Fake::start().await;
    let (_env, gw) = gateway(&fake, &ABC[..1], &[]).await;
    fake.push_for("key-a", status_only(529, "overloaded_error"));
    fake.push_for("key-a", status_only(503, "api_error"));
    ok(&gw, &message_body(false)).await;
    assert_eq!(fake.served_by("key-a"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_the_configured_attempts_and_pass_the_last_answer() {
    let fake = Fake::start().await;
    let (_env, gw) = gateway(&fake, &ABC[..1], &[("SWITCHYARD_RETRY_ATTEMPTS", "2")]).await;
    for _ in 0..5 {
        fake.push_for("key-a", status_only(529, "overloaded_error"));
    }
    let r = send(&gw, &message_body(false)).await;
    assert_eq!(r.status(), 529);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"]["type"], "overloaded_error");
    assert_eq!(fake.served_by("key-a"), 3, "one attempt plus two retries");
    // Client errors are never retried.
    fake.lock().script_for.clear();
    fake.push_for("key-a", status_only(400, "invalid_request_error"));
    assert_eq!(send(&gw, &message_body(false)).await.status(), 400);
    assert_eq!(fake.served_by("key-a"), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn headerless_429_fails_over_without_benching() {
    let fake = Fake::start().await;
    let (env, gw) = gateway(&fake, &ABC, &[]).await;
    fake.push_for("key-a", status_only(429, "rate_limit_error"));
    ok(&gw, &message_body(false)).await;
    assert_eq!((fake.served_by("key-a"), fake.served_by("key-b")), (1, 1));
    // a is not benched: pinned to it, it answers at once.
    let r =
        gw.post("/v1/messages").header("x-switchyard-account", "a").json(&message_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(fake.served_by("key-a"), 2);
    assert!(fake.last_request().header("x-switchyard-account").is_none(), "control headers stay home");
    // Its failed attempt is counted as an attempt; the request it failed over counts at b.
    let a = eventually(&env, "a", |a| a["attempts"] == 2).await;
    assert_eq!(
        (a["status"].as_str(), a["requests"].as_u64(), a["failed_attempts"].as_u64()),
        (Some("active"), Some(1), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn model_scoped_limit_keeps_other_models_on_the_account() {
    let fake = Fake::start().await;
    let (env, gw) = gateway(&fake, &ABC[..2], &[]).await;
    env.ok(&["accounts", "set", "b", "--priority", "1"]).await;
    gw.settle().await;
    fake.push_for(
        "key-a",
        Script::Status {
            status: 429,
            body: serde_json::json!({"type":"error","error":{"type":"rate_limit_error","message":"weekly opus limit"}}),
            headers: vec![
                ("anthropic-ratelimit-unified-status".into(), "rejected".into()),
                ("anthropic-ratelimit-unified-7d_oi-status".into(), "rejected".into()),
                ("anthropic-ratelimit-unified-7d_oi-reset".into(), (now_secs() + 3600).to_string()),
                ("anthropic-ratelimit-unified-5h-status".into(), "allowed".into()),
            ],
        },
    );
    let mut opus = message_body(false);
    opus["model"] = "claude-opus-4-1".into();
    let mut sonnet = message_body(false);
    sonnet["model"] = "claude-sonnet-4-5".into();
    ok(&gw, &opus).await;
    assert_eq!((fake.served_by("key-a"), fake.served_by("key-b")), (1, 1));
    ok(&gw, &opus).await;
    assert_eq!((fake.served_by("key-a"), fake.served_by("key-b")), (1, 2), "opus avoids a");
    ok(&gw, &sonnet).await;
    assert_eq!(fake.served_by("key-a"), 2, "sonnet still goes to a");
    let a = eventually(&env, "a", |a| a["model_limits"]["opus"].is_u64()).await;
    assert_eq!(a["status"], "active");
}

/// Which account served each of the requests since `from`.
fn sequence(fake: &Fake, from: usize) -> Vec<String> {
    fake.requests()[from..]
        .iter()
        .map(|r| support::fake::credential_of(&r.headers).unwrap().trim_start_matches("key-").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn strategies_distribute_as_documented() {
    // Session (default): one account until its session ends.
    let fake = Fake::start().await;
    let (_env, gw) = gateway(&fake, &ABC, &[]).await;
    for _ in 0..5 {
        ok(&gw, &message_body(false)).await;
    }
    assert_eq!(sequence(&fake, 0), ["a"; 5]);
    drop(gw);
    let fake = Fake::start().await;
    let (_env, gw) = gateway(&fake, &ABC, &[("SWITCHYARD_SESSION_DURATION_MS", "1")]).await;
    for _ in 0..3 {
        ok(&gw, &message_body(false)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sequence(&fake, 0), ["a", "b", "c"], "sessions that end move on");

    // Round-robin: even.
    let fake = Fake::start().await;
    let (_env, gw) = gateway(&fake, &ABC, &[("SWITCHYARD_LB_STRATEGY", "round-robin")]).await;
    for _ in 0..9 {
        ok(&gw, &message_body(false)).await;
    }
    assert_eq!(sequence(&fake, 0), ["a", "b", "c", "a", "b", "c", "a", "b", "c"]);

    // Weighted: in proportion.
    let fake = Fake::start().await;
    let (env, gw) = gateway(&fake, &ABC, &[("SWITCHYARD_LB_STRATEGY", "weighted")]).await;
    env.ok(&["accounts", "set", "b", "--weight", "2"]).await;
    env.ok(&["accounts", "set", "c", "--weight", "3"]).await;
    gw.settle().await;
    for _ in 0..12 {
        ok(&gw, &message_body(false)).await;
    }
    let seq = sequence(&fake, 0);
    let count = |n: &str| seq.iter().filter(|s| *s == n).count();
    assert_eq!((count("a"), count("b"), count("c")), (2, 4, 6), "{seq:?}");

    // Least-used: the lowest 5-hour utilization wins once known.
    let fake = Fake::start().await;
    {
        let mut inner = fake.lock();
        inner.utilization_for.insert("key-a".into(), 0.9);
        inner.utilization_for.insert("key-b".into(), 0.2);
        inner.utilization_for.insert("key-c".into(), 0.5);
    }
    let (_env, gw) = gateway(&fake, &ABC, &[("SWITCHYARD_LB_STRATEGY", "least-used")]).await;
    for _ in 0..3 {
        ok(&gw, &message_body(false)).await;
    }
    assert_eq!(sequence(&fake, 0), ["a", "b", "c"], "unknown utilization: fewest recent requests first");
    for _ in 0..4 {
        ok(&gw, &message_body(false)).await;
    }
    assert_eq!(sequence(&fake, 3), ["b"; 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn conversations_stay_on_their_account() {
    let fake = Fake::start().await;
    let (_env, gw) = gateway(&fake, &ABC, &[("SWITCHYARD_LB_STRATEGY", "round-robin")]).await;
    let mut conversation = message_body(false);
    conversation["metadata"] = serde_json::json!({"user_id": "{\"session_id\":\"conv-1\"}"});
    ok(&gw, &conversation).await;
    let home = sequence(&fake, 0)[0].clone();
    for _ in 0..4 {
        ok(&gw, &message_body(false)).await;
        ok(&gw, &conversation).await;
    }
    let seq = sequence(&fake, 0);
    let conv: Vec<_> = seq.iter().step_by(2).collect();
    assert!(conv.iter().all(|s| **s == home), "conversation moved: {seq:?}");
    let others: std::collections::HashSet<_> = seq.iter().skip(1).step_by(2).collect();
    assert!(others.len() > 1, "other traffic still rotates: {seq:?}");

    // Claude Code's session header works as a key too; a limit moves the conversation, then it sticks.
    let mut cc = message_body(false);
    cc["model"] = "claude-sonnet-4-5".into();
    let send_cc = || gw.post("/v1/messages").header("x-claude-code-session-id", "s-9").json(&cc).send();
    assert_eq!(send_cc().await.unwrap().status(), 200);
    let first = sequence(&fake, fake.requests().len() - 1)[0].clone();
    fake.push_for(&format!("key-{first}"), Script::limited(now_secs() + 3600));
    assert_eq!(send_cc().await.unwrap().status(), 200);
    let moved = sequence(&fake, fake.requests().len() - 1)[0].clone();
    assert_ne!(moved, first);
    for _ in 0..3 {
        assert_eq!(send_cc().await.unwrap().status(), 200);
        assert_eq!(sequence(&fake, fake.requests().len() - 1)[0], moved);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn everything_limited_is_a_429_with_retry_after() {
    let fake = Fake::start().await;
    let (_env, gw) = gateway(&fake, &ABC[..2], &[]).await;
    let reset = now_secs() + 120;
    fake.push_for("key-a", Script::limited(reset));
    fake.push_for("key-b", Script::limited(reset));
    // Both tried: the last upstream answer is passed through.
    let r = send(&gw, &message_body(false)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["anthropic-ratelimit-unified-status"], "rejected");
    // Now the gateway knows: no upstream call, a 429 saying until when.
    let r = send(&gw, &message_body(false)).await;
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((110..=125).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("all accounts are rate-limited"), "{body}");
    assert_eq!(fake.requests().len(), 2);

    // Pinning an unknown account is the client's mistake: a clear 404.
    let r =
        gw.post("/v1/messages").header("x-switchyard-account", "zzz").json(&message_body(false)).send().await.unwrap();
    let (_, message) = support::error_type(r, 404).await;
    assert!(message.contains("no account named"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_state_survives_a_restart() {
    let fake = Fake::start().await;
    let (env, gw) = gateway(&fake, &ABC[..2], &[]).await;
    fake.push_for("key-a", Script::limited(now_secs() + 3600));
    ok(&gw, &message_body(false)).await;
    eventually(&env, "a", |a| a["status"] == "rate-limited").await;
    // b's count may be saved a second after a's state: a kill before that would lose it (by design, at
    // most a second of counters), so wait for both.
    eventually(&env, "b", |b| b["requests"] == 1).await;
    drop(gw);
    let gw = env.serve().await;
    for _ in 0..3 {
        ok(&gw, &message_body(false)).await;
    }
    assert_eq!(fake.served_by("key-a"), 1, "still benched after restart");
    let b = eventually(&env, "b", |b| b["requests"] == 4).await;
    assert!(b["last_used_ms"].is_u64());
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_and_priority_apply_while_running() {
    let fake = Fake::start().await;
    let (env, gw) = gateway(&fake, &ABC[..2], &[]).await;
    ok(&gw, &message_body(false)).await;
    assert_eq!(sequence(&fake, 0), ["a"]);
    env.ok(&["accounts", "pause", "a"]).await;
    gw.settle().await;
    ok(&gw, &message_body(false)).await;
    assert_eq!(sequence(&fake, 1), ["b"]);
    assert_eq!(accounts(&env).await[0]["status"], "paused");
    env.ok(&["accounts", "resume", "a"]).await;
    env.ok(&["accounts", "set", "a", "--priority", "5"]).await;
    gw.settle().await;
    ok(&gw, &message_body(false)).await;
    assert_eq!(sequence(&fake, 2), ["b"], "a is resumed but now less preferred");
    env.ok(&["accounts", "set", "b", "--priority", "9"]).await;
    gw.settle().await;
    ok(&gw, &message_body(false)).await;
    assert_eq!(sequence(&fake, 3), ["a"], "the better priority wins again");
    let bad = env.run(&["accounts", "set", "a"], "").await;
    assert_eq!(bad.code, Some(1));
    let bad = env.run(&["accounts", "pause", "nobody"], "").await;
    assert!(bad.stderr.contains("no account named"), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_streams_with_one_expiring_token() {
    let fake = Fake::start().await;
    fake.lock().token_delay = Duration::from_millis(200);
    let (env, _) = (Env::new(&fake), ());
    let mut env = env;
    for (name, key) in &ABC[..2] {
        fake.add_api_key(key);
        env.ok(&["accounts", "add", name, "--api-key", key, "--force"]).await;
    }
    let rt = fake.issue_refresh_token();
    let at = fake.issue_access_token();
    let expired = (now_secs() * 1000 - 1000).to_string();
    env.import_oauth("max", &rt, &at, &expired).await;
    env.set("SWITCHYARD_LB_STRATEGY", "round-robin");
    let gw = env.serve().await;
    let streams = (0..50).map(|_| async {
        let r = send(&gw, &message_body(true)).await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    });
    for text in futures_util::future::join_all(streams).await {
        assert!(text.ends_with(support::fake::SSE_EVENTS[6]), "stream incomplete: {text}");
    }
    assert_eq!(fake.refresh_calls(), 1, "exactly one refresh for the expiring account");
    let oauth_served = fake.requests().iter().filter(|r| r.header("authorization").is_some()).count();
    assert!(oauth_served >= 10, "the OAuth account took its share: {oauth_served}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mid_stream_errors_reach_the_client_and_count_as_failures() {
    let fake = Fake::start().await;
    let (env, gw) = gateway(&fake, &ABC[..2], &[]).await;
    fake.push_for("key-a", Script::SseError);
    let text = send(&gw, &message_body(true)).await.text().await.unwrap();
    assert!(text.ends_with(support::fake::SSE_ERROR), "{text}");
    assert_eq!(fake.requests().len(), 1, "no retry once bytes went out");
    fake.push_for("key-a", Script::BreakStream);
    let text = send(&gw, &message_body(true)).await.text().await.unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert_eq!(fake.requests().len(), 2);
    eventually(&env, "a", |a| a["failures"] == 2 && a["requests"] == 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_and_plan_are_polled_for_oauth_accounts() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    let (rt, at) = (fake.issue_refresh_token(), fake.issue_access_token());
    env.import_oauth("max", &rt, &at, &(now_secs() * 1000 + 3_600_000).to_string()).await;
    let gw = env.serve().await;
    // The first poll comes at start; every window of `limits[]` is kept, the model-scoped ones too.
    let max = eventually(&env, "max", |a| a["windows"]["7d:opus"]["utilization"].is_f64()).await;
    assert_eq!(max["plan"], "max (default_claude_max_20x)");
    assert!((max["five_hour"]["utilization"].as_f64().unwrap() - 0.37).abs() < 1e-9);
    assert_eq!(max["five_hour"]["resets_at_ms"], 1_893_474_000_000u64);
    assert!((max["seven_day"]["utilization"].as_f64().unwrap() - 0.125).abs() < 1e-9);
    assert!((max["windows"]["7d:opus"]["utilization"].as_f64().unwrap() - 1.04).abs() < 1e-9, "{max}");
    assert!(max["windows"]["7d:fable"].is_object(), "{max}");
    assert_eq!((max["spend"]["used"].as_f64(), max["spend"]["limit"].as_f64()), (Some(22.76), Some(50.0)));
    assert_eq!(max["spend"]["currency"], "USD");
    let list = env.ok(&["accounts", "list"]).await.stdout;
    assert!(list.contains("5h 37%") && list.contains("(max (default_claude_max_20x))"), "{list}");
    assert!(list.contains("7d:opus 104%") && list.contains("extra usage on: 22.76 of 50.00 USD"), "{list}");
    assert!(fake.lock().usage_agents.iter().all(|a| a.starts_with("claude-code/")), "{:?}", fake.lock().usage_agents);
    // The windows on /metrics.
    let metrics = gw.get("/metrics").send().await.unwrap().text().await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with("switchyard_account_utilization{") && l.contains("7d:opus"));
    assert!(line.is_some_and(|l| l.contains("account=\"max\"") && l.ends_with(" 1.04")), "{metrics}");
}

/// A token without the `user:profile` scope: the usage endpoint's 403 turns polling off for that account
/// with a visible reason instead of an error loop.
#[tokio::test(flavor = "multi_thread")]
async fn a_usage_403_for_a_missing_scope_turns_polling_off_visibly() {
    let fake = Fake::start().await;
    fake.lock().usage_script.push_back(403);
    let env = Env::new(&fake);
    let (rt, at) = (fake.issue_refresh_token(), fake.issue_access_token());
    env.import_oauth("narrow", &rt, &at, &(now_secs() * 1000 + 3_600_000).to_string()).await;
    let gw = env.serve().await;
    let narrow = eventually(&env, "narrow", |a| a["usage_off"].is_string()).await;
    assert!(narrow["usage_off"].as_str().unwrap().contains("user:profile"), "{narrow}");
    assert_eq!(narrow["status"], "active", "the account still serves");
    let list = env.ok(&["accounts", "list"]).await.stdout;
    assert!(list.contains("usage polling off"), "{list}");
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    assert_eq!(fake.lock().usage_calls, 1);
}

/// A session's subagents (`x-claude-code-agent-id`) spread over the accounts while each agent's
/// conversation sticks to one; with `SWITCHYARD_AFFINITY=session` they all share the parent's account.
#[tokio::test(flavor = "multi_thread")]
async fn subagents_of_one_session_spread_while_each_agent_sticks() {
    for (affinity, spread) in [("session+agent", true), ("session", false)] {
        let fake = Fake::start().await;
        let (_env, gw) = gateway(&fake, &ABC, &[("SWITCHYARD_AFFINITY", affinity)]).await;
        let send_as = async |agent: Option<&str>| {
            let mut r = gw.post("/v1/messages").header("x-claude-code-session-id", "parent-session");
            if let Some(agent) = agent {
                r = r.header("x-claude-code-agent-id", agent);
            }
            assert_eq!(r.json(&message_body(false)).send().await.unwrap().status(), 200);
            sequence(&fake, fake.requests().len() - 1)[0].clone()
        };
        let parent = send_as(None).await;
        let mut homes = std::collections::HashMap::new();
        for round in 0..3 {
            for agent in ["explore-1", "explore-2", "explore-3", "explore-4"] {
                let served = send_as(Some(agent)).await;
                let home = homes.entry(agent).or_insert_with(|| served.clone());
                assert_eq!(*home, served, "{affinity}: agent {agent} moved in round {round}");
            }
            assert_eq!(send_as(None).await, parent, "{affinity}: the parent moved");
        }
        let used: std::collections::HashSet<&String> = homes.values().collect();
        if spread {
            assert!(used.len() >= 2, "{affinity}: four subagents all on {used:?}");
        } else {
            assert_eq!(used.into_iter().collect::<Vec<_>>(), [&parent], "{affinity}: subagents left the parent");
        }
    }
}

/// `metadata.user_id` alone keeps a conversation together, as Claude Code's JSON string and as an older
/// client's plain string.
#[tokio::test(flavor = "multi_thread")]
async fn user_id_as_json_or_plain_string_sticks() {
    let fake = Fake::start().await;
    let (_env, gw) = gateway(&fake, &ABC, &[("SWITCHYARD_LB_STRATEGY", "round-robin")]).await;
    for user_id in [
        r#"{"device_id":"dev","account_uuid":"acc","session_id":"0b5e55ed-0000-4000-8000-000000000001"}"#,
        "user_abc123_account_acc_session_0b5e55ed-0000-4000-8000-000000000002",
    ] {
        let mut body = message_body(false);
        body["metadata"] = serde_json::json!({ "user_id": user_id });
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            ok(&gw, &body).await;
            seen.insert(sequence(&fake, fake.requests().len() - 1)[0].clone());
            ok(&gw, &message_body(false)).await;
        }
        assert_eq!(seen.len(), 1, "{user_id} moved: {seen:?}");
    }
}

/// A 429 saying the account lacks an entitlement (extra usage or credits for long context) is no rate
/// limit: the account stays active and first in line, the request is served by another account; when
/// none can serve it, the client gets the upstream error unchanged, logged as `entitlement`.
#[tokio::test(flavor = "multi_thread")]
async fn entitlement_429s_fail_over_without_benching() {
    let fake = Fake::start().await;
    let (env, gw) = gateway(&fake, &ABC[..2], &[]).await;
    env.ok(&["accounts", "set", "b", "--priority", "1"]).await;
    gw.settle().await;
    let message = "Extra usage is required for long context requests.";
    let entitlement = || Script::Status {
        status: 429,
        body: serde_json::json!({"type":"error","error":{"type":"rate_limit_error","message":message}}),
        headers: vec![("anthropic-ratelimit-unified-status".into(), "allowed".into())],
    };
    for round in 1..=3 {
        fake.push_for("key-a", entitlement());
        ok(&gw, &message_body(false)).await;
        // a is asked first every time: it was never benched.
        assert_eq!((fake.served_by("key-a"), fake.served_by("key-b")), (round, round));
    }
    eventually(&env, "a", |a| a["status"] == "active" && a["failed_attempts"] == 3).await;
    // Neither account has the entitlement: the upstream's answer, unchanged.
    fake.push_for("key-a", entitlement());
    fake.push_for("key-b", entitlement());
    let r = send(&gw, &message_body(false)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["anthropic-ratelimit-unified-status"], "allowed");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["message"], message, "{body}");
    let logged = support::eventually("the refused request in the log", Duration::from_secs(5), async || {
        let rows: serde_json::Value =
            serde_json::from_str(&env.ok(&["requests", "--status", "429", "--json"]).await.stdout).ok()?;
        rows.as_array()?.first().cloned()
    })
    .await;
    assert_eq!(logged["error_type"], "entitlement", "{logged}");
    for name in ["a", "b"] {
        eventually(&env, name, |a| a["status"] == "active").await;
    }
}

/// `count_tokens` floods: identical bodies from one key within the cache window are answered from memory,
/// token counts do not count against the key's requests per minute, and they go to any account rather
/// than the conversation's.
#[tokio::test(flavor = "multi_thread")]
async fn count_tokens_floods_are_cached_exempt_and_not_sticky() {
    let fake = Fake::start().await;
    let (env, gw) = gateway(&fake, &ABC, &[]).await;
    let key = env.ok(&["keys", "create", "editor", "--rpm", "3"]).await.stdout.trim().to_owned();
    gw.settle().await;
    let count = async |body: &serde_json::Value| {
        let r = gw
            .post("/v1/messages/count_tokens")
            .header("x-api-key", &key)
            .header("x-claude-code-session-id", "editor-session")
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let hit = r.headers().get("x-switchyard-cache").is_some();
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(answer["input_tokens"], 42);
        hit
    };
    let counted = |fake: &Fake| fake.requests().iter().filter(|r| r.path_and_query.contains("count_tokens")).count();
    // The same body twenty times: the upstream is asked once, and the key's rpm of 3 is not touched.
    let same = message_body(false);
    assert!(!count(&same).await, "the first is asked upstream");
    let hits = futures_util::future::join_all((0..19).map(|_| count(&same))).await;
    assert_eq!((counted(&fake), hits.iter().filter(|h| **h).count()), (1, 19));
    // Six different bodies: each asked upstream, spread over the accounts though they share a session.
    let before = fake.requests().len();
    for i in 0..6 {
        let mut body = message_body(false);
        body["messages"][0]["content"] = format!("draft {i}").into();
        assert!(!count(&body).await);
    }
    let used: std::collections::HashSet<String> = sequence(&fake, before).into_iter().collect();
    assert!(used.len() >= 2, "token counts stuck to {used:?}");
    // Messages still count: three admitted, the fourth over the limit.
    let send = || gw.post("/v1/messages").header("x-api-key", &key).json(&message_body(false)).send();
    for _ in 0..3 {
        assert_eq!(send().await.unwrap().status(), 200);
    }
    assert_eq!(send().await.unwrap().status(), 429);
}
