//! `switchyard accounts …`: import, add, list, remove.

use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

use super::args::ImportArgs;
use super::{format_ms, open_registry, secret_arg};
use crate::accounts::{AccountView, NewOAuth, UsageWindow};
use crate::config::Config;
use crate::secrets::SecretString;
use crate::store::AccountStatus;

pub async fn import(config: &Config, args: ImportArgs) -> anyhow::Result<()> {
    let login = match &args.from_claude_code {
        Some(path) => {
            let path = match path {
                Some(p) => p.clone(),
                None => dirs::home_dir().context("no home directory")?.join(".claude/.credentials.json"),
            };
            let login = read_claude_code(&path)?;
            eprintln!(
                "note: refreshing this account rotates Claude Code's own token out from under it; \
                 log Claude Code in again afterwards or give Switchyard a login of its own"
            );
            login
        }
        None => {
            let refresh = args.refresh_token.as_deref().context("--refresh-token is required")?;
            let access_token = match &args.access_token {
                Some(at) => Some(secret_arg(at, "access token")?),
                None => None,
            };
            NewOAuth {
                access_token,
                refresh_token: secret_arg(refresh, "refresh token")?,
                expires_at_ms: args.expires_at.unwrap_or(0),
                email: None,
                account_uuid: None,
                org_uuid: None,
                org_name: None,
            }
        }
    };
    let (registry, _) = open_registry(config).await?;
    registry.save_oauth(&args.name, login, args.replace).await?;
    super::audit_cli(registry.store().as_ref(), "accounts.import", &args.name, "oauth").await;
    println!("imported OAuth account {}", args.name);
    Ok(())
}

#[derive(Deserialize)]
struct ClaudeCodeFile {
    #[serde(rename = "claudeAiOauth")]
    oauth: Option<ClaudeCodeOAuth>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaudeCodeOAuth {
    access_token: Option<SecretString>,
    refresh_token: Option<SecretString>,
    expires_at: Option<i64>,
}

fn read_claude_code(path: &PathBuf) -> anyhow::Result<NewOAuth> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: ClaudeCodeFile = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not Claude Code credentials JSON: {e}", path.display()))?;
    let oauth = file.oauth.with_context(|| format!("{} has no claudeAiOauth entry", path.display()))?;
    let refresh_token = oauth.refresh_token.with_context(|| format!("{} has no refreshToken", path.display()))?;
    Ok(NewOAuth {
        expires_at_ms: if oauth.access_token.is_some() { oauth.expires_at.unwrap_or(0) } else { 0 },
        access_token: oauth.access_token,
        refresh_token,
        email: None,
        account_uuid: None,
        org_uuid: None,
        org_name: None,
    })
}

pub async fn add(config: &Config, name: &str, api_key: &str, replace: bool, force: bool) -> anyhow::Result<()> {
    crate::check_name("account", name).map_err(anyhow::Error::msg)?;
    let key = secret_arg(api_key, "API key")?;
    anyhow::ensure!(
        force || crate::accounts::looks_like_api_key(&key),
        "this does not look like an Anthropic API key (they start with sk-ant-); check what was pasted, or pass \
         --force to add it anyway"
    );
    let (registry, _) = open_registry(config).await?;
    registry.add_api_key(name, &key, replace).await?;
    super::audit_cli(registry.store().as_ref(), "accounts.add", name, "api_key").await;
    println!("added API-key account {name}");
    Ok(())
}

pub async fn list(config: &Config, json: bool) -> anyhow::Result<()> {
    let Some(opened) = super::open_existing(config).await? else {
        println!("{}", if json { "[]" } else { "no accounts" });
        return Ok(());
    };
    let views = opened.registry.views().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        print_table(&views);
    }
    Ok(())
}

/// Status as shown in tables: `rate-limited until T`, and model-scoped limits after it.
fn status_text(v: &AccountView) -> String {
    let mut text = match v.limited_until_ms {
        Some(until) if v.status == "rate-limited" => format!("rate-limited until {}", format_ms(until)),
        _ => v.status.to_owned(),
    };
    for (family, until) in &v.model_limits {
        text.push_str(&format!(" ({family} limited until {})", format_ms(*until)));
    }
    text
}

