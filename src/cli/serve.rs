//! `switchyard serve`: load accounts, bind, run until Ctrl-C or SIGTERM.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::access::ClientKeys;
use crate::access::admin::LOGIN_LINK_TTL_MS;
use crate::accounts::{Pool, Router};
use crate::config::Config;
use crate::oauth::OAuthClient;
use crate::secrets::Backend;
use crate::server::{Gateway, ListenOptions, shutdown_signal};

/// Hold `<home>/serve.lock` exclusively: one server per data directory (two would race each other's
/// single-use refresh tokens), and no key rotation under a running server.
pub fn exclusive_lock(config: &Config) -> anyhow::Result<std::fs::File> {
    crate::secrets::private_dir(&config.home)?;
    let path = config.home.join("serve.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!("another switchyard process holds {} (a running `switchyard serve`?)", path.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Each stream holds two descriptors (client and HTTP/1.1 upstream): the soft limit (often 1,024) is
/// raised to the hard one at start, as nginx does, so the connection cap is what limits, not the kernel.
fn raise_descriptor_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::debug!(error = %e, "cannot raise the open-file limit");
            }
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    // One server per data directory, on either backend: on PostgreSQL instances share the database, each
    // with a directory of its own (a restart then knows its predecessor's refresh leases are dead).
    let _lock = exclusive_lock(&config)?;
    raise_descriptor_limit();
    let opened = super::open_data(&config).await?;
    if opened.keystore.unprotected_file() {
        eprintln!("note: the key file is not protected by a passphrase; set SWITCHYARD_PASSPHRASE to wrap it");
    }
    let key_source = opened.keystore.backend().clone();
    let registry = opened.registry;
    let oauth = OAuthClient::new(super::oauth_http(&config)?, config.oauth.clone());
    let session_ms = i64::try_from(config.session_duration.as_millis()).unwrap_or(i64::MAX);
    let router = Router::new(config.strategy, session_ms);
    let pool = Pool::load(registry, oauth, config.refresh_margin, router, config.instance_name()).await?;
    let pool = Arc::new(pool.with_token_timeout(config.token_timeout));
    let http = crate::forward::UpstreamClients::new(&config).map_err(|e| anyhow::anyhow!(e.message))?;
    if !config.pins.is_empty() {
        tracing::info!(hosts = %config.pins.hosts().collect::<Vec<_>>().join(", "), "upstream TLS keys pinned");
    }
    let shared = pool.store().clone();
    crate::alerts::init(config.alert_webhook.clone(), config.alert_utilization, reqwest::Client::new(), Some(shared));
    let keys = Arc::new(ClientKeys::load(pool.store().as_ref()).await?);

    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(crate::server::tls_config(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    if !addr.ip().to_canonical().is_loopback() && !keys.any() {
        anyhow::ensure!(
            config.allow_unauthenticated,
            "refusing to listen on {addr} without client keys: anyone who can reach it could use your accounts. \
             Create one with `switchyard keys create NAME`, or pass --allow-unauthenticated"
        );
        tracing::warn!(
            %addr,
            "LISTENING ON A NON-LOOPBACK ADDRESS WITHOUT CLIENT KEYS (--allow-unauthenticated): anyone who can \
             reach it can use your accounts"
        );
    }
    // Open without keys only where that was allowed: on loopback, or by --allow-unauthenticated. A server
    // on another address whose keys later disappear refuses everyone instead of serving them.
    let loopback = addr.ip().to_canonical().is_loopback();
    let open_without_keys = loopback || config.allow_unauthenticated;
    let mut gateway = Gateway::new(&config, pool.clone(), keys.clone(), open_without_keys, http)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    if let (Backend::Database, Some(passphrase)) = (&key_source, &config.passphrase) {
        // Nothing seen yet: the first round opens the stored key set again, so a rotation that began
        // since the key was read above is taken up too.
        gateway = gateway.with_key_feed(passphrase.clone(), String::new());
    }
    let accounts = pool.snapshot().len();
    tracing::info!(%addr, accounts, key = %key_source, upstream = %config.upstream_url, "switchyard ready");
    if accounts == 0 {
        tracing::warn!("no accounts yet: add one with `switchyard auth login` or `switchyard accounts add`");
    }
    // Scripts and tests read the bound address (useful with --port 0) from this line.
    let mut stdout = std::io::stdout();
    let scheme = if config.tls_cert.is_some() { "https" } else { "http" };
    writeln!(stdout, "switchyard listening on {scheme}://{addr}")?;
    stdout.flush()?;
    // Not fatal if nobody reads stdout any more.
    let _ = writeln!(stdout, "dashboard: {scheme}://{addr}/dashboard");
    // No way into the dashboard yet: a single-use link, printed here only (like a notebook server).
    let admin_key = keys.has_role(crate::access::Role::Admin);
    if !admin_key && !crate::access::admin::has_password(pool.store().as_ref()).await? {
        // A store too busy to take the link does not stop the server: the link can be issued later.
        match crate::access::admin::issue_login_link(pool.store().as_ref(), LOGIN_LINK_TTL_MS).await {
            Ok(token) => {
                let _ =
                    writeln!(stdout, "dashboard login link (single use): {scheme}://{addr}/admin/login?token={token}");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not issue a dashboard login link");
                let _ =
                    writeln!(stdout, "dashboard login: no link could be issued now; run `switchyard dashboard-link`");
            }
        }
    } else {
        let _ = writeln!(
            stdout,
            "dashboard login: an admin key or the administrator password (`switchyard dashboard-link` prints a \
             single-use link)"
        );
    }
    let _ = stdout.flush();
    let options = ListenOptions {
        tls,
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip,
        workers: config.workers,
        header_timeout: config.header_timeout,
        max_connection_age: config.max_connection_age,
        allowed_ips: config.allowed_ips.clone(),
        drain: crate::server::DRAIN,
    };
    gateway.run(listener, options, shutdown_signal()).await?;
    Ok(())
}

use crate::server::LIVE_MS;

/// `switchyard instances`: who serves from this data, from their heartbeats.
pub async fn instances(config: &Config, json: bool) -> anyhow::Result<()> {
    let listed = match super::open_existing(config).await? {
        Some(opened) => opened.registry.store().list_instances().await?,
        None => Vec::new(),
    };
    let now = crate::now_ms();
    if json {
        let rows: Vec<serde_json::Value> = listed
            .iter()
            .map(|i| {
                let mut row = serde_json::to_value(i).unwrap_or_default();
                row["live"] = serde_json::Value::Bool(now - i.last_seen_ms < LIVE_MS);
                row
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for i in &listed {
        let state = if now - i.last_seen_ms < LIVE_MS { "live" } else { "gone" };
        println!(
            "{:<28} {:<5} {:<22} v{:<8} started {} seen {}s ago",
            i.id,
            state,
            i.address,
            i.version,
            super::format_ms(i.started_at_ms),
            (now - i.last_seen_ms).max(0) / 1000
        );
    }
    if listed.is_empty() {
        println!("no instance has served from this data yet");
    }
    Ok(())
}
