//! The judge stage of an attempt: what one try means for its delivery. Pure: a [`Tried`] and
//! the webhook's [`RetryPolicy`] in, a [`Verdict`] out (delivered, filtered, retried when,
//! exhausted, rejected, and whether the webhook should be disabled), so every rule is unit-tested
//! here without a receiver or a store.
//!
//! Someone other than hookd's default rules may have a say about the receiver's answer (an
//! `on-response` plugin): [`judge`] takes an optional [`ResponseVerdict`] and applies it within
//! limits — it may not retry sooner than the schedule, and whatever it decides is recorded as
//! its decision (`Verdict::verdict_by`).

use std::time::{Duration, SystemTime};

use super::client::{HttpOutcome, SendFailure};
use super::retry::{RetryPolicy, StatusClass, classify_status, parse_retry_after};
use crate::plugin::PluginFailureCode;
use crate::store::DeliveryStatus;

/// What an attempt did: the outcome of the send stage, or why nothing was sent.
#[derive(Debug, Clone)]
pub enum Tried {
    /// The request went out (or tried to): the receiver's answer, or why there was none.
    Sent(HttpOutcome),
    /// A plugin dropped the delivery (a filter) or cancelled it (a transform).
    Filtered { plugin: String },
    /// A plugin failed, or produced output hookd refuses to send.
    PluginFailed {
        plugin: String,
        code: PluginFailureCode,
        message: String,
    },
}

/// Why an attempt did not deliver: the attempt log's `error_code`, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    /// The receiver answered a status that is not 2xx.
    HttpStatus,
    /// No HTTP answer.
    Send(SendFailure),
    Plugin(PluginFailureCode),
}

impl AttemptError {
    pub fn code(self) -> &'static str {
        match self {
            AttemptError::HttpStatus => "http_status",
            AttemptError::Send(failure) => failure.code(),
            AttemptError::Plugin(code) => code.as_str(),
        }
    }
}

impl Tried {
    /// The error of this try, if it did not deliver under the default rules (a verdict may
    /// still call a non-2xx answer delivered; the error code then stays in the log).
    pub fn error(&self) -> Option<AttemptError> {
        match self {
            Tried::Sent(HttpOutcome::Response { status, .. }) => (classify_status(*status)
                != StatusClass::Delivered)
                .then_some(AttemptError::HttpStatus),
            Tried::Sent(HttpOutcome::Failed { failure, .. }) => Some(AttemptError::Send(*failure)),
            Tried::Filtered { .. } => None,
            Tried::PluginFailed { code, .. } => Some(AttemptError::Plugin(*code)),
        }
    }

    /// Whether the receiver was reached (or tried): only such tries say anything about the
    /// webhook's health. Plugin verdicts do not.
    pub fn reached_receiver(&self) -> bool {
        self.exchange_time().is_some()
    }

    /// How long the HTTP exchange took, at full precision (the attempt log keeps whole ms),
    /// when the receiver was tried.
    pub fn exchange_time(&self) -> Option<std::time::Duration> {
        match self {
            Tried::Sent(
                HttpOutcome::Response { latency, .. } | HttpOutcome::Failed { latency, .. },
            ) => Some(*latency),
            _ => None,
        }
    }
}

/// What an attempt means for its delivery, as stored (`result` of the attempt log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered,
    /// A plugin dropped it: final, never retried.
    Filtered,
    /// Failed; another attempt is scheduled.
    Failed,
    /// Failed with a retryable error, but the delivery has had all its attempts.
    Exhausted,
    /// Failed in a way retrying cannot fix (a 4xx, a blocked address, an invalid event).
    Rejected,
}

impl AttemptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Delivered => "delivered",
            AttemptResult::Filtered => "filtered",
            AttemptResult::Failed => "failed",
            AttemptResult::Exhausted => "exhausted",
            AttemptResult::Rejected => "rejected",
        }
    }

    /// The delivery's state after this attempt.
    pub fn delivery_status(self) -> DeliveryStatus {
        match self {
            AttemptResult::Delivered => DeliveryStatus::Delivered,
            AttemptResult::Filtered => DeliveryStatus::Filtered,
            AttemptResult::Failed => DeliveryStatus::Pending,
            AttemptResult::Exhausted | AttemptResult::Rejected => DeliveryStatus::Failed,
        }
    }
}

