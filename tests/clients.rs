//! The real clients through the real binary: Claude Code 2.1.332 (npm) and the official Python SDK 2.x
//! (PyPI), installed by `scripts/test` into `clients/`; and their recorded requests, kept as fixtures in
//! `tests/fixtures/clients/`, replayed through the gateway and compared byte for byte with what the
//! upstream receives. `SWITCHYARD_RECORD_FIXTURES=1` rewrites the fixtures from the live clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::fake::{Recorded, Script};
use support::{Env, Fake, Gateway};

fn clients() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clients")
}

/// A recorded client request: what the client sent, credentials taken out.
#[derive(serde::Serialize, serde::Deserialize)]
struct Fixture {
    client: String,
    method: String,
    path_and_query: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Headers a recording leaves out: credentials, and what the transport sets.
const UNRECORDED: [&str; 5] = ["x-api-key", "authorization", "host", "content-length", "connection"];

/// Keep `requests` (as the upstream saw them through an API-key account, which forwards the client's
/// body byte for byte) as fixtures named `{client}-{n}.json`, when recording is asked for.
fn record(client: &str, requests: &[Recorded]) {
    if std::env::var_os("SWITCHYARD_RECORD_FIXTURES").is_none() {
        return;
    }
    std::fs::create_dir_all(fixtures()).unwrap();
    for (n, r) in requests.iter().enumerate() {
        let mut body = String::from_utf8(r.body.to_vec()).unwrap();
        // The machine's device id is no one's business; the session id is random per run.
        if let Some(start) = body.find("device_id\\\":\\\"") {
            let from = start + "device_id\\\":\\\"".len();
            let len = body[from..].find('\\').unwrap_or(0);
            body.replace_range(from..from + len, &"0".repeat(len));
        }
        let headers = r
            .headers
            .iter()
            .filter(|(k, _)| !UNRECORDED.contains(&k.as_str()))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let fixture = Fixture {
            client: client.to_owned(),
            method: r.method.clone(),
            path_and_query: r.path_and_query.clone(),
            headers,
            body,
        };
        let path = fixtures().join(format!("{client}-{n}.json"));
        std::fs::write(path, serde_json::to_string_pretty(&fixture).unwrap() + "\n").unwrap();
    }
}

/// A gateway over three API-key accounts, and a client key.
async fn three_accounts(fake: &Fake) -> (Env, Gateway, String) {
    let env = Env::new(fake);
    for name in ["a", "b", "c"] {
        let key = format!("sk-ant-api03-client-{name}");
        fake.add_api_key(&key);
        env.ok(&["accounts", "add", name, "--api-key", &key]).await;
    }
    let key = env.ok(&["keys", "create", "tools"]).await.stdout.trim().to_owned();
    let gw = env.serve().await;
    (env, gw, key)
}

fn account_of(r: &Recorded) -> String {
    support::fake::credential_of(&r.headers).unwrap().trim_start_matches("sk-ant-api03-client-").to_owned()
}

/// Claude Code in print mode, told by the fake model to run two subagents: it answers through
/// Switchyard, its main conversation stays on one account, and its subagents (`x-claude-code-agent-id`,
/// same session) spread instead of piling onto the parent's account.
#[tokio::test(flavor = "multi_thread")]
async fn claude_code_and_its_subagents_answer_through_switchyard() {
    let claude = clients().join("node_modules/.bin/claude");
    if !claude.exists() {
        println!("skipped: {} is missing (scripts/test installs it from the npm registry)", claude.display());
        return;
    }
    let fake = Fake::start().await;
    let (_env, gw, key) = three_accounts(&fake).await;
    let agent = |what: &str| {
        let input = serde_json::json!({"description": format!("check {what}"), "prompt": format!("Look at {what}"),
            "subagent_type": "general-purpose", "run_in_background": false});
        ("Agent".to_owned(), input)
    };
    fake.push(Script::ToolUse(vec![agent("one"), agent("two")]));
    let home = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(&claude)
        .args(["-p", "Say hello", "--output-format", "json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", &gw.url)
        .env("ANTHROPIC_API_KEY", &key)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .current_dir(home.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await.expect("claude ran too long").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "claude failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((answer["is_error"].as_bool(), answer["result"].as_str()), (Some(false), Some("Hello")), "{answer}");

    let requests = fake.requests();
    record("claude-code-2.1.332", &requests);
    assert!(requests.iter().all(|r| r.header("user-agent").is_some_and(|a| a.starts_with("claude-cli/2.1.332"))));
    let session: HashSet<Option<String>> = requests.iter().map(|r| r.header("x-claude-code-session-id")).collect();
    assert_eq!(session.len(), 1, "one session: {session:?}");
    let (main, subagents): (Vec<&Recorded>, Vec<&Recorded>) =
        requests.iter().partition(|r| r.header("x-claude-code-agent-id").is_none());
    assert_eq!((main.len(), subagents.len()), (2, 2), "the parent's turn and its result, and two subagents");
    let home_account = account_of(main[0]);
    assert_eq!(account_of(main[1]), home_account, "the main conversation moved");
    let spread: HashSet<String> = subagents.iter().map(|r| account_of(r)).collect();
    assert!(spread.iter().any(|a| *a != home_account) && spread.len() == 2, "subagents on {spread:?}");
}

/// The official Python SDK (`Authorization: Bearer` with the client key, `anthropic-version` of its own),
/// JSON and streaming.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_answers_through_switchyard() {
    let python = clients().join(".venv/bin/python");
    if !python.exists() {
        println!("skipped: {} is missing (scripts/test installs the SDK from PyPI)", python.display());
        return;
    }
    let fake = Fake::start().await;
    let (_env, gw, key) = three_accounts(&fake).await;
    let script = r#"
import os, anthropic
client = anthropic.Anthropic(base_url=os.environ["BASE_URL"], api_key=os.environ["KEY"], max_retries=0)
message = client.messages.create(model="claude-sonnet-4-5", max_tokens=64,
    messages=[{"role": "user", "content": "hi"}], metadata={"user_id": "sdk-user-1"})
print(message.content[0].text)
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64,
        messages=[{"role": "user", "content": "hi again"}]) as stream:
    print("".join(stream.text_stream))
print(client.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]).input_tokens)
"#;
    let run = tokio::process::Command::new(&python)
        .args(["-c", script])
        .env_clear()
        .env("BASE_URL", &gw.url)
        .env("KEY", &key)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("the SDK ran too long").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["Hello", "Hello", "42"]);
    let requests = fake.requests();
    record("python-sdk-2.15.0", &requests);
    assert!(requests.iter().all(|r| r.header("x-stainless-lang").as_deref() == Some("python")));
}

