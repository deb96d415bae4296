//! Several instances on one PostgreSQL through the real binary: one refresh per account however many
//! instances need it (and when the refreshing one is killed), one data key for all, a database that
//! cannot be reached said in one line without its password.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Env, Fake, Gateway, message_body};

/// The same database and data key for every instance; each has its own data directory.
struct Cluster {
    url: String,
    key: String,
}

impl Cluster {
    async fn new() -> Cluster {
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, rand::random::<[u8; 32]>());
        Cluster { url: support::fresh_database().await, key }
    }

    fn env(&self, fake: &Fake) -> Env {
        let mut env = Env::new(fake);
        env.set("SWITCHYARD_DATABASE_URL", &self.url);
        env.set("SWITCHYARD_ENCRYPTION_KEY", &self.key);
        env.set("SWITCHYARD_TOKEN_TIMEOUT_SECS", "2");
        env
    }

    async fn instances(&self, fake: &Fake, n: usize) -> (Vec<Env>, Vec<Gateway>) {
        let envs: Vec<Env> = (0..n).map(|_| self.env(fake)).collect();
        let mut gateways = Vec::new();
        for env in &envs {
            gateways.push(env.serve().await);
        }
        (envs, gateways)
    }
}

/// Log in to an instance's admin API with a key: the session cookie and the session secret.
async fn key_login(gw: &Gateway, key: &str) -> (String, String) {
    let login = gw.post("/admin/api/login").json(&serde_json::json!({"key": key})).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let secret = login.json::<serde_json::Value>().await.unwrap()["csrf_token"].as_str().unwrap().to_owned();
    (cookie, secret)
}

