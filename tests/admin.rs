//! The admin API through the real binary: closed without a session even on loopback, the one-time login
//! link, key and password (+TOTP) logins, roles, CSRF, the login brake, key management and the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{Env, Fake, Gateway, error_type, message_body};

struct Session {
    cookie: String,
    csrf: String,
}

impl Session {
    /// A request as the dashboard sends it: the cookie and the session secret.
    fn get(&self, gw: &Gateway, path: &str) -> reqwest::RequestBuilder {
        gw.get(path).header("cookie", &self.cookie).header("x-csrf-token", &self.csrf)
    }

    fn post(&self, gw: &Gateway, path: &str) -> reqwest::RequestBuilder {
        gw.post(path).header("cookie", &self.cookie).header("x-csrf-token", &self.csrf)
    }
}

fn cookie_of(response: &reqwest::Response) -> String {
    let set = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/;"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

/// The session secret a login link hands over: in the fragment of its redirect, never in a body.
fn secret_of_link(response: &reqwest::Response) -> String {
    let location = response.headers()["location"].to_str().unwrap();
    location.strip_prefix("/dashboard#session=").expect("the secret in the fragment").to_owned()
}

async fn login(gw: &Gateway, body: serde_json::Value) -> reqwest::Response {
    gw.post("/admin/api/login").json(&body).send().await.unwrap()
}

async fn session_from(gw: &Gateway, response: reqwest::Response) -> Session {
    assert_eq!(response.status(), 200);
    let cookie = cookie_of(&response);
    let body: serde_json::Value = response.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let me = gw.get("/admin/api/session").header("cookie", &cookie).header("x-csrf-token", &csrf).send().await.unwrap();
    assert_eq!(me.status(), 200, "{}", me.text().await.unwrap());
    Session { cookie, csrf }
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_without_a_session_and_the_one_time_link_works_once() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    fake.add_api_key("sk-ant-api03-adm");
    env.ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-adm"]).await;
    let mut gw = env.serve().await;
    for path in ["/admin/api/session", "/admin/api/accounts", "/admin/api/keys", "/admin/api/audit"] {
        let r = gw.get(path).send().await.unwrap();
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        let (kind, _) = error_type(r, 401).await;
        assert_eq!(kind, "authentication_error", "{path}");
    }
    assert_eq!(gw.next_line().await, format!("dashboard: {}/dashboard", gw.url));
    let line = gw.next_line().await;
    let link = line.strip_prefix("dashboard login link (single use): ").expect("one-time link printed").to_owned();
    assert!(!gw.logs().contains(link.split("token=").nth(1).unwrap()), "the token is not logged");
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_redirect.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let csrf = secret_of_link(&r);
    let cookie = cookie_of(&r);
    let page = no_redirect.get(format!("{}/dashboard", gw.url)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<title>Switchyard</title>"));
    let again = no_redirect.get(&link).send().await.unwrap();
    assert_eq!(again.status(), 401, "single use");
    assert!(again.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = again.text().await.unwrap();
    assert!(page.contains("already been used") && page.contains("switchyard dashboard-link"), "{page}");
    // The login page says how to get in.
    let login_page = gw.get("/dashboard/login").send().await.unwrap().text().await.unwrap();
    for hint in ["switchyard dashboard-link", "switchyard admin set-password", "--role admin"] {
        assert!(login_page.contains(hint), "the login page does not mention {hint}");
    }
    // A fresh link from the CLI works on the running server, once; it replaces the previous one.
    let port = gw.url.rsplit(':').next().unwrap().to_owned();
    let first = env.ok(&["dashboard-link", "--port", &port]).await.stdout.trim().to_owned();
    let fresh = env.ok(&["dashboard-link", "--port", &port]).await.stdout.trim().to_owned();
    assert!(fresh.starts_with(&format!("{}/admin/login?token=", gw.url)), "{fresh}");
    assert_eq!(no_redirect.get(&first).send().await.unwrap().status(), 401, "replaced by the newer link");
    let r = no_redirect.get(&fresh).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let me: serde_json::Value = gw
        .get("/admin/api/session")
        .header("cookie", cookie_of(&r))
        .header("x-csrf-token", secret_of_link(&r))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["actor"], "dashboard-link");
    assert_eq!(no_redirect.get(&fresh).send().await.unwrap().status(), 401, "single use");

    // The cookie alone, as another port of this host receives it from the browser, opens nothing: not
    // even the session's own description, which would hand out the secret.
    for path in ["/admin/api/session", "/admin/api/accounts", "/admin/api/keys"] {
        let r = gw.get(path).header("cookie", &cookie).send().await.unwrap();
        let (kind, message) = error_type(r, 401).await;
        assert_eq!(kind, "authentication_error");
        assert!(message.contains("x-csrf-token"), "{message}");
    }
    let r = gw
        .post("/admin/api/keys")
        .header("cookie", &cookie)
        .json(&serde_json::json!({"name": "stolen", "role": "admin"}));
    assert_eq!(r.send().await.unwrap().status(), 401);
    let r = gw.post("/admin/api/accounts/a/pause").header("cookie", &cookie).header("x-csrf-token", "nope");
    assert_eq!(r.send().await.unwrap().status(), 401);
    // A second sy_session planted by another port (a longer Path wins the order): refused, not guessed at.
    let planted = format!("sy_session=planted-by-another-port; {cookie}");
    let r = gw.get("/admin/api/session").header("cookie", &planted).header("x-csrf-token", &csrf).send().await.unwrap();
    let (_, message) = error_type(r, 401).await;
    assert!(message.contains("several sy_session cookies"), "{message}");
    let by_link = Session { cookie: cookie.clone(), csrf };
    let me: serde_json::Value = by_link.get(&gw, "/admin/api/session").send().await.unwrap().json().await.unwrap();
    assert!(me.get("csrf_token").is_none(), "the session's description does not repeat the secret");
    let r = by_link.post(&gw, "/admin/api/accounts/a/pause").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let accounts: serde_json::Value =
        by_link.get(&gw, "/admin/api/accounts").send().await.unwrap().json().await.unwrap();
    assert_eq!(accounts[0]["status"], "paused");
    assert!(!accounts.to_string().contains("sk-ant-api03-adm"), "no secrets in the admin API");

    // Logout ends the session.
    assert_eq!(by_link.post(&gw, "/admin/api/logout").send().await.unwrap().status(), 204);
    assert_eq!(by_link.get(&gw, "/admin/api/session").send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_logins_follow_roles_and_admins_manage_keys() {
    let fake = Fake::start().await;
    let env = Env::new(&fake);
    fake.add_api_key("sk-ant-api03-adm");
    env.ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-adm"]).await;
    let admin_key = env.ok(&["keys", "create", "root", "--role", "admin"]).await.stdout.trim().to_owned();
    let viewer_key = env.ok(&["keys", "create", "eyes", "--role", "viewer"]).await.stdout.trim().to_owned();
    let user_key = env.ok(&["keys", "create", "app", "--role", "user"]).await.stdout.trim().to_owned();
    let mut gw = env.serve().await;
    // An admin key exists: no one-time link.
    assert!(gw.next_line().await.starts_with("dashboard: http://"));
    assert!(
        gw.next_line().await.starts_with("dashboard login: an admin key"),
        "no login link when an admin key exists"
    );

    let (kind, _) = error_type(login(&gw, serde_json::json!({"key": user_key})).await, 403).await;
    assert_eq!(kind, "permission_error");
    let viewer = session_from(&gw, login(&gw, serde_json::json!({"key": viewer_key})).await).await;
    assert_eq!(viewer.get(&gw, "/admin/api/accounts").send().await.unwrap().status(), 200);
    assert_eq!(viewer.get(&gw, "/admin/api/keys").send().await.unwrap().status(), 403);
    assert_eq!(viewer.get(&gw, "/admin/api/audit").send().await.unwrap().status(), 403);
    let r = viewer.post(&gw, "/admin/api/accounts/a/pause").send().await.unwrap();
    assert_eq!(r.status(), 403);

    let admin = session_from(&gw, login(&gw, serde_json::json!({"key": admin_key})).await).await;
    let r = admin
        .post(&gw, "/admin/api/keys")
        .json(&serde_json::json!({"name": "made-by-api", "role": "user", "rpm": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    let new_key = created["key"].as_str().unwrap().to_owned();
    gw.settle().await;
    let proxied =
        gw.post("/v1/messages").header("x-api-key", &new_key).json(&message_body(false)).send().await.unwrap();
    assert_eq!(proxied.status(), 200);
    let keys: serde_json::Value = admin.get(&gw, "/admin/api/keys").send().await.unwrap().json().await.unwrap();
    assert!(!keys.to_string().contains(&new_key[3..]), "listing shows no secret");
    let r = admin.post(&gw, "/admin/api/keys/made-by-api/revoke").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let audit: serde_json::Value = admin.get(&gw, "/admin/api/audit").send().await.unwrap().json().await.unwrap();
    let actions: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}:{}", e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    for wanted in ["admin.login:denied", "admin.login:ok", "keys.create:ok", "keys.revoke:ok"] {
        assert!(actions.iter().any(|a| a == wanted), "{wanted} missing from {actions:?}");
    }
    // The request log and stats over HTTP (rows are written in the background).
    let requests = support::eventually("the proxied request's row", std::time::Duration::from_secs(10), async || {
        let rows: serde_json::Value =
            admin.get(&gw, "/admin/api/requests?since=1h").send().await.ok()?.json().await.ok()?;
        (rows[0]["client_key"] == "made-by-api").then_some(rows)
    })
    .await;
    assert_eq!(requests[0]["client_key"], "made-by-api");
    assert_eq!(requests[0]["status"], 200);
    let stats: serde_json::Value =
        admin.get(&gw, "/admin/api/stats?by=key").send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["made-by-api"]["requests"], 1);
    assert_eq!(viewer.get(&gw, "/admin/api/requests").send().await.unwrap().status(), 403);
    assert_eq!(viewer.get(&gw, "/admin/api/stats").send().await.unwrap().status(), 200);
    let by_api = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "keys.create" && e["target"] == "made-by-api")
        .unwrap();
    assert_eq!(by_api["actor"], "key:root");
    assert_eq!(by_api["source"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread")]
async fn password_with_totp_and_the_login_brake() {
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    env.set("SWITCHYARD_ADMIN_PASSWORD", "correct horse battery");
    let out = env.ok(&["admin", "set-password", "--totp"]).await;
    let url = out.stdout.lines().find(|l| l.starts_with("otpauth://")).expect("otpauth url").to_owned();
    let secret = url.split("secret=").nth(1).unwrap().split('&').next().unwrap().to_owned();
    env.set("SWITCHYARD_ADMIN_PASSWORD", "short");
    let weak = env.run(&["admin", "set-password"], "").await;
    assert!(weak.stderr.contains("at least 12 characters"), "{}", weak.stderr);
    let mut gw = env.serve().await;
    assert!(gw.next_line().await.starts_with("dashboard: http://"));
    assert!(gw.next_line().await.starts_with("dashboard login: an admin key"), "no login link when a password exists");

    let (_, message) =
        error_type(login(&gw, serde_json::json!({"password": "correct horse battery"})).await, 401).await;
    assert!(message.contains("TOTP"), "{message}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let secret_bytes = switchyard::access::totp::base32_decode(&secret).unwrap();
    let code = switchyard::access::totp::code(&secret_bytes, now);
    let ok = login(&gw, serde_json::json!({"password": "correct horse battery", "totp": code})).await;
    let admin = session_from(&gw, ok).await;
    assert_eq!(admin.get(&gw, "/admin/api/keys").send().await.unwrap().status(), 200);
    // The same code again (a replay within its window) is refused, with the same answer as a wrong password:
    // no message tells a right password from a wrong one.
    let (_, replayed) =
        error_type(login(&gw, serde_json::json!({"password": "correct horse battery", "totp": code})).await, 401).await;
    let (_, wrong) =
        error_type(login(&gw, serde_json::json!({"password": "wrong one", "totp": code})).await, 401).await;
    assert_eq!(replayed, wrong);
    assert_eq!(message, wrong, "without the code, the same answer as a wrong password");
}

/// A client whose connections come from `ip` (any 127.x address reaches the gateway on 127.0.0.1).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder().local_address(std::net::IpAddr::from(ip)).build().unwrap()
}

/// The login brake: a concurrent burst of wrong passwords from many loopback addresses (one source) gets
/// no more Argon2 checks than the brake's burst, and while the password brake is full — and the key brake
/// too — a valid admin key still logs in.
#[tokio::test(flavor = "multi_thread")]
async fn the_login_brake_counts_a_burst_once_and_keeps_a_valid_key_working() {
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    env.set("SWITCHYARD_ADMIN_PASSWORD", "correct horse battery");
    env.ok(&["admin", "set-password"]).await;
    let admin_key = env.ok(&["keys", "create", "root", "--role", "admin"]).await.stdout.trim().to_owned();
    let gw = env.serve().await;
    let url = format!("{}/admin/api/login", gw.url);

    let burst = (0..60u8).map(|n| {
        let (client, url) = (client_from([127, 0, 1, n + 1]), url.clone());
        tokio::spawn(async move {
            let r = client.post(&url).json(&serde_json::json!({"password": format!("guess {n}")})).send().await;
            r.unwrap().status().as_u16()
        })
    });
    let statuses: Vec<u16> = futures_util::future::join_all(burst).await.into_iter().map(Result::unwrap).collect();
    assert!(statuses.iter().all(|s| [401, 429, 503].contains(s)), "{statuses:?}");
    let mut checked = statuses.iter().filter(|&&s| s == 401).count();
    // Answers of 503 (the checks were all busy) cost nothing; go on one at a time until the brake holds.
    for n in 0..10u8 {
        let r = client_from([127, 0, 4, n + 1]).post(&url).json(&serde_json::json!({"password": "more guesses"}));
        match r.send().await.unwrap().status().as_u16() {
            401 => checked += 1,
            429 => break,
            other => panic!("{other}"),
        }
    }
    let burst = switchyard::access::admin::LOGIN_BURST as usize;
    assert_eq!(checked, burst, "{checked} checked: {statuses:?}");
    let r = client_from([127, 0, 0, 9]).post(&url).json(&serde_json::json!({"password": "correct horse battery"}));
    let (kind, message) = error_type(r.send().await.unwrap(), 429).await;
    assert_eq!(kind, "rate_limit_error");
    assert!(message.contains("too many failed logins"), "{message}");

    // Wrong keys fill the key brake too; the right key still gets in, from any of these addresses.
    for n in 0..10u8 {
        let r = client_from([127, 0, 2, n + 1]).post(&url).json(&serde_json::json!({"key": format!("sy-wrong-{n}")}));
        let status = r.send().await.unwrap().status().as_u16();
        assert!(if n < 5 { status == 401 } else { status == 429 }, "wrong key {n}: {status}");
    }
    let r = client_from([127, 0, 3, 1]).post(&url).json(&serde_json::json!({"key": admin_key})).send().await.unwrap();
    let admin = session_from(&gw, r).await;
    let audit: serde_json::Value = admin.get(&gw, "/admin/api/audit").send().await.unwrap().json().await.unwrap();
    let denied_passwords = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"] == "admin.login"
                && e["outcome"] == "denied"
                && e["detail"].as_str().unwrap_or("").contains("password")
        })
        .count();
    assert_eq!(denied_passwords, checked, "every checked password is audited, and no more: {audit}");
}

/// The admin API the dashboard runs on: pages and redirects, overview and series, the paged and filtered
/// request log, one request's details, account changes applied to routing at once, and the OAuth add flow.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_api_reads_pages_and_changes_accounts() {
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    env.set("SWITCHYARD_LB_STRATEGY", "round-robin");
    for (name, key) in [("alpha", "sk-ant-api03-alpha"), ("beta", "sk-ant-api03-beta")] {
        fake.add_api_key(key);
        env.ok(&["accounts", "add", name, "--api-key", key]).await;
    }
    let admin_key = env.ok(&["keys", "create", "root", "--role", "admin"]).await.stdout.trim().to_owned();
    let viewer_key = env.ok(&["keys", "create", "eyes", "--role", "viewer"]).await.stdout.trim().to_owned();
    let user_key = env.ok(&["keys", "create", "app", "--role", "user"]).await.stdout.trim().to_owned();
    let gw = env.serve().await;
    for stream in [false, true, false, true, false] {
        let r =
            gw.post("/v1/messages").header("x-api-key", &user_key).json(&message_body(stream)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let admin = session_from(&gw, login(&gw, serde_json::json!({"key": admin_key})).await).await;
    let viewer = session_from(&gw, login(&gw, serde_json::json!({"key": viewer_key})).await).await;
    let get = |path: &str, s: &Session| s.get(&gw, path).send();
    let json = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200, "{:?}", r.url().path());
        r.json::<serde_json::Value>().await.unwrap()
    };

    // Pages: the shell needs a session, assets do not, the old landing page points at the dashboard.
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_redirect.get(format!("{}/dashboard", gw.url)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/dashboard/login"));
    let r = no_redirect.get(format!("{}/admin/", gw.url)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/dashboard"));
    let shell = no_redirect
        .get(format!("{}/dashboard", gw.url))
        .header("cookie", &viewer.cookie)
        .header("x-csrf-token", &viewer.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(shell.status(), 200);
    assert!(shell.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    assert!(shell.text().await.unwrap().contains("/dashboard/app.js"));
    let script = gw.get("/dashboard/app.js").send().await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert_eq!(gw.get("/dashboard/login").send().await.unwrap().status(), 200);

    // A stream held open by the upstream counts until it ends.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    fake.lock().sse_gate = Some(gate.clone());
    let mut open =
        gw.post("/v1/messages").header("x-api-key", &user_key).json(&message_body(true)).send().await.unwrap();
    assert!(open.chunk().await.unwrap().unwrap().starts_with(b"event: message_start"));
    assert_eq!(json(get("/admin/api/overview", &viewer).await.unwrap()).await["open_streams"], 1);
    gate.add_permits(100);
    while open.chunk().await.unwrap().is_some() {}
    fake.lock().sse_gate = None;
    support::eventually("the stream to close", std::time::Duration::from_secs(5), async || {
        (json(get("/admin/api/overview", &viewer).await.unwrap()).await["open_streams"] == 0).then_some(())
    })
    .await;
    // The request log is written in the background: wait for all six rows.
    let rows = support::eventually("all six rows", std::time::Duration::from_secs(10), async || {
        let rows = json(get("/admin/api/requests?since=1h", &admin).await.unwrap()).await;
        (rows.as_array().unwrap().len() == 6).then_some(rows)
    })
    .await;

    let overview = json(get("/admin/api/overview", &viewer).await.unwrap()).await;
    assert_eq!(overview["accounts"]["total"], 2);
    assert_eq!(overview["accounts"]["available"], 2);
    assert_eq!(overview["open_streams"], 0);
    let series = json(get("/admin/api/series?range=1h", &viewer).await.unwrap()).await;
    let points = series["points"].as_array().unwrap();
    assert_eq!(points.iter().map(|p| p["requests"].as_i64().unwrap()).sum::<i64>(), 6);
    assert_eq!(points.iter().map(|p| p["output_tokens"].as_i64().unwrap()).sum::<i64>(), 6 * 5);
    assert_eq!(series["bucket_ms"], 60_000);
    let (kind, message) = error_type(get("/admin/api/series?range=2y", &viewer).await.unwrap(), 400).await;
    assert_eq!(kind, "invalid_request_error");
    assert!(message.contains("1h, 24h or 7d"), "{message}");

    // Pages of two never overlap and together hold every row, newest first.
    let mut seen: Vec<String> = Vec::new();
    let mut before = String::new();
    loop {
        let page =
            json(get(&format!("/admin/api/requests?since=1h&limit=2&before={before}"), &admin).await.unwrap()).await;
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        before = page.last().unwrap()["id"].as_str().unwrap().to_owned();
        seen.extend(page.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
    }
    let all: Vec<String> = rows.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(seen, all);
    let by_key = json(get("/admin/api/requests?since=1h&key=app&account=alpha", &admin).await.unwrap()).await;
    assert!(by_key.as_array().unwrap().iter().all(|r| r["account"] == "alpha" && r["client_key"] == "app"));
    assert!(!by_key.as_array().unwrap().is_empty());
    assert_eq!(
        json(get("/admin/api/requests?since=1h&model=nope", &admin).await.unwrap()).await,
        serde_json::json!([])
    );
    let empty = json(get("/admin/api/requests?from_ms=0&to_ms=1000", &admin).await.unwrap()).await;
    assert_eq!(empty, serde_json::json!([]));
    let window = json(get("/admin/api/requests?from_ms=0", &admin).await.unwrap()).await;
    assert_eq!(window.as_array().unwrap().len(), 6);
    let (kind, _) = error_type(get("/admin/api/requests?status=abc", &admin).await.unwrap(), 400).await;
    assert_eq!(kind, "invalid_request_error");
    assert_eq!(get("/admin/api/requests?since=1h", &viewer).await.unwrap().status(), 403);

    let one = json(get(&format!("/admin/api/requests/{}", all[0]), &admin).await.unwrap()).await;
    assert_eq!(one["id"], all[0].as_str());
    assert!(one["accounts_tried"].is_string() && one.get("payload").is_some());
    assert_eq!(get("/admin/api/requests/sy_nope", &admin).await.unwrap().status(), 404);

    // Account changes: priority, removal (routing follows at once), CSRF and role checks.
    let post = |path: &str, s: &Session, body: serde_json::Value| s.post(&gw, path).json(&body).send();
    let r = post("/admin/api/accounts/beta/set", &admin, serde_json::json!({"priority": 7})).await.unwrap();
    assert_eq!(r.status(), 200);
    let accounts = json(get("/admin/api/accounts", &admin).await.unwrap()).await;
    let beta = accounts.as_array().unwrap().iter().find(|a| a["name"] == "beta").unwrap();
    assert_eq!(beta["priority"], 7);
    let (kind, _) =
        error_type(post("/admin/api/accounts/beta/set", &admin, serde_json::json!({})).await.unwrap(), 400).await;
    assert_eq!(kind, "invalid_request_error");
    let r = post("/admin/api/accounts/beta/set", &admin, serde_json::json!({"weight": 0})).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post("/admin/api/accounts/nobody/set", &admin, serde_json::json!({"priority": 1})).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = post("/admin/api/accounts/beta/set", &viewer, serde_json::json!({"priority": 1})).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = gw.delete("/admin/api/accounts/alpha").header("cookie", &admin.cookie).send().await.unwrap();
    assert_eq!(r.status(), 401, "DELETE needs the session secret");
    let delete = |name: &str| {
        gw.delete(&format!("/admin/api/accounts/{name}"))
            .header("cookie", &admin.cookie)
            .header("x-csrf-token", &admin.csrf)
            .send()
    };
    assert_eq!(delete("nobody").await.unwrap().status(), 404);
    assert_eq!(delete("alpha").await.unwrap().status(), 200);
    let before_alpha = fake.served_by("sk-ant-api03-alpha");
    for _ in 0..4 {
        let r = gw.post("/v1/messages").header("x-api-key", &user_key).json(&message_body(false)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(fake.served_by("sk-ant-api03-alpha"), before_alpha, "a removed account serves nothing");
    let names: Vec<String> = json(get("/admin/api/accounts", &admin).await.unwrap())
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["beta"]);

    // Adding an account by OAuth: start, the browser's part (authorize), paste the code.
    let r = post("/admin/api/oauth/start", &admin, serde_json::json!({"account": "gamma"})).await.unwrap();
    assert_eq!(r.status(), 200);
    let started: serde_json::Value = r.json().await.unwrap();
    let url = url::Url::parse(started["authorize_url"].as_str().unwrap()).unwrap();
    assert!(url.as_str().starts_with(&format!("{}/oauth/authorize", fake.url())), "{url}");
    let param = |k: &str| url.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned()).unwrap();
    assert_eq!(param("state"), started["state"].as_str().unwrap());
    let code = fake.authorize(&param("code_challenge"), &param("redirect_uri"));
    let (kind, message) =
        error_type(post("/admin/api/oauth/finish", &admin, serde_json::json!({"code": "x#y"})).await.unwrap(), 400)
            .await;
    assert_eq!(kind, "invalid_request_error");
    assert!(message.contains("no pending login"), "{message}");
    let pasted = format!("{code}#{}", param("state"));
    let r = post("/admin/api/oauth/finish", &admin, serde_json::json!({"code": pasted})).await.unwrap();
    assert_eq!(r.status(), 201);
    let saved: serde_json::Value = r.json().await.unwrap();
    assert_eq!((saved["name"].as_str(), saved["kind"].as_str()), (Some("gamma"), Some("oauth")));
    let r = post("/admin/api/oauth/finish", &admin, serde_json::json!({"code": pasted})).await.unwrap();
    assert_eq!(r.status(), 400, "a code is used once");
    assert_eq!(post("/admin/api/oauth/start", &viewer, serde_json::json!({})).await.unwrap().status(), 403);
    let accounts = json(get("/admin/api/accounts", &admin).await.unwrap()).await;
    assert!(accounts.as_array().unwrap().iter().any(|a| a["name"] == "gamma" && a["kind"] == "oauth"));
    // The new account serves at once: pause beta and send a request.
    assert_eq!(post("/admin/api/accounts/beta/pause", &admin, serde_json::json!({})).await.unwrap().status(), 200);
    let r = gw.post("/v1/messages").header("x-api-key", &user_key).json(&message_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(fake.last_request().header("authorization").unwrap().starts_with("Bearer "), "served by gamma's token");
    let audit = json(get("/admin/api/audit", &admin).await.unwrap()).await;
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["accounts.set", "accounts.remove", "auth.login", "accounts.pause"] {
        assert!(actions.contains(&action), "{action} audited: {actions:?}");
    }
}

/// A session lives only as long as what started it: revoking or rotating its key, changing the password,
/// or "log out everyone" (CLI or API) ends it within a second; a login link ends once an admin key exists.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_end_with_the_credential_that_started_them() {
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    env.ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-sess"]).await;
    let mut gw = env.serve().await;
    gw.next_line().await;
    let link = gw.next_line().await.rsplit(' ').next().unwrap().to_owned();
    let root = env.ok(&["keys", "create", "root", "--role", "admin"]).await.stdout.trim().to_owned();
    let ops = env.ok(&["keys", "create", "ops", "--role", "admin"]).await.stdout.trim().to_owned();
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    assert_eq!(no_redirect.get(&link).send().await.unwrap().status(), 401, "the link ended when an admin key appeared");

    let alive = |s: &Session| {
        let request = s.get(&gw, "/admin/api/session");
        async move { request.send().await.unwrap().status() == 200 }
    };
    // Keys made by the CLI reach the running server within a second. Polled on /metrics, which counts no
    // failed login (the login brake would slow the poll down): once keys exist it needs one, so a 200 with
    // `ops` and a 401 without any key mean both keys are loaded.
    support::eventually("the new keys to reach the server", std::time::Duration::from_secs(3), async || {
        let with = gw.get("/metrics").header("x-api-key", &ops).send().await.unwrap().status();
        let without = gw.get("/metrics").send().await.unwrap().status();
        (with == 200 && without == 401).then_some(())
    })
    .await;
    let key_login = async |key: &str| session_from(&gw, login(&gw, serde_json::json!({ "key": key })).await).await;
    let ends = async |s: &Session, what: &str| {
        support::eventually(what, std::time::Duration::from_secs(3), async || (!alive(s).await).then_some(())).await;
    };

    // Revoked key: its session ends, and cannot mint anything on the way out.
    let by_key = key_login(&root).await;
    env.ok(&["keys", "revoke", "root"]).await;
    ends(&by_key, "the revoked key's session to end").await;
    let mint = by_key.post(&gw, "/admin/api/keys").json(&serde_json::json!({"name": "heir", "role": "admin"}));
    assert_eq!(mint.send().await.unwrap().status(), 401);

    // Rotated key.
    let by_ops = key_login(&ops).await;
    env.ok(&["keys", "rotate", "ops"]).await;
    ends(&by_ops, "the rotated key's session to end").await;

    // Password changed from the CLI.
    env.set("SWITCHYARD_ADMIN_PASSWORD", "the first long password");
    env.ok(&["admin", "set-password"]).await;
    let by_password =
        session_from(&gw, login(&gw, serde_json::json!({"password": "the first long password"})).await).await;
    env.set("SWITCHYARD_ADMIN_PASSWORD", "the second long password");
    env.ok(&["admin", "set-password"]).await;
    ends(&by_password, "the old password's session to end").await;

    // Log out everyone: from the CLI, then from the API (which ends the caller's session too).
    let first = session_from(&gw, login(&gw, serde_json::json!({"password": "the second long password"})).await).await;
    env.ok(&["admin", "logout-all"]).await;
    ends(&first, "logout-all from the CLI").await;
    let second = session_from(&gw, login(&gw, serde_json::json!({"password": "the second long password"})).await).await;
    let third = session_from(&gw, login(&gw, serde_json::json!({"password": "the second long password"})).await).await;
    let r = second.post(&gw, "/admin/api/logout-all");
    assert_eq!(r.send().await.unwrap().status(), 204);
    assert!(!alive(&second).await && !alive(&third).await, "the API ends every session at once");
}