fn percent(w: Option<UsageWindow>) -> String {
    match w {
        Some(w) => match w.resets_at_ms {
            Some(reset) => format!("{:.0}% (resets {})", w.utilization * 100.0, format_ms(reset)),
            None => format!("{:.0}%", w.utilization * 100.0),
        },
        None => "-".to_owned(),
    }
}

/// The `accounts list` table: routing-centric.
pub(super) fn print_table(views: &[AccountView]) {
    if views.is_empty() {
        println!("no accounts (add one with `switchyard auth login` or `switchyard accounts add`)");
        return;
    }
    for v in views {
        println!(
            "{name}  {kind}{plan}  priority {p}, weight {w}  {status}",
            name = v.name,
            kind = v.kind,
            plan = v.plan.as_deref().map(|p| format!(" ({p})")).unwrap_or_default(),
            p = v.priority,
            w = v.weight,
            status = status_text(v),
        );
        println!(
            "    5h {}  7d {}  requests {} (failed {})  attempts {} (failed {})  last used {}  credential {}",
            percent(v.five_hour),
            percent(v.seven_day),
            v.requests,
            v.failures,
            v.attempts,
            v.failed_attempts,
            v.last_used_ms.map(format_ms).unwrap_or_else(|| "never".to_owned()),
            v.credential
        );
        // Every other window the account reports (model-scoped weeks, …), extra usage, overage state.
        let others: Vec<String> = v
            .windows
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "5h" | "7d"))
            .map(|(name, w)| format!("{name} {}", percent(Some(*w))))
            .collect();
        if !others.is_empty() {
            println!("    {}", others.join("  "));
        }
        if let Some(spend) = &v.spend {
            let currency = spend.currency.as_deref().unwrap_or("");
            let limit = spend.limit.map(|l| format!(" of {l:.2}")).unwrap_or_default();
            let state = if spend.enabled { "on" } else { "off" };
            println!("    extra usage {state}: {:.2}{limit} {currency}", spend.used);
        }
        if !v.unified.is_empty() {
            let unified: Vec<String> = v.unified.iter().map(|(k, val)| format!("{k}={val}")).collect();
            println!("    {}", unified.join("  "));
        }
        if let Some(why) = &v.usage_off {
            println!("    {why}");
        }
    }
}

/// The `auth status` table: login-centric.
pub(super) fn print_logins(views: &[AccountView]) {
    if views.is_empty() {
        println!("no accounts (add one with `switchyard auth login` or `switchyard accounts add`)");
        return;
    }
    println!("{:<20} {:<8} {:<14} {:<32} {:<21} CREDENTIAL", "NAME", "KIND", "STATUS", "EMAIL", "EXPIRES");
    for v in views {
        let expires = match v.expires_at_ms {
            Some(0) => "on first use".to_owned(),
            Some(ms) => format_ms(ms),
            None => "-".to_owned(),
        };
        println!(
            "{:<20} {:<8} {:<14} {:<32} {:<21} {}",
            v.name,
            v.kind,
            v.status,
            v.email.as_deref().unwrap_or("-"),
            expires,
            v.credential
        );
    }
}

pub async fn pause(config: &Config, name: &str, pause: bool) -> anyhow::Result<()> {
    let (registry, _) = open_registry(config).await?;
    let status = if pause { AccountStatus::Paused } else { AccountStatus::Active };
    registry.set_status_of(name, status).await?;
    let action = if pause { "accounts.pause" } else { "accounts.resume" };
    super::audit_cli(registry.store().as_ref(), action, name, "").await;
    println!("{} account {name}", if pause { "paused" } else { "resumed" });
    Ok(())
}

pub async fn set(config: &Config, name: &str, priority: Option<i64>, weight: Option<i64>) -> anyhow::Result<()> {
    anyhow::ensure!(priority.is_some() || weight.is_some(), "nothing to set: give --priority and/or --weight");
    let (registry, _) = open_registry(config).await?;
    registry.set_routing(name, priority, weight).await?;
    let detail = format!("priority {priority:?} weight {weight:?}");
    super::audit_cli(registry.store().as_ref(), "accounts.set", name, &detail).await;
    println!("updated account {name}");
    Ok(())
}

pub async fn remove(config: &Config, name: &str) -> anyhow::Result<()> {
    let (registry, _) = open_registry(config).await?;
    registry.remove(name).await?;
    super::audit_cli(registry.store().as_ref(), "accounts.remove", name, "").await;
    println!("removed account {name}");
    Ok(())
}
