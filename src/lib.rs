//! Switchyard: a gateway that spreads Anthropic API traffic over Claude OAuth and API-key accounts.
//!
//! Dependencies point one way: `server → forward → accounts → store, secrets`; `anthropic` and `oauth`
//! are leaves. Nothing imports `cli`.

pub mod access;
pub mod accounts;
pub mod alerts;
pub mod anthropic;
pub mod cli;
pub mod config;
pub mod dialect;
pub mod error;
pub mod forward;
#[doc(hidden)]
pub mod fuzz;
pub mod ledger;
pub mod metrics;
pub mod oauth;
pub mod secrets;
pub mod server;
pub mod store;
pub mod telemetry;

/// The epoch ms a duration like `1h` or `7d` ago, for `--since` style windows.
pub fn since_ms(window: &str) -> Result<i64, humantime::DurationError> {
    let d = humantime::parse_duration(window)?;
    Ok(now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2))
}

/// Check a name given to an account or a client key (`what`): shown in tables, logs and the dashboard, and
/// listed comma-separated in a key's account restriction, so it must be visible and simple.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err(format!("the {what} name is empty"));
    }
    if name.trim() != name || name.chars().any(|c| c.is_control() || c == ',') {
        return Err(format!("the {what} name {name:?} has spaces at its ends, a comma or a control character"));
    }
    if name.chars().count() > 128 {
        return Err(format!("the {what} name is longer than 128 characters"));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, the one clock unit used in storage and token expiries.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
