//! An account's routing state: rate limits (whole account, per model family, short cooldowns), usage,
//! and counters. Kept in memory, changed on every response, persisted off the hot path as JSON.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::anthropic::{RateLimitInfo, Verdict, classify};

/// Longest an account is benched for, whatever a header says (a week plus a day).
const MAX_BENCH_MS: i64 = 8 * 24 * 3600 * 1000;
/// Bench time when a limit names no reset and no `retry-after`.
const DEFAULT_BENCH_MS: i64 = 60_000;
/// Longest cooldown after repeated header-less 429s.
const MAX_COOLDOWN_MS: i64 = 60_000;
/// Window for "recent requests", the least-used tie-breaker.
const RECENT_WINDOW_MS: i64 = 5 * 60 * 1000;

/// Extra usage spent, in major units of `currency`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    pub used: f64,
    pub limit: Option<f64>,
    pub currency: Option<String>,
    /// Fraction of the limit used (may exceed 1).
    pub utilization: Option<f64>,
    pub enabled: bool,
}

/// Most windows and unified extras kept per account (both come from outside).
const MAX_KEPT: usize = 24;

/// Utilization of one window, as a fraction (0..1, may exceed 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageWindow {
    pub utilization: f64,
    pub resets_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// The whole account is out of rotation until then (epoch ms).
    pub limited_until_ms: i64,
    /// Per model family (`opus`, …): out of rotation for that family until then.
    pub model_limited_until_ms: BTreeMap<String, i64>,
    /// Short cooldown after repeated header-less 429s.
    pub cooldown_until_ms: i64,
    pub bare_429_streak: u32,
    /// Last response said `allowed_warning`: still usable, less preferred.
    pub warning: bool,
    pub five_hour: Option<UsageWindow>,
    pub seven_day: Option<UsageWindow>,
    /// Every usage window by name (`5h`, `7d`, `7d:opus`, `7d_oi`, …), from the usage endpoint and the
    /// rate-limit headers.
    pub windows: BTreeMap<String, UsageWindow>,
    /// Extra usage bought with money, from the usage endpoint.
    pub spend: Option<Spend>,
    /// The unified headers that are not windows: `fallback-percentage`, `overage-*`,
    /// `*-surpassed-threshold` (as last sent).
    pub unified: BTreeMap<String, String>,
    /// Why the usage endpoint is no longer polled for this account (a token without `user:profile`).
    pub usage_off: Option<String>,
    /// Requests whose answer came from this account (a failed request counts at the last account tried).
    pub requests: u64,
    pub failures: u64,
    /// Upstream attempts made on this account, including those that failed over to another.
    pub attempts: u64,
    pub failed_attempts: u64,
    pub last_used_ms: i64,
    recent_start_ms: i64,
    recent_count: u64,
}

