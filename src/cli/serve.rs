//! `switchyard serve`: load accounts, bind, run until Ctrl-C or SIGTERM.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::accounts::{Pool, Router};
use crate::config::Config;
use crate::oauth::OAuthClient;
use crate::server::{Gateway, shutdown_signal};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let (registry, key_source) = super::open_registry(&config).await?;
    let oauth = OAuthClient::new(super::oauth_http(&config)?, config.oauth.clone());
    let session_ms = i64::try_from(config.session_duration.as_millis()).unwrap_or(i64::MAX);
    let router = Router::new(config.strategy, session_ms);
    let pool = Arc::new(Pool::load(registry, oauth, config.refresh_margin, router).await?);
    let http = crate::forward::upstream_client(&config)?;
    let gateway = Gateway::new(&config, pool.clone(), http).map_err(|e| anyhow::anyhow!(e.message))?;

    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening on a non-loopback address: anyone who can reach it can use your accounts");
    }
    let accounts = pool.snapshot().len();
    tracing::info!(%addr, accounts, key = %key_source, upstream = %config.upstream_url, "switchyard ready");
    if accounts == 0 {
        tracing::warn!("no accounts yet: add one with `switchyard auth login` or `switchyard accounts add`");
    }
    // Scripts and tests read the bound address (useful with --port 0) from this line.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "switchyard listening on http://{addr}")?;
    stdout.flush()?;
    gateway.run(listener, shutdown_signal()).await?;
    Ok(())
}
