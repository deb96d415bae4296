//! The admin API through the real binary: closed without a session even on loopback, the one-time login
//! link, key and password (+TOTP) logins, roles, CSRF, the login brake, key management and the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{Env, Fake, Gateway, error_type, message_body};

struct Session {
    cookie: String,
    csrf: String,
}

fn cookie_of(response: &reqwest::Response) -> String {
    let set = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/;"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

async fn login(gw: &Gateway, body: serde_json::Value) -> reqwest::Response {
    gw.post("/admin/api/login").json(&body).send().await.unwrap()
}

async fn session_from(gw: &Gateway, response: reqwest::Response) -> Session {
    assert_eq!(response.status(), 200);
    let cookie = cookie_of(&response);
    let body: serde_json::Value = response.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let me = gw.get("/admin/api/session").header("cookie", &cookie).send().await.unwrap();
    assert_eq!(me.status(), 200);
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
    let line = gw.next_line().await;
    let link = line.strip_prefix("admin login (single use): ").expect("one-time link printed").to_owned();
    assert!(!gw.logs().contains(link.split("token=").nth(1).unwrap()), "the token is not logged");
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_redirect.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/dashboard");
    let cookie = cookie_of(&r);
    let page = no_redirect.get(format!("{}/dashboard", gw.url)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<title>Switchyard</title>"));
    let again = no_redirect.get(&link).send().await.unwrap();
    assert_eq!(again.status(), 401, "single use");

    // State changes need the CSRF token.
    let me: serde_json::Value =
        gw.get("/admin/api/session").header("cookie", &cookie).send().await.unwrap().json().await.unwrap();
    let csrf = me["csrf_token"].as_str().unwrap();
    let r = gw.post("/admin/api/accounts/a/pause").header("cookie", &cookie).send().await.unwrap();
    let (kind, message) = error_type(r, 403).await;
    assert_eq!(kind, "permission_error");
    assert!(message.contains("csrf"), "{message}");
    let r = gw
        .post("/admin/api/accounts/a/pause")
        .header("cookie", &cookie)
        .header("x-csrf-token", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = gw
        .post("/admin/api/accounts/a/pause")
        .header("cookie", &cookie)
        .header("x-csrf-token", csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let accounts: serde_json::Value =
        gw.get("/admin/api/accounts").header("cookie", &cookie).send().await.unwrap().json().await.unwrap();
    assert_eq!(accounts[0]["status"], "paused");
    assert!(!accounts.to_string().contains("sk-ant-api03-adm"), "no secrets in the admin API");

    // Logout ends the session.
    let r = gw.post("/admin/api/logout").header("cookie", &cookie).header("x-csrf-token", csrf).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(gw.get("/admin/api/session").header("cookie", &cookie).send().await.unwrap().status(), 401);
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
    let extra = tokio::time::timeout(std::time::Duration::from_millis(500), gw.next_line()).await;
    assert!(extra.is_err(), "no login link when an admin key exists");

    let (kind, _) = error_type(login(&gw, serde_json::json!({"key": user_key})).await, 403).await;
    assert_eq!(kind, "permission_error");
    let viewer = session_from(&gw, login(&gw, serde_json::json!({"key": viewer_key})).await).await;
    assert_eq!(gw.get("/admin/api/accounts").header("cookie", &viewer.cookie).send().await.unwrap().status(), 200);
    assert_eq!(gw.get("/admin/api/keys").header("cookie", &viewer.cookie).send().await.unwrap().status(), 403);
    assert_eq!(gw.get("/admin/api/audit").header("cookie", &viewer.cookie).send().await.unwrap().status(), 403);
    let r = gw
        .post("/admin/api/accounts/a/pause")
        .header("cookie", &viewer.cookie)
        .header("x-csrf-token", &viewer.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let admin = session_from(&gw, login(&gw, serde_json::json!({"key": admin_key})).await).await;
    let r = gw
        .post("/admin/api/keys")
        .header("cookie", &admin.cookie)
        .header("x-csrf-token", &admin.csrf)
        .json(&serde_json::json!({"name": "made-by-api", "role": "user", "rpm": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    let new_key = created["key"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let proxied =
        gw.post("/v1/messages").header("x-api-key", &new_key).json(&message_body(false)).send().await.unwrap();
    assert_eq!(proxied.status(), 200);
    let keys: serde_json::Value =
        gw.get("/admin/api/keys").header("cookie", &admin.cookie).send().await.unwrap().json().await.unwrap();
    assert!(!keys.to_string().contains(&new_key[3..]), "listing shows no secret");
    let r = gw
        .post("/admin/api/keys/made-by-api/revoke")
        .header("cookie", &admin.cookie)
        .header("x-csrf-token", &admin.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let audit: serde_json::Value =
        gw.get("/admin/api/audit").header("cookie", &admin.cookie).send().await.unwrap().json().await.unwrap();
    let actions: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}:{}", e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    for wanted in ["admin.login:denied", "admin.login:ok", "keys.create:ok", "keys.revoke:ok"] {
        assert!(actions.iter().any(|a| a == wanted), "{wanted} missing from {actions:?}");
    }
    // The request log and stats over HTTP.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let requests: serde_json::Value = gw
        .get("/admin/api/requests?since=1h")
        .header("cookie", &admin.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(requests[0]["client_key"], "made-by-api");
    assert_eq!(requests[0]["status"], 200);
    let stats: serde_json::Value =
        gw.get("/admin/api/stats?by=key").header("cookie", &admin.cookie).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["made-by-api"]["requests"], 1);
    assert_eq!(gw.get("/admin/api/requests").header("cookie", &viewer.cookie).send().await.unwrap().status(), 403);
    assert_eq!(gw.get("/admin/api/stats").header("cookie", &viewer.cookie).send().await.unwrap().status(), 200);
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
    let extra = tokio::time::timeout(std::time::Duration::from_millis(500), gw.next_line()).await;
    assert!(extra.is_err(), "no login link when a password exists");

    let (_, message) =
        error_type(login(&gw, serde_json::json!({"password": "correct horse battery"})).await, 401).await;
    assert!(message.contains("TOTP"), "{message}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let secret_bytes = switchyard::access::totp::base32_decode(&secret).unwrap();
    let code = switchyard::access::totp::code(&secret_bytes, now);
    let ok = login(&gw, serde_json::json!({"password": "correct horse battery", "totp": code})).await;
    let admin = session_from(&gw, ok).await;
    assert_eq!(gw.get("/admin/api/keys").header("cookie", &admin.cookie).send().await.unwrap().status(), 200);

    // Wrong passwords: three tries, then the address waits, longer each time.
    for _ in 0..2 {
        assert_eq!(login(&gw, serde_json::json!({"password": "guess"})).await.status(), 401);
    }
    let r = login(&gw, serde_json::json!({"password": "guess"})).await;
    assert_eq!(r.status(), 401);
    let r = login(&gw, serde_json::json!({"password": "correct horse battery", "totp": code})).await;
    assert!(r.headers().contains_key("retry-after"));
    let (kind, message) = error_type(r, 429).await;
    assert_eq!(kind, "rate_limit_error");
    assert!(message.contains("too many failed logins"), "{message}");
    let (_, _) = error_type(login(&gw, serde_json::json!({})).await, 429).await;
}