/// Wait until every gateway counts all of them live (limits are split among the live instances).
async fn all_live(gateways: &[Gateway]) {
    for gw in gateways {
        support::eventually("each instance to count every instance live", Duration::from_secs(20), async || {
            let health: serde_json::Value = gw.get("/health").send().await.ok()?.json().await.ok()?;
            (health["live_instances"] == gateways.len()).then_some(())
        })
        .await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Three instances, one account whose token has expired, 150 concurrent requests spread over them: every
/// request succeeds and the token endpoint sees exactly one refresh.
#[tokio::test(flavor = "multi_thread")]
async fn three_instances_refresh_an_expiring_account_once() {
    let fake = Fake::start().await;
    fake.lock().token_delay = Duration::from_millis(300);
    let cluster = Cluster::new().await;
    let (rt, at) = (fake.issue_refresh_token(), fake.issue_access_token());
    cluster.env(&fake).import_oauth("max", &rt, &at, &(now_ms() - 60_000).to_string()).await;
    let (_envs, gateways) = cluster.instances(&fake, 3).await;
    let requests = (0..150).map(|i| gateways[i % 3].post("/v1/messages").json(&message_body(i % 2 == 0)).send());
    for response in futures_util::future::join_all(requests).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        let _ = response.text().await.unwrap();
    }
    assert_eq!(fake.refresh_calls(), 1, "exactly one refresh for three instances");
    let used: std::collections::HashSet<_> = fake.requests().iter().filter_map(|r| r.header("authorization")).collect();
    assert_eq!(used.len(), 1, "every instance used the one new token");
    assert!(!used.contains(&format!("Bearer {at}")));
}

/// The instance that is refreshing is killed (SIGKILL) while the token endpoint holds its call open: its
/// lease frees, a survivor refreshes once with the refresh token that was never spent, and the account
/// keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_cut_by_kill_9_is_finished_by_a_survivor() {
    let fake = Fake::start().await;
    let cluster = Cluster::new().await;
    let (rt, at) = (fake.issue_refresh_token(), fake.issue_access_token());
    // Due for a refresh only once the instances run (the margin is one second), so that the first
    // instance's request is what starts it.
    let expires = now_ms() + 3_000;
    cluster.env(&fake).import_oauth("max", &rt, &at, &expires.to_string()).await;
    let envs: Vec<Env> = (0..2)
        .map(|_| {
            let mut env = cluster.env(&fake);
            env.set("SWITCHYARD_REFRESH_MARGIN_SECS", "1");
            env
        })
        .collect();
    let mut gateways = Vec::new();
    for env in &envs {
        gateways.push(env.serve().await);
    }
    fake.lock().token_delay = Duration::from_secs(30);
    support::eventually("the token to come due", Duration::from_secs(10), async || {
        (now_ms() > expires - 1_000).then_some(())
    })
    .await;
    let first = gateways[0].post("/v1/messages").json(&message_body(false)).send();
    let pending = tokio::spawn(first);
    support::eventually(
        "the first instance's refresh to reach the token endpoint",
        Duration::from_secs(10),
        async || (fake.lock().token_requests_started == 1).then_some(()),
    )
    .await;
    gateways[0].child.start_kill().unwrap();
    let _ = gateways[0].child.wait().await;
    let _ = pending.await;
    fake.lock().token_delay = Duration::ZERO;
    let survivor = gateways.pop().unwrap();
    let response = survivor.post("/v1/messages").json(&message_body(false)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(fake.refresh_calls(), 1, "the cut call was never answered; the survivor's is the one refresh");
    assert_eq!(fake.lock().token_requests_started, 2);
    let listed = cluster.env(&fake).ok(&["accounts", "list", "--json"]).await.stdout;
    assert!(listed.contains("\"status\": \"active\"") || listed.contains("\"status\":\"active\""), "{listed}");
}

/// Changes made through one instance reach the others: the instances list each other, a pause stops
/// routing everywhere, and keys created on one work on all.
#[tokio::test(flavor = "multi_thread")]
async fn changes_on_one_instance_reach_the_others() {
    let fake = Fake::start().await;
    let cluster = Cluster::new().await;
    for name in ["a", "b"] {
        let key = format!("sk-ant-api03-cluster-{name}");
        fake.add_api_key(&key);
        cluster.env(&fake).ok(&["accounts", "add", name, "--api-key", &key]).await;
    }
    let (envs, gateways) = cluster.instances(&fake, 3).await;
    for gw in &gateways {
        assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    }
    // The instances know each other: three live heartbeats, each its own name and address.
    let listed = support::eventually("three live instances", Duration::from_secs(10), async || {
        let listed: serde_json::Value =
            serde_json::from_str(&envs[0].ok(&["instances", "--json"]).await.stdout).unwrap();
        let live = listed.as_array()?.iter().filter(|i| i["live"] == true).count();
        (live == 3).then_some(listed)
    })
    .await;
    let ids: std::collections::HashSet<&str> =
        listed.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{listed}");
    for gw in &gateways {
        let address = gw.url.trim_start_matches("http://");
        let me = listed.as_array().unwrap().iter().find(|i| i["address"] == address);
        let id = me.unwrap_or_else(|| panic!("{address} in {listed}"))["id"].as_str().unwrap();
        // Every series names the instance it came from, so scrapes of several can be summed.
        let label = format!("instance=\"{id}\"");
        let metrics = gw.get("/metrics").send().await.unwrap().text().await.unwrap();
        for series in
            ["switchyard_instance_info{", "switchyard_requests_total{", "switchyard_request_duration_seconds_count{"]
        {
            let line =
                metrics.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series} in {metrics}"));
            assert!(line.contains(&label), "{line} should carry {label}");
        }
    }
    // Paused through one instance's data directory: all three stop routing to it.
    envs[0].ok(&["accounts", "pause", "a"]).await;
    for gw in &gateways {
        gw.settle().await;
    }
    let before = fake.served_by("sk-ant-api03-cluster-a");
    for gw in &gateways {
        for _ in 0..3 {
            assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
        }
    }
    assert_eq!(fake.served_by("sk-ant-api03-cluster-a"), before, "a paused account served");
    // Once a key exists (created through one instance), requests without one are refused everywhere.
    let key = envs[1].ok(&["keys", "create", "shared"]).await.stdout.trim().to_owned();
    for gw in &gateways {
        gw.settle().await;
        assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 401);
        let r = gw.post("/v1/messages").header("x-api-key", &key).json(&message_body(false)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // A key created through another instance works on its first request, before any reload (looked up in
    // the store before it is refused).
    let late = envs[2].ok(&["keys", "create", "late"]).await.stdout.trim().to_owned();
    for gw in &gateways {
        let r = gw.post("/v1/messages").header("x-api-key", &late).json(&message_body(false)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// Every instance on one database needs the data key the database was written with: one with another key
/// refuses to start, naming the problem, and the others are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_with_another_data_key_refuses_to_start() {
    let fake = Fake::start().await;
    fake.add_api_key("sk-ant-api03-cluster-key");
    let cluster = Cluster::new().await;
    cluster.env(&fake).ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-cluster-key"]).await;
    let (_envs, gateways) = cluster.instances(&fake, 1).await;
    let mut stranger = cluster.env(&fake);
    let other = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 32]);
    stranger.set("SWITCHYARD_ENCRYPTION_KEY", &other);
    let out = stranger.run(&["serve", "--port", "0"], "").await;
    assert_eq!(out.code, Some(1));
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("not the one the database was written with"), "{}", out.stderr);
    // A key file of its own is no better than a wrong key.
    let mut own_file = cluster.env(&fake);
    own_file.set("SWITCHYARD_ENCRYPTION_KEY", "");
    let out = own_file.run(&["accounts", "list"], "").await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert_eq!(gateways[0].post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
}

/// A database that cannot be reached is one line naming host and port, never the password, and the
/// process exits non-zero.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_one_clear_line_without_its_password() {
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    let port = support::closed_port_url().rsplit(':').next().unwrap().to_owned();
    env.set("SWITCHYARD_DATABASE_URL", &format!("postgres://switchyard:hunter2secret@127.0.0.1:{port}/db"));
    env.set("SWITCHYARD_LOG_LEVEL", "warn");
    for args in [&["serve", "--port", "0"][..], &["accounts", "list"], &["auth", "status"]] {
        let out = env.run(args, "").await;
        assert_eq!(out.code, Some(1), "{args:?}");
        let lines: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{}", out.stderr);
        assert!(lines[0].contains(&format!("cannot reach the database at 127.0.0.1:{port}")), "{}", out.stderr);
        assert!(!out.stderr.contains("hunter2secret") && !out.stdout.contains("hunter2secret"), "{}", out.stderr);
    }
    env.set("SWITCHYARD_DATABASE_URL", "mysql://root:hunter2secret@localhost/db");
    let out = env.run(&["accounts", "list"], "").await;
    assert!(out.stderr.contains("SWITCHYARD_DATABASE_URL") && !out.stderr.contains("hunter2secret"), "{}", out.stderr);
}

