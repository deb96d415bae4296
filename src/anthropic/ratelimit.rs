//! Reading `anthropic-ratelimit-*` and `retry-after` headers, and deciding what a response says about the
//! account: fine, warned, limited as a whole, limited for one model family, or a one-off 429.

use std::collections::BTreeMap;

use axum::http::HeaderMap;

const PREFIX: &str = "anthropic-ratelimit-unified-";

/// Statuses that mean "this account may not be used now" (Anthropic and public tools use all of these).
fn is_hard(status: &str) -> bool {
    matches!(status, "rejected" | "rate_limited" | "blocked" | "queueing_hard" | "payment_required")
}

/// Statuses that still allow use but ask for restraint.
fn is_soft(status: &str) -> bool {
    matches!(status, "allowed_warning" | "queueing_soft")
}

/// One rate-limit window (`5h`, `7d`, `7d_oi`, `overage`, …) as the headers describe it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub status: Option<String>,
    /// Unix seconds.
    pub reset: Option<i64>,
    /// Fraction used, 0..1 (may exceed 1).
    pub utilization: Option<f64>,
}

/// Everything the rate-limit headers of one response say. Unknown headers are ignored, never an error.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimitInfo {
    /// Any `anthropic-ratelimit-*` header at all.
    pub present: bool,
    pub unified_status: Option<String>,
    pub unified_reset: Option<i64>,
    pub representative_claim: Option<String>,
    pub overage_disabled_reason: Option<String>,
    pub windows: BTreeMap<String, Window>,
    /// `retry-after`, seconds.
    pub retry_after: Option<i64>,
    /// API-key limits: the earliest reset (unix seconds) of a counter that is exhausted.
    pub api_key_exhausted_until: Option<i64>,
    /// Unified headers that are not a window's status, reset or utilization: `fallback-percentage`,
    /// `overage-*`, `*-surpassed-threshold`, … (name after `anthropic-ratelimit-unified-`, value cut).
    pub extras: BTreeMap<String, String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// An RFC 3339 / ISO 8601 UTC timestamp (`Z` or `+00:00`, fraction optional) as epoch milliseconds.
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let utc = text.strip_suffix("+00:00").or_else(|| text.strip_suffix('Z')).unwrap_or(text);
    let t = humantime::parse_rfc3339_weak(utc).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_millis()).ok())
}

fn rfc3339_secs(text: &str) -> Option<i64> {
    parse_timestamp_ms(text).map(|ms| ms / 1000)
}

impl RateLimitInfo {
    /// Parse a response's headers.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut info = RateLimitInfo::default();
        for (name, value) in headers {
            let name = name.as_str();
            if !name.starts_with("anthropic-ratelimit-") {
                continue;
            }
            info.present = true;
            let Some(rest) = name.strip_prefix(PREFIX) else { continue };
            let Ok(value) = value.to_str() else { continue };
            let value = value.trim();
            match rest {
                "status" => info.unified_status = Some(value.to_owned()),
                "reset" => info.unified_reset = value.parse().ok(),
                "representative-claim" => info.representative_claim = Some(value.to_owned()),
                "overage-disabled-reason" => {
                    info.overage_disabled_reason = Some(value.to_owned());
                    info.extras.insert(rest.to_owned(), value.chars().take(64).collect());
                }
                _ if rest.starts_with("fallback")
                    || rest.starts_with("overage")
                    || rest.ends_with("surpassed-threshold") =>
                {
                    info.extras.insert(rest.to_owned(), value.chars().take(64).collect());
                }
                _ => {
                    for (suffix, field) in [("-status", 0), ("-reset", 1), ("-utilization", 2)] {
                        if let Some(window) = rest.strip_suffix(suffix) {
                            let w = info.windows.entry(window.to_owned()).or_default();
                            match field {
                                0 => w.status = Some(value.to_owned()),
                                1 => w.reset = value.parse().ok(),
                                // `1e999` parses as infinity and `NaN` as NaN: neither is a fraction, and
                                // either would poison least-used ordering and the saved state (JSON has
                                // no infinity). Found by the `ratelimit_headers` fuzz target.
                                _ => w.utilization = value.parse().ok().filter(|u: &f64| u.is_finite() && *u >= 0.0),
                            }
                        }
                    }
                }
            }
        }
        info.retry_after = header(headers, "retry-after").and_then(|v| v.parse::<f64>().ok()).map(|s| s.ceil() as i64);
        const COUNTERS: [(&str, &str); 4] = [
            ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
            ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
            ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset"),
            ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset"),
        ];
        for (remaining, reset) in COUNTERS.iter().filter(|_| info.present) {
            if header(headers, remaining).and_then(|r| r.parse::<i64>().ok()) == Some(0)
                && let Some(reset) = header(headers, reset).and_then(rfc3339_secs)
            {
                info.api_key_exhausted_until = Some(info.api_key_exhausted_until.map_or(reset, |r: i64| r.min(reset)));
            }
        }
        info
    }

    /// Utilization of a window (`5h`, `7d`), when reported.
    pub fn utilization(&self, window: &str) -> Option<f64> {
        self.windows.get(window).and_then(|w| w.utilization)
    }

    fn hard(&self, window: &str) -> bool {
        self.windows.get(window).and_then(|w| w.status.as_deref()).is_some_and(is_hard)
    }

    fn reset_of(&self, window: &str) -> Option<i64> {
        self.windows.get(window).and_then(|w| w.reset)
    }
}

