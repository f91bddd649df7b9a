//! Webhook health, kept per attempt beside the attempt log (never by writing the webhook
//! record, whose writes invalidate the webhook cache): last success and failure, the last error
//! code, the current run of consecutive failures and when it began, and hourly counts of the
//! last 24 hours for a rolling success rate.
//!
//! Only attempts that reached for the receiver count: delivered (success), or failed, exhausted
//! or rejected with an error that is not a plugin's (a plugin's verdict says nothing about the
//! receiver). The update is pure ([`WebhookHealth::record`]) so every backend applies the same
//! rules in its own write of the attempt.

use serde::{Deserialize, Serialize};

use super::AttemptRecord;

const MS_PER_HOUR: u64 = 3_600_000;
/// Hours of the rolling window.
const WINDOW_HOURS: u64 = 24;

/// One hour's counts (hour = ms since the epoch / 3 600 000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourCounts {
    pub hour: u64,
    pub delivered: u32,
    pub failed: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookHealth {
    #[serde(default)]
    pub last_success_at: Option<u64>,
    #[serde(default)]
    pub last_failure_at: Option<u64>,
    /// Error code of the last failed attempt.
    #[serde(default)]
    pub last_error_code: Option<String>,
    /// Failed attempts since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The first failure of the current run (cleared by a success).
    #[serde(default)]
    pub failing_since: Option<u64>,
    /// Hours with attempts, oldest first, at most the last 24.
    #[serde(default)]
    pub hours: Vec<HourCounts>,
}

/// What an attempt says about its receiver: `Some(true)` delivered, `Some(false)` failed,
/// `None` not about the receiver (filtered, a plugin failed).
fn verdict(attempt: &AttemptRecord) -> Option<bool> {
    match attempt.result.as_str() {
        "delivered" => Some(true),
        "failed" | "exhausted" | "rejected" => {
            let plugin = attempt
                .error_code
                .as_deref()
                .is_some_and(|c| c.starts_with("plugin_"));
            (!plugin).then_some(false)
        }
        _ => None,
    }
}

impl WebhookHealth {
    /// Applies one attempt (at its start time). Returns whether anything changed.
    pub fn record(&mut self, attempt: &AttemptRecord) -> bool {
        let Some(delivered) = verdict(attempt) else {
            return false;
        };
        let at = attempt.started_at;
        if delivered {
            self.last_success_at = Some(self.last_success_at.map_or(at, |t| t.max(at)));
            self.consecutive_failures = 0;
            self.failing_since = None;
        } else {
            self.last_failure_at = Some(self.last_failure_at.map_or(at, |t| t.max(at)));
            self.last_error_code = attempt.error_code.clone();
            self.consecutive_failures += 1;
            self.failing_since.get_or_insert(at);
        }
        let hour = at / MS_PER_HOUR;
        match self.hours.iter_mut().find(|h| h.hour == hour) {
            Some(counts) => counts.add(delivered),
            None => {
                let mut counts = HourCounts {
                    hour,
                    ..Default::default()
                };
                counts.add(delivered);
                self.hours.push(counts);
                self.hours.sort_by_key(|h| h.hour);
            }
        }
        let newest = self.hours.last().map_or(hour, |h| h.hour);
        self.hours.retain(|h| h.hour + WINDOW_HOURS > newest);
        true
    }

    /// Delivered and failed attempts of the 24 hours before `now_ms`.
    pub fn last_24h(&self, now_ms: u64) -> (u64, u64) {
        let now_hour = now_ms / MS_PER_HOUR;
        self.hours
            .iter()
            .filter(|h| h.hour + WINDOW_HOURS > now_hour)
            .fold((0, 0), |(ok, bad), h| {
                (ok + u64::from(h.delivered), bad + u64::from(h.failed))
            })
    }

    /// Delivered / (delivered + failed) over the last 24 hours; `None` without attempts.
    pub fn success_rate_24h(&self, now_ms: u64) -> Option<f64> {
        let (ok, bad) = self.last_24h(now_ms);
        (ok + bad > 0).then(|| ok as f64 / (ok + bad) as f64)
    }
}

impl HourCounts {
    fn add(&mut self, delivered: bool) {
        if delivered {
            self.delivered += 1;
        } else {
            self.failed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AttemptId, DeliveryId, WebhookId};

    fn attempt(at: u64, result: &str, code: Option<&str>) -> AttemptRecord {
        AttemptRecord {
            id: AttemptId::new(),
            delivery_id: DeliveryId::new(),
            webhook_id: WebhookId::new(),
            attempt: 1,
            started_at: at,
            url: String::new(),
            latency_ms: 1,
            result: result.into(),
            status_code: None,
            error_code: code.map(str::to_string),
            error_message: None,
            response_snippet: None,
            next_attempt_at: None,
            plugin_logs: Vec::new(),
            request: None,
            verdict_by: None,
        }
    }

    #[test]
    fn failures_run_until_a_success_and_plugins_do_not_count() {
        let mut health = WebhookHealth::default();
        let hour = MS_PER_HOUR * 1000;
        assert!(health.record(&attempt(hour, "failed", Some("http_status"))));
        assert!(health.record(&attempt(hour + 5, "exhausted", Some("timeout"))));
        assert!(!health.record(&attempt(hour + 6, "failed", Some("plugin_trap"))));
        assert!(!health.record(&attempt(hour + 7, "filtered", None)));
        assert_eq!(health.consecutive_failures, 2);
        assert_eq!(health.failing_since, Some(hour));
        assert_eq!(health.last_error_code.as_deref(), Some("timeout"));
        assert!(health.record(&attempt(hour + 9, "delivered", None)));
        assert_eq!(
            (health.consecutive_failures, health.failing_since),
            (0, None)
        );
        assert_eq!(health.last_success_at, Some(hour + 9));
        assert_eq!(health.last_failure_at, Some(hour + 5));
        assert_eq!(health.success_rate_24h(hour + 10), Some(1.0 / 3.0));
    }

    #[test]
    fn the_rate_covers_the_last_24_hours_only() {
        let mut health = WebhookHealth::default();
        let start = MS_PER_HOUR * 5000;
        health.record(&attempt(start, "failed", Some("http_status")));
        health.record(&attempt(start + 23 * MS_PER_HOUR, "delivered", None));
        assert_eq!(health.last_24h(start + 23 * MS_PER_HOUR), (1, 1));
        assert_eq!(health.last_24h(start + 24 * MS_PER_HOUR), (1, 0));
        assert_eq!(health.success_rate_24h(start + 48 * MS_PER_HOUR), None);
        health.record(&attempt(start + 30 * MS_PER_HOUR, "delivered", None));
        assert_eq!(
            health.hours.len(),
            2,
            "hours older than the window are dropped"
        );
    }
}