/// A 429 that one instance saw benches the account on the others; counters add up over instances (each
/// instance keeps its own row, so a restart counts nothing twice).
#[tokio::test(flavor = "multi_thread")]
async fn a_bench_seen_by_one_instance_holds_on_the_others() {
    let fake = Fake::start().await;
    let cluster = Cluster::new().await;
    for name in ["a", "b"] {
        let key = format!("sk-ant-api03-bench-{name}");
        fake.add_api_key(&key);
        cluster.env(&fake).ok(&["accounts", "add", name, "--api-key", &key]).await;
    }
    cluster.env(&fake).ok(&["accounts", "set", "b", "--priority", "1"]).await;
    let (envs, gateways) = cluster.instances(&fake, 2).await;
    let reset = support::fake::now_secs() + 3600;
    fake.push_for("sk-ant-api03-bench-a", support::fake::Script::limited(reset));
    assert_eq!(gateways[0].post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    assert_eq!(fake.served_by("sk-ant-api03-bench-a"), 1);
    support::eventually("the bench in the shared state", Duration::from_secs(10), async || {
        let listed: serde_json::Value =
            serde_json::from_str(&envs[1].ok(&["accounts", "list", "--json"]).await.stdout).unwrap();
        (listed[0]["status"] == "rate-limited").then_some(())
    })
    .await;
    gateways[1].settle().await;
    for _ in 0..4 {
        assert_eq!(gateways[1].post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    }
    assert_eq!(fake.served_by("sk-ant-api03-bench-a"), 1, "the other instance kept using a benched account");
    let listed = support::eventually("both instances' counts", Duration::from_secs(10), async || {
        let listed: serde_json::Value =
            serde_json::from_str(&envs[0].ok(&["accounts", "list", "--json"]).await.stdout).unwrap();
        (listed[1]["requests"] == 5).then_some(listed)
    })
    .await;
    assert_eq!(listed[0]["attempts"], 1, "{listed}");
}

/// The database goes away (its connections ended, new ones refused) and comes back: requests keep being
/// served from memory throughout, `/health` says `degraded` with the reason, and returns to `ok` by itself.
#[tokio::test(flavor = "multi_thread")]
async fn losing_the_database_degrades_and_recovers() {
    let fake = Fake::start().await;
    fake.add_api_key("sk-ant-api03-outage");
    let cluster = Cluster::new().await;
    cluster.env(&fake).ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-outage"]).await;
    let (envs, gateways) = cluster.instances(&fake, 1).await;
    let gw = &gateways[0];
    let health = async || -> Option<serde_json::Value> { gw.get("/health").send().await.ok()?.json().await.ok() };
    assert_eq!(health().await.unwrap()["status"], "ok");
    let name = url::Url::parse(&cluster.url).unwrap().path().trim_start_matches('/').to_owned();
    let admin_url = std::env::var("SWITCHYARD_TEST_DATABASE_URL").unwrap();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await.unwrap();
    let cut = format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(cut)).execute(&mut admin).await.unwrap();
    let degraded = support::eventually("/health to say degraded", Duration::from_secs(20), async || {
        let h = health().await?;
        (h["status"] == "degraded").then_some(h)
    })
    .await;
    assert!(degraded["reason"].as_str().is_some_and(|r| !r.is_empty()), "{degraded}");
    for _ in 0..5 {
        assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    }
    let back = format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true");
    sqlx::raw_sql(sqlx::AssertSqlSafe(back)).execute(&mut admin).await.unwrap();
    support::eventually("/health back to ok", Duration::from_secs(30), async || {
        (health().await?["status"] == "ok").then_some(())
    })
    .await;
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    // The rows of the requests served while it was away were held and written once it was back.
    support::eventually("the held request rows", Duration::from_secs(30), async || {
        let rows: serde_json::Value = serde_json::from_str(&envs[0].ok(&["requests", "--json"]).await.stdout).unwrap();
        (rows.as_array()?.len() >= 6).then_some(())
    })
    .await;
}

/// `store copy` moves a populated SQLite install to PostgreSQL: accounts with their sealed tokens, keys,
/// the admin password, the audit log and (asked for) the request log. Running it again changes nothing,
/// and serving from PostgreSQL afterwards uses every account; it refuses while the source is served.
#[tokio::test(flavor = "multi_thread")]
async fn store_copy_moves_an_install_to_postgres() {
    let fake = Fake::start().await;
    fake.add_api_key("sk-ant-api03-copied");
    let mut env = Env::new(&fake);
    env.ok(&["accounts", "add", "key-account", "--api-key", "sk-ant-api03-copied"]).await;
    let (rt, at) = (fake.issue_refresh_token(), fake.issue_access_token());
    env.import_oauth("oauth-account", &rt, &at, &(now_ms() + 3_600_000).to_string()).await;
    env.ok(&["accounts", "set", "oauth-account", "--priority", "5"]).await;
    let client_key = env.ok(&["keys", "create", "app"]).await.stdout.trim().to_owned();
    env.set("SWITCHYARD_ADMIN_PASSWORD", "a long admin password");
    env.ok(&["admin", "set-password"]).await;
    {
        let gw = env.serve().await;
        let r = gw.post("/v1/messages").header("x-api-key", &client_key).json(&message_body(false));
        assert_eq!(r.send().await.unwrap().status(), 200);
        let out = env.run(&["store", "copy", "--to", "postgres://nobody@127.0.0.1:1/x"], "").await;
        assert!(out.stderr.contains("stop `switchyard serve`"), "{}", out.stderr);
        support::eventually("the request's row", Duration::from_secs(10), async || {
            let rows: serde_json::Value = serde_json::from_str(&env.ok(&["requests", "--json"]).await.stdout).unwrap();
            (rows.as_array()?.len() == 1).then_some(())
        })
        .await;
    }
    let url = support::fresh_database().await;
    let first = env.ok(&["store", "copy", "--to", &url, "--with-requests"]).await.stdout;
    assert!(first.contains("copied 2 account(s), 1 client key(s)") && first.contains("1 request(s)"), "{first}");
    assert!(first.contains("every account's tokens open"), "{first}");
    let mut pg = env.clone_with("SWITCHYARD_DATABASE_URL", &url);
    pg.set("SWITCHYARD_ADMIN_PASSWORD", "");
    let audit_once = pg.ok(&["audit", "--json"]).await.stdout;
    let again = env.ok(&["store", "copy", "--to", &url, "--with-requests"]).await.stdout;
    assert!(again.contains("copied 2 account(s), 1 client key(s)") && again.contains("0 audit entr"), "{again}");
    let audit_twice: serde_json::Value = serde_json::from_str(&pg.ok(&["audit", "--json"]).await.stdout).unwrap();
    let audit_once: serde_json::Value = serde_json::from_str(&audit_once).unwrap();
    // Only the second copy's own entry is new.
    assert_eq!(audit_twice.as_array().unwrap().len(), audit_once.as_array().unwrap().len() + 1);

    let listed: serde_json::Value = serde_json::from_str(&pg.ok(&["accounts", "list", "--json"]).await.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[1]["priority"], 5);
    let requests: serde_json::Value = serde_json::from_str(&pg.ok(&["requests", "--json"]).await.stdout).unwrap();
    assert_eq!(requests.as_array().unwrap().len(), 1);
    let gw = pg.serve().await;
    for _ in 0..4 {
        let r = gw.post("/v1/messages").header("x-api-key", &client_key).json(&message_body(false));
        assert_eq!(r.send().await.unwrap().status(), 200);
    }
    assert!(fake.served_by("sk-ant-api03-copied") >= 1);
    let login = gw.post("/admin/api/login").json(&serde_json::json!({"password": "a long admin password"}));
    assert_eq!(login.send().await.unwrap().status(), 200, "the admin password came along");
}

/// A dashboard session started on one instance works on another (sessions live in the store, by digest),
/// and logging out on either ends it on both.
#[tokio::test(flavor = "multi_thread")]
async fn a_dashboard_session_from_one_instance_works_on_another() {
    let fake = Fake::start().await;
    let cluster = Cluster::new().await;
    let admin_key =
        cluster.env(&fake).ok(&["keys", "create", "root", "--role", "admin"]).await.stdout.trim().to_owned();
    let (_envs, gateways) = cluster.instances(&fake, 2).await;
    let (cookie, secret) = key_login(&gateways[0], &admin_key).await;
    let whoami = |gw: &Gateway| gw.get("/admin/api/session").header("cookie", &cookie).header("x-csrf-token", &secret);
    assert_eq!(whoami(&gateways[1]).send().await.unwrap().status(), 200, "the session works on the other instance");
    // The dashboard's instances panel: both instances live, the answering one marked.
    let listed = support::eventually("both instances in the admin API", Duration::from_secs(10), async || {
        let r = gateways[1].get("/admin/api/instances").header("cookie", &cookie).header("x-csrf-token", &secret);
        let listed: serde_json::Value = r.send().await.ok()?.json().await.ok()?;
        let rows = listed["instances"].as_array()?.clone();
        (rows.iter().filter(|i| i["live"] == true).count() == 2).then_some(rows)
    })
    .await;
    let this: Vec<&serde_json::Value> = listed.iter().filter(|i| i["this"] == true).collect();
    assert_eq!(this.len(), 1, "{listed:?}");
    assert_eq!(this[0]["address"], gateways[1].url.trim_start_matches("http://"));
    let wrong = gateways[1].get("/admin/api/session").header("cookie", &cookie).header("x-csrf-token", "guess");
    assert_eq!(wrong.send().await.unwrap().status(), 401, "and still needs its secret there");
    let out = gateways[1].post("/admin/api/logout").header("cookie", &cookie).header("x-csrf-token", &secret);
    assert_eq!(out.send().await.unwrap().status(), 204);
    support::eventually("the logout to reach the first instance", Duration::from_secs(10), async || {
        (whoami(&gateways[0]).send().await.ok()?.status() == 401).then_some(())
    })
    .await;
}

/// A budget holds across instances: what one instance spent (logged in the shared store) counts on the
/// others, so a key over its budget on one is refused on all.
#[tokio::test(flavor = "multi_thread")]
async fn a_budget_is_shared_by_the_instances() {
    let fake = Fake::start().await;
    fake.add_api_key("sk-ant-api03-budget");
    let cluster = Cluster::new().await;
    cluster.env(&fake).ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-budget"]).await;
    let key = cluster.env(&fake).ok(&["keys", "create", "small", "--budget-tokens-day", "30"]).await.stdout;
    let key = key.trim().to_owned();
    let (envs, gateways) = cluster.instances(&fake, 2).await;
    let send = |gw: &Gateway| gw.post("/v1/messages").header("x-api-key", &key).json(&message_body(false));
    // 17 tokens a request: two reach the budget on the first instance.
    for _ in 0..2 {
        assert_eq!(send(&gateways[0]).send().await.unwrap().status(), 200);
    }
    assert_eq!(send(&gateways[0]).send().await.unwrap().status(), 429);
    support::eventually("the spend in the shared log", Duration::from_secs(10), async || {
        let rows: serde_json::Value = serde_json::from_str(&envs[1].ok(&["requests", "--json"]).await.stdout).ok()?;
        (rows.as_array()?.iter().filter(|r| r["status"] == 200).count() == 2).then_some(())
    })
    .await;
    // Two rounds of the other instance's upkeep: the second starts after the first has read the spend.
    gateways[1].settle().await;
    gateways[1].settle().await;
    let refused = send(&gateways[1]).send().await.unwrap();
    let (_, message) = support::error_type(refused, 429).await;
    assert!(message.contains("over its"), "{message}");
}

/// An OAuth login started on one instance is finished on another (the pending login, its verifier sealed,
/// is in the shared store), and the new account serves from both.
#[tokio::test(flavor = "multi_thread")]
async fn an_oauth_login_started_on_one_instance_finishes_on_another() {
    let fake = Fake::start().await;
    let cluster = Cluster::new().await;
    let admin_key =
        cluster.env(&fake).ok(&["keys", "create", "root", "--role", "admin"]).await.stdout.trim().to_owned();
    let (_envs, gateways) = cluster.instances(&fake, 2).await;
    let (cookie, secret) = key_login(&gateways[0], &admin_key).await;
    let post = |gw: &Gateway, path: &str, body: serde_json::Value| {
        gw.post(path).header("cookie", &cookie).header("x-csrf-token", &secret).json(&body).send()
    };
    let started: serde_json::Value =
        post(&gateways[0], "/admin/api/oauth/start", serde_json::json!({"account": "max"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let url = url::Url::parse(started["authorize_url"].as_str().unwrap()).unwrap();
    let param = |k: &str| url.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned()).unwrap();
    let code = fake.authorize(&param("code_challenge"), &param("redirect_uri"));
    let pasted = format!("{code}#{}", param("state"));
    let finished = post(&gateways[1], "/admin/api/oauth/finish", serde_json::json!({"code": pasted})).await.unwrap();
    assert_eq!(finished.status(), 201, "{}", finished.text().await.unwrap());
    for gw in &gateways {
        gw.settle().await;
        let r =
            gw.post("/v1/messages").header("x-api-key", &admin_key).json(&message_body(false)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(fake.last_request().header("authorization").unwrap().starts_with("Bearer "));
    }
}

/// An alert raised by every instance reaches the webhook once: the quiet period is claimed in the store.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_raised_on_every_instance_is_sent_once() {
    let (hook, received) = support::webhook().await;

    let fake = Fake::start().await;
    fake.add_api_key("sk-ant-api03-alert");
    let cluster = Cluster::new().await;
    cluster.env(&fake).ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-alert"]).await;
    let envs: Vec<Env> = (0..2).map(|_| cluster.env(&fake).clone_with("SWITCHYARD_ALERT_WEBHOOK_URL", &hook)).collect();
    let mut gateways = Vec::new();
    for env in &envs {
        gateways.push(env.serve().await);
    }
    fake.push_for("sk-ant-api03-alert", support::fake::Script::limited(support::fake::now_secs() + 3600));
    assert_eq!(gateways[0].post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 429);
    assert_eq!(gateways[0].post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 429);
    support::eventually("the first alert", Duration::from_secs(10), async || {
        (received.lock().unwrap().iter().filter(|v| v["kind"] == "all_accounts_limited").count() == 1).then_some(())
    })
    .await;
    // The other instance learns of the bench, raises the same alert, and leaves it to the first.
    gateways[1].settle().await;
    gateways[1].settle().await;
    assert_eq!(gateways[1].post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 429);
    support::eventually("the second instance to stand down", Duration::from_secs(10), async || {
        gateways[1].logs().contains("alert already sent by another instance").then_some(())
    })
    .await;
    assert_eq!(received.lock().unwrap().iter().filter(|v| v["kind"] == "all_accounts_limited").count(), 1);
}

/// A key's requests-per-minute limit holds over all instances together: each live instance enforces its
/// share, so 60 requests spread over three instances against a limit of 30 admit 30 (±10 %).
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_is_split_among_the_live_instances() {
    let fake = Fake::start().await;
    fake.add_api_key("sk-ant-api03-rpm");
    let cluster = Cluster::new().await;
    cluster.env(&fake).ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-rpm"]).await;
    let key = cluster.env(&fake).ok(&["keys", "create", "busy", "--rpm", "30"]).await.stdout.trim().to_owned();
    let (_envs, gateways) = cluster.instances(&fake, 3).await;
    all_live(&gateways).await;
    let sends = (0..60)
        .map(|i| gateways[i % 3].post("/v1/messages").header("x-api-key", &key).json(&message_body(false)).send());
    let admitted =
        futures_util::future::join_all(sends).await.into_iter().filter(|r| r.as_ref().unwrap().status() == 200).count();
    assert!((27..=33).contains(&admitted), "{admitted} of 60 admitted against a limit of 30 over three instances");
}

/// With the periodic check set to a minute, PostgreSQL's change feed alone carries changes: a pause, a
/// resume, a revoked key and a bench reach the other instances within a second.
#[tokio::test(flavor = "multi_thread")]
async fn changes_are_pushed_to_the_other_instances_within_a_second() {
    let fake = Fake::start().await;
    let cluster = Cluster::new().await;
    fake.add_api_key("sk-ant-api03-push-a");
    cluster.env(&fake).ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-push-a"]).await;
    let doomed = cluster.env(&fake).ok(&["keys", "create", "doomed"]).await.stdout.trim().to_owned();
    let key = cluster.env(&fake).ok(&["keys", "create", "kept"]).await.stdout.trim().to_owned();
    let mut envs = Vec::new();
    let mut gateways = Vec::new();
    for _ in 0..3 {
        let mut env = cluster.env(&fake);
        env.set("SWITCHYARD_SYNC_INTERVAL_MS", "60000");
        gateways.push(env.serve().await);
        envs.push(env);
    }
    let status = async |gw: &Gateway, key: &str| {
        let r = gw.post("/v1/messages").header("x-api-key", key).json(&message_body(false)).send().await.unwrap();
        r.status().as_u16()
    };
    for gw in &gateways {
        assert_eq!(status(gw, &doomed).await, 200);
    }
    let second = Duration::from_secs(1);
    envs[0].ok(&["accounts", "pause", "a"]).await;
    for gw in &gateways {
        support::eventually("the pause everywhere", second, async || (status(gw, &key).await == 503).then_some(()))
            .await;
    }
    envs[1].ok(&["accounts", "resume", "a"]).await;
    for gw in &gateways {
        support::eventually("the resume everywhere", second, async || (status(gw, &key).await == 200).then_some(()))
            .await;
    }
    envs[2].ok(&["keys", "revoke", "doomed"]).await;
    for gw in &gateways {
        support::eventually("the revocation everywhere", second, async || {
            (status(gw, &doomed).await == 401).then_some(())
        })
        .await;
    }
    // A 429 seen by one instance: the others stop sending to the account without asking upstream again.
    fake.push_for("sk-ant-api03-push-a", support::fake::Script::limited(support::fake::now_secs() + 3600));
    // (The fake answers 429 once, so any later 429 is an instance's own bench.)
    assert_eq!(status(&gateways[0], &key).await, 429);
    for gw in &gateways[1..] {
        support::eventually("the bench everywhere", second, async || (status(gw, &key).await == 429).then_some(()))
            .await;
    }
    let served = fake.served_by("sk-ant-api03-push-a");
    for gw in &gateways {
        assert_eq!(status(gw, &key).await, 429);
    }
    assert_eq!(fake.served_by("sk-ant-api03-push-a"), served, "a benched account was asked again");
}

/// A concurrency limit of 2 holds over three instances together: with streams held open, six attempts
/// (two on each instance) get exactly two slots.
#[tokio::test(flavor = "multi_thread")]
async fn a_concurrency_limit_holds_across_the_instances() {
    let fake = Fake::start().await;
    fake.add_api_key("sk-ant-api03-slots");
    let cluster = Cluster::new().await;
    cluster.env(&fake).ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-slots"]).await;
    let key = cluster.env(&fake).ok(&["keys", "create", "narrow", "--concurrency", "2"]).await.stdout.trim().to_owned();
    let (_envs, gateways) = cluster.instances(&fake, 3).await;
    all_live(&gateways).await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    fake.lock().sse_gate = Some(gate.clone());
    let mut open = Vec::new();
    let mut refused = 0;
    for gw in gateways.iter().chain(&gateways) {
        let mut r = gw.post("/v1/messages").header("x-api-key", &key).json(&message_body(true)).send().await.unwrap();
        match r.status().as_u16() {
            200 => {
                let _first = r.chunk().await.unwrap();
                open.push(r);
            }
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((open.len(), refused), (2, 4), "slots granted over three instances against a limit of 2");
    gate.add_permits(1000);
    for mut r in open {
        while r.chunk().await.unwrap().is_some() {}
    }
}

/// The data key kept in the database, wrapped under `SWITCHYARD_PASSPHRASE`: no instance holds a key of
/// its own, one with another passphrase refuses to start, and `rotate-key` while three instances serve
/// under load re-seals every value, every instance takes up the new key without a restart, and no
/// request fails.
#[tokio::test(flavor = "multi_thread")]
async fn the_data_key_kept_in_the_database_rotates_while_three_instances_serve() {
    let fake = Fake::start().await;
    let cluster = Cluster::new().await;
    let passphrase = "correct horse battery staple";
    let env_with = |passphrase: &str| {
        let mut env = cluster.env(&fake);
        env.set("SWITCHYARD_ENCRYPTION_KEY", "");
        env.set("SWITCHYARD_PASSPHRASE", passphrase);
        env
    };
    for name in ["a", "b"] {
        let key = format!("sk-ant-api03-rotate-{name}");
        fake.add_api_key(&key);
        env_with(passphrase).ok(&["accounts", "add", name, "--api-key", &key]).await;
    }
    // Kept in the database, wrapped (no key in the clear there, no key file on the machine).
    let db = sqlx::PgPool::connect(&cluster.url).await.unwrap();
    let stored: String =
        sqlx::query_scalar("SELECT value FROM settings WHERE key = 'store.keyset'").fetch_one(&db).await.unwrap();
    assert!(stored.contains("argon2id") && !stored.contains("\"keys\""), "not wrapped: {stored}");
    let mut envs = Vec::new();
    let mut gateways = Vec::new();
    for _ in 0..3 {
        let env = env_with(passphrase);
        gateways.push(env.serve().await);
        assert!(!env.home().join("secret.key").exists(), "an instance made a key file of its own");
        envs.push(env);
    }
    let out = env_with("another passphrase").run(&["serve", "--port", "0"], "").await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.lines().last().unwrap_or_default().contains("SWITCHYARD_PASSPHRASE"), "{}", out.stderr);

    // Load on all three while the key rotates.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = reqwest::Client::new();
            let (mut sent, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let url = format!("{}/v1/messages", urls[sent % urls.len()]);
                let status = client.post(&url).json(&message_body(sent % 2 == 0)).send().await.unwrap().status();
                if status != 200 {
                    failed.push(status.as_u16());
                }
                sent += 1;
            }
            (sent, failed)
        }
    });
    let rotated = envs[0].ok(&["auth", "storage", "rotate-key"]).await;
    assert!(rotated.stdout.contains("under key version 2 (was 1)"), "{}", rotated.stdout);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = load.await.unwrap();
    assert!(
        sent > 30 && failed.is_empty(),
        "{} of {sent} requests failed during the rotation: {failed:?}",
        failed.len()
    );

    // Every sealed value is under the new key, and the old key is gone from the stored set.
    let sealed: Vec<String> = sqlx::query_scalar("SELECT api_key FROM accounts").fetch_all(&db).await.unwrap();
    assert!(sealed.iter().all(|v| v.starts_with("v3.2.")), "{sealed:?}");
    let keyset: String =
        sqlx::query_scalar("SELECT value FROM settings WHERE key = 'store.keyset'").fetch_one(&db).await.unwrap();
    assert_ne!(keyset, stored);
    let listed: serde_json::Value = serde_json::from_str(&envs[1].ok(&["instances", "--json"]).await.stdout).unwrap();
    let live: Vec<&serde_json::Value> = listed.as_array().unwrap().iter().filter(|i| i["live"] == true).collect();
    assert_eq!(live.len(), 3, "{listed}");
    assert!(live.iter().all(|i| i["key_version"] == 2), "{listed}");
    // An account added now (sealed under version 2 alone) opens on every instance: they hold the new key.
    fake.add_api_key("sk-ant-api03-rotate-c");
    envs[2].ok(&["accounts", "add", "c", "--api-key", "sk-ant-api03-rotate-c"]).await;
    envs[2].ok(&["accounts", "pause", "a"]).await;
    envs[2].ok(&["accounts", "pause", "b"]).await;
    for gw in &gateways {
        gw.settle().await;
        assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    }
    assert_eq!(fake.served_by("sk-ant-api03-rotate-c"), 3);
    // The CLI opens with the stored key alone as well.
    let out = envs[1].ok(&["accounts", "list"]).await;
    assert!(out.stdout.contains('c'), "{}", out.stdout);
}