/// What a response means for the account that served it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Usable; `warning` lowers its preference.
    Allowed { warning: bool },
    /// The whole account must wait until this unix second (`None`: the headers gave no time).
    AccountLimited { until: Option<i64> },
    /// Only the model family of this request must wait.
    ModelLimited { until: Option<i64> },
    /// A 429 without rate-limit headers: this request only.
    RequestScoped,
}

/// Phrases of a 429 that is about what the account may use, not how much: a subscription without extra
/// usage or credits asking for long context. Another account (with the entitlement) may serve it.
const ENTITLEMENT_PHRASES: &[&str] = &[
    "extra usage is required",
    "usage credits are required",
    "credits are required for",
    "is not available on your plan",
    "requires extra usage",
];

/// Whether an error answer's body says the account lacks an entitlement (see [`ENTITLEMENT_PHRASES`]).
/// Reads only `error.message` of Anthropic's error JSON; anything else is not an entitlement error.
pub fn is_entitlement_error(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Option<Detail>,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        message: Option<String>,
    }
    let Ok(Answer { error: Some(Detail { message: Some(message) }) }) = serde_json::from_slice::<Answer>(body) else {
        return false;
    };
    let message = message.to_ascii_lowercase();
    ENTITLEMENT_PHRASES.iter().any(|p| message.contains(p))
}

/// Decide what `status` plus `info` say about the account.
pub fn classify(status: u16, info: &RateLimitInfo) -> Verdict {
    let unified_hard = info.unified_status.as_deref().is_some_and(is_hard);
    let account_windows_hard = info.hard("5h") || info.hard("7d");
    let model_hard =
        info.windows.iter().any(|(name, w)| name.starts_with("7d_") && w.status.as_deref().is_some_and(is_hard));
    let out_of_credits = info.overage_disabled_reason.as_deref() == Some("out_of_credits");

    if account_windows_hard || (unified_hard && !model_hard) {
        // The latest reset among the hard windows; else the unified reset; else retry-after.
        let until =
            ["5h", "7d"].iter().filter(|w| info.hard(w)).filter_map(|w| info.reset_of(w)).max().or(info.unified_reset);
        return Verdict::AccountLimited { until };
    }
    if model_hard || (status == 429 && out_of_credits) {
        let until = info
            .windows
            .iter()
            .filter(|(name, w)| name.starts_with("7d_") && w.status.as_deref().is_some_and(is_hard))
            .filter_map(|(_, w)| w.reset)
            .max()
            .or(info.unified_reset);
        return Verdict::ModelLimited { until };
    }
    if status == 429 {
        if let Some(until) = info.api_key_exhausted_until {
            return Verdict::AccountLimited { until: Some(until) };
        }
        return Verdict::RequestScoped;
    }
    let warning = info.unified_status.as_deref().is_some_and(is_soft)
        || info.windows.values().any(|w| w.status.as_deref().is_some_and(is_soft));
    Verdict::Allowed { warning }
}