/// The judgement of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub result: AttemptResult,
    /// When [`AttemptResult::Failed`]: how long until the next attempt.
    pub retry_in: Option<Duration>,
    /// The plugin whose drop made the delivery `filtered`.
    pub filtered_by: Option<String>,
    /// Disable the webhook, with this reason (410 Gone, or a response verdict).
    pub disable_webhook: Option<String>,
    /// Who decided instead of hookd's default rules (a response plugin), if anyone.
    pub verdict_by: Option<String>,
}

/// A decision about the receiver's answer made outside hookd's default rules (an
/// `on-response` plugin). Applied by [`judge`] only to tries the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseVerdict {
    /// Who decided (`plugin:<name>`); recorded as [`Verdict::verdict_by`].
    pub by: String,
    pub decision: ResponseDecision,
}

impl ResponseVerdict {
    /// The verdict of the `on-response` plugin `plugin` (a chain step name).
    pub fn from_plugin(plugin: &str, decision: crate::plugin::ResponseDecision) -> Self {
        use crate::plugin::ResponseDecision as Plugin;
        let decision = match decision {
            Plugin::Delivered => ResponseDecision::Delivered,
            Plugin::Retry { after } => ResponseDecision::Retry { after },
            Plugin::Fail { message } => ResponseDecision::Fail { message },
            Plugin::Disable { reason } => ResponseDecision::Disable {
                reason: format!("plugin `{plugin}`: {reason}"),
            },
        };
        ResponseVerdict {
            by: format!("plugin:{plugin}"),
            decision,
        }
    }