/// Every recorded request, replayed through the gateway to an API-key account and to an OAuth account:
/// the upstream receives the client's body byte for byte (Claude Code's carries its own identity, so an
/// OAuth account changes nothing either), its headers, and its betas in order (plus the OAuth beta, once,
/// for the subscription).
#[tokio::test(flavor = "multi_thread")]
async fn recorded_client_requests_replay_byte_for_byte() {
    let mut fixtures: Vec<(String, Fixture)> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap())
        })
        .collect();
    fixtures.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(fixtures.iter().any(|(_, f)| f.client.starts_with("claude-code")), "no Claude Code fixture");
    assert!(fixtures.iter().any(|(_, f)| f.client.starts_with("python-sdk")), "no Python SDK fixture");
    for oauth in [false, true] {
        let fake = Fake::start().await;
        let env = Env::new(&fake);
        if oauth {
            let (rt, at) = (fake.issue_refresh_token(), fake.issue_access_token());
            let expires = (support::fake::now_secs() * 1000 + 3_600_000).to_string();
            env.import_oauth("max", &rt, &at, &expires).await;
        } else {
            fake.add_api_key("sk-ant-api03-replay");
            env.ok(&["accounts", "add", "k", "--api-key", "sk-ant-api03-replay"]).await;
        }
        let gw = env.serve().await;
        let client = reqwest::Client::new();
        for (name, f) in &fixtures {
            let method = reqwest::Method::from_bytes(f.method.as_bytes()).unwrap();
            let mut request = client.request(method, format!("{}{}", gw.url, f.path_and_query));
            for (k, v) in &f.headers {
                request = request.header(k, v);
            }
            let r = request.body(f.body.clone()).send().await.unwrap();
            assert_eq!(r.status(), 200, "{name} (oauth: {oauth})");
            r.bytes().await.unwrap();
            let seen = fake.last_request();
            let identity_added = oauth && !f.client.starts_with("claude-code");
            if !identity_added {
                assert_eq!(std::str::from_utf8(&seen.body).unwrap(), f.body, "{name} (oauth: {oauth}) changed");
            }
            assert_eq!(seen.path_and_query, f.path_and_query, "{name}");
            for h in ["user-agent", "x-app", "x-claude-code-session-id", "x-claude-code-agent-id", "anthropic-version"]
            {
                assert_eq!(seen.header(h).as_ref(), f.headers.get(h), "{name}: {h}");
            }
            let beta = f.headers.get("anthropic-beta").cloned();
            let expected = match (oauth, beta) {
                (true, Some(b)) => Some(format!("{b},oauth-2025-04-20")),
                (true, None) => Some("oauth-2025-04-20".to_owned()),
                (false, b) => b,
            };
            assert_eq!(seen.header("anthropic-beta"), expected, "{name} (oauth: {oauth})");
        }
    }
}

