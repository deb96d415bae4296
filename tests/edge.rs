//! The network edge through the real binary: TLS, the IP allow-list, the connection cap, slow clients,
//! CORS, security headers, and the https-only rule for upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Env, Fake, message_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway_env(fake: &Fake) -> Env {
    fake.add_api_key("sk-ant-api03-edge");
    let env = Env::new(fake);
    env.ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-edge"]).await;
    env
}

/// Raw HTTP/1.1 over TCP: what a browser-less client or an attacker sends.
async fn raw(addr: &str, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").trim_start_matches("https://").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_round_trip_with_a_generated_certificate() {
    let fake = Fake::start().await;
    let env = gateway_env(&fake).await;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    std::fs::write(env.home().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(env.home().join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let mut env = env;
    env.set("SWITCHYARD_TLS_CERT", env.home().join("cert.pem").to_str().unwrap());
    env.set("SWITCHYARD_TLS_KEY", env.home().join("key.pem").to_str().unwrap());
    let gw = env.serve().await;
    assert!(gw.url.starts_with("https://"), "{}", gw.url);
    let port = gw.url.rsplit(':').next().unwrap().to_owned();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let r = client.post(format!("{base}/v1/messages")).json(&message_body(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("message_stop"));
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert!(health.headers()["strict-transport-security"].to_str().unwrap().contains("max-age="));
    // Plain HTTP to the TLS port gets nowhere; an untrusting client refuses the certificate.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/health")).await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    assert!(reqwest::get(format!("{base}/health")).await.is_err(), "certificate validation is on");

    // Outside the allow-list, over TLS, an HTTP/2 client gets its 403 too (not a broken connection), and so
    // does an HTTP/1.1 one.
    drop(gw);
    env.set("SWITCHYARD_ALLOWED_IPS", "10.0.0.0/8");
    let gw = env.serve().await;
    let base = format!("https://localhost:{}", gw.url.rsplit(':').next().unwrap());
    for h2 in [true, false] {
        let builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap());
        let client = if h2 { builder.http2_prior_knowledge() } else { builder.http1_only() }.build().unwrap();
        let r = client.post(format!("{base}/v1/messages")).json(&message_body(false)).send().await.unwrap();
        assert_eq!(r.version(), if h2 { reqwest::Version::HTTP_2 } else { reqwest::Version::HTTP_11 });
        let (kind, _) = support::error_type(r, 403).await;
        assert_eq!(kind, "permission_error");
    }
    env.set("SWITCHYARD_ALLOWED_IPS", "");

    // A missing certificate file is a clear start-up error.
    drop(gw);
    env.set("SWITCHYARD_TLS_CERT", "/nonexistent/cert.pem");
    let out = env.command(&["serve", "--port", "0"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read TLS certificate"));
}

#[tokio::test(flavor = "multi_thread")]
async fn addresses_outside_the_allow_list_get_403_first() {
    let fake = Fake::start().await;
    let mut env = gateway_env(&fake).await;
    env.set("SWITCHYARD_ALLOWED_IPS", "10.0.0.0/8");
    let gw = env.serve().await;
    let r = gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap();
    let (kind, _) = support::error_type(r, 403).await;
    assert_eq!(kind, "permission_error");
    assert_eq!(gw.get("/health").send().await.unwrap().status(), 403);
    assert!(fake.requests().is_empty());
    drop(gw);
    env.set("SWITCHYARD_ALLOWED_IPS", "10.0.0.0/8, 127.0.0.1/32");
    let gw = env.serve().await;
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    env.set("SWITCHYARD_ALLOWED_IPS", "not-an-ip");
    let out = env.run(&["serve", "--port", "0"], "").await;
    assert!(out.stderr.contains("SWITCHYARD_ALLOWED_IPS"), "{}", out.stderr);
}

/// A connection past `SWITCHYARD_MAX_CONNECTION_AGE_SECS` is asked to close: a keep-alive HTTP/1.1
/// connection is closed once idle, and an HTTP/2 one gets a GOAWAY (the client's next request goes on a
/// new connection and succeeds).
#[tokio::test(flavor = "multi_thread")]
async fn old_connections_are_asked_to_close() {
    let fake = Fake::start().await;
    let mut env = gateway_env(&fake).await;
    env.set("SWITCHYARD_MAX_CONNECTION_AGE_SECS", "1");
    let gw = env.serve().await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    stream.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    // Read the answer, then wait (with a deadline) for the server to close the connection.
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut seen)).await;
    assert!(closed.is_ok(), "the old connection was never closed");
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&seen));
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before it was old");

    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    assert_eq!(h2.get(format!("{}/health", gw.url)).send().await.unwrap().status(), 200);
    support::eventually("requests after the GOAWAY still succeed", Duration::from_secs(10), async || {
        let r = h2.get(format!("{}/health", gw.url)).send().await.ok()?;
        (r.status() == 200 && started.elapsed() > Duration::from_secs(2)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_cap_sheds_load_with_503_and_slow_clients_are_cut() {
    let fake = Fake::start().await;
    let mut env = gateway_env(&fake).await;
    env.set("SWITCHYARD_MAX_CONNECTIONS", "2");
    env.set("SWITCHYARD_MAX_CONNECTIONS_PER_IP", "2");
    env.set("SWITCHYARD_HEADER_TIMEOUT_SECS", "1");
    // One worker accepts in arrival order, so the held connections are counted before the probe.
    env.set("SWITCHYARD_WORKERS", "1");
    let gw = env.serve().await;
    let addr = host_port(&gw.url);
    // Two idle connections take both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let answer = support::eventually("the cap to be reached", Duration::from_secs(5), async || {
        let answer = raw(&addr, "GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await;
        answer.starts_with("HTTP/1.1 503").then_some(answer)
    })
    .await;
    assert!(answer.contains("connection limit"), "{answer}");
    // Clients that never finish their headers are dropped after the header timeout, freeing the slots.
    for stream in &mut held {
        stream.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n").await.unwrap();
    }
    let mut buf = [0u8; 256];
    for stream in &mut held {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("slow client kept");
        assert!(n.is_ok(), "connection closed or answered");
    }
    support::eventually("the slots to be freed", Duration::from_secs(5), async || {
        let answer = raw(&addr, "GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    // Oversized headers are refused, not buffered without end.
    let huge = format!(
        "GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(400_000)
    );
    let answer = raw(&addr, &huge).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{}", &answer[..answer.len().min(200)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_only_for_listed_origins_and_security_headers_on_our_pages() {
    let fake = Fake::start().await;
    let env = gateway_env(&fake).await;
    let gw = env.serve().await;
    // Open mode (no client keys): a web page cannot drive the gateway. An unlisted Origin, a cross-site
    // fetch, a "simple" text/plain POST (no preflight) and a foreign Host (DNS rebinding) are refused.
    let r = gw
        .post("/v1/messages")
        .header("origin", "https://evil.example")
        .json(&message_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none(), "no CORS unless configured");
    let cross = gw.post("/v1/messages").header("sec-fetch-site", "cross-site").json(&message_body(false));
    assert_eq!(cross.send().await.unwrap().status(), 403);
    let simple = gw.post("/v1/messages").header("content-type", "text/plain").body(message_body(false).to_string());
    assert_eq!(simple.send().await.unwrap().status(), 400);
    for path in ["/v1/models", "/metrics", "/dashboard/login", "/admin/api/session"] {
        let rebound = gw.get(path).header("host", "attacker.example:8080").send().await.unwrap();
        assert_eq!(rebound.status(), 403, "{path} answered a foreign Host");
    }
    assert!(fake.requests().is_empty(), "a request from a web page reached the upstream");
    // A program (no Origin, JSON) still works, and so does localhost by name.
    let r = gw.post("/v1/messages").header("host", "localhost").json(&message_body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let preflight = gw
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/v1/messages", gw.url))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 403);
    let health = gw.get("/health").send().await.unwrap();
    let h = health.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(h.get("strict-transport-security").is_none(), "HSTS only under TLS");
    drop(gw);

    let mut env = env;
    env.set("SWITCHYARD_ALLOWED_ORIGINS", "https://app.example, https://other.example/");
    let gw = env.serve().await;
    let preflight = gw
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/v1/messages", gw.url))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key, content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://app.example");
    assert!(preflight.headers()["access-control-allow-headers"].to_str().unwrap().contains("x-api-key"));
    let r = gw
        .post("/v1/messages")
        .header("origin", "https://other.example")
        .json(&message_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://other.example");
    assert!(r.headers()["access-control-expose-headers"].to_str().unwrap().contains("request-id"));
    let r = gw
        .post("/v1/messages")
        .header("origin", "https://evil.example")
        .json(&message_body(false))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn upstreams_must_be_https_unless_loopback() {
    let fake = Fake::start().await;
    let mut env = gateway_env(&fake).await;
    env.set("SWITCHYARD_UPSTREAM_URL", "http://api.example.com");
    let out = env.run(&["serve", "--port", "0"], "").await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("must use https"), "{}", out.stderr);
    env.set("SWITCHYARD_UPSTREAM_URL", &fake.url());
    env.set("SWITCHYARD_OAUTH_TOKEN_URL", "http://auth.example.com/token");
    let out = env.run(&["accounts", "list"], "").await;
    assert!(out.stderr.contains("SWITCHYARD_OAUTH_TOKEN_URL"), "{}", out.stderr);
}

/// A CA and a `localhost` (and `127.0.0.1`) certificate it signed, as PEM: (ca, leaf cert, leaf key, leaf DER).
fn certificate_chain() -> (String, String, String, Vec<u8>) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let leaf = rcgen::CertificateParams::new(names).unwrap().signed_by(&leaf_key, &ca).unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem(), leaf.der().to_vec())
}

/// A fake upstream speaking HTTPS with a certificate from its own CA; the directory holds `ca.pem`.
async fn tls_fake() -> (Fake, tempfile::TempDir, Vec<u8>) {
    let (ca_pem, leaf_pem, key_pem, leaf_der) = certificate_chain();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &leaf_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
    let tls = switchyard::server::tls_config(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
    (Fake::start_tls(tls).await, dir, leaf_der)
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_tls_is_verified_and_pinned_fails_closed() {
    let (fake, dir, leaf_der) = tls_fake().await;
    fake.add_api_key("sk-ant-api03-tls");
    let mut env = Env::new(&fake);
    env.ok(&["accounts", "add", "a", "--api-key", "sk-ant-api03-tls"]).await;
    env.set("SWITCHYARD_UPSTREAM_URL", &format!("https://localhost:{}", fake.addr.port()));
    env.set("SWITCHYARD_RETRY_ATTEMPTS", "0");

    // Not trusted by the platform: refused, with the reason.
    let gw = env.serve().await;
    let (_, message) =
        support::error_type(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap(), 502).await;
    assert!(
        message.contains("the upstream is unreachable: cannot connect to")
            && message.to_lowercase().contains("certificate"),
        "{message}"
    );
    drop(gw);

    // Trusted through the configured CA.
    env.set("SWITCHYARD_UPSTREAM_CA", dir.path().join("ca.pem").to_str().unwrap());
    let gw = env.serve().await;
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    drop(gw);

    // Pinned to the right key: works. To another key: fails closed, clearly.
    let right = switchyard::forward::tls::pin_of(&leaf_der).unwrap();
    env.set("SWITCHYARD_UPSTREAM_PINS", &format!("sha256/{right}"));
    let gw = env.serve().await;
    assert_eq!(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap().status(), 200);
    drop(gw);
    env.set("SWITCHYARD_UPSTREAM_PINS", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let gw = env.serve().await;
    let before = fake.requests().len();
    let (_, message) =
        support::error_type(gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap(), 502).await;
    assert!(message.contains("does not match SWITCHYARD_UPSTREAM_PINS"), "{message}");
    assert_eq!(fake.requests().len(), before, "nothing was sent to an unpinned upstream");
    drop(gw);
    env.set("SWITCHYARD_UPSTREAM_PINS", "not-base64!");
    assert!(env.run(&["serve", "--port", "0"], "").await.stderr.contains("SWITCHYARD_UPSTREAM_PINS"));
}

/// Pins hold for every call that carries a token, not only `/v1`: with the token endpoint's host pinned
/// to a foreign key no refresh token leaves; with the API host pinned to one, neither requests nor the
/// usage and profile polls (bearer tokens) nor a refresh on that host reach the server.
#[tokio::test(flavor = "multi_thread")]
async fn pins_cover_every_call_that_carries_a_token() {
    let (fake, dir, leaf_der) = tls_fake().await;
    let port = fake.addr.port();
    let mut env = Env::new(&fake);
    env.set("SWITCHYARD_UPSTREAM_URL", &format!("https://localhost:{port}"));
    env.set("SWITCHYARD_OAUTH_TOKEN_URL", &format!("https://127.0.0.1:{port}/v1/oauth/token"));
    env.set("SWITCHYARD_UPSTREAM_CA", dir.path().join("ca.pem").to_str().unwrap());
    env.set("SWITCHYARD_USAGE_POLL_SECS", "1");
    env.set("SWITCHYARD_RETRY_ATTEMPTS", "0");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let (stale_rt, stale_at) = (fake.issue_refresh_token(), fake.issue_access_token());
    env.import_oauth("stale", &stale_rt, &stale_at, &(now - 60_000).to_string()).await;
    let (fresh_rt, fresh_at) = (fake.issue_refresh_token(), fake.issue_access_token());
    env.import_oauth("fresh", &fresh_rt, &fresh_at, &(now + 3_600_000).to_string()).await;
    let right = format!("sha256/{}", switchyard::forward::tls::pin_of(&leaf_der).unwrap());
    let foreign = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    // The token endpoint's host pinned to a foreign key: the refresh is refused before a byte is sent,
    // while the API host, pinned right, is used and polled.
    env.set("SWITCHYARD_UPSTREAM_PINS", &right);
    env.set("SWITCHYARD_OAUTH_PINS", foreign);
    let gw = env.serve().await;
    support::eventually("the refresh refused by the pin", Duration::from_secs(15), async || {
        gw.logs().contains("does not match SWITCHYARD_OAUTH_PINS").then_some(())
    })
    .await;
    support::eventually("a usage poll through the right pin", Duration::from_secs(15), async || {
        (fake.lock().usage_calls > 0).then_some(())
    })
    .await;
    assert_eq!(fake.refresh_calls(), 0, "no refresh token reached a server with a foreign key");
    drop(gw);

    // The API host pinned to a foreign key, and the token endpoint on that host too: no request, no poll
    // and no refresh reaches it.
    env.set("SWITCHYARD_OAUTH_PINS", "");
    env.set("SWITCHYARD_OAUTH_TOKEN_URL", &format!("https://localhost:{port}/v1/oauth/token"));
    env.set("SWITCHYARD_UPSTREAM_PINS", foreign);
    let polls = |fake: &Fake| {
        let inner = fake.lock();
        (inner.usage_calls, inner.profile_calls)
    };
    let (requests, before) = (fake.requests().len(), polls(&fake));
    let gw = env.serve().await;
    let r = gw.post("/v1/messages").json(&message_body(false)).send().await.unwrap();
    let (_, message) = support::error_type(r, 502).await;
    assert!(message.contains("does not match SWITCHYARD_UPSTREAM_PINS"), "{message}");
    support::eventually("the usage poll and the refresh refused by the pin", Duration::from_secs(15), async || {
        let logs = gw.logs();
        let refused = logs.lines().filter(|l| l.contains("does not match SWITCHYARD_UPSTREAM_PINS"));
        (refused.clone().any(|l| l.contains("usage poll failed")) && refused.clone().any(|l| l.contains("refresh")))
            .then_some(())
    })
    .await;
    assert_eq!(fake.requests().len(), requests);
    assert_eq!(polls(&fake), before);
    assert_eq!(fake.refresh_calls(), 0);
    drop(gw);
    env.set("SWITCHYARD_OAUTH_PINS", "sha256/nope");
    assert!(env.run(&["accounts", "list"], "").await.stderr.contains("SWITCHYARD_OAUTH_PINS"));
}

/// Without logging in, large admin bodies and bursts of password logins cannot grow the server's memory:
/// bodies are refused before they are read (and capped at a few KiB even with a session), and password
/// checks run a few at a time, the rest turned away with 503.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_bodies_and_login_bursts_stay_bounded() {
    let fake = Fake::start().await;
    let mut env = Env::new(&fake);
    env.set("SWITCHYARD_ADMIN_PASSWORD", "a long admin password");
    env.ok(&["admin", "set-password"]).await;
    let gw = env.serve().await;
    let pid = gw.child.id().unwrap();
    let before = support::rss_mib(pid);
    let big = bytes::Bytes::from(vec![b'x'; 30 * 1024 * 1024]);
    let sends = (0..30).map(|_| {
        let r = gw.post("/admin/api/keys").header("content-type", "application/json").body(big.clone()).send();
        async move { r.await.map(|r| r.status().as_u16()).unwrap_or(0) }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 401 || *s == 0), "{statuses:?}");
    let grown = support::rss_mib(pid).saturating_sub(before);
    assert!(grown < 64, "30 unauthenticated 30 MiB bodies grew the server by {grown} MiB");

    let logins = (0..40).map(|_| {
        let r = gw.post("/admin/api/login").json(&serde_json::json!({"password": "wrong wrong wrong"})).send();
        async move { r.await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(logins).await;
    assert!(statuses.contains(&503) || statuses.contains(&429), "a burst is turned away: {statuses:?}");
    let grown = support::rss_mib(pid).saturating_sub(before);
    assert!(grown < 128, "a burst of 40 password logins grew the server by {grown} MiB");
}

/// What the review found at the edge, each attack refused: hop-by-hop headers named by `Connection` stay on
/// their hop; a model id that would move the path is not forwarded; long paths are cut in the log and
/// refusals past the per-address limit are not logged; a non-loopback server whose keys are all revoked
/// refuses everyone instead of falling open.
#[tokio::test(flavor = "multi_thread")]
async fn edge_attacks_from_the_review_are_refused() {
    let fake = Fake::start().await;
    let env = gateway_env(&fake).await;
    let gw = env.serve().await;
    let r = gw
        .post("/v1/messages")
        .header("connection", "keep-alive, x-secret-hop")
        .header("x-secret-hop", "for this hop only")
        .json(&message_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(fake.last_request().header("x-secret-hop"), None, "a header named by Connection was forwarded");

    for id in ["..%2F..%2Fapi%2Foauth%2Fprofile", "..", "a%2Fb", "x%00"] {
        let r = gw.get(&format!("/v1/models/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{id}");
    }
    assert_eq!(fake.requests().len(), 1, "a crafted model id reached the upstream");
    assert_eq!(gw.get("/v1/models/claude-sonnet-4-5").send().await.unwrap().status(), 200);
    assert_eq!(fake.last_request().path_and_query, "/v1/models/claude-sonnet-4-5");
    drop(gw);

    // Keys in use: refusals are logged only up to the per-address limit, with their paths cut.
    let mut env = env;
    env.set("SWITCHYARD_AUTH_FAILURES_PER_MINUTE", "5");
    env.set("SWITCHYARD_HOST", "0.0.0.0");
    env.ok(&["keys", "create", "only"]).await;
    let gw = env.serve().await;
    let local = gw.url.replace("0.0.0.0", "127.0.0.1");
    let long = format!("/v1/{}", "x".repeat(10_000));
    assert_eq!(gw.client.get(format!("{local}{long}")).send().await.unwrap().status(), 404);
    for _ in 0..20 {
        let r = gw.client.post(format!("{local}/v1/messages")).json(&message_body(false)).send().await.unwrap();
        assert!(matches!(r.status().as_u16(), 401 | 429));
    }
    let rows = support::eventually("the refusals in the log", Duration::from_secs(5), async || {
        let out = env.ok(&["requests", "--json", "--limit", "1000"]).await.stdout;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        (rows.len() >= 6).then_some(rows)
    })
    .await;
    assert!(rows.iter().all(|r| r["path"].as_str().unwrap().len() <= 260), "a path was kept whole");
    assert!(rows.iter().any(|r| r["status"] == 404 && r["path"].as_str().unwrap().ends_with('…')));
    let refused = rows.iter().filter(|r| r["status"] == 401).count();
    assert!(refused <= 5, "{refused} refusals logged past the per-address limit of 5");

    // Every key revoked on a non-loopback address: closed, not open.
    env.ok(&["keys", "revoke", "only"]).await;
    support::eventually("the server to refuse without a key", Duration::from_secs(5), async || {
        let r = gw.client.post(format!("{local}/v1/messages")).json(&message_body(false)).send().await.unwrap();
        matches!(r.status().as_u16(), 401 | 429).then_some(())
    })
    .await;
    let before = fake.requests().len();
    let r = gw.client.post(format!("{local}/v1/messages")).json(&message_body(false)).send().await.unwrap();
    assert_ne!(r.status(), 200);
    assert_eq!(fake.requests().len(), before, "a request without a key was forwarded");
}

/// Connection slots cannot be held forever: a socket that sends nothing is closed after the header
/// timeout, a body that trickles in is cut with 408 at the body deadline, and one source cannot take more
/// than its share of connections.
#[tokio::test(flavor = "multi_thread")]
async fn idle_and_trickling_connections_and_one_source_are_bounded() {
    let fake = Fake::start().await;
    let mut env = gateway_env(&fake).await;
    env.set("SWITCHYARD_HEADER_TIMEOUT_SECS", "1");
    env.set("SWITCHYARD_BODY_TIMEOUT_SECS", "1");
    env.set("SWITCHYARD_MAX_CONNECTIONS_PER_IP", "4");
    let gw = env.serve().await;
    let addr = host_port(&gw.url);

    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n =
        tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await.expect("a silent socket was kept");
    assert_eq!(n.unwrap_or(0), 0, "a silent socket is closed without an answer");

    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = "POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{";
    trickle.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle.read_to_end(&mut out))
        .await
        .expect("a trickling body was kept");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(fake.requests().is_empty());
    // The admin API too: a login body that trickles in is cut at the same deadline.
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = "POST /admin/api/login HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{";
    trickle.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle.read_to_end(&mut out))
        .await
        .expect("a trickling login body was kept");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");

    // Four connections from this machine are its share; the fifth is turned away. (Headers get the default
    // 30 s here, so the held connections stay open however slow the machine is.)
    // One worker accepts in arrival order: with several, a later connection may be counted before an
    // earlier one on a loaded machine.
    drop(gw);
    env.set("SWITCHYARD_HEADER_TIMEOUT_SECS", "30");
    env.set("SWITCHYARD_WORKERS", "1");
    let gw = env.serve().await;
    let addr = host_port(&gw.url);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n").await.unwrap();
        held.push(s);
    }
    let answer = support::eventually("the per-address cap", Duration::from_secs(3), async || {
        let answer = raw(&addr, "GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").await;
        answer.starts_with("HTTP/1.1 503").then_some(answer)
    })
    .await;
    assert!(answer.contains("too many connections from your address"), "{answer}");
    drop(held);
    support::eventually("slots freed", Duration::from_secs(3), async || {
        let answer = raw(&addr, "GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
}