    /// What the attempt log says about the decision (its `error_message`), if anything.
    pub fn log_message(&self) -> String {
        match &self.decision {
            ResponseDecision::Delivered => format!("{} marked the answer delivered", self.by),
            ResponseDecision::Retry { after: None } => format!("{} asked to retry", self.by),
            ResponseDecision::Retry { after: Some(after) } => {
                format!("{} asked to retry after {} s", self.by, after.as_secs())
            }
            ResponseDecision::Fail { message } => format!("{} failed it: {message}", self.by),
            ResponseDecision::Disable { reason } => {
                format!("{} disabled the webhook: {reason}", self.by)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseDecision {
    /// Delivered, whatever the status said.
    Delivered,
    /// Try again, no sooner than `after` and never sooner than the webhook's schedule (nor
    /// later than the tenant's `max_retry_after`, unless the schedule is later); when the
    /// delivery has had all its attempts, it is exhausted.
    Retry { after: Option<Duration> },
    /// Fail now, without retrying; the decider's message.
    Fail { message: String },
    /// Fail now and disable the webhook with this reason.
    Disable { reason: String },
}

/// Judges one attempt: `attempt_number` is this attempt's number (from 1).
pub fn judge(
    tried: &Tried,
    policy: &RetryPolicy,
    attempt_number: u32,
    response_verdict: Option<&ResponseVerdict>,
) -> Verdict {
    let verdict = |result, retry_in| Verdict {
        result,
        retry_in,
        filtered_by: None,
        disable_webhook: None,
        verdict_by: None,
    };
    let retry = |retry_after: Option<Duration>| match policy.next_delay(
        attempt_number,
        retry_after,
        &mut rand::rng(),
    ) {
        Some(delay) => verdict(AttemptResult::Failed, Some(delay)),
        None => verdict(AttemptResult::Exhausted, None),
    };
    if let (Tried::Sent(HttpOutcome::Response { .. }), Some(response_verdict)) =
        (tried, response_verdict)
    {
        let mut judged = match &response_verdict.decision {
            ResponseDecision::Delivered => verdict(AttemptResult::Delivered, None),
            ResponseDecision::Retry { after } => {
                // Never sooner than the schedule: the plugin may only slow hookd down, and
                // only as far as a receiver's `Retry-After` could (`max_retry_after`).
                let mut judged = retry(None);
                let asked = after.and_then(|after| {
                    policy.next_delay(attempt_number, Some(after), &mut rand::rng())
                });
                if let (Some(scheduled), Some(asked)) = (judged.retry_in, asked) {
                    judged.retry_in = Some(scheduled.max(asked));
                }
                judged
            }
            ResponseDecision::Fail { .. } => verdict(AttemptResult::Rejected, None),
            ResponseDecision::Disable { reason } => Verdict {
                disable_webhook: Some(reason.clone()),
                ..verdict(AttemptResult::Rejected, None)
            },
        };
        judged.verdict_by = Some(response_verdict.by.clone());
        return judged;
    }
    match tried {
        Tried::Sent(HttpOutcome::Response {
            status,
            retry_after,
            ..
        }) => match classify_status(*status) {
            StatusClass::Delivered => verdict(AttemptResult::Delivered, None),
            StatusClass::Retryable => retry(
                retry_after
                    .as_deref()
                    .and_then(|v| parse_retry_after(v, SystemTime::now())),
            ),
            StatusClass::Rejected => verdict(AttemptResult::Rejected, None),
            StatusClass::Gone => Verdict {
                disable_webhook: Some("the receiver answered 410 Gone".to_string()),
                ..verdict(AttemptResult::Rejected, None)
            },
        },
        // Refusing a blocked address (or a URL that does not parse) again later would not
        // change anything.
        Tried::Sent(HttpOutcome::Failed { failure, .. }) if failure.is_permanent() => {
            verdict(AttemptResult::Rejected, None)
        }
        Tried::Sent(HttpOutcome::Failed { .. }) => retry(None),
        Tried::Filtered { plugin } => Verdict {
            filtered_by: Some(plugin.clone()),
            ..verdict(AttemptResult::Filtered, None)
        },
        Tried::PluginFailed { code, .. } if code.is_retryable() => retry(None),
        Tried::PluginFailed { .. } => verdict(AttemptResult::Rejected, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeliveryConfig;

    /// Three retries, 10 s, 20 s, 30 s, no jitter: 4 attempts in all.
    fn policy() -> RetryPolicy {
        let config = DeliveryConfig {
            retry_schedule: [10, 20, 30].map(Duration::from_secs).to_vec(),
            retry_jitter_percent: 0,
            ..DeliveryConfig::default()
        };
        RetryPolicy::new(&config, None)
    }

    fn answered(status: u16, retry_after: Option<&str>) -> Tried {
        Tried::Sent(HttpOutcome::Response {
            status,
            retry_after: retry_after.map(str::to_string),
            body: bytes::Bytes::new(),
            body_truncated: false,
            headers: Vec::new(),
            latency: Duration::from_millis(3),
        })
    }

    fn unreachable(failure: SendFailure) -> Tried {
        Tried::Sent(HttpOutcome::Failed {
            failure,
            message: String::new(),
            latency: Duration::from_millis(3),
        })
    }

    fn plugin_failed(code: PluginFailureCode) -> Tried {
        Tried::PluginFailed {
            plugin: "p".into(),
            code,
            message: String::new(),
        }
    }

    #[test]
    fn a_2xx_delivers_and_says_nothing_else() {
        for status in [200, 201, 204, 299] {
            let v = judge(&answered(status, None), &policy(), 1, None);
            assert_eq!(v.result, AttemptResult::Delivered, "{status}");
            assert_eq!(v.result.delivery_status(), DeliveryStatus::Delivered);
            assert_eq!((v.retry_in, &v.disable_webhook), (None, &None));
            assert_eq!(answered(status, None).error(), None);
        }
    }

    #[test]
    fn retryable_answers_follow_the_schedule_until_it_ends() {
        for status in [301, 408, 425, 429, 500, 503] {
            let v = judge(&answered(status, None), &policy(), 1, None);
            assert_eq!(v.result, AttemptResult::Failed, "{status}");
            assert_eq!(v.retry_in, Some(Duration::from_secs(10)));
            assert_eq!(v.result.delivery_status(), DeliveryStatus::Pending);
            assert_eq!(
                answered(status, None).error().map(AttemptError::code),
                Some("http_status")
            );
        }
        let third = judge(&answered(500, None), &policy(), 3, None);
        assert_eq!(third.retry_in, Some(Duration::from_secs(30)));
        let last = judge(&answered(500, None), &policy(), 4, None);
        assert_eq!(
            (last.result, last.retry_in),
            (AttemptResult::Exhausted, None)
        );
        assert_eq!(last.result.delivery_status(), DeliveryStatus::Failed);
    }

    #[test]
    fn retry_after_replaces_the_scheduled_delay() {
        let v = judge(&answered(429, Some("120")), &policy(), 1, None);
        assert_eq!(v.retry_in, Some(Duration::from_secs(120)));
        // Unparseable: the schedule.
        let v = judge(&answered(503, Some("soon")), &policy(), 1, None);
        assert_eq!(v.retry_in, Some(Duration::from_secs(10)));
    }

    #[test]
    fn other_4xx_reject_at_once_and_410_also_disables_the_webhook() {
        for status in [400, 401, 403, 404, 422] {
            let v = judge(&answered(status, None), &policy(), 1, None);
            assert_eq!((v.result, v.retry_in), (AttemptResult::Rejected, None));
            assert_eq!(v.disable_webhook, None, "{status}");
        }
        let gone = judge(&answered(410, None), &policy(), 1, None);
        assert_eq!(gone.result, AttemptResult::Rejected);
        assert_eq!(
            gone.disable_webhook.as_deref(),
            Some("the receiver answered 410 Gone")
        );
    }

    #[test]
    fn network_failures_retry_but_refused_requests_do_not() {
        for failure in [
            SendFailure::Timeout,
            SendFailure::ConnectRefused,
            SendFailure::Dns,
            SendFailure::ConnectionReset,
            SendFailure::InvalidResponse,
            SendFailure::Tls,
        ] {
            let v = judge(&unreachable(failure), &policy(), 1, None);
            assert_eq!(v.result, AttemptResult::Failed, "{failure:?}");
        }
        for failure in [
            SendFailure::BlockedAddress,
            SendFailure::InvalidUrl,
            SendFailure::InvalidMethod,
        ] {
            let v = judge(&unreachable(failure), &policy(), 1, None);
            assert_eq!(v.result, AttemptResult::Rejected, "{failure:?}");
            assert_eq!(
                unreachable(failure).error().map(AttemptError::code),
                Some(failure.code())
            );
        }
    }

    #[test]
    fn plugin_outcomes_filter_retry_or_reject_by_their_code() {
        let filtered = judge(
            &Tried::Filtered {
                plugin: "only-orders".into(),
            },
            &policy(),
            1,
            None,
        );
        assert_eq!(filtered.result, AttemptResult::Filtered);
        assert_eq!(filtered.filtered_by.as_deref(), Some("only-orders"));
        assert_eq!(filtered.result.delivery_status(), DeliveryStatus::Filtered);

        let trap = judge(&plugin_failed(PluginFailureCode::Trap), &policy(), 1, None);
        assert_eq!(trap.result, AttemptResult::Failed);
        let invalid = judge(
            &plugin_failed(PluginFailureCode::InvalidEvent),
            &policy(),
            1,
            None,
        );
        assert_eq!(invalid.result, AttemptResult::Rejected);
        assert!(!plugin_failed(PluginFailureCode::Trap).reached_receiver());
        assert_eq!(
            plugin_failed(PluginFailureCode::Timeout)
                .error()
                .map(AttemptError::code),
            Some("plugin_timeout")
        );
    }

    fn by_plugin(decision: ResponseDecision) -> ResponseVerdict {
        ResponseVerdict {
            by: "body-says-ok".into(),
            decision,
        }
    }

    #[test]
    fn a_response_verdict_decides_within_limits_and_is_named() {
        // A 200 whose body says it failed: retried, but never sooner than the schedule.
        let v = judge(
            &answered(200, None),
            &policy(),
            1,
            Some(&by_plugin(ResponseDecision::Retry {
                after: Some(Duration::from_secs(1)),
            })),
        );
        assert_eq!(v.result, AttemptResult::Failed);
        assert_eq!(v.retry_in, Some(Duration::from_secs(10)));
        assert_eq!(v.verdict_by.as_deref(), Some("body-says-ok"));
        // A later time than the schedule is honoured.
        let v = judge(
            &answered(200, None),
            &policy(),
            1,
            Some(&by_plugin(ResponseDecision::Retry {
                after: Some(Duration::from_secs(60)),
            })),
        );
        assert_eq!(v.retry_in, Some(Duration::from_secs(60)));
        // No attempts left: exhausted.
        let v = judge(
            &answered(200, None),
            &policy(),
            4,
            Some(&by_plugin(ResponseDecision::Retry { after: None })),
        );
        assert_eq!(v.result, AttemptResult::Exhausted);
        // A 400 that is fine for this receiver: delivered, and the log keeps the status error.
        let v = judge(
            &answered(400, None),
            &policy(),
            1,
            Some(&by_plugin(ResponseDecision::Delivered)),
        );
        assert_eq!(v.result, AttemptResult::Delivered);
        assert_eq!(v.verdict_by.as_deref(), Some("body-says-ok"));
        assert_eq!(answered(400, None).error(), Some(AttemptError::HttpStatus));
        // A 403 meaning "stop sending".
        let v = judge(
            &answered(403, None),
            &policy(),
            1,
            Some(&by_plugin(ResponseDecision::Disable {
                reason: "account closed".into(),
            })),
        );
        assert_eq!(v.result, AttemptResult::Rejected);
        assert_eq!(v.disable_webhook.as_deref(), Some("account closed"));
        let v = judge(
            &answered(500, None),
            &policy(),
            1,
            Some(&by_plugin(ResponseDecision::Fail {
                message: "no such account".into(),
            })),
        );
        assert_eq!((v.result, v.retry_in), (AttemptResult::Rejected, None));
        // A retry asked for much later than `max_retry_after` (1 h by default) waits that long
        // at most: a plugin cannot park a delivery for years.
        let v = judge(
            &answered(200, None),
            &policy(),
            1,
            Some(&by_plugin(ResponseDecision::Retry {
                after: Some(Duration::from_secs(u64::from(u32::MAX))),
            })),
        );
        assert_eq!(v.retry_in, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn a_plugin_verdict_is_named_and_its_disable_reason_names_the_plugin() {
        let verdict = ResponseVerdict::from_plugin(
            "body-says-ok",
            crate::plugin::ResponseDecision::Disable {
                reason: "the receiver answered 403".into(),
            },
        );
        assert_eq!(verdict.by, "plugin:body-says-ok");
        assert_eq!(
            verdict.decision,
            ResponseDecision::Disable {
                reason: "plugin `body-says-ok`: the receiver answered 403".into()
            }
        );
        let v = judge(&answered(403, None), &policy(), 1, Some(&verdict));
        assert_eq!(
            v.disable_webhook.as_deref(),
            Some("plugin `body-says-ok`: the receiver answered 403")
        );
        assert_eq!(v.verdict_by.as_deref(), Some("plugin:body-says-ok"));
    }

    #[test]
    fn a_response_verdict_cannot_rewrite_tries_the_receiver_never_answered() {
        let verdict = by_plugin(ResponseDecision::Delivered);
        let v = judge(
            &unreachable(SendFailure::Timeout),
            &policy(),
            1,
            Some(&verdict),
        );
        assert_eq!((v.result, v.verdict_by), (AttemptResult::Failed, None));
        let v = judge(
            &plugin_failed(PluginFailureCode::Trap),
            &policy(),
            1,
            Some(&verdict),
        );
        assert_eq!((v.result, v.verdict_by), (AttemptResult::Failed, None));
    }
}