/// `until` in unix seconds and `retry-after` into a bench end: the later of the two, clamped, jittered so
/// that accounts benched together do not all return in the same millisecond.
fn bench_until(until_secs: Option<i64>, retry_after_secs: Option<i64>, now_ms: i64) -> i64 {
    let from_reset = until_secs.map(|s| s.saturating_mul(1000));
    let from_retry = retry_after_secs.map(|s| now_ms.saturating_add(s.saturating_mul(1000)));
    let target = match (from_reset, from_retry) {
        (Some(a), Some(b)) => a.max(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => now_ms + DEFAULT_BENCH_MS,
    };
    let jitter = rand::rng().random_range(0..=2_000);
    target.clamp(now_ms, now_ms + MAX_BENCH_MS) + jitter
}

impl Limits {
    /// Take in what another instance saw of this account: its benches (the later end wins) and usage
    /// windows where this one has none. Counters stay this instance's own: each instance writes only its
    /// own, and readers add them up ([`Limits::combined`]), so a restart never counts anything twice.
    pub fn share(&mut self, other: &Limits) {
        self.limited_until_ms = self.limited_until_ms.max(other.limited_until_ms);
        self.cooldown_until_ms = self.cooldown_until_ms.max(other.cooldown_until_ms);
        for (family, until) in &other.model_limited_until_ms {
            let mine = self.model_limited_until_ms.entry(family.clone()).or_insert(0);
            *mine = (*mine).max(*until);
        }
        if self.five_hour.is_none() {
            self.five_hour = other.five_hour;
        }
        if self.seven_day.is_none() {
            self.seven_day = other.seven_day;
        }
        for (name, window) in &other.windows {
            if self.windows.len() < MAX_KEPT || self.windows.contains_key(name) {
                self.windows.entry(name.clone()).or_insert(*window);
            }
        }
        if self.spend.is_none() {
            self.spend.clone_from(&other.spend);
        }
        if self.unified.is_empty() {
            self.unified.clone_from(&other.unified);
        }
        if self.usage_off.is_none() {
            self.usage_off.clone_from(&other.usage_off);
        }
    }

    /// Keep a window by name: a known one is updated, a new one only while fewer than `MAX_KEPT` are kept
    /// (names come from outside).
    fn keep_window(&mut self, name: String, window: UsageWindow) {
        if self.windows.len() < MAX_KEPT || self.windows.contains_key(&name) {
            self.windows.insert(name, window);
        }
    }

    /// Take in a usage report: every window (percent → fraction) and the spend.
    pub fn take_usage(&mut self, report: &crate::oauth::UsageReport) {
        for (name, percent, resets_at) in report.windows() {
            let window = UsageWindow {
                utilization: percent / 100.0,
                resets_at_ms: resets_at.as_deref().and_then(crate::anthropic::parse_timestamp_ms),
            };
            match name.as_str() {
                "5h" => self.five_hour = Some(window),
                "7d" => self.seven_day = Some(window),
                _ => {}
            }
            self.keep_window(name, window);
        }
        if let Some(spend) = &report.spend {
            let used = spend.used.as_ref();
            self.spend = Some(Spend {
                used: used.and_then(crate::oauth::Money::amount).unwrap_or(0.0),
                limit: spend.limit.as_ref().and_then(crate::oauth::Money::amount),
                currency: used.and_then(|m| m.currency.clone()).map(|c| c.chars().take(8).collect()),
                utilization: spend.percent.filter(|p| p.is_finite()).map(|p| p / 100.0),
                enabled: spend.enabled.unwrap_or(false),
            });
        }
    }

    /// The account as all instances together saw it: counters summed, benches shared, the latest use.
    pub fn combined<'a>(rows: impl IntoIterator<Item = &'a Limits>) -> Limits {
        let mut all = Limits::default();
        for row in rows {
            all.share(row);
            all.requests += row.requests;
            all.failures += row.failures;
            all.attempts += row.attempts;
            all.failed_attempts += row.failed_attempts;
            all.last_used_ms = all.last_used_ms.max(row.last_used_ms);
            all.warning |= row.warning;
        }
        all
    }

    /// Take in what a response said; returns the verdict for the failover decision.
    pub fn observe(&mut self, status: u16, info: &RateLimitInfo, family: Option<&str>, now_ms: i64) -> Verdict {
        for (window, slot) in [("5h", &mut self.five_hour), ("7d", &mut self.seven_day)] {
            if let Some(w) = info.windows.get(window)
                && let Some(utilization) = w.utilization
            {
                *slot = Some(UsageWindow { utilization, resets_at_ms: w.reset.map(|s| s.saturating_mul(1000)) });
            }
        }
        for (name, w) in &info.windows {
            if let Some(utilization) = w.utilization.filter(|u| u.is_finite()) {
                let window = UsageWindow { utilization, resets_at_ms: w.reset.map(|s| s.saturating_mul(1000)) };
                self.keep_window(name.clone(), window);
            }
        }
        if !info.extras.is_empty() {
            self.unified = info.extras.iter().take(MAX_KEPT).map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        let verdict = classify(status, info);
        match &verdict {
            Verdict::Allowed { warning } => {
                self.warning = *warning;
                self.bare_429_streak = 0;
            }
            // A later rejection never shortens a bench: answers of concurrent requests arrive out of order,
            // and an earlier reset may be another window's.
            Verdict::AccountLimited { until } => {
                self.limited_until_ms = self.limited_until_ms.max(bench_until(*until, info.retry_after, now_ms));
                self.bare_429_streak = 0;
            }
            Verdict::ModelLimited { until } => {
                let until = bench_until(*until, info.retry_after, now_ms);
                if let Some(family) = family {
                    let slot = self.model_limited_until_ms.entry(family.to_owned()).or_default();
                    *slot = (*slot).max(until);
                } else {
                    self.limited_until_ms = self.limited_until_ms.max(until);
                }
            }
            Verdict::RequestScoped => {
                self.bare_429_streak = self.bare_429_streak.saturating_add(1);
                if self.bare_429_streak >= 2 {
                    let exp = self.bare_429_streak.saturating_sub(2).min(6);
                    self.cooldown_until_ms = now_ms + (1000i64 << exp).min(MAX_COOLDOWN_MS);
                }
            }
        }
        verdict
    }

    /// Whether the account may take a request for `family` now.
    pub fn usable(&self, family: Option<&str>, now_ms: i64) -> bool {
        self.blocked_until(family, now_ms).is_none()
    }

    /// When the account (for `family`) becomes usable again, if it is limited now.
    pub fn blocked_until(&self, family: Option<&str>, now_ms: i64) -> Option<i64> {
        let model = family.and_then(|f| self.model_limited_until_ms.get(f)).copied().unwrap_or(0);
        let until = self.limited_until_ms.max(self.cooldown_until_ms).max(model);
        (until > now_ms).then_some(until)
    }

    /// One upstream attempt on this account.
    pub fn record_attempt(&mut self, now_ms: i64, failed: bool) {
        self.attempts += 1;
        if failed {
            self.failed_attempts += 1;
        }
        self.last_used_ms = now_ms;
        if now_ms - self.recent_start_ms > RECENT_WINDOW_MS {
            self.recent_start_ms = now_ms;
            self.recent_count = 0;
        }
        self.recent_count += 1;
    }

    /// Requests in the current five-minute window.
    pub fn recent(&self, now_ms: i64) -> u64 {
        if now_ms - self.recent_start_ms > RECENT_WINDOW_MS { 0 } else { self.recent_count }
    }

    /// Utilization of the 5-hour window for least-used ordering; unknown counts as unused.
    pub fn five_hour_utilization(&self) -> f64 {
        self.five_hour.map_or(0.0, |w| w.utilization)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderMap;

    fn info(pairs: &[(&str, &str)]) -> RateLimitInfo {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        RateLimitInfo::parse(&h)
    }

    #[test]
    fn account_limit_benches_until_reset_then_returns() {
        let mut l = Limits::default();
        let now = 1_000_000_000;
        l.observe(
            429,
            &info(&[
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-reset", "1000060"),
            ]),
            None,
            now,
        );
        assert!(!l.usable(None, now));
        assert!(!l.usable(None, 1_000_060_000 - 1));
        assert!(l.usable(None, 1_000_060_000 + 2_001));
    }

    #[test]
    fn reset_is_clamped_and_retry_after_counts() {
        let mut l = Limits::default();
        let now = 1_000_000_000;
        l.observe(
            429,
            &info(&[
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-reset", "99999999999"),
            ]),
            None,
            now,
        );
        assert!(l.limited_until_ms <= now + MAX_BENCH_MS + 2_000);
        let mut l = Limits::default();
        l.observe(429, &info(&[("anthropic-ratelimit-unified-status", "rejected"), ("retry-after", "30")]), None, now);
        assert!(l.limited_until_ms >= now + 30_000);
    }

    #[test]
    fn model_limit_blocks_only_that_family() {
        let mut l = Limits::default();
        let now = 1_000_000_000;
        let i = info(&[
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-7d_oi-status", "rejected"),
            ("anthropic-ratelimit-unified-7d_oi-reset", "1000100"),
        ]);
        l.observe(429, &i, Some("opus"), now);
        assert!(!l.usable(Some("opus"), now));
        assert!(l.usable(Some("sonnet"), now));
        assert!(l.usable(None, now));
    }

    #[test]
    fn bare_429s_fail_over_then_cool_down_exponentially() {
        let mut l = Limits::default();
        let now = 1_000_000_000;
        assert_eq!(l.observe(429, &RateLimitInfo::default(), None, now), Verdict::RequestScoped);
        assert!(l.usable(None, now), "one bare 429 does not bench");
        l.observe(429, &RateLimitInfo::default(), None, now);
        assert_eq!(l.cooldown_until_ms, now + 1000);
        l.observe(429, &RateLimitInfo::default(), None, now);
        assert_eq!(l.cooldown_until_ms, now + 2000);
        l.observe(200, &RateLimitInfo::default(), None, now);
        assert_eq!(l.bare_429_streak, 0);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut l = Limits::default();
        l.observe(
            200,
            &info(&[
                ("anthropic-ratelimit-unified-status", "allowed_warning"),
                ("anthropic-ratelimit-unified-5h-utilization", "0.9"),
            ]),
            None,
            5,
        );
        l.record_attempt(5, false);
        let back: Limits = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
        assert!(back.warning);
        assert_eq!(back.five_hour_utilization(), 0.9);
    }
}
