//! Operator alerts: an optional webhook (`SWITCHYARD_ALERT_WEBHOOK_URL`) receiving a JSON POST when an
//! account needs a new login, when every account is rate-limited, when an account's 5-hour or 7-day utilization
//! passes a threshold, and when the error rate spikes. Sending happens in the background with retries;
//! nothing waits for it, and the same alert is not repeated within 15 minutes. Every alert is logged too.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

const QUIET_MS: i64 = 15 * 60 * 1000;

struct Alerts {
    tx: Option<mpsc::Sender<serde_json::Value>>,
    last: Mutex<HashMap<String, i64>>,
    /// Requests and errors in the current minute, for spikes.
    window: Window,
    pub utilization: f64,
}

static ALERTS: OnceLock<Alerts> = OnceLock::new();

/// Start the sender (when a webhook is configured). Call once, inside the runtime. With a `store`, the
/// quiet period is shared: of the instances on one store that raise the same alert, one sends it.
pub fn init(
    webhook: Option<url::Url>,
    utilization: f64,
    http: reqwest::Client,
    store: Option<std::sync::Arc<dyn crate::store::Store>>,
) {
    let tx = webhook.map(|url| {
        let (tx, mut rx) = mpsc::channel::<serde_json::Value>(256);
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                if let Some(store) = &store
                    && !claim(store.as_ref(), &alert).await
                {
                    tracing::debug!(alert = %alert["kind"], "alert already sent by another instance");
                    continue;
                }
                let mut delay = Duration::from_millis(500);
                for attempt in 1..=3 {
                    match http.post(url.clone()).json(&alert).timeout(Duration::from_secs(10)).send().await {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) => tracing::warn!(status = r.status().as_u16(), attempt, "alert webhook refused"),
                        Err(e) => tracing::warn!(error = %e, attempt, "alert webhook unreachable"),
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
            }
        });
        tx
    });
    let _ = ALERTS.set(Alerts { tx, last: Mutex::new(HashMap::new()), window: Window::default(), utilization });
}

/// Whether this instance is the one to send `alert`: it claims the alert's quiet period in the store. A
/// store that cannot answer lets it through (an alert twice is better than none).
async fn claim(store: &dyn crate::store::Store, alert: &serde_json::Value) -> bool {
    let key = format!(
        "alert/{}/{}/{}",
        alert["kind"].as_str().unwrap_or(""),
        alert["subject"].as_str().unwrap_or(""),
        alert["window"].as_str().unwrap_or("")
    );
    let now = crate::now_ms();
    let Ok(current) = store.get_setting(&key).await else { return true };
    if current.as_deref().and_then(|v| v.parse::<i64>().ok()).is_some_and(|t| now - t < QUIET_MS) {
        return false;
    }
    store.claim_setting(&key, current.as_deref(), &now.to_string(), now).await.unwrap_or(true)
}

/// Raise an alert (`kind` like `account_needs_login`, `subject` the account or `*`).
pub fn raise(kind: &str, subject: &str, message: &str) {
    notify(kind, subject, None, message);
}

/// `raise`, for one of a subject's rate-limit windows (`5h`, `7d`): each window alerts on its own.
fn notify(kind: &str, subject: &str, window: Option<&str>, message: &str) {
    let Some(alerts) = ALERTS.get() else { return };
    let now = crate::now_ms();
    {
        let mut last = alerts.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = format!("{kind}/{subject}/{}", window.unwrap_or(""));
        if last.get(&key).is_some_and(|t| now - t < QUIET_MS) {
            return;
        }
        last.insert(key, now);
    }
    tracing::warn!(alert = kind, subject, window, "{message}");
    if let Some(tx) = &alerts.tx {
        let mut body = serde_json::json!({
            "source": "switchyard", "kind": kind, "subject": subject, "message": message, "at_ms": now,
        });
        if let Some(window) = window {
            body["window"] = serde_json::Value::from(window);
        }
        let _ = tx.try_send(body);
    }
}

/// An account's utilization of a rate-limit window (`5h`, `7d`) was seen; alerts past the threshold.
pub fn utilization(account: &str, window: &str, value: f64) {
    if let Some(alerts) = ALERTS.get()
        && value >= alerts.utilization
    {
        let span = match window {
            "5h" => "5-hour",
            "7d" => "7-day",
            other => other,
        };
        let message = format!("account {account} is at {:.0}% of its {span} limit", value * 100.0);
        notify("utilization", account, Some(window), &message);
    }
}

/// Requests and failures in the current minute. Counted with atomics, not a lock: every request passes
/// here. A request counted into a minute just as it rolls over may land in either; for a spike alert
/// that is immaterial.
#[derive(Debug, Default)]
struct Window {
    minute: std::sync::atomic::AtomicI64,
    total: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl Window {
    /// Count a request; `Some((failed, total))` when at least half of 20 or more failed this minute.
    fn count(&self, minute: i64, failed: bool) -> Option<(u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.minute.load(Relaxed) != minute && self.minute.swap(minute, Relaxed) != minute {
            self.total.store(0, Relaxed);
            self.failed.store(0, Relaxed);
        }
        let total = self.total.fetch_add(1, Relaxed) + 1;
        let errors = if failed { self.failed.fetch_add(1, Relaxed) + 1 } else { self.failed.load(Relaxed) };
        (total >= 20 && errors * 2 >= total).then_some((errors, total))
    }
}

/// A request finished; alerts when at least half of at least 20 requests in a minute failed.
pub fn request_finished(failed: bool) {
    let Some(alerts) = ALERTS.get() else { return };
    if let Some((errors, total)) = alerts.window.count(crate::now_ms() / 60_000, failed) {
        raise("error_rate", "*", &format!("{errors} of {total} requests failed in the last minute"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_spikes_need_twenty_requests_and_half_failing_within_the_minute() {
        let w = Window::default();
        for _ in 0..19 {
            assert_eq!(w.count(7, true), None);
        }
        assert_eq!(w.count(7, false), Some((19, 20)));
        // A new minute starts from nothing.
        for _ in 0..11 {
            assert_eq!(w.count(8, false), None);
        }
        for _ in 0..9 {
            assert_eq!(w.count(8, true), None);
        }
        assert_eq!(w.count(8, true), None, "10 of 21 is under half");
        assert_eq!(w.count(8, true), Some((11, 22)));
    }
}
