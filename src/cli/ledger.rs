//! `switchyard requests`, `switchyard stats` and `switchyard cleanup`: reading and pruning the request log.

use anyhow::Context;

use super::{format_ms, open_data, open_existing};
use crate::config::Config;
use crate::store::{RequestFilter, RequestRow};

/// One request with its payload, as JSON.
pub async fn one_request(config: &Config, id: &str) -> anyhow::Result<()> {
    let Some(opened) = open_existing(config).await? else { anyhow::bail!("no request with id {id:?}") };
    let store = opened.registry.store();
    let out = crate::ledger::request_details(store.as_ref(), opened.registry.cipher(), id)
        .await?
        .with_context(|| format!("no request with id {id:?}"))?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

pub async fn requests(
    config: &Config,
    since: &str,
    account: Option<String>,
    status: Option<i64>,
    limit: i64,
    json: bool,
) -> anyhow::Result<()> {
    let filter = RequestFilter {
        since_ms: super::window_start("--since", since)?,
        account,
        status,
        limit,
        ..RequestFilter::default()
    };
    let rows: Vec<RequestRow> = match open_existing(config).await? {
        Some(opened) => opened.registry.store().find_requests(&filter).await?,
        None => Vec::new(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no requests in the last {since}");
    }
    for r in &rows {
        println!(
            "{} {} {:<6} {:<26} {:<14} {:<24} {}{} in {} out {} ${:.4} {} ms{}",
            format_ms(r.at_ms),
            r.status,
            r.method,
            r.path,
            r.account.as_deref().unwrap_or("-"),
            r.model.as_deref().unwrap_or("-"),
            if r.stream { "stream " } else { "" },
            r.error_type.as_deref().map(|e| format!("[{e}] ")).unwrap_or_default(),
            r.input_tokens,
            r.output_tokens,
            r.cost_usd,
            r.duration_ms,
            if r.attempts > 1 { format!(" (tried {})", r.accounts_tried) } else { String::new() },
        );
    }
    Ok(())
}

pub async fn stats(config: &Config, since: &str, by: &str, json: bool) -> anyhow::Result<()> {
    let since_ms = super::window_start("--since", since)?;
    let groups = match open_existing(config).await? {
        Some(opened) => crate::ledger::stats(opened.registry.store().as_ref(), since_ms, by).await?,
        None => Default::default(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&groups)?);
        return Ok(());
    }
    if groups.is_empty() {
        println!("no requests in the last {since}");
    }
    for (name, g) in &groups {
        println!(
            "{name:<24} {} requests, {:.1}% errors, in {} out {} cache-read {} cache-write {} (cache hit {:.0}%), ${:.4}, \
             p50 {} ms, p95 {} ms",
            g.requests,
            g.error_rate * 100.0,
            g.input_tokens,
            g.output_tokens,
            g.cache_read_tokens,
            g.cache_creation_tokens,
            g.cache_hit_ratio * 100.0,
            g.cost_usd,
            g.p50_ms,
            g.p95_ms
        );
    }
    Ok(())
}

pub async fn cleanup(config: &Config, older_than: &str, kind: &str, dry_run: bool) -> anyhow::Result<()> {
    let opened = open_data(config).await?;
    let store = opened.registry.store();
    let before = super::window_start("--older-than", older_than)?;
    let requests = if kind == "payloads" { 0 } else { store.delete_requests_before(before, dry_run).await? };
    let payloads = if kind == "requests" { 0 } else { store.delete_payloads_before(before, dry_run).await? };
    if dry_run {
        println!("would remove {requests} request(s) and {payloads} payload(s) older than {older_than}");
        return Ok(());
    }
    store.vacuum().await?;
    let detail = format!("{requests} request(s), {payloads} payload(s) older than {older_than}");
    super::audit_cli(store.as_ref(), "cleanup", kind, &detail).await;
    println!("removed {requests} request(s) and {payloads} payload(s) older than {older_than}; database compacted");
    Ok(())
}
