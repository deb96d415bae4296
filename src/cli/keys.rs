//! `switchyard keys …` and `switchyard audit`: client API keys and the audit log.

use super::args::KeysCommand;
use super::{format_ms, open_data};
use crate::access::{NewKey, Role, hash_key, parse_expiry};
use crate::config::Config;
use crate::secrets::ExposeSecret;
use crate::store::Store;

pub async fn run(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let command = match command {
        KeysCommand::List { json } => {
            return match super::open_existing(config).await? {
                Some(opened) => list(opened.registry.store().as_ref(), json).await,
                None => {
                    println!("{}", if json { "[]" } else { "no client keys" });
                    Ok(())
                }
            };
        }
        change => change,
    };
    let opened = open_data(config).await?;
    let store = opened.registry.store().clone();
    match command {
        KeysCommand::Create { name, role, rpm, tpm, concurrency, accounts, expires, budgets } => {
            let now = crate::now_ms();
            let role: Role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let new = NewKey {
                name: name.clone(),
                role: Some(role),
                rpm,
                tpm,
                concurrency,
                accounts: accounts
                    .map(|a| a.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()),
                expires_at_ms: expires
                    .as_deref()
                    .map(|e| parse_expiry(e, now))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!(e))?,
                budgets: budgets.budgets(),
            };
            let key = new.create(store.as_ref()).await?;
            super::audit_cli(store.as_ref(), "keys.create", &name, &format!("role {}", role.as_str())).await;
            println!("{}", key.expose_secret());
            eprintln!("created key {name} (role {}); it is shown only this once", role.as_str());
        }
        KeysCommand::List { .. } => {}
        KeysCommand::Set { name, budgets } => {
            let budgets = budgets.budgets();
            anyhow::ensure!(budgets != crate::store::Budgets::default(), "nothing to set: give a --budget-… option");
            anyhow::ensure!(
                store.set_client_key_budgets(&name, &budgets, crate::now_ms()).await?,
                "no key named {name:?}"
            );
            super::audit_cli(store.as_ref(), "keys.set", &name, &format!("{budgets:?}")).await;
            println!("updated key {name}; a running server applies it within a second");
        }
        KeysCommand::Revoke { name } => {
            anyhow::ensure!(store.revoke_client_key(&name, crate::now_ms()).await?, "no active key named {name:?}");
            super::audit_cli(store.as_ref(), "keys.revoke", &name, "").await;
            println!("revoked key {name}; a running server refuses it within a second");
        }
        KeysCommand::Rotate { name } => {
            let key = crate::access::generate_key();
            let found = store.rehash_client_key(&name, &hash_key(key.expose_secret()), crate::now_ms()).await?;
            anyhow::ensure!(found, "no key named {name:?}");
            super::audit_cli(store.as_ref(), "keys.rotate", &name, "").await;
            println!("{}", key.expose_secret());
            eprintln!("rotated key {name}: the old key stops working within a second; the new one is shown only once");
        }
    }
    Ok(())
}

async fn list(store: &dyn Store, json: bool) -> anyhow::Result<()> {
    let rows = crate::access::key_listing(store, crate::now_ms()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no client keys: the gateway is open on loopback only (create one with `switchyard keys create NAME`)"
        );
        return Ok(());
    }
    for row in &rows {
        let text = |field: &str| row[field].as_str().unwrap_or("").to_owned();
        let limit = |field: &str| row[field].as_i64().map_or_else(|| "-".to_owned(), |n| n.to_string());
        let accounts = row["accounts"]
            .as_array()
            .map_or_else(|| "all".to_owned(), |a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(","));
        println!(
            "{:<16} {:<7} {:<8} rpm {} tpm {} concurrency {} accounts {} expires {} fingerprint {} spend today ${:.4} month ${:.4}",
            text("name"),
            text("role"),
            text("status"),
            limit("rpm"),
            limit("tpm"),
            limit("concurrency"),
            accounts,
            row["expires_at_ms"].as_i64().map_or_else(|| "never".to_owned(), format_ms),
            text("fingerprint"),
            row["spend_usd_today"].as_f64().unwrap_or(0.0),
            row["spend_usd_month"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}

pub async fn set_password(config: &Config, totp: bool) -> anyhow::Result<()> {
    let opened = open_data(config).await?;
    let password = match std::env::var("SWITCHYARD_ADMIN_PASSWORD").ok().filter(|p| !p.is_empty()) {
        Some(p) => crate::secrets::SecretString::from(p),
        None => super::prompt::new_secret("administrator password", crate::access::admin::MIN_PASSWORD_CHARS)?,
    };
    let registry = &opened.registry;
    let url = crate::access::admin::set_password(registry.store().as_ref(), registry.cipher(), &password, totp).await?;
    super::audit_cli(registry.store().as_ref(), "admin.set-password", "admin", if totp { "with totp" } else { "" })
        .await;
    println!("administrator password set");
    if let Some(url) = url {
        println!("add this to your authenticator app (shown once):");
        println!("{url}");
    }
    Ok(())
}

/// End every admin session; running servers notice within a second.
pub async fn logout_all(config: &Config) -> anyhow::Result<()> {
    let opened = open_data(config).await?;
    let store = opened.registry.store();
    crate::access::admin::end_all_sessions(store.as_ref()).await?;
    super::audit_cli(store.as_ref(), "admin.logout-all", "sessions", "").await;
    println!("every admin session ends within a second; log in again to continue");
    Ok(())
}

/// A new single-use dashboard login link, stored hashed where the server (running or not yet) checks it.
pub async fn dashboard_link(config: &Config, host: Option<String>, port: Option<u16>) -> anyhow::Result<()> {
    let opened = open_data(config).await?;
    let store = opened.registry.store();
    let token = crate::access::admin::issue_login_link(store.as_ref(), crate::access::admin::LOGIN_LINK_TTL_MS).await?;
    super::audit_cli(store.as_ref(), "admin.dashboard-link", "admin", "").await;
    let host = host.unwrap_or_else(|| match config.host.as_str() {
        // A wildcard bind is reachable on loopback from this machine.
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1".to_owned(),
        h => h.to_owned(),
    });
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
    let scheme = if config.tls_cert.is_some() { "https" } else { "http" };
    println!("{scheme}://{host}:{}/admin/login?token={token}", port.unwrap_or(config.port));
    eprintln!("single use, valid for 24 hours; it replaces any earlier link. Open it in the browser to log in.");
    Ok(())
}

pub async fn audit(config: &Config, since: &str, json: bool) -> anyhow::Result<()> {
    let since_ms = super::window_start("--since", since)?;
    let entries = match super::open_existing(config).await? {
        Some(opened) => opened.registry.store().list_audit(since_ms).await?,
        None => Vec::new(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    for e in &entries {
        println!(
            "{} {:<18} {:<20} {:<16} {:<7} {} {}",
            format_ms(e.at_ms),
            e.action,
            e.actor,
            e.target,
            e.outcome,
            e.source,
            e.detail
        );
    }
    if entries.is_empty() {
        println!("no audit entries in the last {since}");
    }
    Ok(())
}