/// The model family a limit applies to: `opus`, `sonnet`, `haiku`, `fable`, or the model name itself.
pub fn model_family(model: &str) -> String {
    // Windows over a short name, not `str::contains`: that builds a searcher per call, and this runs for
    // every request (it was a tenth of routing's instructions).
    let bytes = model.as_bytes();
    for family in ["opus", "sonnet", "haiku", "fable"] {
        if bytes.windows(family.len()).any(|w| w == family.as_bytes()) {
            return family.to_owned();
        }
    }
    model.to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn entitlement_errors_are_told_from_rate_limits() {
        let body =
            |m: &str| serde_json::json!({"type":"error","error":{"type":"rate_limit_error","message":m}}).to_string();
        assert!(is_entitlement_error(body("Extra usage is required for long context requests.").as_bytes()));
        assert!(is_entitlement_error(body("Usage credits are required for long context requests.").as_bytes()));
        assert!(!is_entitlement_error(
            body("Number of request tokens has exceeded your per-minute rate limit").as_bytes()
        ));
        assert!(!is_entitlement_error(b"not json"));
        assert!(!is_entitlement_error(br#"{"error":{"type":"rate_limit_error"}}"#));
    }

    #[test]
    fn allowed_and_warning() {
        let info = RateLimitInfo::parse(&headers(&[
            ("anthropic-ratelimit-unified-status", "allowed"),
            ("anthropic-ratelimit-unified-5h-utilization", "0.42"),
            ("anthropic-ratelimit-unified-7d-utilization", "0.1"),
            ("anthropic-ratelimit-unified-something-new", "x"),
        ]));
        assert!(info.present);
        assert_eq!(info.utilization("5h"), Some(0.42));
        let odd = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("anthropic-ratelimit-unified-5h-utilization", axum::http::HeaderValue::from_static(v));
            RateLimitInfo::parse(&h).utilization("5h")
        };
        assert_eq!((odd("1e999"), odd("NaN"), odd("-0.5"), odd("inf")), (None, None, None, None));
        assert_eq!(odd("1.25"), Some(1.25), "over 100 % is a real reading");
        assert_eq!(classify(200, &info), Verdict::Allowed { warning: false });
        let warned = RateLimitInfo::parse(&headers(&[("anthropic-ratelimit-unified-status", "allowed_warning")]));
        assert_eq!(classify(200, &warned), Verdict::Allowed { warning: true });
    }

    #[test]
    fn account_wide_rejection_waits_for_the_latest_hard_reset() {
        let info = RateLimitInfo::parse(&headers(&[
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-reset", "1000"),
            ("anthropic-ratelimit-unified-5h-status", "rejected"),
            ("anthropic-ratelimit-unified-5h-reset", "2000"),
            ("anthropic-ratelimit-unified-7d-status", "rejected"),
            ("anthropic-ratelimit-unified-7d-reset", "5000"),
            ("retry-after", "30"),
        ]));
        assert_eq!(info.retry_after, Some(30));
        assert_eq!(classify(429, &info), Verdict::AccountLimited { until: Some(5000) });
        let unified_only = RateLimitInfo::parse(&headers(&[
            ("anthropic-ratelimit-unified-status", "rate_limited"),
            ("anthropic-ratelimit-unified-reset", "1234"),
        ]));
        assert_eq!(classify(429, &unified_only), Verdict::AccountLimited { until: Some(1234) });
    }

    #[test]
    fn weekly_model_limit_is_model_scoped() {
        let info = RateLimitInfo::parse(&headers(&[
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-7d_oi-status", "rejected"),
            ("anthropic-ratelimit-unified-7d_oi-reset", "7777"),
            ("anthropic-ratelimit-unified-5h-status", "allowed"),
        ]));
        assert_eq!(classify(429, &info), Verdict::ModelLimited { until: Some(7777) });
        assert_eq!(model_family("claude-opus-4-1"), "opus");
        assert_eq!(model_family("claude-sonnet-4-5"), "sonnet");
        assert_eq!(model_family("mystery"), "mystery");
    }

    #[test]
    fn bare_429_is_request_scoped_and_api_key_counters_bench() {
        assert_eq!(classify(429, &RateLimitInfo::parse(&HeaderMap::new())), Verdict::RequestScoped);
        let info = RateLimitInfo::parse(&headers(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2030-01-01T00:00:10Z"),
            ("anthropic-ratelimit-tokens-remaining", "100"),
        ]));
        assert_eq!(classify(429, &info), Verdict::AccountLimited { until: Some(1_893_456_010) });
    }

    #[test]
    fn timestamps_in_either_utc_spelling() {
        assert_eq!(parse_timestamp_ms("2030-01-01T00:00:10Z"), Some(1_893_456_010_000));
        assert_eq!(parse_timestamp_ms("2030-01-01T00:00:10.5+00:00"), Some(1_893_456_010_500));
        assert_eq!(parse_timestamp_ms("soon"), None);
    }
}