/// The official `openai` Python client (3.x, from PyPI) on Claude accounts through `/v1/chat/completions`:
/// plain and streaming chat with usage in the final chunk, a tool-call round trip (JSON and streamed), an
/// image, JSON mode, `models.list()`, a 429 raised as `RateLimitError`, a cut stream raised as an error;
/// and the Responses API (`/v1/responses`): create, a streamed function call, a refused stored conversation.
#[tokio::test(flavor = "multi_thread")]
async fn the_openai_python_client_speaks_chat_completions() {
    let python = clients().join(".venv/bin/python");
    let ready = std::process::Command::new(&python).args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !ready {
        println!("skipped: the openai package is missing from clients/.venv (scripts/test installs it from PyPI)");
        return;
    }
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    fake.add_api_key("sk-ant-api03-openai");
    env.ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-openai"]).await;
    let key = env.ok(&["keys", "create", "editor"]).await.stdout.trim().to_owned();
    let watcher = env.ok(&["keys", "create", "watcher", "--role", "viewer"]).await.stdout.trim().to_owned();
    let gw = env.serve().await;
    let run = async |script: &str| {
        let prelude = "import os, json, openai\nclient = openai.OpenAI(base_url=os.environ['BASE_URL'] + '/v1', api_key=os.environ['KEY'], max_retries=0)\n";
        let out = tokio::process::Command::new(&python)
            .args(["-c", &format!("{prelude}{script}")])
            .env_clear()
            .env("BASE_URL", &gw.url)
            .env("KEY", &key)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("the client ran too long").unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{script}\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout.trim().to_owned()
    };
    let weather = serde_json::json!({"type":"function","function":{"name":"weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}});

    // Plain chat: the answer, a finish reason and usage.
    let out = run("r = client.chat.completions.create(model='claude-sonnet-4-5', messages=[{'role':'system','content':'Be brief.'},{'role':'user','content':'hi'}])\nprint(json.dumps([r.choices[0].message.content, r.choices[0].finish_reason, r.usage.prompt_tokens, r.usage.completion_tokens, r.object]))").await;
    assert_eq!(out, r#"["Hello", "stop", 12, 5, "chat.completion"]"#);
    let sent = fake.last_request().json();
    assert_eq!((sent["system"].as_str(), sent["max_tokens"].as_u64()), (Some("Be brief."), Some(4096)), "{sent}");

    // Streaming, usage in the final chunk.
    let out = run("s = client.chat.completions.create(model='claude-sonnet-4-5', messages=[{'role':'user','content':'hi'}], stream=True, stream_options={'include_usage': True})\nparts, usage = [], None\nfor c in s:\n    if c.choices and c.choices[0].delta.content: parts.append(c.choices[0].delta.content)\n    if c.usage: usage = c.usage.completion_tokens\nprint(json.dumps([''.join(parts), usage]))").await;
    assert_eq!(out, r#"["Hello", 5]"#);

    // A tool call (JSON), then its result sent back: one user turn with a tool_result.
    fake.push_for(
        "sk-ant-api03-openai",
        Script::Status {
            status: 200,
            body: serde_json::json!({"id":"msg_t","type":"message","role":"assistant","model":"claude-sonnet-4-5",
                "content":[{"type":"tool_use","id":"toolu_1","name":"weather","input":{"city":"Oslo"}}],
                "stop_reason":"tool_use","usage":{"input_tokens":20,"output_tokens":8}}),
            headers: vec![],
        },
    );
    let script = format!(
        "tools=[{weather}]\nmsgs=[{{'role':'user','content':'Weather in Oslo?'}}]\nr = client.chat.completions.create(model='claude-sonnet-4-5', messages=msgs, tools=tools)\ncall = r.choices[0].message.tool_calls[0]\nmsgs.append(r.choices[0].message.model_dump(exclude_none=True))\nmsgs.append({{'role':'tool','tool_call_id':call.id,'content':'4 C'}})\nr2 = client.chat.completions.create(model='claude-sonnet-4-5', messages=msgs, tools=tools)\nprint(json.dumps([r.choices[0].finish_reason, call.function.name, json.loads(call.function.arguments), r2.choices[0].message.content]))"
    );
    assert_eq!(run(&script).await, r#"["tool_calls", "weather", {"city": "Oslo"}, "Hello"]"#);
    let sent = fake.last_request().json();
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use", "{sent}");
    assert_eq!(
        sent["messages"][2]["content"][0],
        serde_json::json!({"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"4 C"}]})
    );

    // A streamed tool call: argument fragments under one stable index.
    fake.push_for(
        "sk-ant-api03-openai",
        Script::ToolUse(vec![("weather".into(), serde_json::json!({"city":"Bergen"}))]),
    );
    let script = format!(
        "s = client.chat.completions.create(model='claude-sonnet-4-5', messages=[{{'role':'user','content':'Weather?'}}], tools=[{weather}], stream=True)\nargs, name, finish = '', None, None\nfor c in s:\n    d = c.choices[0].delta if c.choices else None\n    if d and d.tool_calls:\n        name = d.tool_calls[0].function.name or name\n        args += d.tool_calls[0].function.arguments or ''\n    if c.choices and c.choices[0].finish_reason: finish = c.choices[0].finish_reason\nprint(json.dumps([name, json.loads(args), finish]))"
    );
    assert_eq!(run(&script).await, r#"["weather", {"city": "Bergen"}, "tool_calls"]"#);

    // An image (data URL) and JSON mode reach the upstream as Anthropic shapes.
    run("client.chat.completions.create(model='claude-sonnet-4-5', response_format={'type':'json_object'}, messages=[{'role':'user','content':[{'type':'text','text':'What?'},{'type':'image_url','image_url':{'url':'data:image/png;base64,iVBORw0KGgo='}}]}])").await;
    let sent = fake.last_request().json();
    assert_eq!(
        sent["messages"][0]["content"][1]["source"],
        serde_json::json!({"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="})
    );
    assert!(sent["system"].as_str().unwrap().contains("JSON object"), "{sent}");

    // The model list in OpenAI's shape.
    assert_eq!(run("print(json.dumps([m.id for m in client.models.list()]))").await, r#"["claude-fake"]"#);

    // The Responses API: create, a streamed function call, and a clear 400 for stored conversations.
    let out = run("r = client.responses.create(model='claude-sonnet-4-5', instructions='Be brief.', input='hi')\nprint(json.dumps([r.output_text, r.status, r.usage.input_tokens, r.usage.output_tokens]))").await;
    assert_eq!(out, r#"["Hello", "completed", 12, 5]"#);
    let sent = fake.last_request().json();
    assert_eq!(
        (sent["system"].as_str(), sent["messages"][0]["content"][0]["text"].as_str()),
        (Some("Be brief."), Some("hi"))
    );
    fake.push_for(
        "sk-ant-api03-openai",
        Script::ToolUse(vec![("weather".into(), serde_json::json!({"city":"Tromso"}))]),
    );
    let script = "tools=[{'type':'function','name':'weather','parameters':{'type':'object','properties':{'city':{'type':'string'}}}}]\nargs, kinds, final = '', [], None\nfor e in client.responses.create(model='claude-sonnet-4-5', input='Weather?', tools=tools, stream=True):\n    kinds.append(e.type)\n    if e.type == 'response.function_call_arguments.delta': args += e.delta\n    if e.type == 'response.completed': final = e.response\nprint(json.dumps([json.loads(args), kinds[0], kinds[-1], final.output[0].type, final.output[0].name]))";
    assert_eq!(
        run(script).await,
        r#"[{"city": "Tromso"}, "response.created", "response.completed", "function_call", "weather"]"#
    );
    let out = run("try:\n    client.responses.create(model='claude-sonnet-4-5', input='hi', previous_response_id='resp_1')\nexcept openai.BadRequestError as e:\n    print(e.body['message'])").await;
    assert!(out.contains("stores no conversations"), "{out}");
    // A cut stream is an error the client raises, not a silent end.
    fake.push_for("sk-ant-api03-openai", Script::BreakStream);
    let out = run("try:\n    for c in client.chat.completions.create(model='claude-sonnet-4-5', messages=[{'role':'user','content':'hi'}], stream=True): pass\n    print('no error')\nexcept openai.APIError as e:\n    print('error')").await;
    assert_eq!(out, "error");

    // Every account limited: the client's RateLimitError, with the upstream's message.
    fake.push_for("sk-ant-api03-openai", Script::limited(support::fake::now_secs() + 3600));
    let out = run("try:\n    client.chat.completions.create(model='claude-sonnet-4-5', messages=[{'role':'user','content':'hi'}])\nexcept openai.RateLimitError as e:\n    print(json.dumps([e.status_code, e.body['type']]))").await;
    assert_eq!(out, r#"[429, "rate_limit_error"]"#);
    // The request log knows the dialect and the client's path; stats group by it.
    let rows: serde_json::Value =
        serde_json::from_str(&env.ok(&["requests", "--json", "--limit", "1000"]).await.stdout).unwrap();
    let first = rows.as_array().unwrap().iter().find(|r| r["status"] == 200).unwrap();
    assert_eq!((first["dialect"].as_str(), first["path"].as_str()), (Some("openai"), Some("/v1/chat/completions")));
    let stats: serde_json::Value =
        serde_json::from_str(&env.ok(&["stats", "--by", "dialect", "--json"]).await.stdout).unwrap();
    assert!(stats["openai"]["requests"].as_u64().unwrap() >= 6, "{stats}");
    let metrics = gw.get("/metrics").header("x-api-key", &watcher).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("dialect=\"openai\""), "{metrics}");
    // n > 1: a clear 400.
    let out = run("try:\n    client.chat.completions.create(model='claude-sonnet-4-5', n=2, messages=[{'role':'user','content':'hi'}])\nexcept openai.BadRequestError as e:\n    print(e.body['message'])").await;
    assert!(out.contains("n > 1"), "{out}");
}
